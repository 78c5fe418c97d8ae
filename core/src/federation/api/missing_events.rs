//! `POST /_matrix/federation/v1/get_missing_events/{roomId}`: the events between what
//! the origin has and what it saw.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{FedJson, FedPath, Origin, event_id, room_id};
use crate::error::Error;
use crate::federation::visible::{authorize_room_read, load_room_pdu};
use crate::federation::walk;
use crate::server::Server;

/// Most event ids in `earliest_events` or `latest_events`.
const MAX_IDS: usize = 100;

#[derive(Deserialize)]
pub(super) struct MissingEventsRequest {
    earliest_events: Vec<String>,
    latest_events: Vec<String>,
    #[serde(default = "default_limit")]
    limit: u64,
    #[serde(default)]
    min_depth: i64,
}

fn default_limit() -> u64 {
    10
}

pub(super) async fn get_missing_events(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    FedJson(body): FedJson<MissingEventsRequest>,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    for (name, ids) in [
        ("earliest_events", &body.earliest_events),
        ("latest_events", &body.latest_events),
    ] {
        if ids.len() > MAX_IDS {
            return Err(Error::InvalidParam(format!(
                "at most {MAX_IDS} ids in {name}"
            )));
        }
        for id in ids {
            event_id(id)?;
        }
    }
    if body.latest_events.is_empty() {
        return Err(Error::InvalidParam("latest_events is empty".into()));
    }
    let limit = usize::try_from(body.limit).unwrap_or(usize::MAX);
    let events = server.db.read_tx(|c| {
        let read = authorize_room_read(c, room, &origin)?;
        // The origin saw these events somewhere: at least one must be known here.
        let mut known = false;
        for id in &body.latest_events {
            match load_room_pdu(c, room, id) {
                Ok(_) => known = true,
                Err(Error::NotFound(_)) => {}
                Err(e) => return Err(e),
            }
        }
        if !known {
            return Err(Error::NotFound(format!(
                "none of latest_events is known in room {room}"
            )));
        }
        let found = walk::missing_events(
            c,
            room,
            &body.earliest_events,
            &body.latest_events,
            limit,
            body.min_depth,
        )?;
        read.render(c, &found)
    })?;
    Ok(Json(json!({ "events": events })))
}
