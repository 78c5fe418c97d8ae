//! The client space hierarchy (`GET /_matrix/client/v1/rooms/{roomId}/hierarchy`): a
//! breadth-first walk of `m.space.child` events from a space, with the federation
//! hierarchy's accessibility rule applied to a user. Rooms this server knows are read
//! from its state; a child it does not know is asked for with the federation
//! `hierarchy` of one of the child event's `via` servers (at most [`MAX_REMOTE_FETCHES`]
//! requests per page, answers checked and reduced to the summary fields), whose answer
//! also describes that room's own children.
//!
//! Pagination re-walks from the root and skips the rooms already returned: the walk is
//! deterministic for a given state and bounded by [`MAX_WALK`], so a token is just the
//! count plus the parameters it was made with (a token used with other parameters is
//! refused, as the spec asks).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::federation::client::execute;
use crate::federation::hierarchy::{accessible_with, children_state};
use crate::federation::summary::{RoomSummary, room_summary};
use crate::federation::warren_api::Hierarchy;
use crate::identity::public_key_from_server_name;
use crate::server::Server;
use crate::storage;

/// Most rooms one walk visits (all pages together).
pub const MAX_WALK: usize = 1000;
/// Rooms per page when the client gives no limit, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 50;
/// The highest `limit` honoured.
pub const MAX_LIMIT: usize = 100;
/// Most federation `hierarchy` requests one page makes.
pub const MAX_REMOTE_FETCHES: usize = 10;
/// `via` servers tried for one unknown room.
const MAX_VIA_TRIES: usize = 2;
/// Most `children_state` entries taken from a remote room.
const MAX_REMOTE_CHILDREN: usize = 500;

/// Parameters of one hierarchy request.
#[derive(Clone, Debug)]
pub struct HierarchyRequest {
    /// Only children marked `suggested`.
    pub suggested_only: bool,
    /// How deep to walk (`None`: unbounded, within [`MAX_WALK`]).
    pub max_depth: Option<usize>,
    /// Rooms per page.
    pub limit: usize,
    /// A `next_batch` token of an earlier page.
    pub from: Option<String>,
}

fn token(skip: usize, req: &HierarchyRequest) -> String {
    let depth = req
        .max_depth
        .map(|d| d.to_string())
        .unwrap_or_else(|| "-".into());
    format!("{skip}_{}_{depth}", u8::from(req.suggested_only))
}

fn parse_token(from: &str, req: &HierarchyRequest) -> Result<usize, Error> {
    let bad = || Error::InvalidParam(format!("invalid from token {from:?}"));
    let (skip, rest) = from.split_once('_').ok_or_else(bad)?;
    let skip: usize = skip.parse().map_err(|_| bad())?;
    if token(skip, req) != format!("{skip}_{rest}") {
        return Err(Error::InvalidParam(
            "the from token was made with other suggested_only or max_depth".into(),
        ));
    }
    Ok(skip)
}

/// Whether `user` is joined to or invited into `room_id`.
fn user_in_room(c: &Connection, room_id: &str, user: &str) -> Result<bool, Error> {
    Ok(matches!(
        storage::membership(c, room_id, user)?
            .map(|(m, _, _)| m)
            .as_deref(),
        Some("join") | Some("invite")
    ))
}

/// The `order` of an `m.space.child` content when valid (printable ASCII, ≤ 50 chars).
fn order_of(child: &Value) -> Option<String> {
    child["content"]["order"]
        .as_str()
        .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        .map(str::to_owned)
}

