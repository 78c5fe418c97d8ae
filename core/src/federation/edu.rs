//! EDUs: ephemeral events between servers: typing notifications, read receipts,
//! presence, direct-to-device messages, device-list and signing-key updates. Inbound
//! ones are applied if their user belongs to the origin (and, for room EDUs, is joined
//! to the room; for presence and keys, shares a room with a local user); outbound ones
//! are queued in the durable outbox (room EDUs for every other server in the room;
//! to-device messages for the target's server, in the `/sendToDevice` transaction;
//! device-list and signing-key updates for every server sharing a room, in the
//! transaction that changed the keys, see `e2ee::device_lists::mark_changed`).

use std::time::Duration;

use serde_json::{Value, json};

use super::outbox;
use crate::e2ee::{remote_devices, to_device};
use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, Receipt, next_stream_position};

/// Longest typing timeout honoured from another server.
const MAX_TYPING: Duration = Duration::from_secs(120);

/// Apply one inbound EDU. Malformed or unauthorised EDUs are dropped with a log line:
/// an EDU has no answer to carry an error in.
pub async fn receive_edu(server: &Server, origin: &str, edu: Value) {
    let kind = edu.get("edu_type").and_then(Value::as_str).unwrap_or("");
    let content = edu.get("content").cloned().unwrap_or(Value::Null);
    let result = match kind {
        "m.typing" => typing(server, origin, &content),
        "m.receipt" => receipts(server, origin, &content),
        "m.direct_to_device" => direct_to_device(server, origin, &content),
        "m.device_list_update" => device_list_update(server, origin, &content),
        "m.signing_key_update" => signing_key_update(server, origin, &content),
        "m.presence" => crate::presence::receive(server, origin, &content),
        crate::mailbox::EDU_TYPE => crate::mailbox::record::receive(server, &content).map(|_| ()),
        other => {
            tracing::debug!(%origin, edu_type = other, "EDU type not handled; ignored");
            Ok(())
        }
    };
    if let Err(e) = result {
        tracing::info!(%origin, edu_type = kind, error = %e, "EDU dropped");
    }
}

/// The user must be from `origin` and joined to `room_id` here.
fn check_member(server: &Server, origin: &str, room_id: &str, user_id: &str) -> Result<(), Error> {
    if user_id.rsplit_once(':').map(|(_, s)| s) != Some(origin) {
        return Err(Error::Forbidden(format!(
            "{origin} cannot speak for {user_id}"
        )));
    }
    server
        .db
        .read(|c| super::visible::check_server_acl(c, room_id, origin))?;
    match server
        .db
        .read(|c| storage::membership(c, room_id, user_id))?
    {
        Some((m, _, _)) if m == "join" => Ok(()),
        _ => Err(Error::Forbidden(format!(
            "{user_id} is not joined to {room_id}"
        ))),
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> Result<&'a str, Error> {
    v.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadJson(format!("missing {key}")))
}

fn typing(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let room_id = str_field(content, "room_id")?;
    let user_id = str_field(content, "user_id")?;
    let typing = content
        .get("typing")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    check_member(server, origin, room_id, user_id)?;
    // The sending server times typing out; a stop EDU may be lost, so expire anyway.
    let timeout = typing.then_some(MAX_TYPING.min(Duration::from_secs(30)));
    server.notifier.set_typing(room_id, user_id, timeout);
    Ok(())
}

