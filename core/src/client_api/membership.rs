//! Membership endpoints: join, leave, invite, kick, ban, unban, forget, joined_rooms.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, Caller, P};
use super::rooms::send;
use crate::error::Error;
use crate::events::NewEvent;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

/// Members on other nodes need federation, which arrives with the federation work.
pub(super) fn check_invitee(server: &Server, user_id: &str) -> Result<(), Error> {
    let Ok(parsed) = ruma::UserId::parse(user_id) else {
        return Err(Error::InvalidParam(format!(
            "{user_id} is not a valid user id"
        )));
    };
    if parsed.server_name().as_str() != server.server_name() {
        return Err(Error::Forbidden(format!(
            "{user_id} is on another node; federation between nodes is not available in this build yet"
        )));
    }
    Ok(())
}

fn member_event(
    server: &Server,
    caller: &Caller,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<NewEvent, Error> {
    let mut content = json!({"membership": membership});
    if membership == "join" {
        let (displayname, avatar_url) = server
            .db
            .read(|c| storage::profile(c, target))?
            .unwrap_or((None, None));
        if let Some(d) = displayname {
            content["displayname"] = json!(d);
        }
        if let Some(a) = avatar_url {
            content["avatar_url"] = json!(a);
        }
    }
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    Ok(NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(target.to_owned()),
        content,
        sender: caller.user_id.clone(),
        redacts: None,
    })
}

#[derive(Deserialize, Default)]
pub(super) struct ReasonBody {
    reason: Option<String>,
}

fn join(server: &Server, caller: &Caller, room_id: &str, reason: Option<String>) -> JsonResult {
    if server
        .db
        .read(|c| storage::room_info(c, room_id))?
        .is_none()
    {
        return Err(Error::NotFound(format!(
            "room {room_id} is not known to this node (joining rooms on other nodes needs federation)"
        )));
    }
    // Joining twice is a no-op for the client but still a valid (profile-refreshing) event.
    let ev = member_event(server, caller, &caller.user_id, "join", reason)?;
    send(server, caller, room_id, ev, None)?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /rooms/{roomId}/join`.
pub(super) async fn join_by_id(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    join(&server, &caller, &room_id, body.reason)
}

/// `POST /join/{roomIdOrAlias}`.
pub(super) async fn join_by_id_or_alias(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(target): P<String>,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    let room_id = if target.starts_with('#') {
        server
            .db
            .read(|c| storage::alias_room(c, &target))?
            .ok_or_else(|| Error::NotFound(format!("room alias {target} not found")))?
    } else if target.starts_with('!') {
        target
    } else {
        return Err(Error::InvalidParam("expected a room id or alias".into()));
    };
    join(&server, &caller, &room_id, body.reason)
}

/// `POST /rooms/{roomId}/leave`.
pub(super) async fn leave(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    let ev = member_event(&server, &caller, &caller.user_id, "leave", body.reason)?;
    send(&server, &caller, &room_id, ev, None)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

async fn act_on(
    server: Arc<Server>,
    caller: Caller,
    room_id: String,
    body: TargetBody,
    membership: &str,
) -> JsonResult {
    check_invitee(&server, &body.user_id)?;
    if membership == "leave" && body.user_id != caller.user_id {
        // Kick/unban: only meaningful against an existing membership.
        let current = server
            .db
            .read(|c| storage::membership(c, &room_id, &body.user_id))?;
        if current.is_none() {
            return Err(Error::Forbidden(format!(
                "{} is not in the room",
                body.user_id
            )));
        }
    }
    let ev = member_event(&server, &caller, &body.user_id, membership, body.reason)?;
    send(&server, &caller, &room_id, ev, None)?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/invite`.
pub(super) async fn invite(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    act_on(server, caller, room_id, body, "invite").await
}

/// `POST /rooms/{roomId}/kick`.
pub(super) async fn kick(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    act_on(server, caller, room_id, body, "leave").await
}

/// `POST /rooms/{roomId}/ban`.
pub(super) async fn ban(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    act_on(server, caller, room_id, body, "ban").await
}

/// `POST /rooms/{roomId}/unban`.
pub(super) async fn unban(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    act_on(server, caller, room_id, body, "leave").await
}

/// `POST /rooms/{roomId}/forget`.
pub(super) async fn forget(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    server.write(
        |tx| match storage::membership(tx, &room_id, &caller.user_id)? {
            Some((m, _, _)) if m == "join" || m == "invite" => Err(Error::Unrecognized(
                http::StatusCode::BAD_REQUEST,
                "leave the room before forgetting it".into(),
            )),
            Some(_) => storage::forget_room(tx, &room_id, &caller.user_id),
            None => Err(Error::NotFound("you were never in this room".into())),
        },
    )?;
    Ok(Json(json!({})))
}

/// `GET /joined_rooms`.
pub(super) async fn joined_rooms(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> JsonResult {
    let rooms = server
        .db
        .read(|c| storage::rooms_with_membership(c, &caller.user_id, "join"))?;
    Ok(Json(json!({"joined_rooms": rooms})))
}
