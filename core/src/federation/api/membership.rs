//! Joining, leaving and inviting across nodes, resident and invitee side:
//!
//! - `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=…` and
//!   `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`;
//! - `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}` and
//!   `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`;
//! - `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=…` and
//!   `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`;
//! - `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}` (the invitee's server).
//!
//! The user must belong to the requesting server. A signed join, leave or knock is
//! accepted by the room engine ([`rooms::accept_membership`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use super::extract::{FedJson, FedPath, Origin, event_id, query_pairs, room_id, user_id};
use crate::error::Error;
use crate::rooms;
use crate::server::Server;
use crate::storage;

fn server_of(user: &str) -> &str {
    user.rsplit_once(':').map(|(_, s)| s).unwrap_or_default()
}

fn template(
    server: &Server,
    origin: &str,
    room: &str,
    user: &str,
    membership: &str,
) -> Result<(String, Value), Error> {
    let room = room_id(room)?;
    let user = user_id(user)?;
    if server_of(user) != origin {
        return Err(Error::Forbidden(format!(
            "{user} is not a user of the requesting server {origin}"
        )));
    }
    server.db.read_tx(|c| {
        crate::federation::visible::check_server_acl(c, room, origin)?;
        rooms::membership_template(c, server.server_name(), room, user, membership)
    })
}

/// `GET /_matrix/federation/v1/make_join/{roomId}/{userId}?ver=…`.
pub(super) async fn make_join(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, user)): FedPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    check_versions(&server, &room, query.as_deref())?;
    let (version, event) = template(&server, &origin, &room, &user, "join")?;
    Ok(Json(json!({ "room_version": version, "event": event })))
}

/// `GET /_matrix/federation/v1/make_knock/{roomId}/{userId}?ver=…`: the room must
/// accept knocks (version and join rule) and the user must not be joined, invited or
/// banned.
pub(super) async fn make_knock(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, user)): FedPath<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, Error> {
    check_versions(&server, &room, query.as_deref())?;
    let (version, event) = template(&server, &origin, &room, &user, "knock")?;
    Ok(Json(json!({ "room_version": version, "event": event })))
}

/// The room's version must be one of the `ver` the asking server supports.
fn check_versions(server: &Server, room: &str, query: Option<&str>) -> Result<(), Error> {
    let mut versions: Vec<String> = query_pairs(query)?
        .into_iter()
        .filter(|(k, _)| k == "ver")
        .map(|(_, v)| v)
        .collect();
    if versions.is_empty() {
        versions.push("1".into());
    }
    if let Some((version, _)) = server.db.read(|c| storage::room_info(c, room_id(room)?))?
        && !versions.contains(&version)
    {
        return Err(Error::IncompatibleRoomVersion(version));
    }
    Ok(())
}

/// `GET /_matrix/federation/v1/make_leave/{roomId}/{userId}`.
pub(super) async fn make_leave(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, user)): FedPath<(String, String)>,
) -> Result<Json<Value>, Error> {
    let (version, event) = template(&server, &origin, &room, &user, "leave")?;
    Ok(Json(json!({ "room_version": version, "event": event })))
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`.
pub(super) async fn send_join(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(pdu): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    let (room, id) = (room_id(&room)?, event_id(&id)?);
    let event_id = rooms::accept_membership(&server, &origin, room, id, pdu, "join").await?;
    let answer = rooms::join_answer(&server, room, &event_id)?;
    Ok(Json(json!({
        "origin": server.server_name(),
        "state": answer.state,
        "auth_chain": answer.auth_chain,
        "event": answer.event,
        "members_omitted": false,
        "servers_in_room": answer.servers,
    })))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`.
pub(super) async fn send_leave(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(pdu): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    let (room, id) = (room_id(&room)?, event_id(&id)?);
    rooms::accept_membership(&server, &origin, room, id, pdu, "leave").await?;
    Ok(Json(json!({})))
}

/// `PUT /_matrix/federation/v1/send_knock/{roomId}/{eventId}`: accept a signed knock
/// and answer with the room's stripped state, which the knocking user is shown.
pub(super) async fn send_knock(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(pdu): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    let (room, id) = (room_id(&room)?, event_id(&id)?);
    rooms::accept_membership(&server, &origin, room, id, pdu, "knock").await?;
    let stripped = server.db.read_tx(|c| rooms::knock_room_state(c, room))?;
    Ok(Json(json!({ "knock_room_state": stripped })))
}

/// `PUT /_matrix/federation/v2/invite/{roomId}/{eventId}`.
pub(super) async fn invite(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(body): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    server.rate_limit(crate::ratelimit::Action::FederationInvite, &origin)?;
    let room = room_id(&room)?;
    let id = event_id(&id)?;
    let event = rooms::receive_invite(&server, &origin, room, id, &body)?;
    Ok(Json(json!({ "event": event })))
}
