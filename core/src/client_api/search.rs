//! `POST /search`: server-side search of room events (service in `crate::search`).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, Q};
use crate::error::Error;
use crate::search::{self, RoomEventsCriteria};
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct SearchQuery {
    next_batch: Option<String>,
}

#[derive(Deserialize)]
pub(super) struct Categories {
    room_events: Option<RoomEventsCriteria>,
}

#[derive(Deserialize)]
pub(super) struct SearchBody {
    search_categories: Categories,
}

/// `POST /search`.
pub(super) async fn search(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<SearchQuery>,
    Body(body): Body<SearchBody>,
) -> Result<Json<Value>, Error> {
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    // Whatever the indexer has not reached yet (it runs shortly after commits). A
    // failure to index does not fail the search: it answers from the index as it is.
    if let Err(e) = search::catch_up(&server) {
        tracing::warn!(error = %e, "search index not caught up before a search");
    }
    let room_events = server
        .db
        .read_tx(|c| search::room_events(c, &caller, &criteria, q.next_batch.as_deref()))?;
    Ok(Json(
        json!({ "search_categories": { "room_events": room_events } }),
    ))
}
