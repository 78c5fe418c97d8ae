//! Room upgrades: `POST /rooms/{roomId}/upgrade` (the work is in
//! [`room_writes::upgrade_room`](crate::room_writes::upgrade_room), over the room
//! engine's [`rooms::upgrade_room`](crate::rooms::upgrade_room)).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct UpgradeBody {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<String>,
}

/// `POST /rooms/{roomId}/upgrade` → `{replacement_room}`.
pub(super) async fn upgrade(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<UpgradeBody>,
) -> Result<Json<Value>, Error> {
    let new_room = crate::room_writes::upgrade_room(
        &server,
        &caller,
        &room_id,
        &body.new_version,
        &body.additional_creators,
    )?;
    Ok(Json(json!({ "replacement_room": new_room })))
}
