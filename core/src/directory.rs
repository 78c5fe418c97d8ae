//! The room directory and the user directory: alias rules, the local public room list
//! and user search. Handlers live in `client_api::directory`; SQL in `storage`.

use std::collections::BTreeSet;

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::error::Error;
use crate::federation::summary::{RoomSummary, room_summary};
use crate::rooms;
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

/// This server first, then the other servers with joined members, sorted.
pub fn resident_servers(c: &Connection, own: &str, room_id: &str) -> Result<Vec<String>, Error> {
    let others: BTreeSet<String> = storage::room_members(c, room_id, "join")?
        .iter()
        .filter_map(|u| u.split_once(':').map(|(_, s)| s.to_owned()))
        .filter(|s| s != own)
        .collect();
    Ok(std::iter::once(own.to_owned()).chain(others).collect())
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

/// A page of this server's published rooms, most joined members first, paginated by
/// offset (`since`/`next_batch`/`prev_batch` are decimal offsets), filtered by
/// `generic_search_term` (name, topic, canonical alias; case-insensitive substring).
/// Served to clients and (`for_servers`) over federation, whose entries also carry the
/// room version, encryption and restricted-join fields.
pub fn public_rooms(
    c: &Connection,
    limit: Option<u64>,
    since: Option<&str>,
    term: Option<&str>,
    room_types: Option<&[Option<String>]>,
    for_servers: bool,
) -> Result<Value, Error> {
    // At least one room per page, so `next_batch` always moves on.
    let limit = limit.map_or(MAX_PUBLIC_ROOMS_LIMIT, |l| {
        usize::try_from(l)
            .unwrap_or(MAX_PUBLIC_ROOMS_LIMIT)
            .clamp(1, MAX_PUBLIC_ROOMS_LIMIT)
    });
    let offset: usize = match since {
        None | Some("") => 0,
        Some(s) => s
            .parse()
            .map_err(|_| Error::InvalidParam(format!("invalid since token {s:?}")))?,
    };
    let mut rooms = Vec::new();
    for room_id in storage::published_rooms(c)? {
        if let Some(s) = room_summary(c, &room_id)? {
            rooms.push(s);
        }
    }
    let total = rooms.len();
    let term = term.map(str::trim).filter(|t| !t.is_empty());
    let mut rooms: Vec<RoomSummary> = rooms
        .into_iter()
        .filter(|r| term.is_none_or(|t| r.matches(t)))
        .filter(|r| {
            room_types.is_none_or(|types| {
                types.is_empty() || types.iter().any(|t| t.as_deref() == r.room_type())
            })
        })
        .collect();
    rooms.sort_by(|a, b| {
        b.num_joined_members
            .cmp(&a.num_joined_members)
            .then_with(|| a.room_id.cmp(&b.room_id))
    });
    let start = offset.min(rooms.len());
    let end = start.saturating_add(limit).min(rooms.len());
    let chunk: Vec<Value> = rooms[start..end]
        .iter()
        .map(|r| {
            let mut v = r.json.clone();
            // The client API's PublicRoomsChunk has no room version.
            if !for_servers && let Some(o) = v.as_object_mut() {
                o.remove("room_version");
                o.remove("allowed_room_ids");
                o.remove("encryption");
            }
            v
        })
        .collect();
    let mut body = json!({ "chunk": chunk, "total_room_count_estimate": total });
    if end < rooms.len() {
        body["next_batch"] = json!(end.to_string());
    }
    if start > 0 {
        body["prev_batch"] = json!(start.saturating_sub(limit).to_string());
    }
    Ok(body)
}

/// Users matching `term` (case-insensitive substring of the user id or display name)
/// among those `searcher` may see; at most `limit`, and whether there were more.
pub fn search_users(
    c: &Connection,
    searcher: &str,
    term: &str,
    limit: usize,
) -> Result<(Vec<storage::DirectoryUser>, bool), Error> {
    let term = term.trim().to_lowercase();
    let mut found: Vec<storage::DirectoryUser> = storage::visible_users(c, searcher)?
        .into_iter()
        .filter(|u| {
            !term.is_empty()
                && (u.user_id.to_lowercase().contains(&term)
                    || u.display_name
                        .as_deref()
                        .is_some_and(|n| n.to_lowercase().contains(&term)))
        })
        .collect();
    // Display-name prefix matches first, then by user id.
    found.sort_by_key(|u| {
        let prefix = u
            .display_name
            .as_deref()
            .is_some_and(|n| n.to_lowercase().starts_with(&term))
            || u.user_id
                .get(1..)
                .is_some_and(|l| l.to_lowercase().starts_with(&term));
        (!prefix, u.user_id.clone())
    });
    let limited = found.len() > limit;
    found.truncate(limit);
    Ok((found, limited))
}
