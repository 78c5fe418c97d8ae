//! The room directory and the user directory: alias rules, the local public room list
//! and user search. Handlers live in `client_api::directory`; SQL in `storage`.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::error::Error;
use ruma::api::federation::directory::{get_public_rooms, get_public_rooms_filtered};
use ruma::directory::RoomTypeFilter;

use crate::federation::client::execute;
use crate::federation::summary::room_summary;
use crate::requester::Requester;
use crate::rooms;
use crate::server::Server;
use crate::storage;

/// Largest (and default) page of `/publicRooms`.
pub const MAX_PUBLIC_ROOMS_LIMIT: usize = 100;
/// Default page of `/user_directory/search`.
pub const DEFAULT_USER_LIMIT: usize = 10;
/// Largest page of `/user_directory/search`.
pub const MAX_USER_LIMIT: usize = 100;

/// Parse a room alias; bad syntax is `M_INVALID_PARAM`.
pub fn parse_alias(alias: &str) -> Result<ruma::OwnedRoomAliasId, Error> {
    ruma::RoomAliasId::parse(alias)
        .map_err(|e| Error::InvalidParam(format!("invalid room alias {alias:?}: {e}")))
}

/// The room another server's alias names and the servers it says are in it
/// (`GET /_matrix/federation/v1/query/directory`).
pub async fn query_remote_alias(
    server: &Server,
    alias: &ruma::RoomAliasId,
) -> Result<(String, Vec<String>), Error> {
    let request =
        ruma::api::federation::query::get_room_information::v1::Request::new(alias.to_owned());
    let answer = execute(server, alias.server_name().as_str(), request).await?;
    let servers = answer.servers.iter().map(|s| s.to_string()).collect();
    Ok((answer.room_id.to_string(), servers))
}

/// This server first, then the other servers with joined members, sorted.
pub fn resident_servers(c: &Connection, own: &str, room_id: &str) -> Result<Vec<String>, Error> {
    let others: BTreeSet<String> = storage::room_members(c, room_id, "join")?
        .iter()
        .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
        .filter(|s| s != own)
        .collect();
    Ok(std::iter::once(own.to_owned()).chain(others).collect())
}

/// Most aliases one `m.room.canonical_alias` may list (`alias` plus `alt_aliases`).
pub const MAX_CANONICAL_ALIASES: usize = 32;

/// Check an `m.room.canonical_alias` content before it is sent, as the spec asks: every
/// alias in `alias` and `alt_aliases` must be well-formed, exist, and name `room_id`
/// (`400 M_BAD_ALIAS` otherwise). Aliases of this server are looked up here, others
/// with the alias's server (`query/directory`).
pub async fn check_canonical_alias(
    server: &Server,
    room_id: &str,
    content: &Value,
) -> Result<(), Error> {
    let mut aliases: Vec<String> = Vec::new();
    match content.get("alias") {
        None | Some(Value::Null) => {}
        Some(Value::String(a)) => aliases.push(a.clone()),
        Some(_) => return Err(Error::BadJson("alias must be a string".into())),
    }
    match content.get("alt_aliases") {
        None => {}
        Some(Value::Array(list)) => {
            for a in list {
                let a = a
                    .as_str()
                    .ok_or_else(|| Error::BadJson("alt_aliases must be strings".into()))?;
                aliases.push(a.to_owned());
            }
        }
        Some(_) => return Err(Error::BadJson("alt_aliases must be a list".into())),
    }
    if aliases.len() > MAX_CANONICAL_ALIASES {
        return Err(Error::BadJson(format!(
            "at most {MAX_CANONICAL_ALIASES} aliases in a canonical alias event"
        )));
    }
    for alias in aliases {
        let parsed = parse_alias(&alias)?;
        let target = if parsed.server_name().as_str() == server.server_name() {
            server.db.read(|c| storage::alias_room(c, &alias))?
        } else {
            match query_remote_alias(server, &parsed).await {
                Ok((room_id, _)) => Some(room_id),
                Err(Error::NotFound(_)) => None,
                Err(e) => return Err(e),
            }
        };
        if target.as_deref() != Some(room_id) {
            return Err(Error::BadAlias(format!(
                "{alias} does not point to this room"
            )));
        }
    }
    Ok(())
}

