//! The mailbox record: which peers hold an owner's mail, signed by the owner.
//!
//! ```json
//! { "owner": "<server name>", "mailboxes": ["<server name>", …],
//!   "addresses": { "<mailbox>": ["/ip4/…/udp/…/quic-v1", …] },
//!   "ts": 1700000000000, "signatures": { "<owner>": { "ed25519:p2p": "…" } } }
//! ```
//!
//! A newer `ts` replaces an older record; anyone may pass a record on, since only the
//! owner can sign it. `addresses` are hints for reaching a mailbox that the DHT or the
//! address book may not know yet.

use std::collections::BTreeMap;

use ruma::CanonicalJsonObject;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{EDU_TYPE, MAX_ADDRESSES, MAX_MAILBOXES, MAX_RECORDS};
use crate::error::Error;
use crate::federation::keys;
use crate::federation::outbox;
use crate::identity::public_key_from_server_name;
use crate::server::Server;
use crate::storage::{self, now_ms};

/// A verified mailbox record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxRecord {
    /// Whose mail.
    pub owner: String,
    /// The peers that hold it.
    pub mailboxes: Vec<String>,
    /// Addresses to reach each mailbox at, where the owner knew them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub addresses: BTreeMap<String, Vec<String>>,
    /// When the owner made it, ms since the epoch; the newest wins.
    pub ts: i64,
}

impl MailboxRecord {
    /// Whether `server` is one of the owner's mailboxes.
    pub fn names(&self, server: &str) -> bool {
        self.mailboxes.iter().any(|m| m == server)
    }
}

/// Check a record as received: its shape, its bounds and the owner's signature.
pub fn verify(value: &Value) -> Result<MailboxRecord, Error> {
    let record: MailboxRecord = serde_json::from_value(value.clone())
        .map_err(|e| Error::BadJson(format!("not a mailbox record: {e}")))?;
    if public_key_from_server_name(&record.owner).is_none() {
        return Err(Error::BadJson(format!(
            "mailbox record of {:?}, which is not a P2P server name",
            record.owner
        )));
    }
    if record.mailboxes.len() > MAX_MAILBOXES {
        return Err(Error::BadJson(format!(
            "a mailbox record names at most {MAX_MAILBOXES} mailboxes"
        )));
    }
    for m in &record.mailboxes {
        if public_key_from_server_name(m).is_none() || *m == record.owner {
            return Err(Error::BadJson(format!("{m:?} cannot be a mailbox")));
        }
    }
    for (m, addrs) in &record.addresses {
        if !record.names(m) || addrs.len() > MAX_ADDRESSES || addrs.iter().any(|a| a.len() > 256) {
            return Err(Error::BadJson("bad addresses in a mailbox record".into()));
        }
    }
    let object: CanonicalJsonObject = serde_json::from_value(value.clone())
        .map_err(|e| Error::BadJson(format!("mailbox record is not canonical JSON: {e}")))?;
    keys::verify_signed_by(&record.owner, &object)?;
    Ok(record)
}

/// Keep a record another node passed on, if it is valid and newer than the one held.
/// Records about this node are ignored: its own is the only one it trusts.
pub fn receive(server: &Server, value: &Value) -> Result<bool, Error> {
    let record = verify(value)?;
    if record.owner == server.server_name() {
        return Ok(false);
    }
    let text = serde_json::to_string(value)?;
    let names_me = record.names(server.server_name());
    let stored = server.db.write(|c| {
        storage::store_mailbox_record(
            c,
            &record.owner,
            &text,
            record.ts,
            now_ms(),
            names_me,
            bounds(server),
        )
    })?;
    match stored {
        storage::RecordStored::Stored => Ok(true),
        storage::RecordStored::Stale => Ok(false),
        storage::RecordStored::Full => Err(Error::LimitExceeded(format!(
            "{} names this node as its mailbox, but it holds mail for as many nodes as it will",
            record.owner
        ))),
    }
}

/// The bounds records are kept within: [`MAX_RECORDS`] of other nodes, and four times
/// `max_owners` owners naming this node (deposits are held for `max_owners` at once).
fn bounds(server: &Server) -> storage::RecordBounds<'_> {
    storage::RecordBounds {
        max_others: MAX_RECORDS,
        max_naming_this_node: server.config.mailbox.max_owners.saturating_mul(4),
        this_node: server.server_name(),
    }
}

