//! To-device messages: `PUT /sendToDevice` and their delivery in `/sync`.
//!
//! Each queued message takes a stream position, so a waiting `/sync` wakes and the sync
//! token covers it. A message stays in the device's inbox until the device syncs with a
//! token past it (the acknowledgement), so a lost response never loses a message.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;
use crate::streams::{StreamPosition, SyncToken};

/// Most messages one request may carry (a client shards bigger batches).
pub const MAX_MESSAGES_PER_REQUEST: usize = 1000;

/// Messages waiting for one device at most; past it new messages for it are dropped.
pub const MAX_PENDING_PER_DEVICE: usize = 4096;

/// Most messages one `/sync` response delivers; the rest follow in the next syncs.
pub const MAX_MESSAGES_PER_SYNC: usize = 100;

/// `{user_id: {device_id or "*": content}}`.
pub type Messages = BTreeMap<String, BTreeMap<String, Value>>;

/// Queue messages for local devices, once per `(device, txn_id)` of the sender.
pub fn send(
    server: &Server,
    caller: &Requester,
    event_type: &str,
    txn_id: &str,
    messages: &Messages,
) -> Result<(), Error> {
    let count: usize = messages.values().map(BTreeMap::len).sum();
    if count > MAX_MESSAGES_PER_REQUEST {
        return Err(Error::InvalidParam(format!(
            "{count} messages in one request; at most {MAX_MESSAGES_PER_REQUEST} are allowed"
        )));
    }
    for (user_id, devices) in messages {
        for (device_id, content) in devices {
            if !content.is_object() {
                return Err(Error::BadJson(format!(
                    "messages.{user_id}.{device_id} must be an object"
                )));
            }
        }
    }
    server.write(|tx| {
        if !storage::claim_to_device_txn(tx, &caller.user_id, &caller.device_id, txn_id)? {
            return Ok(()); // A retry of a transaction already queued.
        }
        // Remote users' messages, grouped by their server: one durable EDU per server,
        // queued in this transaction.
        let mut remote: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
        for (user_id, devices) in messages {
            if !server.is_local_user(user_id) {
                let Some((_, destination)) = user_id.rsplit_once(':') else {
                    continue;
                };
                let per_device: Map<String, Value> = devices
                    .iter()
                    .map(|(d, c)| (d.clone(), c.clone()))
                    .collect();
                remote
                    .entry(destination)
                    .or_default()
                    .insert(user_id.clone(), Value::Object(per_device));
                continue;
            }
            queue_for_user(tx, &caller.user_id, user_id, event_type, devices)?;
        }
        for (destination, messages) in remote {
            let edu = json!({
                "edu_type": "m.direct_to_device",
                "content": {
                    "sender": caller.user_id,
                    "type": event_type,
                    "message_id": message_id(),
                    "messages": messages,
                },
            });
            crate::federation::outbox::enqueue_edu(tx, server, destination, &edu)?;
        }
        Ok(())
    })
}

/// A fresh id for an outbound `m.direct_to_device` EDU (unique per sender).
fn message_id() -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(24)
        .map(char::from)
        .collect()
}

/// Deliver a `m.direct_to_device` EDU's messages to local devices, once per
/// `(origin, sender, message_id)`. The caller checked that `sender` belongs to `origin`.
pub fn receive_federated(
    tx: &Connection,
    origin: &str,
    sender: &str,
    event_type: &str,
    message_id: &str,
    messages: &Messages,
) -> Result<bool, Error> {
    if !storage::claim_federated_to_device(tx, origin, sender, message_id)? {
        return Ok(false);
    }
    for (user_id, devices) in messages {
        // Only users who share a room with the sending server: nobody else has a reason
        // to receive device messages from it, and a stranger could fill any inbox.
        if !storage::user_shares_room_with_server(tx, user_id, origin)? {
            tracing::debug!(%origin, %user_id, "to-device for a user sharing no room; dropped");
            continue;
        }
        queue_for_user(tx, sender, user_id, event_type, devices)?;
    }
    Ok(true)
}

