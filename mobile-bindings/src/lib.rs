//! warren-mobile: Warren embedded in an app.
//!
//! This crate will expose Warren to Kotlin, Swift and Python through uniffi (a cdylib and
//! staticlib plus generated bindings): `Node::start(config)`, `client_url()`,
//! `server_name()`, `peers()`, `connect()`, `network_changed()`, `stop()` and a callback
//! interface for status changes (DESIGN.md §6). That arrives with the mobile issue.
//!
//! For now it holds the plain-Rust core of that API, [`MobileNode`]: a node with its own
//! tokio runtime behind blocking methods, which is the shape a foreign caller needs (no
//! async runtime on the caller's side, `&self` methods, so it can sit behind an `Arc`).
//! The app points its Matrix client at [`MobileNode::client_url`].

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Mutex, MutexGuard};

use warren_core::{Config, Node};

/// Why a [`MobileNode`] call failed. Each message is one human-readable line.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MobileError {
    /// The node could not start (data directory in use, port taken, newer database, …).
    #[error("{0}")]
    Start(String),
    /// The node's own async runtime could not be created.
    #[error("could not start the node's runtime: {0}")]
    Runtime(String),
    /// The node did not shut down cleanly.
    #[error("the node did not shut down cleanly: {0}")]
    Stop(String),
    /// A blocking call was made from inside an async runtime, where it would deadlock.
    #[error("MobileNode methods block; call them from a plain thread, not from async code")]
    CalledFromAsync,
}

/// A running Warren node with its own runtime, serving the client API on loopback.
pub struct MobileNode {
    /// `None` only while dropping.
    runtime: Option<tokio::runtime::Runtime>,
    /// `None` once stopped.
    node: Mutex<Option<Node>>,
    client_url: String,
    server_name: String,
}

impl MobileNode {
    /// Start a node keeping its data in `data_dir`, serving the Matrix client API on
    /// `127.0.0.1:client_port` (0 picks a free port; read it back from
    /// [`client_url`](Self::client_url)). Blocks until the node is serving.
    pub fn start(data_dir: String, client_port: u16) -> Result<MobileNode, MobileError> {
        refuse_inside_async()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .thread_name("warren")
            .build()
            .map_err(|e| MobileError::Runtime(e.to_string()))?;
        let mut config = Config::new(data_dir);
        config.client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client_port));
        let node = runtime
            .block_on(Node::start(config))
            .map_err(|e| MobileError::Start(e.to_string()))?;
        Ok(MobileNode {
            client_url: node.client_url(),
            server_name: node.server_name().to_owned(),
            runtime: Some(runtime),
            node: Mutex::new(Some(node)),
        })
    }

    /// Base URL of the Matrix client-server API, e.g. `http://127.0.0.1:8008`.
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// The node's server name: 64 lowercase hex characters of its public key.
    pub fn server_name(&self) -> String {
        self.server_name.clone()
    }

    /// Whether the node is still serving (it has not been stopped).
    pub fn is_running(&self) -> bool {
        self.lock().is_some()
    }

    /// Finish in-flight requests, flush the database and stop serving. Blocks until done.
    /// Calling it again, or after a failed stop, does nothing and returns `Ok`.
    pub fn stop(&self) -> Result<(), MobileError> {
        refuse_inside_async()?;
        let Some(node) = self.lock().take() else {
            return Ok(());
        };
        let Some(runtime) = &self.runtime else {
            return Ok(());
        };
        runtime
            .block_on(node.shutdown())
            .map_err(|e| MobileError::Stop(e.to_string()))
    }

    fn lock(&self) -> MutexGuard<'_, Option<Node>> {
        // A panic elsewhere while holding the lock leaves a usable `Option` behind.
        self.node
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for MobileNode {
    fn drop(&mut self) {
        // Best effort: an app that forgot `stop()` still gets its database flushed.
        let _ = self.stop();
        if let Some(runtime) = self.runtime.take() {
            // Only left if `stop` was refused (dropped from async code): drop it while
            // its runtime is still there.
            let leftover = self.lock().take();
            {
                let _entered = runtime.enter();
                drop(leftover);
            }
            // Does not block, so dropping is safe even from async code.
            runtime.shutdown_background();
        }
    }
}

/// `Runtime::block_on` panics inside another runtime; say so instead.
fn refuse_inside_async() -> Result<(), MobileError> {
    if tokio::runtime::Handle::try_current().is_ok() {
        return Err(MobileError::CalledFromAsync);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_serves_and_stops_idempotently() {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(e) => panic!("no temp dir: {e}"),
        };
        let data_dir = dir.path().join("node").display().to_string();
        let node = match MobileNode::start(data_dir, 0) {
            Ok(node) => node,
            Err(e) => panic!("start failed: {e}"),
        };
        let url = node.client_url();
        assert!(url.starts_with("http://127.0.0.1:"), "{url}");
        let name = node.server_name();
        assert!(
            name.len() == 64 && name.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f')),
            "{name}"
        );
        let Some(authority) = url.strip_prefix("http://") else {
            panic!("not an http URL: {url}");
        };
        assert!(
            std::net::TcpStream::connect(authority).is_ok(),
            "{url} not serving"
        );
        assert!(node.is_running());

        assert!(node.stop().is_ok());
        assert!(!node.is_running());
        assert!(node.stop().is_ok(), "a second stop must be a no-op");
    }

    #[test]
    fn refuses_to_block_inside_a_runtime() {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().build() else {
            panic!("no runtime");
        };
        let result = runtime.block_on(async { MobileNode::start(String::from("unused"), 0) });
        assert!(matches!(result, Err(MobileError::CalledFromAsync)));
    }
}
