//! `GET|POST /_matrix/federation/v1/publicRooms`: this server's published rooms, most
//! joined members first, paginated by offset (`since`/`next_batch` are offsets as
//! decimal strings), filtered by `generic_search_term` and `room_types` (POST).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{FedJson, FedQuery};
use super::summary::{RoomSummary, room_summary};
use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Largest page; also the page size when no `limit` is given.
const MAX_LIMIT: usize = 100;

#[derive(Deserialize, Default)]
pub(super) struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct PublicRoomsBody {
    limit: Option<u64>,
    since: Option<String>,
    #[serde(default)]
    filter: Filter,
}

#[derive(Deserialize, Default)]
pub(super) struct Filter {
    generic_search_term: Option<String>,
    /// `null` in the list stands for rooms without a type.
    room_types: Option<Vec<Option<String>>>,
}

pub(super) async fn get_public_rooms(
    State(server): State<Arc<Server>>,
    FedQuery(q): FedQuery<PublicRoomsQuery>,
) -> Result<Json<Value>, Error> {
    let limit = match q.limit.as_deref() {
        None => None,
        Some(l) => Some(l.parse::<u64>().map_err(|_| {
            Error::InvalidParam(format!("limit must be a non-negative integer, not {l:?}"))
        })?),
    };
    public_rooms(&server, limit, q.since.as_deref(), &Filter::default())
}

pub(super) async fn post_public_rooms(
    State(server): State<Arc<Server>>,
    FedJson(body): FedJson<PublicRoomsBody>,
) -> Result<Json<Value>, Error> {
    public_rooms(&server, body.limit, body.since.as_deref(), &body.filter)
}

fn public_rooms(
    server: &Server,
    limit: Option<u64>,
    since: Option<&str>,
    filter: &Filter,
) -> Result<Json<Value>, Error> {
    // At least one room per page, so `next_batch` always moves on.
    let limit = limit.map_or(MAX_LIMIT, |l| {
        usize::try_from(l).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
    });
    let offset: usize = match since {
        None | Some("") => 0,
        Some(s) => s
            .parse()
            .map_err(|_| Error::InvalidParam(format!("invalid since token {s:?}")))?,
    };
    let rooms = server.db.read_tx(|c| {
        let mut out = Vec::new();
        for room_id in storage::published_rooms(c)? {
            if let Some(s) = room_summary(c, &room_id)? {
                out.push(s);
            }
        }
        Ok(out)
    })?;
    let total = rooms.len();
    let mut rooms: Vec<RoomSummary> = rooms.into_iter().filter(|r| keep(r, filter)).collect();
    rooms.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let end = offset.saturating_add(limit).min(rooms.len());
    let chunk: Vec<&Value> = rooms
        .get(offset.min(rooms.len())..end)
        .unwrap_or_default()
        .iter()
        .map(|r| &r.json)
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if end < rooms.len() {
        body["next_batch"] = json!(end.to_string());
    }
    if offset > 0 {
        body["prev_batch"] = json!(offset.saturating_sub(limit).to_string());
    }
    Ok(Json(body))
}

fn keep(room: &RoomSummary, filter: &Filter) -> bool {
    let term_ok = filter
        .generic_search_term
        .as_deref()
        .is_none_or(|t| t.is_empty() || room.matches(t));
    let type_ok = filter.room_types.as_ref().is_none_or(|types| {
        types.is_empty() || types.iter().any(|t| t.as_deref() == room.room_type())
    });
    term_ok && type_ok
}
