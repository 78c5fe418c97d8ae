//! A space and its direct children as another server may see them (the handler of
//! `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=` is in `api/`) (one level, no pagination, as the spec's federation version says).
//!
//! A room is accessible to the origin when the origin has a joined member, or the room
//! is world-readable, or its join rule lets the origin's users in without an invite
//! (`public`, `knock`, `knock_restricted`, or `restricted` with an allowed room the
//! origin is in). An inaccessible space is `404`; an inaccessible child is listed in
//! `inaccessible_children`; children this server does not know are left out.

use rusqlite::Connection;
use serde_json::{Value, json};

use super::summary::{RoomSummary, room_summary};
use super::visible::{check_server_acl, content, load_pdu, server_in_room};
use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Most `m.space.child` entries considered for one space.
const MAX_CHILDREN: usize = 500;

/// The space `room` as `origin` may see it: the room with its `children_state`, its
/// accessible children (each with theirs) and the ids of the inaccessible ones.
pub fn hierarchy(
    server: &Server,
    origin: &str,
    room: &str,
    suggested_only: bool,
) -> Result<Value, Error> {
    server.db.read_tx(|c| {
        let not_found = || Error::NotFound(format!("room {room} is not known here"));
        let summary = room_summary(c, room)?.ok_or_else(not_found)?;
        check_server_acl(c, room, origin)?;
        if !accessible(c, &summary, origin)? {
            return Err(not_found());
        }
        let children_state = children_state(c, room, suggested_only)?;
        let mut children = Vec::new();
        let mut inaccessible = Vec::new();
        for child in &children_state {
            let Some(child_id) = child["state_key"].as_str() else {
                continue;
            };
            let Some(s) = room_summary(c, child_id)? else {
                continue;
            };
            let ok = check_server_acl(c, child_id, origin).is_ok() && accessible(c, &s, origin)?;
            if ok {
                let mut json = s.json.clone();
                json["children_state"] = json!(self::children_state(c, child_id, false)?);
                children.push(json);
            } else {
                inaccessible.push(child_id.to_owned());
            }
        }
        let mut room_json = summary.json;
        room_json["children_state"] = json!(children_state);
        Ok(json!({
            "room": room_json,
            "children": children,
            "inaccessible_children": inaccessible,
        }))
    })
}

fn accessible(c: &Connection, room: &RoomSummary, origin: &str) -> Result<bool, Error> {
    accessible_with(room, |id| server_in_room(c, id, origin))
}

/// Whether someone may see a room in a hierarchy, given `in_room` (whether they are in
/// a room): they are in it, or it is world-readable, or its join rule lets them in
/// without an invite. Shared by the federation and the client hierarchy.
pub(crate) fn accessible_with(
    room: &RoomSummary,
    in_room: impl Fn(&str) -> Result<bool, Error>,
) -> Result<bool, Error> {
    if room.world_readable || in_room(&room.room_id)? {
        return Ok(true);
    }
    Ok(match room.join_rule.as_str() {
        "public" | "knock" | "knock_restricted" => true,
        "restricted" => {
            let mut any = false;
            for allowed in room.json["allowed_room_ids"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(id) = allowed.as_str()
                    && in_room(id)?
                {
                    any = true;
                    break;
                }
            }
            any
        }
        _ => false,
    })
}

/// The room's current `m.space.child` events with a non-empty `via`, as stripped state
/// with `origin_server_ts`, ordered by state key.
pub(crate) fn children_state(
    c: &Connection,
    room_id: &str,
    suggested_only: bool,
) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for ((ty, state_key), event_id) in storage::current_state(c, room_id)? {
        if ty != "m.space.child" || out.len() >= MAX_CHILDREN {
            continue;
        }
        let Some(ev) = load_pdu(c, &event_id)? else {
            continue;
        };
        let content = content(&ev);
        let has_via = content["via"].as_array().is_some_and(|v| !v.is_empty());
        if !has_via || (suggested_only && content["suggested"] != json!(true)) {
            continue;
        }
        out.push(json!({
            "type": ty,
            "state_key": state_key,
            "content": content,
            "sender": ev.sender,
            "origin_server_ts": ev.origin_server_ts,
        }));
    }
    Ok(out)
}
