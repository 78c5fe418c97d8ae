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

/// Join `user_id` (local) to `room_id` through the first of `via` that lets us in.
/// Returns the join event id.
pub async fn join_remote(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    content: Map<String, Value>,
    via: Vec<String>,
) -> Result<String, Error> {
    let via = candidates(server, via);
    if via.is_empty() {
        return Err(Error::NotFound(format!(
            "room {room_id} is not known here and no server to join it through was given"
        )));
    }
    let mut last = None;
    for dest in via {
        match join_via(server, room_id, user_id, content.clone(), &dest).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "remote join failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("cannot join {room_id}"))))
}

/// `make_{membership}` on `dest`: the room version it names and the event template.
async fn make_template(
    server: &Server,
    dest: &str,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<(Option<String>, Box<RawJsonValue>), Error> {
    let (room, user) = (parse_id(room_id)?, parse_id(user_id)?);
    let ver = || {
        SUPPORTED_ROOM_VERSIONS
            .iter()
            .map(|v| parse_id(v))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match membership {
        "join" => {
            let mut request = prepare_join_event::v1::Request::new(room, user);
            request.ver = ver()?;
            let answer = execute(server, dest, request).await?;
            (answer.room_version.map(|v| v.to_string()), answer.event)
        }
        "knock" => {
            let mut request = prepare_knock_event::v1::Request::new(room, user);
            request.ver = ver()?;
            let answer = execute(server, dest, request).await?;
            (Some(answer.room_version.to_string()), answer.event)
        }
        "leave" => {
            let request = prepare_leave_event::v1::Request::new(room, user);
            let answer = execute(server, dest, request).await?;
            (answer.room_version.map(|v| v.to_string()), answer.event)
        }
        other => return Err(Error::internal(format!("no make_{other} endpoint"))),
    })
}

/// `make_*` then sign the template: the version and our signed event.
pub(super) async fn make_membership(
    server: &Arc<Server>,
    dest: &str,
    room_id: &str,
    user_id: &str,
    membership: &str,
    client_content: Map<String, Value>,
) -> Result<(String, String, ruma::CanonicalJsonObject), Error> {
    let (version, template) = make_template(server, dest, room_id, user_id, membership).await?;
    let version = version.ok_or_else(|| {
        Error::RemoteServer(format!("{dest}: make_{membership} without room_version"))
    })?;
    if !SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "room {room_id} has version {version}, which this server does not support"
        )));
    }
    let (_, rules) = rules_for(&version)?;
    let template: Value = serde_json::from_str(template.get())?;
    let t = &template;
    let bad =
        |what: &str| Error::RemoteServer(format!("{dest}: make_{membership} template: {what}"));
    if t["type"] != "m.room.member"
        || t["sender"] != user_id
        || t["state_key"] != user_id
        || t["content"]["membership"] != membership
    {
        return Err(bad("not our membership event"));
    }
    if t.get("room_id").is_some_and(|r| r != room_id) {
        return Err(bad("another room"));
    }
    // Kept as the resident wrote them (with their hashes in room versions 1 and 2).
    let refs =
        |field: &str| parse_references(t, field, &rules.event_format, 20).map_err(|e| bad(&e));
    let prev = refs("prev_events")?;
    let auth = refs("auth_events")?;
    let depth = t["depth"].as_i64().ok_or_else(|| bad("depth"))?;
    let mut content = if membership == "join" || membership == "knock" {
        let mut c = server
            .db
            .read(|c| join_content(c, user_id, client_content))?;
        c.insert("membership".into(), json!(membership));
        Value::Object(c)
    } else {
        let mut c = client_content;
        c.insert("membership".into(), json!(membership));
        Value::Object(c)
    };
    if membership == "join"
        && let Some(via) = t["content"].get("join_authorised_via_users_server")
    {
        // A restricted room: the resident names one of its users, and must sign the join
        // in `send_join` (the signature is checked on the event it gives back).
        let via = via
            .as_str()
            .and_then(|v| ruma::UserId::parse(v).ok())
            .filter(|v| v.server_name().as_str() == dest)
            .ok_or_else(|| bad("join_authorised_via_users_server is not a user of it"))?;
        content["join_authorised_via_users_server"] = json!(via);
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(user_id.to_owned()),
        content,
        sender: user_id.to_owned(),
        redacts: None,
    };
    let (event_id, object) = build_pdu(
        &server.identity,
        &rules,
        Some(room_id),
        &ev,
        &prev,
        &auth,
        depth,
        now_ms(),
    )?;
    Ok((version, event_id, object))
}

