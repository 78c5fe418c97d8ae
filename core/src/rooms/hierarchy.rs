//! The client space hierarchy (`GET /_matrix/client/v1/rooms/{roomId}/hierarchy`): a
//! breadth-first walk of `m.space.child` events from a space, over the rooms this server
//! knows, with the federation hierarchy's accessibility rule applied to a user.
//!
//! Pagination re-walks from the root and skips the rooms already returned: the walk is
//! deterministic for a given state and bounded by [`MAX_WALK`], so a token is just the
//! count plus the parameters it was made with (a token used with other parameters is
//! refused, as the spec asks).

use std::collections::{HashSet, VecDeque};

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::error::Error;
use crate::federation::hierarchy::{accessible_with, children_state};
use crate::federation::summary::room_summary;
use crate::storage;

/// Most rooms one walk visits (all pages together).
pub const MAX_WALK: usize = 1000;
/// Rooms per page when the client gives no limit, and the most it may ask for.
pub const DEFAULT_LIMIT: usize = 50;
/// The highest `limit` honoured.
pub const MAX_LIMIT: usize = 100;

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

/// One page of the hierarchy under `root` as `user` sees it: `{rooms, next_batch?}`.
/// The root must be visible to the user (else 403, as Synapse answers).
pub fn space_hierarchy(
    c: &Connection,
    user: &str,
    root: &str,
    req: &HierarchyRequest,
) -> Result<Value, Error> {
    let skip = match &req.from {
        Some(f) => parse_token(f, req)?,
        None => 0,
    };
    let limit = req.limit.clamp(1, MAX_LIMIT);
    let visible = |id: &str| -> Result<Option<crate::federation::summary::RoomSummary>, Error> {
        let Some(s) = room_summary(c, id)? else {
            return Ok(None);
        };
        Ok(accessible_with(&s, |r| user_in_room(c, r, user))?.then_some(s))
    };
    if visible(root)?.is_none() {
        return Err(Error::Forbidden(format!(
            "you may not see the hierarchy of {root}"
        )));
    }
    let mut seen: HashSet<String> = HashSet::from([root.to_owned()]);
    let mut queue: VecDeque<(String, usize)> = VecDeque::from([(root.to_owned(), 0)]);
    let mut rooms = Vec::new();
    let mut walked = 0usize;
    while let Some((room_id, depth)) = queue.pop_front() {
        if walked >= MAX_WALK {
            break;
        }
        let Some(summary) = visible(&room_id)? else {
            continue;
        };
        let mut children = children_state(c, &room_id, req.suggested_only)?;
        // The spec's order: `order` (rooms with one first), then the child event's
        // timestamp, then the room id.
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
        if req.max_depth.is_none_or(|max| depth < max) {
            for child in &children {
                if let Some(id) = child["state_key"].as_str()
                    && seen.insert(id.to_owned())
                {
                    queue.push_back((id.to_owned(), depth + 1));
                }
            }
        }
        walked += 1;
        if walked <= skip {
            continue;
        }
        let mut json = summary.json;
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
