//! Account data (global and per room), room tags and filters (the work is
//! [`crate::account_data`]'s).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Requester, parse_json};
use crate::account_data;
use crate::error::Error;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

fn own(caller: &Requester, user_id: &str) -> Result<(), Error> {
    if caller.user_id != user_id {
        return Err(Error::Forbidden(
            "you can only access your own account data".into(),
        ));
    }
    Ok(())
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
    account_data::set(&server, &user, "", &ty, &content)?;
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
    account_data::set(&server, &user, &room, &ty, &content)?;
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

/// `GET /user/{userId}/rooms/{roomId}/tags`.
pub(super) async fn get_tags(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room)): P<(String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    Ok(Json(account_data::tags(&server, &user, &room)?))
}

/// `PUT /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(super) async fn put_tag(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, tag)): P<(String, String, String)>,
    Body(info): Body<Value>,
) -> JsonResult {
    own(&caller, &user)?;
    account_data::set_tag(&server, &user, &room, &tag, Some(info))?;
    Ok(Json(json!({})))
}

/// `DELETE /user/{userId}/rooms/{roomId}/tags/{tag}`.
pub(super) async fn delete_tag(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user, room, tag)): P<(String, String, String)>,
) -> JsonResult {
    own(&caller, &user)?;
    account_data::set_tag(&server, &user, &room, &tag, None)?;
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
    let id = account_data::save_filter(&server, &user, &filter)?;
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
