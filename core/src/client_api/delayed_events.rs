//! Delayed events (MSC4140, unstable prefix `org.matrix.msc4140`): scheduling through
//! the `delay` parameter of sends and state, and the management endpoints.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
pub(super) use crate::delayed_events::Schedule;
use crate::delayed_events::{self, Action};
use crate::error::Error;
use crate::server::Server;

/// Where the unstable endpoints live.
pub(super) const PREFIX: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// Schedule the event of a send or state PUT that carried a delay: `{"delay_id": …}`.
pub(super) fn schedule(server: &Server, s: Schedule<'_>) -> Result<Json<Value>, Error> {
    let delay_id = delayed_events::schedule(server, s)?;
    Ok(Json(json!({"delay_id": delay_id})))
}

/// `GET …/delayed_events`: the caller's waiting delayed events.
pub(super) async fn list(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> Result<Json<Value>, Error> {
    let events: Vec<Value> = delayed_events::list(&server, &caller.user_id)?
        .into_iter()
        .map(|d| {
            let mut v = json!({
                "delay_id": d.delay_id,
                "room_id": d.room_id,
                "type": d.kind,
                "delay": d.delay_ms,
                "running_since": d.running_since,
                "content": serde_json::from_str::<Value>(&d.content).unwrap_or_else(|_| json!({})),
            });
            if let Some(k) = d.state_key {
                v["state_key"] = Value::String(k);
            }
            v
        })
        .collect();
    Ok(Json(json!({"delayed_events": events})))
}

#[derive(Deserialize)]
pub(super) struct ActionBody {
    action: String,
}

fn parse_action(s: &str) -> Result<Action, Error> {
    Action::parse(s).ok_or_else(|| {
        Error::InvalidParam(format!(
            "unknown action {s:?}: one of cancel, restart, send"
        ))
    })
}

/// `POST …/delayed_events/{delayId}` with `{"action": "cancel" | "restart" | "send"}`.
pub(super) async fn update(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(delay_id): P<String>,
    Body(body): Body<ActionBody>,
) -> Result<Json<Value>, Error> {
    delayed_events::act(
        &server,
        &caller.user_id,
        &delay_id,
        parse_action(&body.action)?,
    )?;
    Ok(Json(json!({})))
}

/// `POST …/delayed_events/{delayId}/{cancel | restart | send}` (the MSC's later form).
pub(super) async fn update_by_path(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((delay_id, action)): P<(String, String)>,
) -> Result<Json<Value>, Error> {
    delayed_events::act(&server, &caller.user_id, &delay_id, parse_action(&action)?)?;
    Ok(Json(json!({})))
}
