//! Account data (global and per room), room tags and filters.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Requester, parse_json};
use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, next_stream_position};

type JsonResult = Result<Json<Value>, Error>;

fn own(caller: &Requester, user_id: &str) -> Result<(), Error> {
    if caller.user_id != user_id {
        return Err(Error::Forbidden(
            "you can only access your own account data".into(),
        ));
    }
    Ok(())
}

fn put(server: &Server, user: &str, room: &str, ty: &str, content: &Value) -> Result<(), Error> {
    // The spec's 405: the read marker moves through /read_markers (which checks the
    // event), push rules through /pushrules (which keeps them valid and evaluable).
    if ty == "m.fully_read" {
        return Err(Error::ServerControlled(
            "Cannot set m.fully_read through this API; use /read_markers".into(),
        ));
    }
    if ty == crate::push::PUSH_RULES && room.is_empty() {
        return Err(Error::ServerControlled(
            "Cannot set m.push_rules through this API; use /pushrules".into(),
        ));
    }
    let content = content.to_string();
    server.write(|tx| {
        let pos = next_stream_position(tx)?;
        storage::set_account_data(tx, user, room, ty, &content, pos)
    })
}

fn get(server: &Server, user: &str, room: &str, ty: &str) -> JsonResult {
    if ty == crate::push::PUSH_RULES && room.is_empty() {
        // Defaults are not stored until the user changes a rule.
        return Ok(Json(server.db.read(|c| crate::push::rules_json(c, user))?));
    }
    let raw = server
        .db
        .read(|c| storage::account_data(c, user, room, ty))?;
    let raw = raw.ok_or_else(|| Error::NotFound("account data not found".into()))?;
    Ok(Json(serde_json::from_str(&raw)?))
}

/// `PUT /user/{userId}/account_data/{type}`.
pub(super) async fn put_global(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, ty)): P<(String, String)>,
    Body(content): Body<Value>,
) -> JsonResult {
    own(&caller, &user)?;
    put(&server, &user, "", &ty, &content)?;
    Ok(Json(json!({})))
}

/// `GET /user/{userId}/account_data/{type}`.
pub(super) async fn get_global(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, ty)): P<(String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    get(&server, &user, "", &ty)
}

/// `PUT /user/{userId}/rooms/{roomId}/account_data/{type}`.
pub(super) async fn put_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, ty)): P<(String, String, String)>,
    Body(content): Body<Value>,
) -> JsonResult {
    own(&caller, &user)?;
    if !room.starts_with('!') {
        return Err(Error::InvalidParam("invalid room id".into()));
    }
    put(&server, &user, &room, &ty, &content)?;
    Ok(Json(json!({})))
}

/// `GET /user/{userId}/rooms/{roomId}/account_data/{type}`.
pub(super) async fn get_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, ty)): P<(String, String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    get(&server, &user, &room, &ty)
}

fn tags(server: &Server, user: &str, room: &str) -> Result<Value, Error> {
    let raw = server
        .db
        .read(|c| storage::account_data(c, user, room, "m.tag"))?;
    Ok(raw
        .and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_else(|| json!({"tags": {}})))
}

/// `GET /user/{userId}/rooms/{roomId}/tags`.
pub(super) async fn get_tags(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room)): P<(String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    Ok(Json(tags(&server, &user, &room)?))
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(super) async fn put_tag(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, tag)): P<(String, String, String)>,
    Body(info): Body<Value>,
) -> JsonResult {
    own(&caller, &user)?;
    let mut all = tags(&server, &user, &room)?;
    all["tags"][&tag] = info;
    put(&server, &user, &room, "m.tag", &all)?;
    Ok(Json(json!({})))
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(super) async fn delete_tag(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, tag)): P<(String, String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    let mut all = tags(&server, &user, &room)?;
    if let Some(map) = all["tags"].as_object_mut() {
        map.remove(&tag);
    }
    put(&server, &user, &room, "m.tag", &all)?;
    Ok(Json(json!({})))
}

/// `POST /user/{userId}/filter`.
pub(super) async fn create_filter(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(user): P<String>,
    Body(filter): Body<Value>,
) -> JsonResult {
    own(&caller, &user)?;
    // Validate the shape now so a bad filter fails here, not at every /sync.
    let parsed: crate::sync::Filter = parse_json(filter.to_string().as_bytes())?;
    parsed.validate()?;
    let id = server.write(|tx| storage::save_filter(tx, &user, &filter.to_string()))?;
    Ok(Json(json!({"filter_id": id.to_string()})))
}

/// `GET /user/{userId}/filter/{filterId}`.
pub(super) async fn get_filter(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, id)): P<(String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    let id: i64 = id
        .parse()
        .map_err(|_| Error::NotFound("filter not found".into()))?;
    let raw = server.db.read(|c| storage::load_filter(c, &user, id))?;
    let raw = raw.ok_or_else(|| Error::NotFound("filter not found".into()))?;
    Ok(Json(serde_json::from_str(&raw)?))
}
