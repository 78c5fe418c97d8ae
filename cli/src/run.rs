//! `warren run`: start a node, serve until SIGINT/SIGTERM, shut down cleanly.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use warren_core::{Config, Node};

use crate::output;

/// How long to wait, after the node is down, for stray runtime tasks before exiting.
const RUNTIME_GRACE: Duration = Duration::from_secs(5);

pub fn run(data_dir: PathBuf, client_addr: SocketAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren")
        .build()
        .context("could not start the async runtime")?;
    let result = runtime.block_on(serve(data_dir, client_addr));
    // Never hang on exit: the node has already been shut down (or never started).
    runtime.shutdown_timeout(RUNTIME_GRACE);
    result
}

async fn serve(data_dir: PathBuf, client_addr: SocketAddr) -> anyhow::Result<()> {
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
    let lines = [
        format!("server name: {}", node.server_name()),
        format!("peer id: {peer_id}"),
        format!("data dir: {}", data_dir.display()),
        format!("client API: {}", node.client_url()),
    ];
    if let Err(e) = output::stdout_lines(&lines) {
        // Nobody is reading stdout; the node is still useful, so keep serving.
        tracing::warn!(error = %e, "could not write the start-up lines to stdout");
    }
    tracing::info!(client_url = %node.client_url(), server_name = node.server_name(), "node is serving");

    let signal = signals.recv().await;
    tracing::info!(signal, "shutting down");
    let _ = output::stdout_lines(&[format!("stopping: {signal} received")]);
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
