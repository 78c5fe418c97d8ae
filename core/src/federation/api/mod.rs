//! The inbound server-server API's handlers: each parses and authorises a request, calls
//! the room engine or a federation service, and answers. The services they call (the
//! sender, EDUs, anti-entropy, transactions, the outbound client) are beside this module
//! in `federation`.

pub(super) mod auth;
pub(super) mod backfill;
pub(super) mod devices;
pub(super) mod directory;
pub(super) mod event;
pub(super) mod extract;
pub(super) mod extremities;
pub(super) mod hierarchy;
pub(super) mod keys;
pub(super) mod mailbox;
pub(super) mod media;
pub(super) mod membership;
pub(super) mod missing_events;
pub(super) mod openid;
pub(super) mod public_rooms;
pub(super) mod query;
#[cfg(test)]
mod read_tests;
pub(super) mod router;
pub(super) mod send;
pub(super) mod state;
pub(super) mod timestamp;

pub use router::router;
