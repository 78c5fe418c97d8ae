//! What another server may read of a room, and the one place every federation event
//! read goes through ([`load_pdu`]).
//!
//! Authorisation of a room read ([`authorize_room_read`]):
//!
//! 1. the room must be known here, else `404 M_NOT_FOUND`;
//! 2. the origin must pass the room's current `m.room.server_acl`, else `403`;
//! 3. the origin must have at least one user with membership `join` in the room, or the
//!    room's current history visibility must be `world_readable`, else `403`.
//!
//! Each event handed out is then checked against the history visibility and the
//! origin's memberships in the state *after* that event, as Synapse's
//! `filter_events_for_server` does: `world_readable` events are readable by anyone who
//! passed the gate, `shared` events by servers in the room now, `invited` events by
//! servers with a user joined or invited at the time, `joined` (and unknown values) by
//! servers with a user joined at the time. An event the origin may not see is handed
//! out redacted (by the room version's rules), so the DAG stays walkable without
//! leaking content.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use ruma::events::room::server_acl::RoomServerAclEventContent;
use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;
use serde_json::Value;

use crate::error::Error;
use crate::events::{redact_json, rules_for};
use crate::storage::{self, StateMap, StoredEvent};

/// Load one event for federation. Every federation read of an event goes through here.
pub fn load_pdu(c: &Connection, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    // `get_event` only returns timeline events: rejected, soft-failed and outlier events
    // (migration 6 `status`) are never served over federation.
    storage::get_event(c, event_id)
}

/// An event of a room's state or of an auth chain. Besides timeline events these are
/// outliers: a node that joined over federation has the state and auth chain from
/// before its join only as outliers, and a `/state` or auth chain without them would
/// leave out the room's create event, its power levels and older members. Rejected and
/// soft-failed events are never served.
fn load_state_pdu(c: &Connection, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    Ok(storage::get_event_any(c, event_id)?.filter(|e| {
        matches!(
            e.status,
            storage::EventStatus::Timeline | storage::EventStatus::Outlier
        )
    }))
}

/// An event of `room_id`, or `404 M_NOT_FOUND` (unknown, or in another room).
pub fn load_room_pdu(c: &Connection, room_id: &str, event_id: &str) -> Result<StoredEvent, Error> {
    match load_pdu(c, event_id)? {
        Some(ev) if ev.room_id == room_id => Ok(ev),
        _ => Err(Error::NotFound(format!(
            "event {event_id} is not known in room {room_id}"
        ))),
    }
}

/// The event ids in a stored PDU's `prev_events` or `auth_events` (either format).
pub fn event_refs(ev: &StoredEvent, field: &str) -> Vec<String> {
    crate::events::reference_ids_in(&ev.json, field)
}

/// The `content` of a stored PDU (`{}` when absent or unreadable).
pub fn content(ev: &StoredEvent) -> Value {
    serde_json::from_str::<Value>(&ev.json)
        .ok()
        .and_then(|mut v| v.get_mut("content").map(Value::take))
        .unwrap_or_else(|| Value::Object(Default::default()))
}

/// The content of the current state event `(ty, state_key)`, if any.
pub fn current_state_content(
    c: &Connection,
    room_id: &str,
    ty: &str,
    state_key: &str,
) -> Result<Option<Value>, Error> {
    match storage::current_state_event(c, room_id, ty, state_key)? {
        // Current state may hold outliers (the state handed over on a remote join).
        Some(id) => Ok(storage::get_state_event(c, &id)?.map(|e| content(&e))),
        None => Ok(None),
    }
}