/// The spec's order of children: `order` (rooms with one first), then the child event's
/// timestamp, then the room id.
fn sort_children(children: &mut [Value]) {
    children.sort_by(|a, b| {
        let key = |v: &Value| {
            (
                order_of(v).is_none(),
                order_of(v),
                v["origin_server_ts"].as_i64().unwrap_or(0),
                v["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        };
        key(a).cmp(&key(b))
    });
}

/// A room as the walk sees it: its summary and its `m.space.child` events.
#[derive(Clone)]
struct Entry {
    summary: RoomSummary,
    children: Vec<Value>,
}

/// The summary fields a remote room may contribute, type-checked; `None` when the
/// answer is not a summary of `room_id`.
fn remote_summary(room_id: &str, v: &Value) -> Option<RoomSummary> {
    if v["room_id"] != room_id {
        return None;
    }
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room_id));
    for key in [
        "name",
        "topic",
        "canonical_alias",
        "avatar_url",
        "join_rule",
        "room_type",
        "room_version",
        "encryption",
    ] {
        if let Some(s) = v[key].as_str().filter(|s| s.len() <= 1024) {
            out.insert(key.into(), json!(s));
        }
    }
    for key in ["world_readable", "guest_can_join"] {
        out.insert(key.into(), json!(v[key].as_bool().unwrap_or(false)));
    }
    let members = v["num_joined_members"].as_i64().unwrap_or(0).max(0);
    out.insert("num_joined_members".into(), json!(members));
    if let Some(allowed) = v["allowed_room_ids"].as_array() {
        let ids: Vec<&str> = allowed.iter().filter_map(Value::as_str).take(50).collect();
        out.insert("allowed_room_ids".into(), json!(ids));
    }
    let join_rule = out
        .get("join_rule")
        .and_then(Value::as_str)
        .unwrap_or("invite")
        .to_owned();
    Some(RoomSummary {
        room_id: room_id.to_owned(),
        num_joined_members: members,
        world_readable: out["world_readable"] == true,
        join_rule,
        json: Value::Object(out),
    })
}

/// A remote room's `children_state`, keeping only well-formed `m.space.child` entries.
fn remote_children(v: &Value, suggested_only: bool) -> Vec<Value> {
    v.as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.space.child")
        .filter_map(|e| {
            let key = e["state_key"].as_str()?;
            ruma::RoomId::parse(key).ok()?;
            let via: Vec<&str> = e["content"]["via"]
                .as_array()?
                .iter()
                .filter_map(Value::as_str)
                .take(20)
                .collect();
            if via.is_empty() || (suggested_only && e["content"]["suggested"] != true) {
                return None;
            }
            let mut content = json!({"via": via});
            if let Some(o) = e["content"]["order"].as_str().filter(|o| o.len() <= 50) {
                content["order"] = json!(o);
            }
            if let Some(s) = e["content"]["suggested"].as_bool() {
                content["suggested"] = json!(s);
            }
            Some(json!({
                "type": "m.space.child",
                "state_key": key,
                "content": content,
                "sender": e["sender"].as_str().unwrap_or_default(),
                "origin_server_ts": e["origin_server_ts"].as_i64().unwrap_or(0),
            }))
        })
        .take(MAX_REMOTE_CHILDREN)
        .collect()
}

/// Rooms learnt from other servers during one request.
#[derive(Default)]
struct Remote {
    known: HashMap<String, Entry>,
    fetches: usize,
}

impl Remote {
    /// Ask the `via` servers for an unknown room's hierarchy; keep the room and the
    /// children it describes.
    async fn fetch(
        &mut self,
        server: &Arc<Server>,
        room_id: &str,
        via: &[String],
        suggested_only: bool,
    ) -> Option<Entry> {
        if let Some(e) = self.known.get(room_id) {
            return Some(e.clone());
        }
        let candidates = via
            .iter()
            .filter(|s| *s != server.server_name() && public_key_from_server_name(s).is_some())
            .take(MAX_VIA_TRIES);
        for dest in candidates {
            if self.fetches >= MAX_REMOTE_FETCHES {
                return None;
            }
            self.fetches += 1;
            let request = Hierarchy {
                room_id: room_id.to_owned(),
                suggested_only,
            };
            let answer = match execute(server, dest, request).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::info!(%room_id, %dest, error = %e, "remote hierarchy failed");
                    continue;
                }
            };
            let Some(summary) = remote_summary(room_id, &answer.room) else {
                continue;
            };
            let entry = Entry {
                summary,
                children: remote_children(&answer.room["children_state"], suggested_only),
            };
            for child in answer.children.iter().take(MAX_REMOTE_CHILDREN) {
                if let Some(id) = child["room_id"].as_str()
                    && let Some(summary) = remote_summary(id, child)
                {
                    let children = remote_children(&child["children_state"], suggested_only);
                    self.known
                        .entry(id.to_owned())
                        .or_insert(Entry { summary, children });
                }
            }
            self.known.insert(room_id.to_owned(), entry.clone());
            return Some(entry);
        }
        None
    }
}

