//! Reporting content: `POST /rooms/{roomId}/report/{eventId}` and
//! `POST /rooms/{roomId}/report` (spec v1.13). Reports are stored for the node's admins
//! (`GET /_warren/admin/v1/reports`).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage::{self, Report, now_ms};

/// Longest reason stored.
const MAX_REASON_BYTES: usize = 4096;

#[derive(Deserialize)]
pub(super) struct ReportBody {
    reason: Option<Value>,
    score: Option<Value>,
}

fn reason(body: &ReportBody) -> Result<Option<String>, Error> {
    match &body.reason {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.len() <= MAX_REASON_BYTES => Ok(Some(s.clone())),
        Some(Value::String(_)) => Err(Error::InvalidParam(format!(
            "reason is longer than {MAX_REASON_BYTES} bytes"
        ))),
        Some(_) => Err(Error::InvalidParam("reason must be a string".into())),
    }
}

/// `POST /rooms/{roomId}/report/{eventId}`: the event must be one the reporter can see
/// (else 404, so a report does not tell whether an event exists); `score` (deprecated)
/// must be an integer from -100 to 0.
pub(super) async fn report_event(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
    Body(body): Body<ReportBody>,
) -> Result<Json<Value>, Error> {
    let score = match &body.score {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_i64() {
            Some(s) if (-100..=0).contains(&s) => Some(s),
            _ => {
                return Err(Error::InvalidParam(
                    "score must be an integer from -100 to 0".into(),
                ));
            }
        },
    };
    let reason = reason(&body)?;
    server.write(|c| {
        let not_found = || Error::NotFound(format!("event {event_id} not found"));
        let vis = visibility_for(c, &room_id, &caller.user_id).map_err(|_| not_found())?;
        match storage::get_event(c, &event_id)? {
            Some(e) if vis.allows(c, &e)? => {}
            _ => return Err(not_found()),
        }
        storage::insert_report(
            c,
            &Report {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.clone(),
                event_id: Some(event_id.clone()),
                user_id: caller.user_id.clone(),
                reason,
                score,
            },
        )
    })?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/report`: reporting a whole room; 404 for a room this node does
/// not know.
pub(super) async fn report_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<ReportBody>,
) -> Result<Json<Value>, Error> {
    let reason = reason(&body)?;
    server.write(|c| {
        if storage::room_info(c, &room_id)?.is_none() {
            return Err(Error::NotFound(format!("room {room_id} not found")));
        }
        storage::insert_report(
            c,
            &Report {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.clone(),
                event_id: None,
                user_id: caller.user_id.clone(),
                reason,
                score: None,
            },
        )
    })?;
    Ok(Json(json!({})))
}
