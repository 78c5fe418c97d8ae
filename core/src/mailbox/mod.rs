//! Mailboxes: store-and-forward for nodes that are never online at the same time
//! (DESIGN.md §4).
//!
//! A node (the *owner*) names up to [`MAX_MAILBOXES`] always-on peers — a Pi at home, a
//! friend's laptop — as its mailboxes, in a **record** it signs
//! ([`record::MailboxRecord`]). The record travels as an `org.warren.mailboxes` EDU to
//! the mailboxes themselves, to every server it shares a room with, and to each peer it
//! connects to, and any node that holds it answers for it.
//!
//! A node whose federation transaction to the owner fails **deposits** the transaction
//! with one of the owner's mailboxes instead ([`deposit::deposit`]): the transaction is
//! signed by the depositor as a whole (its PDUs are signed by their origins as always),
//! so the mailbox cannot alter it and the owner can check who left it. The mailbox takes
//! deposits only for owners whose record names it, within quotas per owner and per
//! depositor and a time to live ([`crate::config::MailboxConfig`]).
//!
//! When the owner connects to one of its mailboxes (and at start and every few minutes)
//! it **drains** it ([`drain`]): it fetches the deposits in order, checks each
//! depositor's signature and applies the transaction exactly as a `/send` from that
//! depositor — every PDU through the full receipt checks — then acknowledges them so the
//! mailbox forgets them. A mailbox reads nothing a federation peer could not: encrypted
//! content stays encrypted.

pub mod deposit;
pub mod drain;
pub mod record;

/// Most mailboxes one record names.
pub const MAX_MAILBOXES: usize = 8;
/// Most addresses given for one mailbox in a record.
pub const MAX_ADDRESSES: usize = 4;
/// Most other nodes' records kept (the least recently received go first).
pub const MAX_RECORDS: usize = 4096;
/// The EDU that carries a record.
pub const EDU_TYPE: &str = "org.warren.mailboxes";
/// Where the mailbox endpoints live in the federation API.
pub const PREFIX: &str = "/_matrix/federation/unstable/org.warren.mailbox";
/// Most deposits handed to the owner in one answer.
pub const MAX_DRAIN_BATCH: usize = 20;
/// Most bytes of deposits in one answer (a single larger deposit still goes alone).
pub const MAX_DRAIN_BYTES: usize = 4 * 1024 * 1024;

/// What `warren mailbox list` and the admin API show: this node's mailboxes, and the
/// mail it holds for others.
pub fn report(server: &crate::server::Server) -> Result<serde_json::Value, crate::error::Error> {
    server.db.read(|c| {
        let mailboxes: Vec<serde_json::Value> = crate::storage::own_mailboxes(c)?
            .into_iter()
            .map(|(name, address)| serde_json::json!({ "server_name": name, "address": address }))
            .collect();
        let record_ts = crate::storage::mailbox_record(c, server.server_name())?.map(|(_, ts)| ts);
        let holding: Vec<serde_json::Value> = crate::storage::mailbox_holdings(c)?
            .into_iter()
            .map(|(owner, deposits, bytes)| {
                serde_json::json!({ "owner": owner, "deposits": deposits, "bytes": bytes })
            })
            .collect();
        Ok(serde_json::json!({
            "mailboxes": mailboxes,
            "record_ts": record_ts,
            "serving": server.config.mailbox.serve,
            "holding": holding,
        }))
    })
}