async fn join_via(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    content: Map<String, Value>,
    dest: &str,
) -> Result<String, Error> {
    let (version, event_id, object) =
        make_membership(server, dest, room_id, user_id, "join", content).await?;
    let request = create_join_event::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&event_id)?,
        serde_json::value::to_raw_value(&object)?,
    );
    let answer = serde_json::to_value(execute(server, dest, request).await?.room_state)?;
    let list = |key: &str, max: usize| -> Result<Vec<Value>, Error> {
        match answer.get(key) {
            Some(Value::Array(a)) if a.len() <= max => Ok(a.clone()),
            Some(Value::Array(a)) => Err(Error::RemoteServer(format!(
                "{dest}: send_join {key} has {} events, at most {max} accepted",
                a.len()
            ))),
            _ => Err(Error::RemoteServer(format!(
                "{dest}: send_join without {key}"
            ))),
        }
    };
    let state = list("state", MAX_JOIN_STATE)?;
    let auth_chain = list("auth_chain", MAX_JOIN_AUTH_CHAIN)?;
    // A restricted join comes back signed by the resident as well (checked with the
    // other signatures in `persist_remote_join`); otherwise the resident's copy, when it
    // is the same event, or ours.
    let authorised = object
        .get("content")
        .and_then(|c| match c {
            CanonicalJsonValue::Object(o) => o.get("join_authorised_via_users_server"),
            _ => None,
        })
        .is_some();
    let join_json = match answer.get("event").filter(|e| !e.is_null()) {
        Some(ev) if event_id_of(ev, &version).ok().as_deref() == Some(event_id.as_str()) => {
            ev.clone()
        }
        Some(_) => {
            return Err(Error::RemoteServer(format!(
                "{dest}: send_join answered with another event than our join"
            )));
        }
        None if authorised => {
            return Err(Error::RemoteServer(format!(
                "{dest}: send_join did not return the join it authorised"
            )));
        }
        None => serde_json::to_value(&object)?,
    };
    let joined = server.write(|c| {
        let joined = persist_remote_join(
            c, room_id, &version, join_json, state, auth_chain, &event_id,
        )?;
        // The history before the join is on `dest`: where backfilling starts.
        super::backfill::note_remote_join(c, room_id, &joined, dest)?;
        Ok(joined)
    })?;
    tracing::info!(%room_id, %dest, event_id = %joined, "joined a room over federation");
    // The room's avatar and its members' avatars came with the state, not as events:
    // queue them for prefetching too, so they outlive the devices that set them.
    let media = server.db.read(|c| state_media(server, c, room_id))?;
    crate::media::remote::prefetch(server, media);
    Ok(joined)
}

/// Most state events looked at for media to prefetch after a join (the room avatar,
/// then member avatars); the prefetch queue bounds what is fetched.
const MAX_JOIN_STATE_MEDIA: usize = 64;

/// Media of other servers named by the room's avatar and members' avatars.
fn state_media(
    server: &Server,
    c: &Connection,
    room_id: &str,
) -> Result<Vec<(String, String)>, Error> {
    let state = storage::current_state(c, room_id)?;
    let ids = state
        .iter()
        .filter(|((ty, _), _)| ty == "m.room.avatar")
        .chain(state.iter().filter(|((ty, _), _)| ty == "m.room.member"))
        .map(|(_, id)| id)
        .take(MAX_JOIN_STATE_MEDIA);
    let mut out = Vec::new();
    for id in ids {
        if let Some(pdu) = super::load_pdu(c, id)? {
            for item in crate::media::remote::remote_references(server, &pdu) {
                if !out.contains(&item) {
                    out.push(item);
                }
            }
        }
    }
    Ok(out)
}

