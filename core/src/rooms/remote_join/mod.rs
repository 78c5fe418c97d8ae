//! Rooms that span nodes: joining, leaving and inviting over federation.
//!
//! Resident side (this node is in the room, another asks to join or leave):
//! [`membership_template`] answers `make_join`/`make_leave`; the signed event then comes
//! back through the ordinary receipt checks ([`receive_pdu`](super::receive_pdu)) and
//! [`state_and_auth_chain_before`] gives the room state the joining server needs.
//!
//! Joining side ([`join_remote`]): `make_join` against each candidate server in turn,
//! fill in and sign the template, `send_join`, then check every returned state and
//! auth-chain event (format, signatures, hashes, auth against its auth events, in
//! dependency order), store them as outliers, register the room and put the join into
//! the timeline on top of the returned state, which becomes the room's current state.
//!
//! Invites: [`invite_remote`] builds an invite on the local room, has the invitee's
//! server counter-sign it, then persists it; [`receive_invite`] is the invitee's side.
//! [`leave_remote`] rejects an invite to a room this node is not in.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use ruma::CanonicalJsonValue;
use ruma::api::federation::membership::{
    create_invite, create_join_event, create_leave_event, prepare_join_event, prepare_knock_event,
    prepare_leave_event,
};
use ruma::events::TimelineEventType;
use ruma::signatures::{sign_event, verify_json};
use ruma::state_res;
use rusqlite::Connection;
use serde_json::value::RawValue as RawJsonValue;
use serde_json::{Map, Value, json};

use super::append::{
    Accepted, NewCurrentState, build_local_event, dag_fields, persist, persist_accepted,
};
use super::join::join_content;
use super::knock::{KNOCK_VIA, check_knock_allowed};
use super::receive::{Checked, Mode, Room, check_against, check_pdu, dependency_order};
use super::restricted::{JoinPolicy, check_join};
use crate::error::Error;
use crate::events::{
    NewEvent, Pdu, build_pdu, parse_references, references_json, rules_for, stripped_state,
};
use crate::federation::client::{execute, parse_id};
use crate::identity::public_key_from_server_name;
use crate::server::Server;
use crate::storage::{self, EventStatus, StateMap, StoredEvent, next_stream_position, now_ms};

/// Room versions this server can join (the same as it can create).
pub use crate::events::SUPPORTED_ROOM_VERSIONS;
/// Most state events accepted from a `send_join` answer.
pub const MAX_JOIN_STATE: usize = 10_000;
/// Most auth-chain events accepted from a `send_join` answer.
pub const MAX_JOIN_AUTH_CHAIN: usize = 20_000;
/// Most stripped-state entries kept with a remote invite.
const MAX_INVITE_STATE: usize = 50;

fn server_of(user_id: &str) -> Option<&str> {
    user_id.rsplit_once(':').map(|(_, s)| s)
}

// ---------------------------------------------------------------------------------------
// Resident side
// ---------------------------------------------------------------------------------------

/// The `make_join` / `make_leave` answer: the room version and an unsigned event
/// template with prev events (the forward extremities), auth events and depth.
///
/// Joins: the room must be public, or the user must have a pending invite, or (a
/// restricted room) be a member of an allowed room as this server (`server_name`) sees
/// it; the template then names a local user in `join_authorised_via_users_server`,
/// and its auth events include that user's membership. Knocks: see
/// `check_knock_allowed`. Leaves: the user must be joined, invited or knocking.
pub fn membership_template(
    c: &Connection,
    server_name: &str,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<(String, Value), Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Err(Error::NotFound(format!("room {room_id} is not known here")));
    };
    let (_, rules) = rules_for(&version)?;
    let mut content = json!({ "membership": membership });
    let current = storage::membership(c, room_id, user_id)?.map(|(m, _, _)| m);
    if membership == "join" {
        if let JoinPolicy::Authorised(via) = check_join(c, server_name, room_id, user_id)? {
            content["join_authorised_via_users_server"] = json!(via);
        }
    } else if membership == "knock" {
        check_knock_allowed(c, room_id, user_id, current.as_deref())?;
    } else if !matches!(
        current.as_deref(),
        Some("invite") | Some("join") | Some("knock")
    ) {
        return Err(Error::Forbidden(format!(
            "{user_id} is not joined to, invited into or knocking on {room_id}"
        )));
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(user_id.to_owned()),
        content: content.clone(),
        sender: user_id.to_owned(),
        redacts: None,
    };
    let (prev, auth_events, depth) = dag_fields(c, room_id, &rules, &ev)?;
    let template = json!({
        "room_id": room_id,
        "type": "m.room.member",
        "sender": user_id,
        "state_key": user_id,
        "content": content,
        "origin": server_of(user_id).unwrap_or_default(),
        "origin_server_ts": now_ms(),
        "depth": depth,
        "prev_events": references_json(&prev, &rules.event_format),
        "auth_events": references_json(&auth_events, &rules.event_format),
    });
    Ok((version, template))
}

