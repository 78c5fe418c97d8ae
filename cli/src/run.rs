//! `warren run`: start a node, serve until SIGINT/SIGTERM, shut down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use warren_core::{Config, Node};
use warren_p2p::{Multiaddr, P2p, P2pConfig};

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
    #[arg(long = "p2p-listen", value_name = "MULTIADDR")]
    listen: Vec<Multiaddr>,

    /// A peer to connect to at start, ending in /p2p/<peer id> (repeatable). It seeds
    /// the DHT and relays this node if it offers relaying.
    #[arg(long, value_name = "MULTIADDR")]
    bootstrap: Vec<Multiaddr>,

    /// Do not discover or announce peers on the LAN by multicast DNS.
    #[arg(long)]
    no_mdns: bool,

    /// Relay traffic for peers that cannot reach each other directly (circuit relay v2).
    #[arg(long)]
    relay_server: bool,
}

impl P2pArgs {
    fn config(self) -> P2pConfig {
        let mut config = P2pConfig {
            bootstrap: self.bootstrap,
            mdns: !self.no_mdns,
            relay_server: self.relay_server,
            ..P2pConfig::default()
        };
        if !self.listen.is_empty() {
            config.listen = self.listen;
        }
        config
    }
}

pub fn run(data_dir: PathBuf, client_addr: SocketAddr, p2p: P2pArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren")
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(serve(data_dir, client_addr, p2p.config()));
    // Never hang on exit: the node has already been shut down (or never started).
    runtime.shutdown_timeout(RUNTIME_GRACE);
    result
}

async fn serve(data_dir: PathBuf, client_addr: SocketAddr, p2p: P2pConfig) -> anyhow::Result<()> {
    // Listen for signals before starting, so a SIGTERM during start-up still gets a clean
    // shutdown instead of killing the process mid-migration.
    let mut signals = Signals::new()?;

    let mut config = Config::new(data_dir.clone());
    config.client_addr = client_addr;
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
