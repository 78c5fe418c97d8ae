//! Typing notifications, read receipts and read markers for a local user in a room
//! they are joined to (handlers in `client_api::ephemeral`). Typing and public read
//! receipts also go to the room's other servers as EDUs.

use std::time::Duration;

use serde_json::json;

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage::{self, Receipt, next_stream_position, now_ms};

/// Refuse (403) a user not joined to `room_id`.
pub fn require_joined(server: &Server, room_id: &str, user_id: &str) -> Result<(), Error> {
    match server
        .db
        .read(|c| storage::membership(c, room_id, user_id))?
    {
        Some((m, _, _)) if m == "join" => Ok(()),
        _ => Err(Error::Forbidden(format!("you are not joined to {room_id}"))),
    }
}

/// The requester types in `room_id` for `timeout`, or stops typing (`None`).
pub fn set_typing(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    timeout: Option<Duration>,
) -> Result<(), Error> {
    let user_id = requester.user_id.as_str();
    require_joined(server, room_id, user_id)?;
    server.notifier.set_typing(room_id, user_id, timeout);
    crate::federation::edu::queue_typing(server, room_id, user_id, timeout.is_some())
}

/// Record the requester's receipt of type `ty` (`m.read`, `m.read.private`) on
/// `event_id` (an event of `room_id`), in `thread` if given. A public receipt also goes
/// to the room's other servers; a private one stays here.
pub fn send_receipt(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    ty: &str,
    event_id: &str,
    thread: Option<String>,
) -> Result<(), Error> {
    let known = server
        .db
        .read(|c| storage::get_event(c, event_id))?
        .is_some_and(|e| e.room_id == room_id);
    if !known {
        return Err(Error::NotFound(format!(
            "event {event_id} not found in {room_id}"
        )));
    }
    let receipt = Receipt {
        receipt_type: ty.to_owned(),
        user_id: requester.user_id.clone(),
        thread_id: thread.unwrap_or_default(),
        event_id: event_id.to_owned(),
        ts: now_ms(),
    };
    server.write(|tx| {
        let pos = next_stream_position(tx)?;
        // Unread counts are the notifications after this receipt, so it resets them.
        storage::set_receipt(tx, room_id, &receipt, pos)
    })?;
    // Private receipts stay on this server.
    if ty == "m.read" {
        crate::federation::edu::queue_receipt(server, room_id, &receipt)?;
    }
    Ok(())
}

/// Move the requester's fully-read marker in `room_id` to `event_id` (room account data
/// `m.fully_read`).
pub fn set_fully_read(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    event_id: &str,
) -> Result<(), Error> {
    let content = json!({"event_id": event_id}).to_string();
    server.write(|tx| {
        let pos = next_stream_position(tx)?;
        storage::set_account_data(
            tx,
            &requester.user_id,
            room_id,
            "m.fully_read",
            &content,
            pos,
        )
    })
}
