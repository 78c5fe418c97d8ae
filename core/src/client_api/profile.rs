//! Profiles: display name and avatar (the work is [`crate::profile`]'s, the member
//! events that mirror them the membership service's).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::profile::load;
use crate::server::Server;

type JsonResult = Result<Json<Value>, Error>;

/// `GET /profile/{userId}`.
pub(super) async fn get_profile(
    State(server): State<Arc<Server>>,
    P(user_id): P<String>,
) -> JsonResult {
    let (displayname, avatar_url) = load(&server, &user_id).await?;
    let mut out = json!({});
    if let Some(d) = displayname {
        out["displayname"] = json!(d);
    }
    if let Some(a) = avatar_url {
        out["avatar_url"] = json!(a);
    }
    Ok(Json(out))
}

/// `GET /profile/{userId}/{field}`.
pub(super) async fn get_field(
    State(server): State<Arc<Server>>,
    P((user_id, field)): P<(String, String)>,
) -> JsonResult {
    let (displayname, avatar_url) = load(&server, &user_id).await?;
    let value = match field.as_str() {
        "displayname" => displayname,
        "avatar_url" => avatar_url,
        _ => return Err(Error::NotFound(format!("profile field {field} not found"))),
    };
    match value {
        Some(v) => Ok(Json(json!({ field: v }))),
        None => Err(Error::NotFound(format!("{field} is not set"))),
    }
}

/// `PUT /profile/{userId}/{field}`: updates the profile and every joined room's member event.
pub(super) async fn set_field(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((user_id, field)): P<(String, String)>,
    Body(body): Body<Value>,
) -> JsonResult {
    if user_id != caller.user_id {
        return Err(Error::Forbidden(
            "you can only change your own profile".into(),
        ));
    }
    let value = match &body[&field] {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        _ => return Err(Error::BadJson(format!("{field} must be a string"))),
    };
    crate::profile::set_field(&server, &caller, &field, value.as_deref())?;
    Ok(Json(json!({})))
}
