//! Federation: how this node talks to other Warren nodes.
//!
//! `core` knows nothing about libp2p. It defines the [`FederationTransport`] seam (send
//! an `http::Request` to a server name, get an `http::Response`), and serves the inbound
//! server-server API as an axum [`router`] that a transport mounts on its streams. The
//! transport attaches the authenticated origin of each inbound request as an
//! [`AuthenticatedOrigin`] extension.

pub mod auth;
pub mod client;
mod keys;
pub mod outbox;
mod query;
mod router;
pub mod sender;
pub mod transport;

pub use auth::FederationOrigin;
pub use router::router;
pub use transport::{
    AuthenticatedOrigin, FederationTransport, PeerEvent, TransportError, TransportFuture,
};
