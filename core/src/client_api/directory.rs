//! The room directory (aliases, published rooms, `/publicRooms`) and the user directory.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Q, Requester};
use crate::directory::{self, RoomQuery, parse_alias};
use crate::error::Error;
use crate::server::Server;
use crate::storage;

type JsonResult = Result<Json<Value>, Error>;

/// An alias that must belong to this server (`M_INVALID_PARAM` otherwise).
fn local_alias(server: &Server, alias: &str) -> Result<String, Error> {
    let parsed = parse_alias(alias)?;
    if parsed.server_name().as_str() != server.server_name() {
        return Err(Error::InvalidParam(format!(
            "room alias {alias} does not belong to this server"
        )));
    }
    Ok(parsed.to_string())
}

/// An alias an application service holds exclusively is for it alone; an
/// appservice creates aliases only in its own namespace (`M_EXCLUSIVE` otherwise).
pub(super) fn check_alias_namespace(
    server: &Server,
    caller: &Requester,
    alias: &str,
) -> Result<(), Error> {
    if let Some(a) = &caller.appservice
        && !a.is_alias_in_namespace(alias)
    {
        return Err(Error::Exclusive(format!(
            "{alias} is not in the application service's alias namespace"
        )));
    }
    match server.appservices.exclusive_alias_owner(alias) {
        Some(owner) if caller.appservice.as_ref().is_none_or(|a| a.id != owner.id) => Err(
            Error::Exclusive(format!("{alias} is reserved by an application service")),
        ),
        _ => Ok(()),
    }
}

#[derive(Deserialize)]
pub(super) struct PutAliasBody {
    room_id: String,
}

/// `PUT /directory/room/{roomAlias}`: the caller must be joined to the room.
pub(super) async fn put_alias(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(alias): P<String>,
    Body(body): Body<PutAliasBody>,
) -> JsonResult {
    let alias = local_alias(&server, &alias)?;
    check_alias_namespace(&server, &caller, &alias)?;
    ruma::RoomId::parse(&body.room_id)
        .map_err(|e| Error::InvalidParam(format!("invalid room id {:?}: {e}", body.room_id)))?;
    directory::create_alias(&server, &caller, &alias, &body.room_id)?;
    Ok(Json(json!({})))
}

/// `GET /directory/room/{roomAlias}`: local aliases from the table, others by asking
/// the alias's server over federation.
pub(super) async fn get_alias(
    State(server): State<Arc<Server>>,
    P(alias): P<String>,
) -> JsonResult {
    let parsed = parse_alias(&alias)?;
    let alias_server = parsed.server_name().as_str();
    if alias_server != server.server_name() {
        let (room_id, servers) = directory::query_remote_alias(&server, &parsed).await?;
        return Ok(Json(json!({ "room_id": room_id, "servers": servers })));
    }
    // An alias in an appservice's namespace that does not exist yet: the appservice
    // may create it when asked (`/_matrix/app/v1/rooms/{alias}`).
    if !server.appservices.is_empty()
        && server
            .db
            .read(|c| storage::alias_room(c, parsed.as_str()))?
            .is_none()
    {
        crate::appservice::query::query_alias(&server, parsed.as_str()).await;
    }
    let (room_id, servers) = server.db.read_tx(|c| {
        let room_id = storage::alias_room(c, parsed.as_str())?
            .ok_or_else(|| Error::NotFound(format!("room alias {alias} not found")))?;
        let servers = directory::resident_servers(c, server.server_name(), &room_id)?;
        Ok((room_id, servers))
    })?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

/// `DELETE /directory/room/{roomAlias}`: by the alias's creator, or a joined member with
/// the power to send `m.room.canonical_alias`.
pub(super) async fn delete_alias(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(alias): P<String>,
) -> JsonResult {
    let alias = local_alias(&server, &alias)?;
    directory::delete_alias(&server, &caller, &alias)?;
    Ok(Json(json!({})))
}

/// `GET /rooms/{roomId}/aliases`: joined members (or anyone, for world-readable rooms).
pub(super) async fn room_aliases(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    let aliases = server.db.read_tx(|c| {
        let joined =
            storage::membership(c, &room_id, &caller.user_id)?.is_some_and(|(m, _, _)| m == "join");
        let world_readable = storage::room_info(c, &room_id)?.is_some()
            && crate::federation::visible::current_history_visibility(c, &room_id)?
                == "world_readable";
        if !joined && !world_readable {
            return Err(Error::Forbidden(format!(
                "you are not a member of {room_id}"
            )));
        }
        storage::room_aliases(c, &room_id)
    })?;
    Ok(Json(json!({ "aliases": aliases })))
}

/// `GET /directory/list/room/{roomId}`.
pub(super) async fn get_visibility(
    State(server): State<Arc<Server>>,
    P(room_id): P<String>,
) -> JsonResult {
    let public = server
        .db
        .read(|c| storage::room_is_public(c, &room_id))?
        .ok_or_else(|| Error::NotFound(format!("unknown room {room_id}")))?;
    let visibility = if public { "public" } else { "private" };
    Ok(Json(json!({ "visibility": visibility })))
}

#[derive(Deserialize)]
pub(super) struct VisibilityBody {
    visibility: Option<String>,
}

/// `PUT /directory/list/room/{roomId}`: a joined member with the room's `state_default`
/// power.
pub(super) async fn put_visibility(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Body(body): Body<VisibilityBody>,
) -> JsonResult {
    let public = match body.visibility.as_deref() {
        Some("public") => true,
        Some("private") | None => false,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "visibility must be public or private, not {other:?}"
            )));
        }
    };
    directory::set_visibility(&server, &caller, &room_id, public)?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct PublicRoomsQuery {
    limit: Option<String>,
    since: Option<String>,
    server: Option<String>,
}

