//! `GET /state/{roomId}`, `GET /state_ids/{roomId}` (the state before an event, with its
//! auth chain) and `GET /event_auth/{roomId}/{eventId}` (an event's auth chain).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{FedPath, FedQuery, Origin, event_id, room_id};
use crate::error::Error;
use crate::federation::visible::{
    RoomRead, auth_chain, authorize_room_read, load_room_pdu, state_before, state_events,
};
use crate::server::Server;
use crate::storage::StoredEvent;

#[derive(Deserialize)]
pub(super) struct AtEvent {
    event_id: Option<String>,
}

/// The state before the event and its auth chain, for an authorised origin.
fn state_and_chain(
    server: &Server,
    origin: &str,
    room: &str,
    at: &AtEvent,
) -> Result<(RoomRead, Vec<StoredEvent>, Vec<StoredEvent>), Error> {
    let room = room_id(room)?;
    let at = at
        .event_id
        .as_deref()
        .ok_or_else(|| Error::MissingParam("event_id is required".into()))?;
    let at = event_id(at)?;
    server.db.read_tx(|c| {
        let read = authorize_room_read(c, room, origin)?;
        let ev = load_room_pdu(c, room, at)?;
        let state = state_events(c, &state_before(c, &ev)?)?;
        let chain = auth_chain(c, room, &state)?;
        Ok((read, state, chain))
    })
}

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

pub(super) async fn state(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    FedQuery(at): FedQuery<AtEvent>,
) -> Result<Json<Value>, Error> {
    let (read, state, chain) = state_and_chain(&server, &origin, &room, &at)?;
    Ok(Json(json!({
        "pdus": read.render_state(&state)?,
        "auth_chain": read.render_state(&chain)?,
    })))
}

pub(super) async fn state_ids(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    FedQuery(at): FedQuery<AtEvent>,
) -> Result<Json<Value>, Error> {
    let (_, state, chain) = state_and_chain(&server, &origin, &room, &at)?;
    Ok(Json(json!({
        "pdu_ids": ids(&state),
        "auth_chain_ids": ids(&chain),
    })))
}

pub(super) async fn event_auth(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    let id = event_id(&id)?;
    let chain = server.db.read_tx(|c| {
        let read = authorize_room_read(c, room, &origin)?;
        let ev = load_room_pdu(c, room, id)?;
        read.render_state(&auth_chain(c, room, std::slice::from_ref(&ev))?)
    })?;
    Ok(Json(json!({ "auth_chain": chain })))
}
