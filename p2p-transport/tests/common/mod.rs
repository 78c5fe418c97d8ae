//! Test nodes: a real `warren-core` node plus a real libp2p transport on loopback.
#![allow(dead_code)]

use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Extension};
use axum::routing::{get, post};
use tempfile::TempDir;
use warren_core::federation::AuthenticatedOrigin;
use warren_core::{Config, Node};
use warren_p2p::{DhtMode, Multiaddr, P2p, P2pConfig};

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub struct TestNode {
    pub dir: TempDir,
    pub node: Node,
    pub p2p: P2p,
    pub name: String,
}

/// Loopback QUIC + TCP, no mDNS, DHT server mode, short timeouts.
pub fn loopback_config() -> P2pConfig {
    P2pConfig {
        listen: vec![
            addr("/ip4/127.0.0.1/udp/0/quic-v1"),
            addr("/ip4/127.0.0.1/tcp/0"),
        ],
        mdns: false,
        dht_mode: DhtMode::Server,
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(10),
        ..P2pConfig::default()
    }
}

pub fn addr(s: &str) -> Multiaddr {
    match s.parse() {
        Ok(a) => a,
        Err(e) => panic!("bad multiaddr {s}: {e}"),
    }
}

/// Routes the tests call besides the real federation API.
fn test_routes() -> Router {
    Router::new()
        .route(
            "/_test/echo",
            // The transport enforces its own body limit; axum's 2 MB default would hide it.
            post(|body: Bytes| async move { body }).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/_test/origin",
            get(|Extension(AuthenticatedOrigin(o)): Extension<AuthenticatedOrigin>| async move { o }),
        )
}

pub async fn start(
    config: P2pConfig,
) -> Result<TestNode, Box<dyn std::error::Error + Send + Sync>> {
    let dir = tempfile::tempdir()?;
    start_in(dir, config).await
}

pub async fn start_in(
    dir: TempDir,
    config: P2pConfig,
) -> Result<TestNode, Box<dyn std::error::Error + Send + Sync>> {
    let mut c = Config::new(dir.path());
    c.client_addr = "127.0.0.1:0".parse()?;
    let node = Node::start(c).await?;
    let router = test_routes().merge(node.federation_router());
    let p2p = P2p::start(config, node.server().clone(), router).await?;
    let name = node.server_name().to_owned();
    Ok(TestNode {
        dir,
        node,
        p2p,
        name,
    })
}

impl TestNode {
    /// Listen addresses, once there are some.
    pub async fn addrs(&self) -> Result<Vec<Multiaddr>, Box<dyn std::error::Error + Send + Sync>> {
        Ok(self.p2p.wait_listening(Duration::from_secs(10)).await?)
    }

    /// The first listen address using `proto` ("quic-v1" or "tcp").
    pub async fn addr_with(
        &self,
        proto: &str,
    ) -> Result<Multiaddr, Box<dyn std::error::Error + Send + Sync>> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            let addrs = self.addrs().await?;
            if let Some(a) = addrs.iter().find(|a| a.to_string().contains(proto)) {
                return Ok(a.clone());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("no {proto} listen address in {addrs:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn stop(self) -> TempDir {
        self.p2p.shutdown().await;
        let _ = self.node.shutdown().await;
        self.dir
    }
}

/// GET `path` on `to` from `from`, returning status and body.
pub async fn get_from(
    from: &TestNode,
    to: &str,
    path: &str,
) -> Result<(u16, Bytes), warren_core::federation::TransportError> {
    let req = http::Request::get(path)
        .body(Bytes::new())
        .map_err(|e| warren_core::federation::TransportError::NotAddressable(e.to_string()))?;
    let resp = from.p2p.send(to, req).await?;
    Ok((resp.status().as_u16(), resp.into_body()))
}

/// Poll `check` until it is true or `timeout` passes.
pub async fn wait_for<F, Fut>(timeout: Duration, what: &str, mut check: F) -> TestResult
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        if tokio::time::Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(())
}
