//! `PUT /sendToDevice/{eventType}/{txnId}` (spec: send-to-device messaging).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::e2ee::to_device;
use crate::error::Error;
use crate::server::Server;

/// Queue to-device messages; a repeated transaction id is answered without re-sending.
pub(super) async fn send(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((event_type, txn_id)): P<(String, String)>,
    Body(body): Body<Value>,
) -> Result<Json<Value>, Error> {
    let messages = to_device::parse_messages(&body)?;
    to_device::send(&server, &caller, &event_type, &txn_id, &messages)?;
    Ok(Json(json!({})))
}