#[derive(Deserialize, Default)]
pub(super) struct PublicRoomsFilter {
    generic_search_term: Option<String>,
    room_types: Option<Vec<Option<String>>>,
}

#[derive(Deserialize)]
pub(super) struct PublicRoomsBody {
    limit: Option<u64>,
    since: Option<String>,
    #[serde(default)]
    filter: PublicRoomsFilter,
    /// [`directory::MESH_NETWORK`]: the rooms of every connected peer too.
    third_party_instance_id: Option<String>,
    /// All networks: here, the mesh's.
    #[serde(default)]
    include_all_networks: bool,
}

#[derive(Deserialize)]
pub(super) struct ServerQuery {
    server: Option<String>,
}

/// The `server` to ask, when it is not this one.
fn remote_server(server: &Server, name: Option<&str>) -> Result<Option<String>, Error> {
    match name {
        None | Some("") => Ok(None),
        Some(n) if n == server.server_name() => Ok(None),
        Some(n) => {
            ruma::ServerName::parse(n)
                .map_err(|e| Error::InvalidParam(format!("invalid server name {n:?}: {e}")))?;
            Ok(Some(n.to_owned()))
        }
    }
}

/// `GET /publicRooms` (no authentication needed).
pub(super) async fn get_public_rooms(
    State(server): State<Arc<Server>>,
    Q(q): Q<PublicRoomsQuery>,
) -> JsonResult {
    let limit = match q.limit.as_deref() {
        None | Some("") => None,
        Some(l) => Some(l.parse::<u64>().map_err(|_| {
            Error::InvalidParam(format!("limit must be a non-negative integer, not {l:?}"))
        })?),
    };
    if let Some(remote) = remote_server(&server, q.server.as_deref())? {
        let query = RoomQuery {
            limit,
            since: q.since.as_deref(),
            ..Default::default()
        };
        let answer = directory::remote_public_rooms(&server, &remote, query, false).await?;
        return Ok(Json(answer));
    }
    let body = server.db.read_tx(|c| {
        directory::public_rooms(
            c,
            RoomQuery {
                limit,
                since: q.since.as_deref(),
                ..Default::default()
            },
            false,
        )
    })?;
    Ok(Json(body))
}

/// `POST /publicRooms`.
pub(super) async fn post_public_rooms(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    Q(q): Q<ServerQuery>,
    Body(body): Body<PublicRoomsBody>,
) -> JsonResult {
    let query = RoomQuery {
        limit: body.limit,
        since: body.since.as_deref(),
        term: body.filter.generic_search_term.as_deref(),
        room_types: body.filter.room_types.as_deref(),
    };
    if let Some(remote) = remote_server(&server, q.server.as_deref())? {
        let answer = directory::remote_public_rooms(&server, &remote, query, true).await?;
        return Ok(Json(answer));
    }
    let out = match body.third_party_instance_id.as_deref() {
        Some(directory::MESH_NETWORK) => directory::mesh_public_rooms(&server, query).await?,
        // No bridge publishes rooms under another network here (Synapse answers the
        // same for a network it does not know).
        Some(_) => json!({ "chunk": [], "total_room_count_estimate": 0 }),
        None if body.include_all_networks => directory::mesh_public_rooms(&server, query).await?,
        None => server
            .db
            .read_tx(|c| directory::public_rooms(c, query, false))?,
    };
    Ok(Json(out))
}

#[derive(Deserialize)]
pub(super) struct UserSearchBody {
    search_term: String,
    limit: Option<u64>,
}

