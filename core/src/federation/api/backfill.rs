//! `GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=`: the given events and
//! their ancestors, deepest first.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::Value;

use super::event::transaction;
use super::extract::{FedPath, Origin, event_id, query_pairs, room_id};
use crate::error::Error;
use crate::federation::visible::authorize_room_read;
use crate::federation::walk::{self, MAX_BACKFILL};
use crate::server::Server;

/// Most `v` events one request may start from.
const MAX_FROM: usize = 50;

pub(super) async fn backfill(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    let mut from = Vec::new();
    let mut limit = None;
    for (k, v) in query_pairs(query.as_deref())? {
        match k.as_str() {
            "v" => from.push(event_id(&v)?.to_owned()),
            "limit" => {
                let n: u64 = v.parse().map_err(|_| {
                    Error::InvalidParam(format!("limit must be a non-negative integer, not {v:?}"))
                })?;
                limit = Some(usize::try_from(n).unwrap_or(usize::MAX).min(MAX_BACKFILL));
            }
            _ => {}
        }
    }
    if from.is_empty() {
        return Err(Error::MissingParam(
            "at least one v event id is required".into(),
        ));
    }
    if from.len() > MAX_FROM {
        return Err(Error::InvalidParam(format!(
            "at most {MAX_FROM} v event ids per request"
        )));
    }
    let limit = limit.ok_or_else(|| Error::MissingParam("limit is required".into()))?;
    let pdus = server.db.read_tx(|c| {
        let read = authorize_room_read(c, room, &origin)?;
        let events = walk::backfill(c, room, &from, limit)?;
        if events.is_empty() && limit > 0 {
            return Err(Error::NotFound(format!(
                "none of the v events is known in room {room}"
            )));
        }
        read.render(c, &events)
    })?;
    Ok(transaction(&server, pdus))
}
