//! Typing notifications, read receipts and read markers (the work is
//! [`crate::ephemeral`]'s).

use std::sync::Arc;
use std::time::Duration;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::ephemeral;
use crate::error::Error;
use crate::server::Server;

type JsonResult = Result<Json<Value>, Error>;

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
    let timeout = body
        .typing
        .then(|| Duration::from_millis(body.timeout.unwrap_or(30_000)));
    ephemeral::set_typing(&server, &caller, &room_id, timeout)?;
    Ok(Json(json!({})))
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
    ephemeral::require_joined(&server, &room_id, &caller.user_id)?;
    match ty.as_str() {
        "m.read" | "m.read.private" => {
            ephemeral::send_receipt(&server, &caller, &room_id, &ty, &event_id, body.thread_id)?
        }
        "m.fully_read" => ephemeral::set_fully_read(&server, &caller, &room_id, &event_id)?,
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
    ephemeral::require_joined(&server, &room_id, &caller.user_id)?;
    if let Some(e) = &body.fully_read {
        ephemeral::set_fully_read(&server, &caller, &room_id, e)?;
    }
    if let Some(e) = &body.read {
        ephemeral::send_receipt(&server, &caller, &room_id, "m.read", e, None)?;
    }
    if let Some(e) = &body.read_private {
        ephemeral::send_receipt(&server, &caller, &room_id, "m.read.private", e, None)?;
    }
    Ok(Json(json!({})))
}