fn queue_for_user(
    tx: &Connection,
    sender: &str,
    user_id: &str,
    event_type: &str,
    devices: &BTreeMap<String, Value>,
) -> Result<(), Error> {
    let known = storage::device_ids(tx, user_id)?;
    for (device_id, content) in devices {
        let content = serde_json::to_string(content)?;
        // `*` means every device of the user; unknown devices are skipped silently, as
        // they may have logged out since the sender looked.
        let targets = known.iter().filter(|d| device_id == "*" || *d == device_id);
        for target in targets {
            // A full inbox (a device that has not synced for a long time) takes nothing
            // more: to-device messages are best-effort, and what they carry (room keys)
            // is asked for again.
            if storage::pending_to_device(tx, user_id, target, MAX_PENDING_PER_DEVICE)?
                >= MAX_PENDING_PER_DEVICE
            {
                tracing::debug!(%user_id, device_id = %target, "to-device inbox full; message dropped");
                continue;
            }
            let pos = storage::next_stream_position(tx)?;
            storage::insert_to_device(tx, pos, user_id, target, sender, event_type, &content)?;
        }
    }
    Ok(())
}

/// Delete what the device acknowledged by syncing with `since`. A token from the future
/// (a restored database) acknowledges nothing: deleting on its word could lose messages.
pub fn acknowledge(server: &Server, caller: &Requester, since: &SyncToken) -> Result<(), Error> {
    let current = server.notifier.current().pos;
    if since.pos > current {
        return Ok(());
    }
    let up_to = since.to_device_pos();
    let (user, device) = (&caller.user_id, &caller.device_id);
    // Most syncs have nothing to delete; check on a reader before taking the writer.
    if server
        .db
        .read(|c| storage::has_to_device_up_to(c, user, device, up_to))?
    {
        server
            .db
            .write(|tx| storage::delete_to_device_up_to(tx, user, device, up_to))?;
    }
    Ok(())
}

/// The messages a sync delivers, and how far the inbox was delivered when it had to stop
/// early (`None` when everything up to `now` was delivered).
pub struct Delivery {
    /// `to_device.events`.
    pub events: Vec<Value>,
    /// Set when capped: the position of the last delivered message.
    pub delivered_up_to: Option<StreamPosition>,
}

/// Messages for the caller's device in `(after, up_to]`, at most [`MAX_MESSAGES_PER_SYNC`].
pub fn for_sync(
    c: &Connection,
    caller: &Requester,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<Delivery, Error> {
    let mut rows = storage::to_device_since(
        c,
        &caller.user_id,
        &caller.device_id,
        after,
        up_to,
        MAX_MESSAGES_PER_SYNC + 1,
    )?;
    let capped = rows.len() > MAX_MESSAGES_PER_SYNC;
    rows.truncate(MAX_MESSAGES_PER_SYNC);
    let delivered_up_to = capped
        .then(|| rows.last().map(|r| r.stream_ordering))
        .flatten();
    let mut events = Vec::with_capacity(rows.len());
    for r in rows {
        let content: Value = serde_json::from_str(&r.content)?;
        events.push(json!({"sender": r.sender, "type": r.event_type, "content": content}));
    }
    Ok(Delivery {
        events,
        delivered_up_to,
    })
}

/// Parse the `messages` object of a request body.
pub fn parse_messages(body: &Value) -> Result<Messages, Error> {
    let messages = body
        .get("messages")
        .ok_or_else(|| Error::MissingParam("messages is required".into()))?;
    let map: &Map<String, Value> = messages
        .as_object()
        .ok_or_else(|| Error::BadJson("messages must be an object".into()))?;
    let mut out = Messages::new();
    for (user, devices) in map {
        let devices = devices
            .as_object()
            .ok_or_else(|| Error::BadJson(format!("messages.{user} must be an object")))?;
        out.insert(
            user.clone(),
            devices
                .iter()
                .map(|(d, c)| (d.clone(), c.clone()))
                .collect(),
        );
    }
    Ok(out)
}
