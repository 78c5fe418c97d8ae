//! Room state: `GET` and `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`, and
//! `GET /rooms/{roomId}/state`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::send::{Key, TsQuery};
use super::{JsonResult, opts, visible_state};
use crate::client_api::extract::{Auth, Body, P, Q, Requester};
use crate::error::Error;
use crate::events::client_event;
use crate::room_writes;
use crate::server::Server;
use crate::storage;

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(in crate::client_api) async fn put_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, state_key)): P<(String, String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    put_state_inner(server, caller, room_id, kind, state_key, content, ts).await
}

/// `PUT /rooms/{roomId}/state/{eventType}` (empty state key).
pub(in crate::client_api) async fn put_state_empty(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind)): P<(String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    put_state_inner(server, caller, room_id, kind, String::new(), content, ts).await
}

async fn put_state_inner(
    server: Arc<Server>,
    caller: Requester,
    room_id: String,
    kind: String,
    state_key: String,
    content: Value,
    ts: TsQuery,
) -> JsonResult {
    let key = Key::State(&state_key);
    if let Some(delayed) = ts.schedule(&server, &caller, &room_id, &kind, key, &content) {
        return delayed;
    }
    let ts = ts.for_caller(&caller);
    let event_id =
        room_writes::put_state(&server, &caller, &room_id, kind, state_key, content, ts).await?;
    Ok(Json(json!({"event_id": event_id})))
}

#[derive(Deserialize)]
pub(in crate::client_api) struct FormatQuery {
    format: Option<String>,
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(in crate::client_api) async fn get_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, state_key)): P<(String, String, String)>,
    Q(q): Q<FormatQuery>,
) -> JsonResult {
    get_state_inner(
        &server,
        &caller,
        &room_id,
        &kind,
        &state_key,
        q.format.as_deref(),
    )
}

/// `GET /rooms/{roomId}/state/{eventType}` (empty state key).
pub(in crate::client_api) async fn get_state_empty(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind)): P<(String, String)>,
    Q(q): Q<FormatQuery>,
) -> JsonResult {
    get_state_inner(&server, &caller, &room_id, &kind, "", q.format.as_deref())
}

fn get_state_inner(
    server: &Server,
    caller: &Requester,
    room_id: &str,
    kind: &str,
    state_key: &str,
    format: Option<&str>,
) -> JsonResult {
    let ev = server.db.read_tx(|c| {
        let state = visible_state(c, room_id, &caller.user_id)?;
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => storage::get_state_event(c, id),
            None => Ok(None),
        }
    })?;
    let ev = ev.ok_or_else(|| Error::NotFound("state event not found".into()))?;
    let full = client_event(&ev, opts(caller));
    if format == Some("event") {
        Ok(Json(full))
    } else {
        Ok(Json(full["content"].clone()))
    }
}

/// `GET /rooms/{roomId}/state`.
pub(in crate::client_api) async fn get_all_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    let events = server.db.read_tx(|c| {
        let state = visible_state(c, &room_id, &caller.user_id)?;
        let mut out = Vec::with_capacity(state.len());
        for id in state.values() {
            if let Some(ev) = storage::get_state_event(c, id)? {
                out.push(client_event(&ev, opts(&caller)));
            }
        }
        Ok(out)
    })?;
    Ok(Json(Value::Array(events)))
}