/// The record held for `owner` (this node's own included), as verified when received.
pub fn held(c: &Connection, owner: &str) -> Result<Option<(MailboxRecord, Value)>, Error> {
    let Some((text, _)) = storage::mailbox_record(c, owner)? else {
        return Ok(None);
    };
    let value: Value = serde_json::from_str(&text)?;
    let record = serde_json::from_value(value.clone())
        .map_err(|e| Error::Internal(format!("stored mailbox record of {owner}: {e}")))?;
    Ok(Some((record, value)))
}

/// The EDU carrying a record.
pub fn edu(record: &Value) -> Value {
    json!({ "edu_type": EDU_TYPE, "content": record })
}

/// A change to this node's own mailboxes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Name a mailbox (with an address to reach it at, if known).
    Add {
        /// Its server name.
        server_name: String,
        /// A transport address (multiaddr) it was reached at.
        address: Option<String>,
    },
    /// Stop using one.
    Remove(String),
}

/// Apply `change` to this node's mailboxes, sign the new record and queue it for the
/// mailboxes (old and new: a dropped one learns it is no longer used) and for every
/// server that shares a room with this node. Returns the new record, or `None` when
/// nothing changed.
pub fn change(server: &Server, change: Change) -> Result<Option<MailboxRecord>, Error> {
    let me = server.server_name();
    if let Change::Add { server_name, .. } = &change {
        if public_key_from_server_name(server_name).is_none() {
            return Err(Error::InvalidParam(format!(
                "{server_name:?} is not the server name of a P2P node"
            )));
        }
        if server_name == me {
            return Err(Error::InvalidParam(
                "a node cannot be its own mailbox".into(),
            ));
        }
    }
    server.write(|c| {
        let before = storage::own_mailboxes(c)?;
        let changed = match &change {
            Change::Add {
                server_name,
                address,
            } => {
                let known = before.iter().any(|(m, _)| m == server_name);
                if !known && before.len() >= MAX_MAILBOXES {
                    return Err(Error::InvalidParam(format!(
                        "a node names at most {MAX_MAILBOXES} mailboxes"
                    )));
                }
                let old_address = before
                    .iter()
                    .find(|(m, _)| m == server_name)
                    .and_then(|(_, a)| a.as_deref());
                storage::add_own_mailbox(c, server_name, address.as_deref(), now_ms())?
                    || (address.is_some() && address.as_deref() != old_address)
            }
            Change::Remove(name) => storage::remove_own_mailbox(c, name)?,
        };
        if !changed {
            return Ok(None);
        }
        let after = storage::own_mailboxes(c)?;
        let previous_ts = storage::mailbox_record(c, me)?.map_or(0, |(_, ts)| ts);
        let record = MailboxRecord {
            owner: me.to_owned(),
            mailboxes: after.iter().map(|(m, _)| m.clone()).collect(),
            addresses: after
                .iter()
                .filter_map(|(m, a)| Some((m.clone(), vec![a.clone()?])))
                .collect(),
            ts: now_ms().max(previous_ts + 1),
        };
        let signed = keys::sign(server, &serde_json::to_value(&record)?)?;
        storage::store_mailbox_record(
            c,
            me,
            &serde_json::to_string(&signed)?,
            record.ts,
            now_ms(),
            false,
            bounds(server),
        )?;
        let mut to: Vec<String> = storage::servers_sharing_rooms_with(c, me)?;
        for (m, _) in before.iter().chain(after.iter()) {
            if !to.contains(m) {
                to.push(m.clone());
            }
        }
        let edu = edu(&signed);
        for destination in &to {
            outbox::enqueue_edu(c, server, destination, &edu)?;
        }
        Ok(Some(record))
    })
}

/// Name `target` as a mailbox of this node: a server name, or a transport address
/// (multiaddr) that is dialled to learn the server name and kept as a hint. Returns the
/// mailbox's server name.
pub async fn add(server: &Server, target: &str) -> Result<String, Error> {
    let target = target.trim();
    let (server_name, address) = if public_key_from_server_name(target).is_some() {
        (target.to_owned(), None)
    } else {
        let transport = server
            .transport()
            .ok_or_else(|| Error::RemoteServer("this node has no P2P transport".into()))?;
        let name = transport
            .connect(target)
            .await
            .map_err(|e| Error::RemoteServer(format!("cannot reach {target}: {e}")))?;
        (name, Some(target.to_owned()))
    };
    change(
        server,
        Change::Add {
            server_name: server_name.clone(),
            address,
        },
    )?;
    // Collect anything it may already hold for this node.
    server.federation.mailbox_wake.notify_one();
    Ok(server_name)
}

/// Stop using `server_name` as a mailbox. Returns whether it was one.
pub fn remove(server: &Server, server_name: &str) -> Result<bool, Error> {
    Ok(change(server, Change::Remove(server_name.trim().to_owned()))?.is_some())
}
