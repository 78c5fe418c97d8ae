//! `GET /sync` and simplified sliding sync: parse parameters, then hand over to the sync
//! service.

use std::sync::Arc;
use std::time::Duration;

use axum::response::IntoResponse;
use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Auth, Q, RawBody, parse_json};
use crate::error::Error;
use crate::server::Server;
use crate::storage;
use crate::streams::SyncToken;
use crate::sync::{Filter, SyncParams, sync_serialized};

#[derive(Deserialize)]
pub(super) struct SyncQuery {
    since: Option<String>,
    timeout: Option<u64>,
    filter: Option<String>,
    #[serde(default)]
    full_state: bool,
    set_presence: Option<String>,
}

/// `GET /sync`.
pub(super) async fn sync_events(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<SyncQuery>,
) -> Result<axum::response::Response, Error> {
    if let Some(p) = &q.set_presence
        && !matches!(p.as_str(), "online" | "offline" | "unavailable")
    {
        return Err(Error::InvalidParam(format!("invalid set_presence {p}")));
    }
    // Syncing is activity: the user is online unless the client says otherwise.
    crate::presence::on_sync(&server, &caller.user_id, q.set_presence.as_deref())?;
    let since = match &q.since {
        Some(s) => Some(
            SyncToken::parse(s)
                .ok_or_else(|| Error::InvalidParam(format!("invalid since token {s}")))?,
        ),
        None => None,
    };
    let filter: Filter = match q.filter.as_deref() {
        None => Filter::default(),
        Some(f) if f.trim_start().starts_with('{') => parse_json(f.as_bytes())?,
        Some(id) => {
            let id: i64 = id
                .parse()
                .map_err(|_| Error::InvalidParam(format!("invalid filter id {id}")))?;
            let raw = server
                .db
                .read(|c| storage::load_filter(c, &caller.user_id, id))?
                .ok_or_else(|| Error::NotFound("filter not found".into()))?;
            parse_json(raw.as_bytes())?
        }
    };
    filter.validate()?;
    let params = SyncParams {
        since,
        timeout: Duration::from_millis(q.timeout.unwrap_or(0)),
        filter,
        full_state: q.full_state,
    };
    let filter_key = q.filter.unwrap_or_default();
    let body = sync_serialized(server, caller, params, &filter_key).await?;
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

#[derive(Deserialize)]
pub(super) struct SlidingQuery {
    pos: Option<String>,
    timeout: Option<u64>,
    #[allow(dead_code)]
    set_presence: Option<String>,
}

/// `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync` (MSC4186).
pub(super) async fn sliding_sync(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<SlidingQuery>,
    RawBody(body): RawBody,
) -> Result<Json<Value>, Error> {
    // An empty body is an empty request (no lists, no extensions).
    let req: crate::sync::sliding::Request = if body.iter().all(u8::is_ascii_whitespace) {
        Default::default()
    } else {
        parse_json(&body)?
    };
    let params = crate::sync::sliding::Params {
        pos: q.pos,
        timeout: Duration::from_millis(q.timeout.unwrap_or(0)),
    };
    Ok(Json(
        crate::sync::sliding::sync(server, caller, params, req).await?,
    ))
}
