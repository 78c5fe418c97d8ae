//! Typing notifications, read receipts and read markers.

use std::sync::Arc;
use std::time::Duration;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Requester};
use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, Receipt, next_stream_position, now_ms};

type JsonResult = Result<Json<Value>, Error>;

fn require_joined(server: &Server, room_id: &str, user_id: &str) -> Result<(), Error> {
    match server
        .db
        .read(|c| storage::membership(c, room_id, user_id))?
    {
        Some((m, _, _)) if m == "join" => Ok(()),
        _ => Err(Error::Forbidden(format!("you are not joined to {room_id}"))),
    }
}

#[derive(Deserialize)]
pub(super) struct TypingBody {
    typing: bool,
    timeout: Option<u64>,
}

/// `PUT /rooms/{roomId}/typing/{userId}`.
pub(super) async fn typing(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, user_id)): P<(String, String)>,
    Body(body): Body<TypingBody>,
) -> JsonResult {
    if user_id != caller.user_id {
        return Err(Error::Forbidden(
            "you can only set your own typing state".into(),
        ));
    }
    require_joined(&server, &room_id, &user_id)?;
    let timeout = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(30_000)));
    server.notifier.set_typing(&room_id, &user_id, timeout);
    crate::federation::edu::queue_typing(&server, &room_id, &user_id, body.typing)?;
    Ok(Json(json!({})))
}

fn store_receipt(
    server: &Server,
    caller: &Requester,
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
        user_id: caller.user_id.clone(),
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

fn store_fully_read(
    server: &Server,
    caller: &Requester,
    room_id: &str,
    event_id: &str,
) -> Result<(), Error> {
    let content = json!({"event_id": event_id}).to_string();
    server.write(|tx| {
        let pos = next_stream_position(tx)?;
        storage::set_account_data(tx, &caller.user_id, room_id, "m.fully_read", &content, pos)
    })
}

#[derive(Deserialize, Default)]
pub(super) struct ReceiptBody {
    thread_id: Option<String>,
}

/// `POST /rooms/{roomId}/receipt/{receiptType}/{eventId}`.
pub(super) async fn receipt(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, ty, event_id)): P<(String, String, String)>,
    Body(body): Body<ReceiptBody>,
) -> JsonResult {
    require_joined(&server, &room_id, &caller.user_id)?;
    match ty.as_str() {
        "m.read" | "m.read.private" => {
            store_receipt(&server, &caller, &room_id, &ty, &event_id, body.thread_id)?
        }
        "m.fully_read" => store_fully_read(&server, &caller, &room_id, &event_id)?,
        other => return Err(Error::InvalidParam(format!("unknown receipt type {other}"))),
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct MarkersBody {
    #[serde(rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(rename = "m.read")]
    read: Option<String>,
    #[serde(rename = "m.read.private")]
    read_private: Option<String>,
}

/// `POST /rooms/{roomId}/read_markers`.
pub(super) async fn read_markers(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<MarkersBody>,
) -> JsonResult {
    require_joined(&server, &room_id, &caller.user_id)?;
    if let Some(e) = &body.fully_read {
        store_fully_read(&server, &caller, &room_id, e)?;
    }
    if let Some(e) = &body.read {
        store_receipt(&server, &caller, &room_id, "m.read", e, None)?;
    }
    if let Some(e) = &body.read_private {
        store_receipt(&server, &caller, &room_id, "m.read.private", e, None)?;
    }
    Ok(Json(json!({})))
}
