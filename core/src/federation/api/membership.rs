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
//! The user must belong to the requesting server. A signed join, leave or knock goes
//! through the ordinary receipt checks ([`receive_pdu`]: signatures, hashes, auth
//! against its auth events and the room state) and must end in the timeline; it is then
//! queued for every other server in the room. A join to a restricted room names one of
//! our users in `join_authorised_via_users_server` (`make_join` picks it); we add our
//! signature in `send_join` and answer the signed event.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde_json::{Value, json};

use super::extract::{FedJson, FedPath, Origin, event_id, query_pairs, room_id, user_id};
use crate::error::Error;
use crate::federation::remote::FederationRemote;
use crate::rooms::{self, Outcome, receive_pdu};
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

/// Checks common to `send_join` and `send_leave`, then the receipt checks. Returns the
/// accepted event's id.
async fn receive_membership(
    server: &Arc<Server>,
    origin: &str,
    room: &str,
    id: &str,
    pdu: Value,
    membership: &str,
) -> Result<String, Error> {
    let room = room_id(room)?;
    let id = event_id(id)?;
    let Some((version, _)) = server.db.read(|c| storage::room_info(c, room))? else {
        return Err(Error::NotFound(format!("room {room} is not known here")));
    };
    server
        .db
        .read(|c| crate::federation::visible::check_server_acl(c, room, origin))?;
    if pdu.get("type").and_then(Value::as_str) != Some("m.room.member")
        || pdu.get("room_id").and_then(Value::as_str) != Some(room)
    {
        return Err(Error::BadJson(format!("not a membership event of {room}")));
    }
    let sender = pdu
        .get("sender")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let sender = sender.as_str();
    if pdu.get("state_key").and_then(Value::as_str) != Some(sender) {
        return Err(Error::BadJson("state_key must be the sender".into()));
    }
    if pdu["content"]["membership"].as_str() != Some(membership) {
        return Err(Error::BadJson(format!("membership must be {membership}")));
    }
    if server_of(sender) != origin {
        return Err(Error::Forbidden(format!(
            "{sender} is not a user of the requesting server {origin}"
        )));
    }
    let computed = rooms::event_id_of(&pdu, &version)?;
    if computed != id {
        return Err(Error::BadJson(format!(
            "the event's id is {computed}, not {id}"
        )));
    }
    let mut pdu = pdu;
    if membership == "knock" {
        // The same policy as make_knock (the auth rules would also refuse, but as a
        // rejected event rather than a clear answer).
        server.db.read_tx(|c| {
            rooms::membership_template(c, server.server_name(), room, sender, membership)
        })?;
    } else if membership == "join" {
        // The same policy as make_join; a restricted join must name one of our users,
        // and we sign it (our word that the user is in an allowed room).
        let policy = server
            .db
            .read_tx(|c| rooms::check_join(c, server.server_name(), room, sender))?;
        let via = rooms::local_authoriser(&pdu["content"], server.server_name())?;
        match (policy, via) {
            (rooms::JoinPolicy::Authorised(_), None) => {
                return Err(Error::Forbidden(format!(
                    "{room} is restricted: the join must name a user of this server in \
                     join_authorised_via_users_server"
                )));
            }
            (_, Some(_)) => pdu = rooms::countersign_join(server, room, &version, pdu)?,
            (rooms::JoinPolicy::Open, None) => {}
        }
    }
    let remote = FederationRemote::new(server.clone());
    match receive_pdu(server, &remote, origin, room, pdu).await? {
        Outcome::Accepted { event_id, .. } | Outcome::AlreadyKnown { event_id } => Ok(event_id),
        Outcome::Rejected { reason, .. } => Err(Error::Forbidden(format!(
            "the {membership} event was rejected: {reason}"
        ))),
        Outcome::SoftFailed { .. } => Err(Error::Forbidden(format!(
            "the {membership} event fails auth against the room's current state"
        ))),
        Outcome::Outlier { .. } => Err(Error::BadJson(format!(
            "the {membership} event's prev_events are unknown here"
        ))),
    }
}

/// Queue an accepted event for the room's other servers (not the one that sent it).
fn forward(server: &Server, room: &str, event_id: &str, origin: &str) -> Result<(), Error> {
    server.write(|c| {
        let destinations: Vec<String> = storage::joined_servers(c, room)?
            .into_iter()
            .filter(|s| s != server.server_name() && s != origin)
            .collect();
        if !destinations.is_empty() {
            storage::enqueue_pdu(c, &destinations, event_id)?;
        }
        Ok(())
    })
}

/// `PUT /_matrix/federation/v2/send_join/{roomId}/{eventId}`.
pub(super) async fn send_join(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(pdu): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    let event_id = receive_membership(&server, &origin, &room, &id, pdu, "join").await?;
    forward(&server, &room, &event_id, &origin)?;
    let (state, auth_chain, event, servers) = server.db.read_tx(|c| {
        let (state, chain) = rooms::state_and_auth_chain_before(c, &event_id)?;
        let event = storage::get_event(c, &event_id)?
            .map(|e| serde_json::from_str::<Value>(&e.json))
            .transpose()?
            .unwrap_or(Value::Null);
        let mut servers = storage::joined_servers(c, &room)?;
        servers.sort();
        Ok((state, chain, event, servers))
    })?;
    Ok(Json(json!({
        "origin": server.server_name(),
        "state": state,
        "auth_chain": auth_chain,
        "event": event,
        "members_omitted": false,
        "servers_in_room": servers,
    })))
}

/// `PUT /_matrix/federation/v2/send_leave/{roomId}/{eventId}`.
pub(super) async fn send_leave(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((room, id)): FedPath<(String, String)>,
    FedJson(pdu): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    let event_id = receive_membership(&server, &origin, &room, &id, pdu, "leave").await?;
    forward(&server, &room, &event_id, &origin)?;
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
    let event_id = receive_membership(&server, &origin, &room, &id, pdu, "knock").await?;
    forward(&server, &room, &event_id, &origin)?;
    let stripped = server.db.read_tx(|c| rooms::knock_room_state(c, &room))?;
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
