//! Federation: how this node talks to other Warren nodes.
//!
//! `core` knows nothing about libp2p. It defines the [`FederationTransport`] seam (send
//! an `http::Request` to a server name, get an `http::Response`), and serves the inbound
//! server-server API as an axum [`router`] that a transport mounts on its streams. The
//! transport attaches the authenticated origin of each inbound request as an
//! [`AuthenticatedOrigin`] extension.

pub mod anti_entropy;
mod api;
pub mod client;
pub mod edu;
pub mod hierarchy;
pub(crate) mod keys;
pub mod outbox;
pub mod remote;
pub mod sender;
pub mod summary;
pub mod transaction;
pub mod transport;
pub mod visible;
pub mod walk;
pub mod warren_api;

pub use api::auth::{FederationOrigin, MAX_FEDERATION_BODY};

/// What federation keeps on the node (`Server::federation`).
#[derive(Default)]
pub struct FederationState {
    /// How federation requests leave this node; set once by the embedding crate.
    pub transport: std::sync::OnceLock<std::sync::Arc<dyn FederationTransport>>,
    /// Wakes the federation sender: after each write that queued traffic (see
    /// [`crate::server::Server::after_commit`]), or to retry at once.
    pub outbox_wake: tokio::sync::Notify,
    /// Asks the mailbox task to collect mail now (a mailbox was just named).
    pub mailbox_wake: tokio::sync::Notify,
}
pub use api::router;
pub use transport::{
    AuthenticatedOrigin, BodyStream, FederationTransport, PeerEvent, PeerSummary, StreamingFuture,
    TransportError, TransportFuture,
};
