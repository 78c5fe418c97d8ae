//! `GET /_matrix/federation/unstable/org.warren.extremities/{roomId}`: this server's
//! forward extremities of a room, for a server with joined members in it (anti-entropy,
//! [`crate::federation::anti_entropy`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::extract::{FedPath, Origin, room_id};
use crate::error::Error;
use crate::server::Server;

pub(super) async fn extremities(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(room): FedPath<String>,
) -> Result<Json<Value>, Error> {
    let room = room_id(&room)?;
    let ids = crate::federation::anti_entropy::served_extremities(&server, &origin, room)?;
    Ok(Json(json!({ "extremities": ids })))
}
