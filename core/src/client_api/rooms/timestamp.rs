//! `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::json;

use super::JsonResult;
use crate::client_api::extract::{Auth, P, Q};
use crate::error::Error;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage;

/// Most events `timestamp_to_event` looks at for one the caller may see.
const NEAR_TS_SCAN: usize = 200;

#[derive(Deserialize)]
pub(in crate::client_api) struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=f|b`: the event
/// closest to `ts` in direction `dir` that the caller may see (by `origin_server_ts`,
/// one index lookup). Only events stored here are considered; 404 when there is none.
pub(in crate::client_api) async fn timestamp_to_event(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<TimestampQuery>,
) -> JsonResult {
    let ts: i64 = q
        .ts
        .as_deref()
        .ok_or_else(|| Error::MissingParam("ts is required".into()))?
        .parse()
        .map_err(|_| Error::InvalidParam("ts must be an integer (ms since the epoch)".into()))?;
    let forward = match q.dir.as_deref() {
        Some("f") => true,
        Some("b") => false,
        None => return Err(Error::MissingParam("dir is required".into())),
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "dir must be f or b, not {other:?}"
            )));
        }
    };
    let found = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        // The nearest event the caller may see, looking a bounded way past hidden ones.
        for e in storage::events_near_ts(c, &room_id, ts, forward, NEAR_TS_SCAN)? {
            if vis.allows(c, &e)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    })?;
    let ev = found.ok_or_else(|| {
        Error::NotFound(format!(
            "no event found {} {ts}",
            if forward { "from" } else { "up to" }
        ))
    })?;
    Ok(Json(
        json!({"event_id": ev.event_id, "origin_server_ts": ev.origin_server_ts}),
    ))
}