/// The room state before a timeline event (full PDUs) and the union of the auth chains
/// of that state and of the event, as `send_join` answers.
pub fn state_and_auth_chain_before(
    c: &Connection,
    event_id: &str,
) -> Result<(Vec<Value>, Vec<Value>), Error> {
    let Some(ev) = storage::get_event(c, event_id)? else {
        return Err(Error::NotFound(format!(
            "event {event_id} is not in a timeline here"
        )));
    };
    let state = match ev.state_group_before {
        Some(g) => storage::load_state_group(c, g)?,
        None => StateMap::new(),
    };
    let mut state_events = Vec::with_capacity(state.len());
    let mut roots: Vec<StoredEvent> = vec![ev];
    for id in state.values() {
        if let Some(e) = storage::get_state_event(c, id)? {
            state_events.push(serde_json::from_str::<Value>(&e.json)?);
            roots.push(e);
        }
    }
    let mut seen: HashSet<String> = HashSet::new();
    let mut queue: VecDeque<String> = roots.iter().flat_map(auth_refs).collect();
    let mut chain = Vec::new();
    while let Some(id) = queue.pop_front() {
        if chain.len() >= MAX_JOIN_AUTH_CHAIN || !seen.insert(id.clone()) {
            continue;
        }
        let Some(e) = storage::get_event_any(c, &id)? else {
            continue;
        };
        if e.status == EventStatus::Rejected {
            continue;
        }
        queue.extend(auth_refs(&e));
        chain.push(serde_json::from_str::<Value>(&e.json)?);
    }
    // v12 rooms never list their create event; joining servers need it all the same.
    if let Some(create_id) =
        storage::current_state_event(c, &roots[0].room_id, "m.room.create", "")?
        && !seen.contains(&create_id)
        && let Some(e) = storage::get_event_any(c, &create_id)?
    {
        chain.push(serde_json::from_str::<Value>(&e.json)?);
    }
    Ok((state_events, chain))
}

fn auth_refs(e: &StoredEvent) -> Vec<String> {
    crate::events::reference_ids_in(&e.json, "auth_events")
}

/// The event id a PDU has in `version` (its reference hash; its `event_id` field in
/// versions 1 and 2), for checking the id a `send_join`/`send_leave`/`invite` path names.
pub fn event_id_of(pdu: &Value, version: &str) -> Result<String, Error> {
    let (_, rules) = rules_for(version)?;
    let mut object = match CanonicalJsonValue::try_from(pdu.clone()) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => {
            return Err(Error::BadJson(
                "the event is not a canonical JSON object".into(),
            ));
        }
    };
    object.remove("unsigned");
    crate::events::event_id_of(&object, &rules).map_err(Error::BadJson)
}

// ---------------------------------------------------------------------------------------
// Joining side
// ---------------------------------------------------------------------------------------

/// Candidate servers, in order, without duplicates, this server or non-P2P names.
pub(super) fn candidates(server: &Server, via: Vec<String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in via {
        if s != server.server_name()
            && public_key_from_server_name(&s).is_some()
            && !out.contains(&s)
        {
            out.push(s);
        }
    }
    out
}

pub(super) fn outlier(
    pdu: &Pdu,
    room_id: &str,
    json: String,
    unsigned: Option<String>,
    c: &Connection,
) -> Result<StoredEvent, Error> {
    Ok(StoredEvent {
        stream_ordering: -next_stream_position(c)?,
        event_id: pdu.event_id.to_string(),
        room_id: room_id.to_owned(),
        kind: pdu.kind.to_string(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        depth: pdu.depth,
        origin_server_ts: i64::from(pdu.origin_server_ts.get()),
        json,
        unsigned,
        redacted_by: None,
        state_group_before: None,
        txn_device: None,
        txn_id: None,
        status: EventStatus::Outlier,
        rejection_reason: None,
        state_group_after: None,
        room_state_group: None,
    })
}

// ---------------------------------------------------------------------------------------
// Invites
// ---------------------------------------------------------------------------------------

mod invite;
mod join;
mod leave;
mod resident;
#[cfg(test)]
mod tests;

pub(super) use invite::invite_room_state;
pub use invite::{invite_remote, inviting_server, membership_server, receive_invite};
pub use join::join_remote;
pub(super) use join::make_membership;
pub use leave::leave_remote;
pub use resident::{JoinAnswer, accept_membership, join_answer};