/// Check and store the state and auth chain a resident gave us, then put our join into
/// the timeline on top of that state. Runs in one write transaction.
fn persist_remote_join(
    c: &Connection,
    room_id: &str,
    version: &str,
    join: Value,
    state: Vec<Value>,
    auth_chain: Vec<Value>,
    event_id: &str,
) -> Result<String, Error> {
    let (_, rules) = rules_for(version)?;
    let join = check_pdu(join, room_id, &rules).map_err(|(_, reason)| {
        Error::RemoteServer(format!("our join came back altered: {reason}"))
    })?;
    if join.event_id != event_id {
        return Err(Error::RemoteServer(
            "our join came back with another id".into(),
        ));
    }
    // The resident may have sent our join on to us already (this node was in the room
    // through another user): it passed the ordinary checks then, and is in the timeline.
    if storage::get_event(c, event_id)?.is_some() {
        return Ok(join.event_id);
    }
    let mut state_ids: HashSet<String> = HashSet::new();
    let mut checked: Vec<Checked> = Vec::new();
    for (is_state, value) in state
        .into_iter()
        .map(|v| (true, v))
        .chain(auth_chain.into_iter().map(|v| (false, v)))
    {
        match check_pdu(value, room_id, &rules) {
            Ok(ev) => {
                if is_state {
                    state_ids.insert(ev.event_id.clone());
                }
                checked.push(ev);
            }
            Err((id, reason)) => {
                tracing::info!(?id, %reason, "dropped an event of a send_join answer");
            }
        }
    }
    // The create event first (v12 events do not list it), then by auth dependencies.
    let (creates, rest): (Vec<Checked>, Vec<Checked>) = checked
        .into_iter()
        .partition(|e| e.pdu.kind == TimelineEventType::RoomCreate);
    let creates = dependency_order(creates);
    let create = match creates.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::RemoteServer(
                "the room state has no create event".into(),
            ));
        }
        _ => {
            return Err(Error::RemoteServer(
                "the room state has several create events".into(),
            ));
        }
    };
    let create_content: Value = serde_json::from_str(create.pdu.content.get())?;
    let create_version = create_content["room_version"].as_str().unwrap_or("1");
    if create_version != version {
        return Err(Error::RemoteServer(format!(
            "make_join said version {version}, the create event says {create_version}"
        )));
    }
    let room = Room {
        c,
        room_id,
        version,
        rules: &rules,
    };
    let mut rejected: HashSet<String> = HashSet::new();
    for ev in std::iter::once(create.clone()).chain(dependency_order(rest)) {
        let id = ev.event_id.clone();
        if let super::Outcome::Rejected { reason, .. } =
            room.process(ev.clone(), Mode::JoinState)?
        {
            tracing::info!(event_id = %id, %reason, "rejected an event of a send_join answer");
            rejected.insert(id);
        }
    }
    if rejected.contains(&create.event_id) {
        return Err(Error::RemoteServer(
            "the room's create event fails auth".into(),
        ));
    }
    let mut before = StateMap::new();
    for id in &state_ids {
        if rejected.contains(id) {
            continue;
        }
        if let Some(e) = storage::get_event_any(c, id)?
            && let Some(sk) = &e.state_key
        {
            before.insert((e.kind.clone(), sk.clone()), e.event_id.clone());
        }
    }
    if before.get(&("m.room.create".to_owned(), String::new())) != Some(&create.event_id) {
        return Err(Error::RemoteServer(
            "the room state lacks its create event".into(),
        ));
    }
    // The join must pass auth against its own auth events and the state before it.
    let pdu = &join.pdu;
    let auth = &rules.authorization;
    state_res::check_state_independent_auth_rules(auth, pdu, |id: &ruma::EventId| {
        super::load_pdu(c, id.as_str()).ok().flatten()
    })
    .map_err(|e| Error::Forbidden(format!("our join fails auth: {e}")))?;
    check_against(c, auth, pdu, &before).map_err(|e| {
        Error::Forbidden(format!("our join fails auth against the room state: {e}"))
    })?;

    match storage::room_info(c, room_id)? {
        Some(_) => storage::clear_forward_extremities(c, room_id)?,
        None => storage::insert_room(c, room_id, version, create.pdu.sender.as_str(), false)?,
    }
    let group_before = storage::group_for_state(c, room_id, None, &before)?;
    let key = ("m.room.member".to_owned(), pdu.sender.to_string());
    let replaces = before.get(&key).cloned();
    let mut after = before;
    after.insert(key, join.event_id.clone());
    storage::delete_outlier(c, &join.event_id)?;
    persist_accepted(
        c,
        Accepted {
            room_id,
            version,
            pdu,
            json: &join.json,
            group_before: Some(group_before),
            replaces,
            current: NewCurrentState::Replace {
                state: after,
                is_state_after_event: true,
            },
            txn: None,
        },
    )?;
    Ok(join.event_id)
}

