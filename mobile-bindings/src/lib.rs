//! warren-mobile: Warren embedded in an app.
//!
//! The API that uniffi exposes to Kotlin, Swift and Python (DESIGN.md §6, and
//! `docs/embedding.md` for how an app uses it):
//!
//! - [`Node::start`] starts a node from a [`NodeConfig`]: the Matrix client API on
//!   loopback plus the libp2p transport, on a tokio runtime the node owns, so the caller
//!   needs no async runtime of its own;
//! - [`Node::client_url`], [`Node::server_name`], [`Node::peer_id`],
//!   [`Node::listen_addrs`] describe it;
//! - [`Node::ensure_owner_account`] signs the device's user in without a registration
//!   screen;
//! - [`Node::peers`], [`Node::connect`], [`Node::network_changed`],
//!   [`Node::kick_backoff`] deal with other nodes;
//! - [`NodeListener`] (set with [`Node::set_listener`]) hears about peers and state,
//!   and gets a [`Notification`] for each event that should notify a user of the node
//!   (local notifications with no push service);
//! - [`Node::stop`] stops it, cleanly and idempotently.
//!
//! Every method that waits (start, stop, anything that asks the network or hashes a
//! password) is `async` on the foreign side (a Kotlin `suspend fun`, a Swift `async`
//! function, a Python coroutine); the work itself runs on the node's runtime. Failures
//! are [`WarrenError`]s with a one-line message, never panics across the FFI.

uniffi::setup_scaffolding!("warren_mobile");

mod account;
mod error;
mod listener;
mod logging;
mod node;

pub use account::Credentials;
pub use error::WarrenError;
pub use listener::{NodeListener, NodeState, Notification};
pub use node::{ConnectionKind, Node, NodeConfig, PeerInfo};
