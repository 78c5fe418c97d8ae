//! `POST /createRoom`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonResult;
use crate::client_api::extract::{Auth, Body};
use crate::error::Error;
use crate::room_writes;
use crate::rooms::CreateRoom;
use crate::server::Server;

#[derive(Deserialize)]
pub(in crate::client_api) struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    room_version: Option<String>,
    creation_content: Option<Value>,
    #[serde(default)]
    initial_state: Vec<InitialState>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<Value>,
}

#[derive(Deserialize)]
pub(in crate::client_api) struct InitialState {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: Value,
}

/// `POST /createRoom`.
pub(in crate::client_api) async fn create_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<CreateRoomBody>,
) -> JsonResult {
    if let Some(local) = &body.room_alias_name {
        let alias = format!("#{local}:{}", server.server_name());
        crate::client_api::directory::check_alias_namespace(&server, &caller, &alias)?;
    }
    let public = match body.visibility.as_deref() {
        None | Some("private") => false,
        Some("public") => true,
        Some(other) => return Err(Error::BadJson(format!("unknown visibility {other}"))),
    };
    let req = CreateRoom {
        preset: body.preset,
        public,
        name: body.name,
        topic: body.topic,
        alias_localpart: body.room_alias_name,
        invite: body.invite,
        is_direct: body.is_direct,
        creation_content: body.creation_content,
        initial_state: body
            .initial_state
            .into_iter()
            .map(|s| (s.kind, s.state_key, s.content))
            .collect(),
        power_level_content_override: body.power_level_content_override,
        room_version: body.room_version,
    };
    let room_id = room_writes::create_room(&server, &caller, req).await?;
    Ok(Json(json!({"room_id": room_id})))
}