/// Leave (reject an invite to) a room this server is not in, through `via`.
pub async fn leave_remote(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    via: Vec<String>,
) -> Result<String, Error> {
    let via = candidates(server, via);
    let mut last = None;
    for dest in via {
        match leave_via(server, room_id, user_id, &dest).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "remote leave failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("no server to leave {room_id} through"))))
}

async fn leave_via(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    dest: &str,
) -> Result<String, Error> {
    let (_, event_id, object) =
        make_membership(server, dest, room_id, user_id, "leave", Map::new()).await?;
    let request = create_leave_event::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&event_id)?,
        serde_json::value::to_raw_value(&object)?,
    );
    execute(server, dest, request).await?;
    let json = serde_json::to_string(&object)?;
    let pdu = Pdu::from_json(&event_id, &json)?;
    server.write(|c| {
        if storage::get_event_any(c, &event_id)?.is_none() {
            storage::insert_event(c, &outlier(&pdu, room_id, json.clone(), None, c)?)?;
        }
        let pos = next_stream_position(c)?;
        super::set_membership(c, room_id, user_id, "leave", &event_id, pos)
    })?;
    Ok(event_id)
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

/// The stripped state sent along with an invite (as `/sync` shows invites).
pub(super) fn invite_room_state(
    c: &Connection,
    room_id: &str,
    inviter: &str,
) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for (ty, sk) in [
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.avatar", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.encryption", ""),
        ("m.room.topic", ""),
        ("m.room.member", inviter),
    ] {
        if let Some(id) = storage::current_state_event(c, room_id, ty, sk)?
            && let Some(ev) = storage::get_state_event(c, &id)?
        {
            out.push(stripped_state(&ev));
        }
    }
    Ok(out)
}