/// The room's current `m.room.history_visibility` (`shared` when unset).
pub fn current_history_visibility(c: &Connection, room_id: &str) -> Result<String, Error> {
    Ok(
        current_state_content(c, room_id, "m.room.history_visibility", "")?
            .and_then(|v| v["history_visibility"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "shared".into()),
    )
}

/// `403 M_FORBIDDEN` when the room's current `m.room.server_acl` denies `origin`.
/// A missing ACL allows everyone; an ACL whose content cannot be read is ignored, as
/// the auth rules do not validate it either.
pub fn check_server_acl(c: &Connection, room_id: &str, origin: &str) -> Result<(), Error> {
    let Some(acl) = current_state_content(c, room_id, "m.room.server_acl", "")? else {
        return Ok(());
    };
    let Ok(acl) = serde_json::from_value::<RoomServerAclEventContent>(acl) else {
        return Ok(());
    };
    let allowed = ruma::ServerName::parse(origin).is_ok_and(|name| acl.is_allowed(&name));
    if allowed {
        Ok(())
    } else {
        Err(Error::Forbidden(format!(
            "server {origin} is denied by the server ACL of {room_id}"
        )))
    }
}

/// Whether `origin` has a user joined to `room_id` now.
pub fn server_in_room(c: &Connection, room_id: &str, origin: &str) -> Result<bool, Error> {
    storage::server_has_joined_member(c, room_id, origin)
}

/// A room read that passed [`authorize_room_read`]: renders events for the origin.
#[derive(Debug)]
pub struct RoomRead {
    /// The room.
    pub room_id: String,
    /// The requesting server.
    pub origin: String,
    /// Whether the origin has a joined user now (else the room is world-readable).
    pub origin_joined: bool,
    rules: RoomVersionRules,
}

/// Authorise `origin` to read `room_id` (see the module documentation).
pub fn authorize_room_read(c: &Connection, room_id: &str, origin: &str) -> Result<RoomRead, Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Err(Error::NotFound(format!("room {room_id} is not known here")));
    };
    check_server_acl(c, room_id, origin)?;
    let origin_joined = server_in_room(c, room_id, origin)?;
    if !origin_joined && current_history_visibility(c, room_id)? != "world_readable" {
        return Err(Error::Forbidden(format!(
            "server {origin} is not in room {room_id}"
        )));
    }
    let (_, rules) = rules_for(&version)?;
    Ok(RoomRead {
        room_id: room_id.to_owned(),
        origin: origin.to_owned(),
        origin_joined,
        rules,
    })
}

/// History visibility and the origin's users' memberships in one state.
#[derive(Clone, Debug, Default)]
struct ServerView {
    history: Option<String>,
    memberships: BTreeMap<String, String>,
}

impl RoomRead {
    /// The PDUs as the origin may see them, in the given order.
    pub fn render(&self, c: &Connection, events: &[StoredEvent]) -> Result<Vec<Value>, Error> {
        let mut cache = HashMap::new();
        events
            .iter()
            .map(|ev| self.render_one(c, ev, &mut cache))
            .collect()
    }

    /// PDUs handed out without a per-event check: room state and auth chains, which
    /// the origin needs to authorise anything and which the gate already allowed.
    pub fn render_state(&self, events: &[StoredEvent]) -> Result<Vec<Value>, Error> {
        events
            .iter()
            .map(|ev| Ok(serde_json::from_str(&ev.json)?))
            .collect()
    }

    fn render_one(
        &self,
        c: &Connection,
        ev: &StoredEvent,
        cache: &mut HashMap<Option<i64>, ServerView>,
    ) -> Result<Value, Error> {
        let json = if self.visible(c, ev, cache)? {
            ev.json.clone()
        } else {
            redact_json(&ev.json, &self.rules)?
        };
        Ok(serde_json::from_str(&json)?)
    }