/// Create the local alias `alias` (checked by the caller: this node's, in the
/// requester's namespace) for `room_id`, to which the requester must be joined.
pub fn create_alias(
    server: &Server,
    requester: &Requester,
    alias: &str,
    room_id: &str,
) -> Result<(), Error> {
    server.write(|tx| {
        if storage::room_info(tx, room_id)?.is_none() {
            return Err(Error::NotFound(format!("unknown room {room_id}")));
        }
        let joined = storage::membership(tx, room_id, &requester.user_id)?
            .is_some_and(|(m, _, _)| m == "join");
        if !joined {
            return Err(Error::Forbidden(format!("you are not joined to {room_id}")));
        }
        if !storage::insert_alias(tx, alias, room_id, &requester.user_id)? {
            return Err(Error::Conflict(format!(
                "room alias {alias} already exists"
            )));
        }
        Ok(())
    })?;
    tracing::info!(%alias, %room_id, "room alias created");
    Ok(())
}

/// Remove the local alias `alias`: by its creator, or a joined member with the power to
/// send `m.room.canonical_alias`.
pub fn delete_alias(server: &Server, requester: &Requester, alias: &str) -> Result<(), Error> {
    server.write(|tx| {
        let (room_id, creator) = storage::alias_entry(tx, alias)?
            .ok_or_else(|| Error::NotFound(format!("room alias {alias} not found")))?;
        let allowed = creator == requester.user_id
            || can_send_state(
                tx,
                &room_id,
                &requester.user_id,
                Some("m.room.canonical_alias"),
            )?;
        if !allowed {
            return Err(Error::Forbidden(format!(
                "you may not remove the room alias {alias}"
            )));
        }
        storage::delete_alias(tx, alias)?;
        Ok(())
    })?;
    tracing::info!(%alias, "room alias removed");
    Ok(())
}

/// Publish `room_id` in (or withdraw it from) the public room list: a joined member with
/// the room's `state_default` power.
pub fn set_visibility(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    public: bool,
) -> Result<(), Error> {
    server.write(|tx| {
        if storage::room_is_public(tx, room_id)?.is_none() {
            return Err(Error::NotFound(format!("unknown room {room_id}")));
        }
        if !can_send_state(tx, room_id, &requester.user_id, None)? {
            return Err(Error::Forbidden(
                "you may not change this room's directory visibility".into(),
            ));
        }
        storage::set_room_public(tx, room_id, public)
    })
}

/// Whether `user_id` is joined to `room_id` and has at least the power needed to send a
/// state event of type `kind`.
pub fn can_send_state(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    kind: Option<&str>,
) -> Result<bool, Error> {
    let joined = storage::membership(c, room_id, user_id)?.is_some_and(|(m, _, _)| m == "join");
    if !joined {
        return Ok(false);
    }
    let power = rooms::power_levels(c, room_id)?;
    let needed = match kind {
        Some(kind) => power.event_level(kind, true),
        None => power.state_default(),
    };
    Ok(power.user_level(user_id) >= needed)
}

/// What a `/publicRooms` request asks for.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoomQuery<'a> {
    /// Page size (at most [`MAX_PUBLIC_ROOMS_LIMIT`]).
    pub limit: Option<u64>,
    /// Offset token from an earlier page.
    pub since: Option<&'a str>,
    /// Case-insensitive substring of the name, topic or canonical alias.
    pub term: Option<&'a str>,
    /// Room types to list (`None` in the list: rooms without a type).
    pub room_types: Option<&'a [Option<String>]>,
}

/// A page of this server's published rooms, most joined members first, paginated by
/// offset (`since`/`next_batch`/`prev_batch` are decimal offsets), filtered by
/// `generic_search_term` (name, topic, canonical alias; case-insensitive substring).
/// Served to clients and (`for_servers`) over federation, whose entries also carry the
/// room version, encryption and restricted-join fields.
pub fn public_rooms(c: &Connection, q: RoomQuery<'_>, for_servers: bool) -> Result<Value, Error> {
    let offset = parse_offset(q.since)?;
    let (rooms, total) = local_entries(c, q, for_servers)?;
    Ok(page(rooms, q.limit, offset, total))
}

fn parse_offset(since: Option<&str>) -> Result<usize, Error> {
    match since {
        None | Some("") => Ok(0),
        Some(s) => s
            .parse()
            .map_err(|_| Error::InvalidParam(format!("invalid since token {s:?}"))),
    }
}

