//! `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::json;

use super::JsonResult;
use crate::client_api::extract::{Auth, Body, P};
use crate::room_writes;
use crate::server::Server;

#[derive(Deserialize)]
pub(in crate::client_api) struct RedactBody {
    reason: Option<String>,
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
pub(in crate::client_api) async fn redact(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id, txn_id)): P<(String, String, String)>,
    Body(body): Body<RedactBody>,
) -> JsonResult {
    let event_id = room_writes::redact(&server, &caller, &room_id, event_id, body.reason, &txn_id)?;
    Ok(Json(json!({"event_id": event_id})))
}
