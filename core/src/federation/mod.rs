//! Federation: how this node talks to other Warren nodes.
//!
//! `core` knows nothing about libp2p. It defines the [`FederationTransport`] seam (send
//! an `http::Request` to a server name, get an `http::Response`), and serves the inbound
//! server-server API as an axum [`router`] that a transport mounts on its streams. The
//! transport attaches the authenticated origin of each inbound request as an
//! [`AuthenticatedOrigin`] extension.

pub mod anti_entropy;
pub mod auth;
mod backfill;
pub mod client;
mod devices;
mod directory;
pub mod edu;
mod event;
mod extract;
pub mod hierarchy;
pub(crate) mod keys;
mod mailbox;
mod media;
mod membership;
mod missing_events;
mod openid;
pub mod outbox;
mod public_rooms;
mod query;
#[cfg(test)]
mod read_tests;
pub mod remote;
mod router;
pub(crate) mod send;
pub mod sender;
mod state;
pub mod summary;
mod timestamp;
pub mod transport;
pub mod visible;
pub mod walk;
pub mod warren_api;

pub use auth::FederationOrigin;
pub use router::router;
pub use transport::{
    AuthenticatedOrigin, BodyStream, FederationTransport, PeerEvent, PeerSummary, StreamingFuture,
    TransportError, TransportFuture,
};
