//! Server-side key backup (spec: `/room_keys`): versions and the keys in them.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Auth, Body, P, Q};
use crate::e2ee::backup::{self, KeyBackupData, KeysBackup, RoomKeyBackup, Scope, VersionRequest};
use crate::error::Error;
use crate::server::Server;

type JsonResult = Result<Json<Value>, Error>;

/// `POST /room_keys/version`.
pub(super) async fn create_version(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<VersionRequest>,
) -> JsonResult {
    Ok(Json(backup::create_version(&server, &caller, &body)?))
}

/// `GET /room_keys/version`: the current backup.
pub(super) async fn current_version(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> JsonResult {
    Ok(Json(backup::get_version(&server, &caller, None)?))
}

/// `GET /room_keys/version/{version}`.
pub(super) async fn get_version(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(version): P<String>,
) -> JsonResult {
    Ok(Json(backup::get_version(&server, &caller, Some(&version))?))
}

/// `PUT /room_keys/version/{version}`.
pub(super) async fn update_version(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(version): P<String>,
    Body(body): Body<VersionRequest>,
) -> JsonResult {
    Ok(Json(backup::update_version(
        &server, &caller, &version, &body,
    )?))
}

/// `DELETE /room_keys/version/{version}`.
pub(super) async fn delete_version(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(version): P<String>,
) -> JsonResult {
    Ok(Json(backup::delete_version(&server, &caller, &version)?))
}

#[derive(Deserialize)]
pub(super) struct VersionQuery {
    version: Option<String>,
}

impl VersionQuery {
    fn required(&self) -> Result<&str, Error> {
        self.version
            .as_deref()
            .ok_or_else(|| Error::MissingParam("the version query parameter is required".into()))
    }
}

/// `PUT /room_keys/keys`.
pub(super) async fn put_all(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<VersionQuery>,
    Body(body): Body<KeysBackup>,
) -> JsonResult {
    let rows = backup::rows_from(body.rooms)?;
    Ok(Json(backup::put_keys(
        &server,
        &caller,
        q.required()?,
        rows,
    )?))
}

/// `PUT /room_keys/keys/{roomId}`.
pub(super) async fn put_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<VersionQuery>,
    Body(body): Body<RoomKeyBackup>,
) -> JsonResult {
    let rows = backup::rows_from([(room_id, body)].into())?;
    Ok(Json(backup::put_keys(
        &server,
        &caller,
        q.required()?,
        rows,
    )?))
}

/// `PUT /room_keys/keys/{roomId}/{sessionId}`.
pub(super) async fn put_session(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, session_id)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
    Body(body): Body<KeyBackupData>,
) -> JsonResult {
    let rows = vec![backup::row_from(&room_id, &session_id, body)?];
    Ok(Json(backup::put_keys(
        &server,
        &caller,
        q.required()?,
        rows,
    )?))
}

/// `GET /room_keys/keys`.
pub(super) async fn get_all(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    Ok(Json(backup::get_keys(
        &server,
        &caller,
        q.required()?,
        Scope::All,
    )?))
}

/// `GET /room_keys/keys/{roomId}`.
pub(super) async fn get_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    let scope = Scope::Room(&room_id);
    Ok(Json(backup::get_keys(
        &server,
        &caller,
        q.required()?,
        scope,
    )?))
}

/// `GET /room_keys/keys/{roomId}/{sessionId}`.
pub(super) async fn get_session(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, session_id)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    let scope = Scope::Session(&room_id, &session_id);
    Ok(Json(backup::get_keys(
        &server,
        &caller,
        q.required()?,
        scope,
    )?))
}

/// `DELETE /room_keys/keys`.
pub(super) async fn delete_all(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    Ok(Json(backup::delete_keys(
        &server,
        &caller,
        q.required()?,
        Scope::All,
    )?))
}

/// `DELETE /room_keys/keys/{roomId}`.
pub(super) async fn delete_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    let scope = Scope::Room(&room_id);
    Ok(Json(backup::delete_keys(
        &server,
        &caller,
        q.required()?,
        scope,
    )?))
}

/// `DELETE /room_keys/keys/{roomId}/{sessionId}`.
pub(super) async fn delete_session(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, session_id)): P<(String, String)>,
    Q(q): Q<VersionQuery>,
) -> JsonResult {
    let scope = Scope::Session(&room_id, &session_id);
    Ok(Json(backup::delete_keys(
        &server,
        &caller,
        q.required()?,
        scope,
    )?))
}
