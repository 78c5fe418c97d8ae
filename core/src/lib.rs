//! warren-core: a Matrix homeserver small enough to live on the device it serves.
//!
//! This crate knows nothing about libp2p. It owns storage, the room DAG engine, the
//! client-server API and `/sync`. The P2P transport plugs in from `warren-p2p`.
//!
//! Entry points: [`Config`] describes a node, [`Node::start`] opens the data directory,
//! binds the client API and serves it until [`Node::shutdown`].

pub mod account;
pub mod account_data;
pub mod admin;
pub mod appservice;
pub mod blocking;
pub mod client_api;
pub mod config;
pub mod delayed_events;
pub mod directory;
pub mod e2ee;
pub mod ephemeral;
pub mod error;
pub mod events;
pub mod federation;
pub mod identity;
pub mod keyed;
pub(crate) mod lru;
pub mod mailbox;
pub mod media;
pub mod membership;
pub mod metrics;
pub mod node;
pub mod openid;
pub mod password;
pub mod presence;
pub mod profile;
pub mod push;
pub mod ratelimit;
pub mod relations;
pub mod reporting;
pub mod requester;
pub mod room_writes;
pub mod rooms;
pub mod search;
pub mod server;
pub mod storage;
pub mod streams;
pub mod sync;
pub mod tasks;
#[cfg(test)]
mod test_support;
pub mod voip;

pub use account::valid_localpart;
pub use config::{Config, PushConfig, RateLimits, RegistrationPolicy};
pub use error::{Error, StartError};
pub use identity::Identity;
pub use node::Node;
pub use password::{hash_password, verify_password};