/// This server's published rooms that match, sorted, and how many are published.
fn local_entries(
    c: &Connection,
    q: RoomQuery<'_>,
    for_servers: bool,
) -> Result<(Vec<Value>, usize), Error> {
    let mut rooms = Vec::new();
    for room_id in storage::published_rooms(c)? {
        if let Some(s) = room_summary(c, &room_id)? {
            rooms.push(s);
        }
    }
    let total = rooms.len();
    let term = q.term.map(str::trim).filter(|t| !t.is_empty());
    let rooms: Vec<Value> = rooms
        .into_iter()
        .filter(|r| term.is_none_or(|t| r.matches(t)))
        .filter(|r| {
            q.room_types.is_none_or(|types| {
                types.is_empty() || types.iter().any(|t| t.as_deref() == r.room_type())
            })
        })
        .map(|r| {
            let mut v = r.json;
            if !for_servers {
                client_entry(&mut v);
            }
            v
        })
        .collect();
    Ok((sorted(rooms), total))
}

/// The client API's PublicRoomsChunk has no room version, nor the federation-only keys.
fn client_entry(v: &mut Value) {
    if let Some(o) = v.as_object_mut() {
        o.remove("room_version");
        o.remove("allowed_room_ids");
        o.remove("encryption");
    }
}

/// Most joined members first, then by room id.
fn sorted(mut rooms: Vec<Value>) -> Vec<Value> {
    let members = |v: &Value| v["num_joined_members"].as_u64().unwrap_or(0);
    rooms.sort_by(|a, b| {
        members(b)
            .cmp(&members(a))
            .then_with(|| a["room_id"].as_str().cmp(&b["room_id"].as_str()))
    });
    rooms
}

/// One page of sorted entries, with the offset tokens around it.
fn page(rooms: Vec<Value>, limit: Option<u64>, offset: usize, total: usize) -> Value {
    // At least one room per page, so `next_batch` always moves on.
    let limit = limit.map_or(MAX_PUBLIC_ROOMS_LIMIT, |l| {
        usize::try_from(l)
            .unwrap_or(MAX_PUBLIC_ROOMS_LIMIT)
            .clamp(1, MAX_PUBLIC_ROOMS_LIMIT)
    });
    let start = offset.min(rooms.len());
    let end = start.saturating_add(limit).min(rooms.len());
    let more = end < rooms.len();
    let chunk: Vec<Value> = rooms.into_iter().skip(start).take(end - start).collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if more {
        body["next_batch"] = json!(end.to_string());
    }
    if start > 0 {
        body["prev_batch"] = json!(start.saturating_sub(limit).to_string());
    }
    body
}

/// The directory network (a `third_party_instance_id`) that lists the public rooms of
/// every connected peer along with this node's: the mesh's serverless room directory.
pub const MESH_NETWORK: &str = "warren.mesh";
/// Most peers asked for one mesh directory page.
pub const MAX_MESH_PEERS: usize = 32;
/// How long one peer may take to answer; a slow peer's rooms are left out.
pub const MESH_PEER_TIMEOUT: Duration = Duration::from_secs(5);

/// A page of the public rooms of this node and every connected peer (at most
/// [`MAX_MESH_PEERS`], [`MAX_PUBLIC_ROOMS_LIMIT`] rooms each), merged, without
/// duplicates, most joined members first. Peers are asked again for every page, so a
/// page reflects who is connected now; a peer that does not answer in
/// [`MESH_PEER_TIMEOUT`] is left out of it.
pub async fn mesh_public_rooms(server: &Arc<Server>, q: RoomQuery<'_>) -> Result<Value, Error> {
    let offset = parse_offset(q.since)?;
    let (mut rooms, mut total) = server.db.read_tx(|c| local_entries(c, q, false))?;
    let peers = connected_servers(server).await;
    let request = filtered_request(RoomQuery {
        limit: Some(MAX_PUBLIC_ROOMS_LIMIT as u64),
        since: None,
        ..q
    });
    let asks = peers.iter().map(|peer| {
        let request = request.clone();
        async move {
            let answer =
                tokio::time::timeout(MESH_PEER_TIMEOUT, execute(server, peer, request)).await;
            match answer {
                Ok(Ok(v)) => Some(v),
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "a peer's room directory failed");
                    None
                }
                Err(_) => {
                    tracing::debug!(%peer, "a peer's room directory timed out");
                    None
                }
            }
        }
    });
    let mut seen: HashSet<String> = rooms
        .iter()
        .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
        .collect();
    for answer in futures::future::join_all(asks).await.into_iter().flatten() {
        total += answer
            .total_room_count_estimate
            .and_then(|n| usize::try_from(u64::from(n)).ok())
            .unwrap_or(0)
            .min(MAX_PUBLIC_ROOMS_LIMIT);
        for entry in answer.chunk.into_iter().take(MAX_PUBLIC_ROOMS_LIMIT) {
            if !seen.insert(entry.room_id.to_string()) {
                continue;
            }
            let mut entry = serde_json::to_value(entry)?;
            client_entry(&mut entry);
            rooms.push(entry);
        }
    }
    Ok(page(sorted(rooms), q.limit, offset, total))
}

