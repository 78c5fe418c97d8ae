//! `GET|POST /_matrix/federation/v1/publicRooms`: this server's published rooms, most
//! joined members first, paginated by offset (`since`/`next_batch` are offsets as
//! decimal strings), filtered by `generic_search_term` and `room_types` (POST). The
//! listing is the client directory's ([`crate::directory::public_rooms`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{FedJson, FedQuery};
use crate::error::Error;
use crate::server::Server;

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
    let page = server.db.read_tx(|c| {
        crate::directory::public_rooms(
            c,
            crate::directory::RoomQuery {
                limit,
                since,
                term: filter.generic_search_term.as_deref(),
                room_types: filter.room_types.as_deref(),
            },
            true,
        )
    })?;
    Ok(Json(page))
}
