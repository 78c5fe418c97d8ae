//! `GET /_matrix/federation/v1/timestamp_to_event/{roomId}?ts=&dir=f|b`: the event
//! closest to a time, for a server that may read the room
//! ([`authorize_room_read`](crate::federation::visible::authorize_room_read)).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use super::extract::{FedPath, Origin, query_pairs, room_id};
use crate::error::Error;
use crate::federation::visible::authorize_room_read;
use crate::server::Server;
use crate::storage;

pub(super) async fn timestamp_to_event(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    let (mut ts, mut dir) = (None, None);
    for (k, v) in query_pairs(query.as_deref())? {
        match k.as_str() {
            "ts" => {
                ts = Some(v.parse::<i64>().map_err(|_| {
                    Error::InvalidParam(format!("ts must be an integer, not {v:?}"))
                })?)
            }
            "dir" => dir = Some(v),
            _ => {}
        }
    }
    let ts = ts.ok_or_else(|| Error::MissingParam("ts is required".into()))?;
    let forward = match dir.as_deref() {
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
        authorize_room_read(c, room, &origin)?;
        storage::event_near_ts(c, room, ts, forward)
    })?;
    let ev = found.ok_or_else(|| Error::NotFound(format!("no event found near {ts}")))?;
    Ok(Json(
        json!({"event_id": ev.event_id, "origin_server_ts": ev.origin_server_ts}),
    ))
}
