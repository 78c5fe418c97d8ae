//! Reporting content: `POST /rooms/{roomId}/report/{eventId}` and
//! `POST /rooms/{roomId}/report` (spec v1.13). Reports are stored for the node's admins
//! (`GET /_warren/admin/v1/reports`); the work is [`crate::reporting`]'s.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::server::Server;

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
    crate::reporting::report_event(&server, &caller, &room_id, &event_id, reason, score)?;
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
    crate::reporting::report_room(&server, &caller, &room_id, reason)?;
    Ok(Json(json!({})))
}