/// `POST /_matrix/federation/v1/publicRooms` for a client's query.
fn filtered_request(q: RoomQuery<'_>) -> get_public_rooms_filtered::v1::Request {
    let mut request = get_public_rooms_filtered::v1::Request::new();
    request.limit = q.limit.map(ruma::UInt::new_saturating);
    request.since = q.since.map(str::to_owned);
    request.filter.generic_search_term = q.term.map(str::to_owned);
    request.filter.room_types = q
        .room_types
        .unwrap_or_default()
        .iter()
        .map(|t| RoomTypeFilter::from(t.as_deref()))
        .collect();
    request
}

/// A page of `remote`'s public rooms, as the client API answers it: with `POST` and
/// the query's filter when `filtered`, else with `GET` (limit and `since` only).
pub async fn remote_public_rooms(
    server: &Server,
    remote: &str,
    q: RoomQuery<'_>,
    filtered: bool,
) -> Result<Value, Error> {
    let (chunk, next_batch, prev_batch, total) = if filtered {
        let r = execute(server, remote, filtered_request(q)).await?;
        (
            r.chunk,
            r.next_batch,
            r.prev_batch,
            r.total_room_count_estimate,
        )
    } else {
        let mut request = get_public_rooms::v1::Request::new();
        request.limit = q.limit.map(ruma::UInt::new_saturating);
        request.since = q.since.map(str::to_owned);
        let r = execute(server, remote, request).await?;
        (
            r.chunk,
            r.next_batch,
            r.prev_batch,
            r.total_room_count_estimate,
        )
    };
    let mut body = serde_json::Map::new();
    body.insert("chunk".into(), json!(chunk));
    // The optional fields only when the remote gave them.
    let optional = [
        ("total_room_count_estimate", total.map(|t| json!(t))),
        ("next_batch", next_batch.map(Value::String)),
        ("prev_batch", prev_batch.map(Value::String)),
    ];
    for (key, value) in optional {
        if let Some(v) = value {
            body.insert(key.into(), v);
        }
    }
    Ok(Value::Object(body))
}

/// Server names of the connected peers, without duplicates or this node.
async fn connected_servers(server: &Server) -> Vec<String> {
    let Some(transport) = server.federation.transport.get() else {
        return Vec::new();
    };
    let mut names: Vec<String> = Vec::new();
    for p in transport.peers().await {
        if let Some(name) = p.server_name
            && name != server.server_name()
            && !names.contains(&name)
        {
            names.push(name);
        }
    }
    names.truncate(MAX_MESH_PEERS);
    names
}

/// Users matching `term` among those `searcher` may see, one result per user: a
/// case-insensitive substring of the full user id (so the localpart too), of the local
/// profile's display name, or of any display name (per-room nickname) their member
/// events carry in rooms the searcher may see. At most `limit`, and whether there were
/// more.
pub fn search_users(
    c: &Connection,
    searcher: &str,
    term: &str,
    limit: usize,
) -> Result<(Vec<storage::DirectoryUser>, bool), Error> {
    let term = term.trim().to_lowercase();
    if term.is_empty() {
        return Ok((Vec::new(), false));
    }
    let names = |u: &storage::DirectoryUser| -> Vec<String> {
        u.display_name
            .iter()
            .chain(&u.room_names)
            .map(|n| n.to_lowercase())
            .collect()
    };
    let mut found: Vec<storage::DirectoryUser> = storage::visible_users(c, searcher)?
        .into_iter()
        .filter(|u| {
            u.user_id.to_lowercase().contains(&term) || names(u).iter().any(|n| n.contains(&term))
        })
        .collect();
    // Prefix matches (of a name or the localpart) first, then by user id.
    found.sort_by_key(|u| {
        let prefix = names(u).iter().any(|n| n.starts_with(&term))
            || u.user_id
                .get(1..)
                .is_some_and(|l| l.to_lowercase().starts_with(&term));
        (!prefix, u.user_id.clone())
    });
    let limited = found.len() > limit;
    found.truncate(limit);
    Ok((found, limited))
}