/// Invite a user of another server: build the invite on the room's current state
/// (auth-checked), have the invitee's server counter-sign it
/// (`PUT /_matrix/federation/v2/invite`), then persist it; the outbox delivers it to
/// the room's other servers.
pub async fn invite_remote(
    server: &Arc<Server>,
    room_id: &str,
    sender: &str,
    invitee: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let dest = server_of(invitee)
        .filter(|s| public_key_from_server_name(s).is_some())
        .ok_or_else(|| Error::InvalidParam(format!("{invitee} is not on a P2P server")))?
        .to_owned();
    let mut content = json!({ "membership": "invite" });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(invitee.to_owned()),
        content,
        sender: sender.to_owned(),
        redacts: None,
    };
    let (built, stripped) = server.db.read_tx(|c| {
        let built = build_local_event(c, server, room_id, &ev, None)?;
        let stripped = invite_room_state(c, room_id, sender)?;
        Ok((built, stripped))
    })?;
    let invite_room_state = stripped
        .iter()
        .map(|v| serde_json::from_str(&v.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let request = create_invite::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&built.event_id)?,
        parse_id(&built.version)?,
        serde_json::value::to_raw_value(&built.object)?,
        invite_room_state,
    );
    let answer = execute(server, &dest, request).await?;
    let signed: Value = serde_json::from_str(answer.event.get())?;
    let (_, rules) = rules_for(&built.version)?;
    let checked = check_pdu(signed, room_id, &rules)
        .map_err(|(_, r)| Error::RemoteServer(format!("{dest}: counter-signed invite: {r}")))?;
    if checked.event_id != built.event_id || checked.json.len() < built.json.len() {
        return Err(Error::RemoteServer(format!(
            "{dest} answered with another event than our invite"
        )));
    }
    // The invitee's server must have signed it.
    let object: ruma::CanonicalJsonObject = serde_json::from_str(&checked.json)?;
    let redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| Error::RemoteServer(format!("cannot redact the invite: {e}")))?;
    let signers: Vec<String> = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if !signers.iter().any(|s| s == &dest) {
        return Err(Error::RemoteServer(format!(
            "{dest} did not sign the invite"
        )));
    }
    verify_json(
        &crate::federation::keys::key_map(signers.iter().map(String::as_str))?,
        &redacted,
    )
    .map_err(|e| Error::RemoteServer(format!("{dest}: bad signature on the invite: {e}")))?;
    let pdu = checked.pdu;
    let json = checked.json;
    server.write(|c| {
        let (version, group_before) = storage::room_info(c, room_id)?
            .ok_or_else(|| Error::NotFound(format!("room {room_id} is gone")))?;
        super::auth::check_local_event(c, &rules, room_id, &pdu)?;
        persist(c, room_id, &version, &pdu, &json, group_before, None)?;
        crate::federation::outbox::enqueue_event(c, server, room_id, &pdu)
    })?;
    Ok(built.event_id)
}

/// The invitee's side of `PUT /_matrix/federation/v2/invite`: check the invite (the
/// inviting server's signature, the id, that it invites a local user), add our
/// signature, keep it as an outlier with the stripped state and record the membership
/// `invite`. Returns the doubly signed event.
pub fn receive_invite(
    server: &Server,
    origin: &str,
    room_id: &str,
    event_id: &str,
    body: &Value,
) -> Result<Value, Error> {
    let version = body["room_version"]
        .as_str()
        .ok_or_else(|| Error::MissingParam("room_version is required".into()))?;
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::IncompatibleRoomVersion(version.to_owned()));
    }
    let (_, rules) = rules_for(version)?;
    let event = body
        .get("event")
        .cloned()
        .ok_or_else(|| Error::MissingParam("event is required".into()))?;
    let checked = check_pdu(event, room_id, &rules)
        .map_err(|(_, reason)| Error::Forbidden(format!("invite refused: {reason}")))?;
    if checked.event_id != event_id {
        return Err(Error::BadJson(format!(
            "the event's id is {}, not {event_id}",
            checked.event_id
        )));
    }
    let pdu = &checked.pdu;
    let content: Value = serde_json::from_str(pdu.content.get())?;
    if pdu.kind != TimelineEventType::RoomMember || content["membership"] != "invite" {
        return Err(Error::BadJson("not an invite".into()));
    }
    if server_of(pdu.sender.as_str()) != Some(origin) {
        return Err(Error::Forbidden(format!(
            "the invite's sender is not a user of {origin}"
        )));
    }
    let invitee = pdu
        .state_key
        .clone()
        .ok_or_else(|| Error::BadJson("invite without a state_key".into()))?;
    if !server.is_local_user(&invitee) {
        return Err(Error::Forbidden(format!(
            "{invitee} is not a user of this server"
        )));
    }
    let mut object: ruma::CanonicalJsonObject = serde_json::from_str(&checked.json)?;
    sign_event(
        server.server_name(),
        server.identity.keypair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format!("cannot sign the invite: {e}")))?;
    let json = serde_json::to_string(&object)?;
    let stripped: Vec<Value> = match body.get("invite_room_state") {
        Some(Value::Array(a)) => a
            .iter()
            .filter(|v| v.is_object())
            .take(MAX_INVITE_STATE)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let unsigned = json!({ "invite_room_state": stripped }).to_string();
    server.write(|c| {
        if !storage::user_exists(c, &invitee)? {
            return Err(Error::NotFound(format!("no user {invitee} here")));
        }
        if storage::get_event_any(c, event_id)?.is_none() {
            storage::insert_event(c, &outlier(pdu, room_id, json.clone(), Some(unsigned), c)?)?;
        }
        let current = storage::membership(c, room_id, &invitee)?.map(|(m, _, _)| m);
        if !matches!(current.as_deref(), Some("join") | Some("ban")) {
            let pos = next_stream_position(c)?;
            super::set_membership(c, room_id, &invitee, "invite", event_id, pos)?;
        }
        Ok(())
    })?;
    Ok(serde_json::to_value(&object)?)
}