/// `content`: `{room_id: {receipt_type: {user_id: {event_ids: [...], data: {ts}}}}}`.
fn receipts(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let rooms = content
        .as_object()
        .ok_or_else(|| Error::BadJson("receipt content must be an object".into()))?;
    for (room_id, by_type) in rooms {
        let Some(read) = by_type.get("m.read").and_then(Value::as_object) else {
            continue;
        };
        for (user_id, receipt) in read {
            check_member(server, origin, room_id, user_id)?;
            let Some(event_id) = receipt
                .get("event_ids")
                .and_then(Value::as_array)
                .and_then(|ids| ids.first())
                .and_then(Value::as_str)
            else {
                continue;
            };
            let known = server
                .db
                .read(|c| storage::get_event(c, event_id))?
                .is_some_and(|e| e.room_id == *room_id);
            if !known {
                continue;
            }
            let r = Receipt {
                receipt_type: "m.read".into(),
                user_id: user_id.clone(),
                thread_id: receipt["data"]["thread_id"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                event_id: event_id.to_owned(),
                ts: receipt["data"]["ts"]
                    .as_i64()
                    .unwrap_or_else(storage::now_ms),
            };
            server.write(|tx| {
                let pos = next_stream_position(tx)?;
                storage::set_receipt(tx, room_id, &r, pos)
            })?;
        }
    }
    Ok(())
}

/// `user_id` must belong to `origin`.
fn check_origin(origin: &str, user_id: &str) -> Result<(), Error> {
    if user_id.rsplit_once(':').map(|(_, s)| s) != Some(origin) {
        return Err(Error::Forbidden(format!(
            "{origin} cannot speak for {user_id}"
        )));
    }
    Ok(())
}

/// `content`: `{sender, type, message_id, messages: {user_id: {device_id | "*": content}}}`.
/// Messages for users of other servers are ignored; a message id seen before from the
/// same sender is not delivered again.
fn direct_to_device(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let sender = str_field(content, "sender")?;
    let event_type = str_field(content, "type")?;
    let message_id = str_field(content, "message_id")?;
    check_origin(origin, sender)?;
    let mut messages = to_device::parse_messages(content)?;
    messages.retain(|user_id, _| server.is_local_user(user_id));
    let count: usize = messages.values().map(|d| d.len()).sum();
    if count > to_device::MAX_MESSAGES_PER_REQUEST {
        return Err(Error::InvalidParam(format!("{count} messages in one EDU")));
    }
    for (user_id, devices) in &messages {
        for (device_id, c) in devices {
            if !c.is_object() {
                return Err(Error::BadJson(format!(
                    "messages.{user_id}.{device_id} must be an object"
                )));
            }
        }
    }
    let delivered = server.write(|tx| {
        to_device::receive_federated(tx, origin, sender, event_type, message_id, &messages)
    })?;
    if !delivered {
        tracing::debug!(%origin, %sender, %message_id, "to-device EDU seen before; ignored");
    }
    Ok(())
}

/// `content`: `{user_id, device_id, stream_id, prev_id, deleted?, keys?, …}`. Applied to
/// the remote device-list cache when it follows what we have (else the cached list is
/// marked stale and re-fetched on the next query), and the user's devices are marked
/// changed, so local users sharing a room see them in `device_lists.changed` and
/// re-query their keys.
fn device_list_update(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let user_id = str_field(content, "user_id")?;
    check_origin(origin, user_id)?;
    let own = server.server_name();
    server.write(|tx| {
        if !storage::shares_room_with_server(tx, user_id, own)? {
            return Err(Error::Forbidden(format!(
                "{user_id} shares no room with this server"
            )));
        }
        remote_devices::apply_device_list_update(tx, user_id, content)?;
        storage::record_device_list_change(tx, user_id)?;
        Ok(())
    })
}

/// `content`: `{user_id, master_key?, self_signing_key?}`: a remote user's new
/// cross-signing keys. Checked and cached; the user is marked changed so clients re-query.
fn signing_key_update(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let user_id = str_field(content, "user_id")?;
    check_origin(origin, user_id)?;
    let own = server.server_name();
    server.write(|tx| {
        if !storage::shares_room_with_server(tx, user_id, own)? {
            return Err(Error::Forbidden(format!(
                "{user_id} shares no room with this server"
            )));
        }
        remote_devices::apply_signing_key_update(tx, user_id, content)?;
        storage::record_device_list_change(tx, user_id)?;
        Ok(())
    })
}

/// Queue `edu` for every other server with joined members in `room_id`.
fn queue_for_room(server: &Server, room_id: &str, edu: &Value) -> Result<(), Error> {
    server.write(|c| {
        for destination in storage::joined_servers(c, room_id)? {
            outbox::enqueue_edu(c, server, &destination, edu)?;
        }
        Ok(())
    })
}

/// Tell the room's other servers that a local user started or stopped typing.
pub fn queue_typing(
    server: &Server,
    room_id: &str,
    user_id: &str,
    typing: bool,
) -> Result<(), Error> {
    let edu = json!({
        "edu_type": "m.typing",
        "content": { "room_id": room_id, "user_id": user_id, "typing": typing },
    });
    queue_for_room(server, room_id, &edu)
}

/// Tell the room's other servers about a local user's public read receipt.
pub fn queue_receipt(server: &Server, room_id: &str, r: &Receipt) -> Result<(), Error> {
    let mut data = json!({ "ts": r.ts });
    if !r.thread_id.is_empty() {
        data["thread_id"] = json!(r.thread_id);
    }
    let edu = json!({
        "edu_type": "m.receipt",
        "content": { room_id: { "m.read": { &r.user_id: {
            "event_ids": [r.event_id],
            "data": data,
        }}}},
    });
    queue_for_room(server, room_id, &edu)
}
