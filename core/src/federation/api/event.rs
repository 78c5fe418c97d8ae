//! `GET /_matrix/federation/v1/event/{eventId}`: one PDU, as a transaction.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::extract::{FedPath, Origin, event_id};
use crate::error::Error;
use crate::federation::visible::{authorize_room_read, load_pdu};
use crate::server::Server;
use crate::storage::now_ms;

/// The transaction shape (`origin`, `origin_server_ts`, `pdus`) several reads answer with.
pub(super) fn transaction(server: &Server, pdus: Vec<Value>) -> Json<Value> {
    Json(json!({
        "origin": server.server_name(),
        "origin_server_ts": now_ms(),
        "pdus": pdus,
    }))
}

pub(super) async fn get_event(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(id): FedPath<String>,
) -> Result<Json<Value>, Error> {
    let id = event_id(&id)?;
    let pdus = server.db.read_tx(|c| {
        let ev = load_pdu(c, id)?
            .ok_or_else(|| Error::NotFound(format!("event {id} is not known here")))?;
        let read = authorize_room_read(c, &ev.room_id, &origin)?;
        read.render(c, std::slice::from_ref(&ev))
    })?;
    Ok(transaction(&server, pdus))
}