/// The room as `user` may see it: known here, or fetched from `via`; `None` when it is
/// unknown or not visible to them.
async fn entry_for(
    server: &Arc<Server>,
    remote: &mut Remote,
    user: &str,
    room_id: &str,
    via: &[String],
    suggested_only: bool,
) -> Result<Option<Entry>, Error> {
    let local = server.db.read_tx(|c| {
        let Some(summary) = room_summary(c, room_id)? else {
            return Ok(None);
        };
        let visible = accessible_with(&summary, |r| user_in_room(c, r, user))?;
        let children = children_state(c, room_id, suggested_only)?;
        Ok(Some((visible, Entry { summary, children })))
    })?;
    let entry = match local {
        Some((true, entry)) => entry,
        Some((false, _)) => return Ok(None),
        None => match remote.fetch(server, room_id, via, suggested_only).await {
            Some(entry) => entry,
            None => return Ok(None),
        },
    };
    // A remote room is shown by the same rule, the memberships being this server's.
    let visible = server
        .db
        .read(|c| accessible_with(&entry.summary, |r| user_in_room(c, r, user)))?;
    Ok(visible.then_some(entry))
}

/// One page of the hierarchy under `root` as `user` sees it: `{rooms, next_batch?}`.
/// The root must be a room this server knows and visible to the user (else 403, as
/// Synapse answers).
pub async fn space_hierarchy(
    server: &Arc<Server>,
    user: &str,
    root: &str,
    req: &HierarchyRequest,
) -> Result<Value, Error> {
    let skip = match &req.from {
        Some(f) => parse_token(f, req)?,
        None => 0,
    };
    let limit = req.limit.clamp(1, MAX_LIMIT);
    let mut remote = Remote::default();
    if entry_for(server, &mut remote, user, root, &[], req.suggested_only)
        .await?
        .is_none()
    {
        return Err(Error::Forbidden(format!(
            "you may not see the hierarchy of {root}"
        )));
    }
    let mut seen: HashSet<String> = HashSet::from([root.to_owned()]);
    let mut queue: VecDeque<(String, usize, Vec<String>)> =
        VecDeque::from([(root.to_owned(), 0, Vec::new())]);
    let mut rooms = Vec::new();
    let mut walked = 0usize;
    while let Some((room_id, depth, via)) = queue.pop_front() {
        if walked >= MAX_WALK {
            break;
        }
        let Some(entry) = entry_for(
            server,
            &mut remote,
            user,
            &room_id,
            &via,
            req.suggested_only,
        )
        .await?
        else {
            continue;
        };
        let mut children = entry.children;
        sort_children(&mut children);
        if req.max_depth.is_none_or(|max| depth < max) {
            for child in &children {
                if let Some(id) = child["state_key"].as_str()
                    && seen.insert(id.to_owned())
                {
                    let via: Vec<String> = child["content"]["via"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect();
                    queue.push_back((id.to_owned(), depth + 1, via));
                }
            }
        }
        walked += 1;
        if walked <= skip {
            continue;
        }
        let mut json = entry.summary.json;
        json["children_state"] = json!(children);
        rooms.push(json);
        if rooms.len() >= limit {
            break;
        }
    }
    let mut body = json!({ "rooms": rooms });
    let more = !queue.is_empty() && walked < MAX_WALK;
    if rooms.len() >= limit && more {
        body["next_batch"] = json!(token(walked, req));
    }
    Ok(body)
}