/// `POST /user_directory/search`.
pub(super) async fn search_users(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<UserSearchBody>,
) -> JsonResult {
    let limit = body.limit.map_or(directory::DEFAULT_USER_LIMIT, |l| {
        usize::try_from(l)
            .unwrap_or(directory::MAX_USER_LIMIT)
            .clamp(1, directory::MAX_USER_LIMIT)
    });
    let (users, limited) = server
        .db
        .read_tx(|c| directory::search_users(c, &caller.user_id, &body.search_term, limit))?;
    let results: Vec<Value> = users
        .into_iter()
        .map(|u| {
            let mut v = json!({ "user_id": u.user_id });
            if let Some(n) = u.display_name {
                v["display_name"] = json!(n);
            }
            if let Some(a) = u.avatar_url {
                v["avatar_url"] = json!(a);
            }
            v
        })
        .collect();
    Ok(Json(json!({ "results": results, "limited": limited })))
}

/// The protocol under which the mesh's directory network is listed.
const MESH_PROTOCOL: &str = "mesh";

/// The mesh directory as a third-party protocol with one instance, which is how
/// clients (Element's server picker, for one) offer a directory network.
fn mesh_protocol() -> Value {
    json!({
        "user_fields": [],
        "location_fields": [],
        "icon": "",
        "field_types": {},
        "instances": [{
            "desc": "Public rooms of all connected peers",
            "network_id": MESH_PROTOCOL,
            "instance_id": directory::MESH_NETWORK,
            "fields": {},
        }],
    })
}

/// `GET /thirdparty/protocols`: the mesh directory and every protocol the application
/// services declare, as they describe them.
pub(super) async fn protocols(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
) -> JsonResult {
    let mut all = crate::appservice::query::protocols(&server).await;
    all.insert(MESH_PROTOCOL.to_owned(), mesh_protocol());
    Ok(Json(Value::Object(all)))
}

/// `GET /thirdparty/protocol/{protocol}`.
pub(super) async fn protocol(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    P(name): P<String>,
) -> JsonResult {
    if name == MESH_PROTOCOL {
        return Ok(Json(mesh_protocol()));
    }
    crate::appservice::query::protocol(&server, &name)
        .await
        .map(Json)
        .ok_or_else(|| Error::NotFound(format!("unknown protocol {name:?}")))
}

/// The query string as pairs, without the access token and masquerading parameters.
fn lookup_fields(q: &std::collections::BTreeMap<String, String>) -> Vec<(String, String)> {
    q.iter()
        .filter(|(k, _)| !matches!(k.as_str(), "access_token" | "user_id" | "device_id"))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// `GET /thirdparty/location/{protocol}` and `/thirdparty/user/{protocol}`: asked of
/// the application services that declare the protocol.
async fn lookup_protocol(
    server: &Server,
    kind: &str,
    protocol: &str,
    q: &std::collections::BTreeMap<String, String>,
) -> JsonResult {
    if protocol != MESH_PROTOCOL
        && !server
            .appservices
            .all()
            .iter()
            .any(|a| a.protocols.iter().any(|p| p == protocol))
    {
        return Err(Error::NotFound(format!("unknown protocol {protocol:?}")));
    }
    let found =
        crate::appservice::query::lookup(server, kind, Some(protocol), &lookup_fields(q)).await;
    Ok(Json(Value::Array(found)))
}

/// `GET /thirdparty/location/{protocol}`.
pub(super) async fn location_for_protocol(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    P(protocol): P<String>,
    Q(q): Q<std::collections::BTreeMap<String, String>>,
) -> JsonResult {
    lookup_protocol(&server, "location", &protocol, &q).await
}

/// `GET /thirdparty/user/{protocol}`.
pub(super) async fn user_for_protocol(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    P(protocol): P<String>,
    Q(q): Q<std::collections::BTreeMap<String, String>>,
) -> JsonResult {
    lookup_protocol(&server, "user", &protocol, &q).await
}

/// `GET /thirdparty/location?alias=` and `/thirdparty/user?userid=`: reverse lookups,
/// asked of every application service.
async fn reverse_lookup(
    server: &Server,
    kind: &str,
    key: &str,
    q: &std::collections::BTreeMap<String, String>,
) -> JsonResult {
    if !q.contains_key(key) {
        return Err(Error::MissingParam(format!("{key} is required")));
    }
    let found = crate::appservice::query::lookup(server, kind, None, &lookup_fields(q)).await;
    Ok(Json(Value::Array(found)))
}

/// `GET /thirdparty/location?alias=`.
pub(super) async fn location_for_alias(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    Q(q): Q<std::collections::BTreeMap<String, String>>,
) -> JsonResult {
    reverse_lookup(&server, "location", "alias", &q).await
}

/// `GET /thirdparty/user?userid=`.
pub(super) async fn user_for_user_id(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    Q(q): Q<std::collections::BTreeMap<String, String>>,
) -> JsonResult {
    reverse_lookup(&server, "user", "userid", &q).await
}