    /// Whether the origin may see `ev` unredacted.
    fn visible(
        &self,
        c: &Connection,
        ev: &StoredEvent,
        cache: &mut HashMap<Option<i64>, ServerView>,
    ) -> Result<bool, Error> {
        let group = ev.state_group_before;
        let mut view = match cache.get(&group) {
            Some(v) => v.clone(),
            None => {
                let v = self.view_of(c, group)?;
                cache.insert(group, v.clone());
                v
            }
        };
        // The state *after* the event: a server sees its own join, and the event that
        // makes a room world-readable is world-readable.
        if let Some(sk) = &ev.state_key {
            if ev.kind == "m.room.history_visibility" && sk.is_empty() {
                view.history = content(ev)["history_visibility"]
                    .as_str()
                    .map(str::to_owned);
            } else if ev.kind == "m.room.member" && self.is_origin_user(sk) {
                let m = content(ev)["membership"]
                    .as_str()
                    .unwrap_or("leave")
                    .to_owned();
                view.memberships.insert(sk.clone(), m);
            }
        }
        let has = |m: &str| view.memberships.values().any(|x| x == m);
        Ok(match view.history.as_deref().unwrap_or("shared") {
            "world_readable" => true,
            "shared" => self.origin_joined,
            "invited" => has("join") || has("invite"),
            _ => has("join"),
        })
    }

    fn is_origin_user(&self, user_id: &str) -> bool {
        user_id
            .rsplit_once(':')
            .is_some_and(|(_, server)| server == self.origin)
    }

    fn view_of(&self, c: &Connection, group: Option<i64>) -> Result<ServerView, Error> {
        let Some(group) = group else {
            return Ok(ServerView::default());
        };
        let state = storage::load_state_group(c, group)?;
        let mut view = ServerView::default();
        for ((ty, sk), id) in &state {
            let wanted = (ty == "m.room.history_visibility" && sk.is_empty())
                || (ty == "m.room.member" && self.is_origin_user(sk));
            if !wanted {
                continue;
            }
            let Some(ev) = load_pdu(c, id)? else { continue };
            let content = content(&ev);
            if ty == "m.room.member" {
                let m = content["membership"].as_str().unwrap_or("leave");
                view.memberships.insert(sk.clone(), m.to_owned());
            } else {
                view.history = content["history_visibility"].as_str().map(str::to_owned);
            }
        }
        Ok(view)
    }
}

/// The room state before `ev` (the state its prev events resolve to), as the spec's
/// `/state` and `/state_ids` define it. The create event has none; any other event
/// without a stored state group gives `404 M_NOT_FOUND` (we do not know its state).
pub fn state_before(c: &Connection, ev: &StoredEvent) -> Result<StateMap, Error> {
    match ev.state_group_before {
        Some(group) => storage::load_state_group(c, group),
        None if ev.kind == "m.room.create" && ev.state_key.as_deref() == Some("") => {
            Ok(StateMap::new())
        }
        None => Err(Error::NotFound(format!(
            "the state at {} is not known here",
            ev.event_id
        ))),
    }
}

/// The full auth chain of `seeds`: their `auth_events`, recursively, without the seeds
/// themselves unless one authorises another. Events missing here are left out. Sorted by
/// depth, then stream order, so a receiver can check them in order.
pub fn auth_chain(
    c: &Connection,
    room_id: &str,
    seeds: &[StoredEvent],
) -> Result<Vec<StoredEvent>, Error> {
    let mut seen = BTreeSet::new();
    let mut queue: VecDeque<String> = seeds
        .iter()
        .flat_map(|e| event_refs(e, "auth_events"))
        .collect();
    let mut out = Vec::new();
    while let Some(id) = queue.pop_front() {
        if !seen.insert(id.clone()) {
            continue;
        }
        let Some(ev) = load_state_pdu(c, &id)? else {
            continue;
        };
        if ev.room_id != room_id {
            continue;
        }
        queue.extend(event_refs(&ev, "auth_events"));
        out.push(ev);
    }
    out.sort_by_key(|e| (e.depth, e.stream_ordering));
    Ok(out)
}

/// The stored events of a state map, in `(type, state_key)` order.
pub fn state_events(c: &Connection, state: &StateMap) -> Result<Vec<StoredEvent>, Error> {
    let mut out = Vec::with_capacity(state.len());
    for id in state.values() {
        if let Some(ev) = load_state_pdu(c, id)? {
            out.push(ev);
        }
    }
    Ok(out)
}
