//! Profiles: display name and avatar, mirrored into the user's member events.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Requester};
use crate::error::Error;
use crate::events::NewEvent;
use crate::room_writes::send;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

/// A local user's profile from the database; a remote user's from their server.
async fn load(server: &Server, user_id: &str) -> Result<(Option<String>, Option<String>), Error> {
    if !server.is_local_user(user_id) {
        return remote_profile(server, user_id).await;
    }
    crate::appservice::query::local_profile(server, user_id)
        .await?
        .ok_or_else(|| Error::NotFound("profile not found".into()))
}

async fn remote_profile(
    server: &Server,
    user_id: &str,
) -> Result<(Option<String>, Option<String>), Error> {
    let (_, destination) = user_id
        .rsplit_once(':')
        .ok_or_else(|| Error::InvalidParam(format!("{user_id} is not a user id")))?;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        crate::federation::client::encode(user_id)
    );
    let profile: Value = crate::federation::client::request_json(
        server,
        destination,
        http::Method::GET,
        &path,
        None,
    )
    .await?;
    let field = |name: &str| profile.get(name).and_then(Value::as_str).map(str::to_owned);
    Ok((field("displayname"), field("avatar_url")))
}

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
    match (field.as_str(), value.as_deref()) {
        ("displayname", Some(d)) if d.chars().count() > crate::rooms::MAX_DISPLAYNAME_LEN => {
            return Err(Error::InvalidParam(format!(
                "displayname is too long (at most {} characters)",
                crate::rooms::MAX_DISPLAYNAME_LEN
            )));
        }
        ("avatar_url", Some(a)) if a.len() > crate::rooms::MAX_AVATAR_URL_LEN => {
            return Err(Error::InvalidParam(format!(
                "avatar_url is too long (at most {} bytes)",
                crate::rooms::MAX_AVATAR_URL_LEN
            )));
        }
        _ => {}
    }
    server.write(|tx| match field.as_str() {
        "displayname" => storage::set_displayname(tx, &user_id, value.as_deref()),
        "avatar_url" => storage::set_avatar_url(tx, &user_id, value.as_deref()),
        _ => Err(Error::BadJson(format!("unknown profile field {field}"))),
    })?;
    update_member_events(&server, &caller)?;
    Ok(Json(json!({})))
}

fn update_member_events(server: &Server, caller: &Requester) -> Result<(), Error> {
    let (rooms, (displayname, avatar_url)) = server.db.read(|c| {
        Ok((
            storage::rooms_with_membership(c, &caller.user_id, "join")?,
            crate::rooms::member_profile(c, &caller.user_id)?,
        ))
    })?;
    for room_id in rooms {
        let mut content = json!({"membership": "join"});
        if let Some(d) = &displayname {
            content["displayname"] = json!(d);
        }
        if let Some(a) = &avatar_url {
            content["avatar_url"] = json!(a);
        }
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(caller.user_id.clone()),
            content,
            sender: caller.user_id.clone(),
            redacts: None,
        };
        // One room refusing (e.g. power levels) must not stop the others.
        if let Err(e) = send(server, caller, &room_id, ev, None) {
            tracing::warn!(%room_id, error = %e, "could not update member event");
        }
    }
    Ok(())
}
