//! Membership endpoints: join, knock, leave, invite, kick, ban, unban, forget,
//! joined_rooms.

use std::sync::Arc;

use axum::{
    Json,
    extract::{RawQuery, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Requester};
use super::rooms::send;
use crate::error::Error;
use crate::events::NewEvent;
use crate::ratelimit::Action;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

/// Users of other nodes can be invited through `/invite` only (which speaks the
/// federation invite protocol); other places that invite refuse them.
/// A valid user id to invite: `true` for a user of this node, `false` for another's.
pub(super) fn check_invitee(server: &Server, user_id: &str) -> Result<bool, Error> {
    let parsed = valid_user_id(user_id)?;
    Ok(parsed.server_name().as_str() == server.server_name())
}

/// A user id a membership may name: the spec's grammar, historical ids included (an
/// empty localpart, or one outside printable ASCII, is refused: peers would drop the
/// event).
pub(super) fn valid_user_id(user_id: &str) -> Result<ruma::OwnedUserId, Error> {
    ruma::UserId::parse(user_id)
        .ok()
        .filter(|u| u.validate_historical().is_ok())
        .ok_or_else(|| Error::InvalidParam(format!("{user_id} is not a valid user id")))
}

fn member_event(
    server: &Server,
    caller: &Requester,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<NewEvent, Error> {
    let mut content = json!({"membership": membership});
    if membership == "join" || membership == "knock" {
        let (displayname, avatar_url) = server
            .db
            .read(|c| crate::rooms::member_profile(c, target))?;
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

/// Servers named in the query (`server_name`, and `via` as the newer spelling).
fn via_servers(query: Option<&str>) -> Vec<String> {
    query
        .unwrap_or("")
        .split('&')
        .filter_map(|p| p.split_once('='))
        .filter(|(k, _)| *k == "server_name" || *k == "via")
        .filter_map(|(_, v)| {
            percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .ok()
                .map(|v| v.into_owned())
        })
        .collect()
}

/// The `/join` body: a reason and any custom keys for the member event
/// (`third_party_signed` is not supported and is ignored).
type JoinBody = serde_json::Map<String, Value>;

async fn join(
    server: &Arc<Server>,
    caller: &Requester,
    room_id: &str,
    body: JoinBody,
    via: Vec<String>,
) -> JsonResult {
    if body.get("reason").is_some_and(|r| !r.is_string()) {
        return Err(Error::BadJson("reason must be a string".into()));
    }
    crate::rooms::join(server, &caller.user_id, room_id, body, via).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /rooms/{roomId}/join`.
pub(super) async fn join_by_id(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<JoinBody>,
) -> JsonResult {
    super::rate_limit(&server, Action::Join, &caller)?;
    let via = via_servers(query.as_deref());
    join(&server, &caller, &room_id, body, via).await
}

/// `POST /join/{roomIdOrAlias}`.
pub(super) async fn join_by_id_or_alias(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(target): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<JoinBody>,
) -> JsonResult {
    super::rate_limit(&server, Action::Join, &caller)?;
    let mut via = via_servers(query.as_deref());
    let room_id = resolve_room(&server, target, &mut via).await?;
    join(&server, &caller, &room_id, body, via).await
}

/// A room id, or the room an alias names (asking the alias's server when it is not
/// ours, whose answer adds to `via`).
async fn resolve_room(
    server: &Arc<Server>,
    target: String,
    via: &mut Vec<String>,
) -> Result<String, Error> {
    if target.starts_with('#') {
        let alias = ruma::RoomAliasId::parse(&target)
            .map_err(|e| Error::InvalidParam(format!("invalid room alias {target:?}: {e}")))?;
        let alias_server = alias.server_name().as_str();
        if alias_server == server.server_name() {
            server
                .db
                .read(|c| storage::alias_room(c, &target))?
                .ok_or_else(|| Error::NotFound(format!("room alias {target} not found")))
        } else {
            let path = format!(
                "/_matrix/federation/v1/query/directory?room_alias={}",
                crate::federation::client::encode(&target)
            );
            let answer: Value = crate::federation::client::request_json(
                server,
                alias_server,
                http::Method::GET,
                &path,
                None,
            )
            .await?;
            let room_id = answer["room_id"]
                .as_str()
                .ok_or_else(|| Error::NotFound(format!("room alias {target} not found")))?
                .to_owned();
            via.push(alias_server.to_owned());
            if let Some(servers) = answer["servers"].as_array() {
                via.extend(servers.iter().filter_map(Value::as_str).map(str::to_owned));
            }
            Ok(room_id)
        }
    } else if target.starts_with('!') && ruma::RoomId::parse(&target).is_ok() {
        Ok(target)
    } else {
        Err(Error::InvalidParam("expected a room id or alias".into()))
    }
}

/// `POST /knock/{roomIdOrAlias}`: ask to be invited into a room whose join rule is
/// `knock` or `knock_restricted`. A room this node is in takes the knock as a local
/// event; otherwise it goes over federation through `via`/`server_name`, the alias's
/// server and the server in the room id.
pub(super) async fn knock(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(target): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    super::rate_limit(&server, Action::Join, &caller)?;
    let mut via = via_servers(query.as_deref());
    let room_id = resolve_room(&server, target, &mut via).await?;
    if crate::rooms::needs_remote_join(&server, &room_id)? {
        let residents = server.db.read(|c| storage::joined_servers(c, &room_id))?;
        via.extend(residents);
        if let Some((_, s)) = room_id.split_once(':') {
            via.push(s.to_owned());
        }
        crate::rooms::knock_remote(
            &server,
            &room_id,
            &caller.user_id,
            body.reason.as_deref(),
            via,
        )
        .await?;
        return Ok(Json(json!({"room_id": room_id})));
    }
    server.db.read(|c| {
        let current = storage::membership(c, &room_id, &caller.user_id)?.map(|(m, _, _)| m);
        crate::rooms::check_knock_allowed(c, &room_id, &caller.user_id, current.as_deref())
    })?;
    let ev = member_event(&server, &caller, &caller.user_id, "knock", body.reason)?;
    send(&server, &caller, &room_id, ev, None)?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /rooms/{roomId}/leave`.
pub(super) async fn leave(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    // An invite to (or a knock on) a room this node is not in: reject (rescind) it
    // through the inviting server (the server the knock went through).
    // (A room this node knows but no local user is joined to counts: its state here is
    // stale, and a leave built on it would be refused.)
    let remote_only = if crate::rooms::needs_remote_join(&server, &room_id)? {
        server
            .db
            .read(|c| crate::rooms::membership_server(c, &room_id, &caller.user_id))?
    } else {
        None
    };
    if let Some(inviter) = remote_only {
        crate::rooms::leave_remote(&server, &room_id, &caller.user_id, vec![inviter]).await?;
        return Ok(Json(json!({})));
    }
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
    caller: Requester,
    room_id: String,
    body: TargetBody,
    membership: &str,
) -> JsonResult {
    let target = valid_user_id(&body.user_id)?;
    if membership == "invite" {
        super::rate_limit(&server, Action::Invite, &caller)?;
    }
    if membership == "invite" && target.server_name().as_str() != server.server_name() {
        crate::rooms::invite_remote(
            &server,
            &room_id,
            &caller.user_id,
            &body.user_id,
            body.reason,
        )
        .await?;
        return Ok(Json(json!({})));
    }
    if membership == "leave" && body.user_id != caller.user_id {
        // Kick/unban: only meaningful against an existing membership.
        // A kick needs someone to kick (Synapse: 403 for a user who left or was never
        // there); an unban needs a ban.
        let current = server
            .db
            .read(|c| storage::membership(c, &room_id, &body.user_id))?
            .map(|(m, _, _)| m);
        if !matches!(
            current.as_deref(),
            Some("join" | "invite" | "knock" | "ban")
        ) {
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
