//! `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`: a space and its
//! direct children ([`crate::federation::hierarchy`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::Value;

use super::extract::{FedPath, FedQuery, Origin, room_id};
use crate::error::Error;
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct HierarchyQuery {
    suggested_only: Option<String>,
}

pub(super) async fn hierarchy(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
    FedQuery(q): FedQuery<HierarchyQuery>,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "suggested_only must be true or false, not {other:?}"
            )));
        }
    };
    Ok(Json(crate::federation::hierarchy::hierarchy(
        &server,
        &origin,
        room,
        suggested_only,
    )?))
}
