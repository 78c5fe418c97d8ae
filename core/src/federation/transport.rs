//! The seam between the homeserver and whatever carries federation traffic.
//!
//! `warren-p2p` implements [`FederationTransport`] over libp2p streams; tests may plug
//! in an in-memory transport to simulate many nodes in one process.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use tokio::sync::broadcast;

/// The future a transport returns for one request.
pub type TransportFuture<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<Bytes>, TransportError>> + Send + 'a>>;

/// A response body handed over as it arrives (see
/// [`FederationTransport::request_streaming`]). Dropping it ends the exchange.
pub type BodyStream = Pin<Box<dyn Stream<Item = Result<Bytes, TransportError>> + Send>>;

/// The future [`FederationTransport::request_streaming`] returns.
pub type StreamingFuture<'a> =
    Pin<Box<dyn Future<Output = Result<http::Response<BodyStream>, TransportError>> + Send + 'a>>;

/// Carries server-server requests to other nodes, addressed by server name.
pub trait FederationTransport: Send + Sync + 'static {
    /// Send one request to `destination` (a server name) and return its response.
    ///
    /// The request's URI is the path and query only (`/_matrix/federation/v1/version`);
    /// the transport decides how to reach the server. Errors are about reaching the
    /// server; an HTTP error status from the server is an `Ok` response.
    fn request(&self, destination: &str, request: http::Request<Bytes>) -> TransportFuture<'_>;

    /// Like [`request`](Self::request), but the response body is handed over as it
    /// arrives instead of collected, and is not capped by the transport: the caller
    /// bounds what it reads (and how long), and drops the stream to stop. Used for
    /// media, which may be larger than any JSON response. The default collects the
    /// body with [`request`](Self::request) (fine for in-memory transports).
    fn request_streaming(
        &self,
        destination: &str,
        request: http::Request<Bytes>,
    ) -> StreamingFuture<'_> {
        let response = self.request(destination, request);
        Box::pin(async move {
            let (parts, body) = response.await?.into_parts();
            let body: BodyStream = Box::pin(futures::stream::once(async move { Ok(body) }));
            Ok(http::Response::from_parts(parts, body))
        })
    }

    /// Peer events (connected, rediscovered, …) from now on.
    fn subscribe(&self) -> broadcast::Receiver<PeerEvent>;

    /// Connected peers, for `warren peers` and the admin API.
    fn peers(&self) -> Pin<Box<dyn Future<Output = Vec<PeerSummary>> + Send + '_>> {
        Box::pin(async { Vec::new() })
    }

    /// Connect to a transport address (for P2P: a multiaddr); returns the server name
    /// reached.
    fn connect<'a>(
        &'a self,
        address: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<String, TransportError>> + Send + 'a>> {
        Box::pin(async move {
            Err(TransportError::NotAddressable(format!(
                "this transport cannot connect to {address}"
            )))
        })
    }
}

/// A connected peer as the admin API shows it.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PeerSummary {
    /// The transport's id for the peer (a libp2p `PeerId`).
    pub peer_id: String,
    /// Its server name, when it has one.
    pub server_name: Option<String>,
    /// Addresses it is known at.
    pub addresses: Vec<String>,
    /// `direct` or `relayed`.
    pub connection: String,
    /// What new requests to it run over: `quic`, `tcp` or `relayed`, when the transport
    /// says.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Last measured round trip, in milliseconds.
    pub rtt_ms: Option<f64>,
}

/// Something that happened to a peer, keyed by its server name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerEvent {
    /// A peer was found for the first time (mDNS, DHT, identify, config).
    Discovered {
        /// The peer's server name.
        server_name: String,
    },
    /// A peer we knew but were not connected to showed up again: whatever was waiting
    /// for it (federation backoff) should retry now.
    Rediscovered {
        /// The peer's server name.
        server_name: String,
    },
    /// The first connection to a peer was established.
    Connected {
        /// The peer's server name.
        server_name: String,
    },
    /// The last connection to a peer closed.
    Disconnected {
        /// The peer's server name.
        server_name: String,
    },
    /// This node's own listen addresses changed (text multiaddrs).
    ListenAddrsChanged {
        /// The addresses now listened on.
        addrs: Vec<String>,
    },
}

/// Request extension set by the transport on every inbound federation request: the
/// server name of the peer that sent it, as authenticated by the transport's handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthenticatedOrigin(pub String);

/// Why a request could not be carried.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The destination is not a server this transport can address.
    #[error("{0}")]
    NotAddressable(String),
    /// No address worked, or none is known.
    #[error("server {server} is unreachable: {reason}")]
    Unreachable {
        /// The destination server name.
        server: String,
        /// What was tried and why it failed.
        reason: String,
    },
    /// Connecting or the request took longer than allowed.
    #[error("server {server} did not answer within {after:?} ({stage})")]
    Timeout {
        /// The destination server name.
        server: String,
        /// How long we waited.
        after: Duration,
        /// `connect` or `request`.
        stage: &'static str,
    },
    /// The connection worked but the exchange broke (bad HTTP, stream reset, too big).
    #[error("request to {server} failed: {reason}")]
    Protocol {
        /// The destination server name.
        server: String,
        /// What went wrong.
        reason: String,
    },
    /// The transport has been shut down.
    #[error("the federation transport is shut down")]
    ShutDown,
}
