//! `warren run`: start a node, serve until SIGINT/SIGTERM, shut down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use warren_core::{Config, Node};
use warren_p2p::{Multiaddr, P2p, P2pConfig};

use crate::config_file::{FileConfig, P2pSection};

use crate::output;

/// How long to wait, after the node is down, for stray runtime tasks before exiting.
const RUNTIME_GRACE: Duration = Duration::from_secs(5);

/// How long to wait for the P2P transport to report its first listen address.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// P2P flags of `warren run`.
#[derive(Debug, clap::Args)]
pub struct P2pArgs {
    /// Address to listen on for other nodes (repeatable). [default:
    /// /ip4/0.0.0.0/udp/0/quic-v1 and /ip4/0.0.0.0/tcp/0, i.e. QUIC and TCP on every
    /// interface at random ports]
    #[arg(
        long = "p2p-listen",
        value_name = "MULTIADDR",
        env = "WARREN_P2P_LISTEN",
        value_delimiter = ','
    )]
    listen: Vec<Multiaddr>,

    /// A peer to connect to at start, ending in /p2p/<peer id> (repeatable). It seeds
    /// the DHT and relays this node if it offers relaying.
    #[arg(
        long,
        value_name = "MULTIADDR",
        env = "WARREN_BOOTSTRAP",
        value_delimiter = ','
    )]
    bootstrap: Vec<Multiaddr>,

    /// Do not discover or announce peers on the LAN by multicast DNS.
    #[arg(long, env = "WARREN_NO_MDNS")]
    no_mdns: bool,

    /// Do not relay traffic for peers that cannot reach each other directly. By default
    /// every node offers circuit relay v2 to its peers, within small bounds (see
    /// docs/operations.md).
    #[arg(long, env = "WARREN_NO_RELAY_SERVER", conflicts_with = "relay_server")]
    no_relay_server: bool,

    /// Relay for peers (the default; kept for scripts written when it was opt-in).
    #[arg(long, env = "WARREN_RELAY_SERVER", hide = true)]
    relay_server: bool,
}

impl P2pArgs {
    /// Flags and environment over the file's `[p2p]` table over the defaults.
    fn config(self, file: &P2pSection) -> anyhow::Result<P2pConfig> {
        let parse = |list: &Option<Vec<String>>| -> anyhow::Result<Vec<Multiaddr>> {
            list.iter()
                .flatten()
                .map(|a| a.parse().with_context(|| format!("bad multiaddr {a:?}")))
                .collect()
        };
        let mut config = P2pConfig {
            mdns: !self.no_mdns && file.mdns.unwrap_or(true),
            relay_server: self.relay_server
                || (!self.no_relay_server && file.relay_server.unwrap_or(true)),
            ..P2pConfig::default()
        };
        file.apply_relay_limits(&mut config.relay_limits);
        config.bootstrap = if self.bootstrap.is_empty() {
            parse(&file.bootstrap)?
        } else {
            self.bootstrap
        };
        if !self.listen.is_empty() {
            config.listen = self.listen;
        } else if file.listen.is_some() {
            config.listen = parse(&file.listen)?;
        }
        Ok(config)
    }
}

pub fn run(
    data_dir: PathBuf,
    client_addr: Option<SocketAddr>,
    on_notify: Option<String>,
    appservices: Vec<PathBuf>,
    p2p: P2pArgs,
    file: FileConfig,
) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren")
        .max_blocking_threads(warren_core::node::MAX_BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .context("could not start the async runtime")?;
    let p2p = p2p.config(&file.p2p)?;
    let mut config = Config::new(data_dir.clone());
    config.app_service_config_files = file
        .app_service_config_files
        .iter()
        .flatten()
        .map(|f| data_dir.join(f))
        .chain(appservices)
        .collect();
    config.client_addr = client_addr
        .or(file.client_addr)
        .unwrap_or(warren_core::config::DEFAULT_CLIENT_ADDR);
    if let Some(r) = file.registration {
        config.registration = r.into();
    }
    if let Some(tokens) = file.registration_tokens {
        config.registration_tokens = tokens;
    }
    if let Some(max) = file.max_upload_bytes {
        config.max_upload_bytes = max;
    }
    if let Some(v) = &file.default_room_version {
        config.default_room_version = v.clone();
    }
    if let Some(secs) = file.refreshable_access_token_lifetime_secs {
        config.refreshable_access_token_lifetime = std::time::Duration::from_secs(secs);
    }
    file.limits.apply(&mut config);
    file.media.apply(&mut config);
    file.mailbox.apply(&mut config);
    file.voip.apply(&mut config);
    file.push.apply(&mut config);
    let on_notify = on_notify
        .or(file.push.on_notify.clone())
        .filter(|c| !c.trim().is_empty());
    file.rate_limits.apply(&mut config.rate_limits);
    let result = runtime.block_on(serve(config, p2p, on_notify));
    // Never hang on exit: the node has already been shut down (or never started).
    runtime.shutdown_timeout(RUNTIME_GRACE);
    result
}

