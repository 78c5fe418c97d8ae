//! Membership endpoints: join, knock, leave, invite, kick, ban, unban, forget,
//! joined_rooms. The work is the membership service's ([`crate::membership`]).

use std::sync::Arc;

use axum::{
    Json,
    extract::{RawQuery, State},
};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::membership;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

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

/// `POST /rooms/{roomId}/join`.
pub(super) async fn join_by_id(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<JoinBody>,
) -> JsonResult {
    let via = via_servers(query.as_deref());
    membership::join(&server, &caller, &room_id, body, via).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /join/{roomIdOrAlias}`.
pub(super) async fn join_by_id_or_alias(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(target): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<JoinBody>,
) -> JsonResult {
    let via = via_servers(query.as_deref());
    let room_id = membership::join_by_id_or_alias(&server, &caller, target, body, via).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /knock/{roomIdOrAlias}`: ask to be invited into a room whose join rule is
/// `knock` or `knock_restricted`, through `via`/`server_name` when this node is not in
/// it.
pub(super) async fn knock(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(target): P<String>,
    RawQuery(query): RawQuery,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    let via = via_servers(query.as_deref());
    let room_id = membership::knock(&server, &caller, target, body.reason, via).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// `POST /rooms/{roomId}/leave`.
pub(super) async fn leave(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<ReasonBody>,
) -> JsonResult {
    membership::leave(&server, &caller, &room_id, body.reason).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct TargetBody {
    user_id: String,
    reason: Option<String>,
}

/// `POST /rooms/{roomId}/invite`.
pub(super) async fn invite(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    membership::invite(&server, &caller, &room_id, &body.user_id, body.reason).await?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/kick`.
pub(super) async fn kick(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    membership::kick(&server, &caller, &room_id, &body.user_id, body.reason)?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/ban`.
pub(super) async fn ban(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    membership::ban(&server, &caller, &room_id, &body.user_id, body.reason)?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/unban`.
pub(super) async fn unban(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<TargetBody>,
) -> JsonResult {
    membership::unban(&server, &caller, &room_id, &body.user_id, body.reason)?;
    Ok(Json(json!({})))
}

/// `POST /rooms/{roomId}/forget`.
pub(super) async fn forget(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    membership::forget(&server, &caller, &room_id)?;
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