/// The server that invited `user_id` to `room_id`, when the user has a pending invite.
pub fn inviting_server(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, event_id, _)) if m == "invite" => Ok(storage::get_event_any(c, &event_id)?
            .and_then(|e| server_of(&e.sender).map(str::to_owned))),
        _ => Ok(None),
    }
}

/// The server to leave through for a pending invite or knock of `user_id` on a room
/// this node may not be in: the inviting server, or the server a knock went through.
pub fn membership_server(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, _, _)) if m == "invite" => inviting_server(c, room_id, user_id),
        Some((m, event_id, _)) if m == "knock" => Ok(storage::get_event_any(c, &event_id)?
            .and_then(|e| e.unsigned)
            .and_then(|u| serde_json::from_str::<Value>(&u).ok())
            .and_then(|u| u[KNOCK_VIA].as_str().map(str::to_owned))),
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::EventReference;
    use crate::identity::Identity;

    /// The joining side keeps a restricted join only with the resident's signature.
    #[tokio::test]
    async fn a_restricted_join_needs_the_authorising_servers_signature() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let resident = Identity::from_seed([7; 32]).expect("identity");
        let room = format!("!room:{}", resident.server_name());
        let (_, rules) = rules_for("11").expect("rules");
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(server.user_id("bob")),
            content: json!({
                "membership": "join",
                "join_authorised_via_users_server": format!("@alice:{}", resident.server_name()),
            }),
            sender: server.user_id("bob"),
            redacts: None,
        };
        let some_id = format!("${}", "a".repeat(43));
        let (id, mut object) = build_pdu(
            &server.identity,
            &rules,
            Some(&room),
            &ev,
            &EventReference::ids(std::slice::from_ref(&some_id)),
            &EventReference::ids(std::slice::from_ref(&some_id)),
            3,
            now_ms(),
        )
        .expect("build");
        let persist = |object: &ruma::CanonicalJsonObject| {
            let join = serde_json::to_value(object).expect("json");
            server.write(|c| persist_remote_join(c, &room, "11", join, vec![], vec![], &id))
        };
        // Only our signature: refused before anything else is looked at.
        let Err(e) = persist(&object) else {
            panic!("a join without the resident's signature was kept");
        };
        assert!(e.to_string().contains("signature"), "{e}");
        // Countersigned: the signatures pass, and the (empty) state is what fails.
        sign_event(
            resident.server_name(),
            resident.keypair(),
            &mut object,
            &rules.redaction,
        )
        .expect("sign");
        let Err(e) = persist(&object) else {
            panic!("a join with no room state was kept");
        };
        assert!(e.to_string().contains("no create event"), "{e}");
        node.shutdown().await.expect("shutdown");
    }
}