async fn serve(config: Config, p2p: P2pConfig, on_notify: Option<String>) -> anyhow::Result<()> {
    let data_dir = config.data_dir.clone();
    let client_addr = config.client_addr;
    // Listen for signals before starting, so a SIGTERM during start-up still gets a clean
    // shutdown instead of killing the process mid-migration.
    let mut signals = Signals::new()?;

    tracing::info!(data_dir = %data_dir.display(), %client_addr, "starting warren node");
    // StartError's Display is one clear human line ("address … is already in use").
    let node = Node::start(config).await.map_err(|e| anyhow!("{e}"))?;

    let peer_id = match warren_p2p::peer_id_for_server_name(node.server_name()) {
        Ok(peer_id) => peer_id,
        Err(e) => {
            stop(node).await?;
            return Err(e.into());
        }
    };
    let p2p = match start_p2p(&node, p2p).await {
        Ok(p2p) => p2p,
        Err(e) => {
            stop(node).await?;
            return Err(e);
        }
    };
    // Desktop notifications: a command per notification (never blocking the node).
    let on_notify = on_notify.map(|command| crate::notify::start(node.server(), command));
    let mut lines = vec![
        format!("server name: {}", node.server_name()),
        format!("peer id: {peer_id}"),
        format!("data dir: {}", data_dir.display()),
    ];
    for addr in p2p.listen_addrs().await.unwrap_or_default() {
        lines.push(format!("p2p listen: {addr}"));
    }
    lines.push(format!("client API: {}", node.client_url()));
    if let Err(e) = output::stdout_lines(&lines) {
        // Nobody is reading stdout; the node is still useful, so keep serving.
        tracing::warn!(error = %e, "could not write the start-up lines to stdout");
    }
    tracing::info!(client_url = %node.client_url(), server_name = node.server_name(), "node is serving");

    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    let _ = output::stdout_lines(&[format!("stopping: {signal} received")]);
    if let Some(task) = on_notify {
        task.abort();
    }
    p2p.shutdown().await;
    tokio::select! {
        stopped = stop(node) => stopped?,
        again = signals.recv() => bail!(
            "{again} received during shutdown; exiting without waiting for the node \
             (the database stays consistent and is recovered on the next start)"
        ),
    }
    let _ = output::stdout_lines(&["stopped"]);
    Ok(())
}

/// Start the transport and wait until it listens, so the printed addresses are real.
async fn start_p2p(node: &Node, config: P2pConfig) -> anyhow::Result<P2p> {
    let listens = !config.listen.is_empty();
    let p2p = P2p::attach(node, config).await?;
    if listens {
        p2p.wait_listening(LISTEN_WAIT).await?;
    }
    Ok(p2p)
}

async fn stop(node: Node) -> anyhow::Result<()> {
    node.shutdown()
        .await
        .map_err(|e| anyhow!("the node did not shut down cleanly: {e}"))
}

/// SIGINT and SIGTERM on Unix; Ctrl-C elsewhere.
struct Signals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn new() -> anyhow::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("could not listen for SIGINT")?,
            terminate: signal(SignalKind::terminate()).context("could not listen for SIGTERM")?,
        })
    }

    #[cfg(not(unix))]
    fn new() -> anyhow::Result<Self> {
        Ok(Self {})
    }

    /// Wait for the next signal and name it.
    #[cfg(unix)]
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }

    #[cfg(not(unix))]
    async fn recv(&mut self) -> &'static str {
        match tokio::signal::ctrl_c().await {
            Ok(()) => "Ctrl-C",
            // Cannot listen: run until killed rather than stopping at once.
            Err(_) => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        p2p: P2pArgs,
    }

    fn relay(args: &[&str], file: Option<bool>) -> bool {
        let cli = Cli::try_parse_from(std::iter::once("warren").chain(args.iter().copied()))
            .expect("flags parse");
        let file = P2pSection {
            relay_server: file,
            ..P2pSection::default()
        };
        cli.p2p.config(&file).expect("config").relay_server
    }

    #[test]
    fn relay_limits_come_from_the_file() {
        let cli = Cli::try_parse_from(["warren"]).expect("flags parse");
        let file = P2pSection {
            relay_max_circuits: Some(3),
            relay_max_circuit_secs: Some(30),
            ..P2pSection::default()
        };
        let limits = cli.p2p.config(&file).expect("config").relay_limits;
        assert_eq!(limits.max_circuits, 3);
        assert_eq!(limits.max_circuit_duration, Duration::from_secs(30));
        assert_eq!(
            limits.max_reservations,
            warren_p2p::RelayLimits::default().max_reservations
        );
    }

    #[test]
    fn relaying_is_on_unless_turned_off() {
        assert!(relay(&[], None), "on by default");
        assert!(!relay(&["--no-relay-server"], None));
        assert!(!relay(&[], Some(false)), "off in warren.toml");
        assert!(relay(&[], Some(true)));
        assert!(
            relay(&["--relay-server"], Some(false)),
            "the old flag still turns it on"
        );
        assert!(
            Cli::try_parse_from(["warren", "--relay-server", "--no-relay-server"]).is_err(),
            "contradictory flags"
        );
    }
}
