//! Appending a local event to a room: DAG fields, auth events, signing, auth, persist.

use ruma::{UserId, events::TimelineEventType, state_res};
use rusqlite::Connection;
use serde_json::{Map, Value};

use super::ahead::Prepared;
use super::auth::{AuthState, check_local_event_with};
use crate::error::Error;
use crate::events::{self, EventReference, NewEvent, Pdu, build_pdu, rules_for};
use crate::server::Server;
use crate::storage::{
    self, EventStatus, StateMap, StoredEvent, TxnSlot, next_stream_position, now_ms,
};

/// Most prev_events referenced by one event, as the spec recommends (Synapse uses 10).
const MAX_PREV_EVENTS: usize = 10;

/// Result of appending an event.
#[derive(Clone, Debug)]
pub struct Appended {
    /// The new event id.
    pub event_id: String,
    /// Its stream position.
    pub pos: i64,
}

/// Load a stored event as a [`Pdu`].
///
/// Any stored event, whatever its status (auth and state resolution need outliers too);
/// rejected events come back with [`Pdu::rejected`] set, so they never authorise anything.
pub fn load_pdu(c: &Connection, event_id: &str) -> Result<Option<Pdu>, Error> {
    match storage::get_event_any(c, event_id)? {
        Some(e) => {
            let mut pdu = Pdu::from_json(&e.event_id, &e.json)?;
            pdu.rejected = e.status == EventStatus::Rejected;
            Ok(Some(pdu))
        }
        None => Ok(None),
    }
}

/// Build, authorise and persist a local event in an existing room.
///
/// `txn` is the sending device and its transaction id, to make sends idempotent.
pub fn append_event(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: NewEvent,
    txn: Option<(&str, &str)>,
) -> Result<Appended, Error> {
    append_event_at(c, server, room_id, ev, txn, None)
}

/// [`append_event`] with the event's `origin_server_ts` given (an application service's
/// `ts` parameter, for bridged messages that keep their original time); now when `None`.
pub fn append_event_at(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: NewEvent,
    txn: Option<(&str, &str)>,
    ts: Option<i64>,
) -> Result<Appended, Error> {
    append_prepared(c, server, room_id, ev, txn, ts, Prepared::default(), |_| {
        Ok(())
    })
}

/// [`append_event_at`] with what was [`Prepared`] before the write, running
/// `new_event_only` first when the event is new (not a retried transaction, whose event
/// is the answer): the checks a retry skips (rate limit, relation) without a second
/// lookup of the transaction.
#[allow(clippy::too_many_arguments)]
pub fn append_prepared(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: NewEvent,
    txn: Option<(&str, &str)>,
    ts: Option<i64>,
    ahead: Prepared,
    new_event_only: impl FnOnce(&NewEvent) -> Result<(), Error>,
) -> Result<Appended, Error> {
    let mut key = None;
    if let Some((device, txn_id)) = txn {
        match storage::txn_lookup(c, &ev.sender, device, txn_id, txn_scope(room_id, &ev))? {
            TxnSlot::Done(existing) => {
                let pos = storage::get_event(c, &existing)?
                    .map(|e| e.stream_ordering)
                    .unwrap_or(0);
                return Ok(Appended {
                    event_id: existing,
                    pos,
                });
            }
            TxnSlot::Free(k) => key = Some(k),
        }
    }
    new_event_only(&ev)?;
    let txn = txn
        .zip(key.as_deref())
        .map(|((device, txn_id), key)| ClientTxn {
            device,
            txn_id,
            key,
        });
    // What was worked out ahead holds only for the room as it was then: the push plan
    // too (a member who left or was banned in between must not be notified, and a
    // redaction in between may have changed a display name without changing the state).
    let (built, push) = match ahead.built {
        Some(p) if p.still_current(c, room_id)? => {
            crate::metrics::send_prebuilt(true);
            (p.into_built(), ahead.push)
        }
        prebuilt => {
            if prebuilt.is_some() {
                crate::metrics::send_prebuilt(false);
            }
            (build_local_event(c, server, room_id, &ev, ts)?, None)
        }
    };
    let pos = persist(
        c,
        room_id,
        &built.version,
        &built.pdu,
        &built.json,
        built.group_before,
        txn,
        push,
    )?;
    crate::federation::outbox::enqueue_event(c, server, room_id, &built.pdu)?;
    Ok(Appended {
        event_id: built.event_id,
        pos,
    })
}

/// A local event's client transaction: the sending device, the client's id (given back
/// as `unsigned.transaction_id`) and the key it is remembered under
/// ([`storage::txn_lookup`]).
#[derive(Clone, Copy, Debug)]
pub struct ClientTxn<'a> {
    pub device: &'a str,
    pub txn_id: &'a str,
    pub key: &'a str,
}

/// The scope of a client transaction id: the room, the event type and the redacted
/// event, which together stand for the endpoint's path.
fn txn_scope<'a>(room_id: &'a str, ev: &'a NewEvent) -> (&'a str, &'a str, Option<&'a str>) {
    (room_id, ev.kind.as_str(), ev.redacts.as_deref())
}

/// Whether sending `ev` with this transaction id is a retry of an earlier send.
pub fn is_retry(
    c: &Connection,
    room_id: &str,
    ev: &NewEvent,
    device: &str,
    txn_id: &str,
) -> Result<bool, Error> {
    let slot = storage::txn_lookup(c, &ev.sender, device, txn_id, txn_scope(room_id, ev))?;
    Ok(matches!(slot, TxnSlot::Done(_)))
}

/// The current state event a state event would replace, when it is the same: same
/// type and state key, same sender (who is joined), same content. Sending it again would change
/// nothing, so the existing event stands for it (as Synapse deduplicates state).
pub fn unchanged_state(
    c: &Connection,
    room_id: &str,
    ev: &NewEvent,
) -> Result<Option<String>, Error> {
    let Some(state_key) = &ev.state_key else {
        return Ok(None);
    };
    let Some(id) = storage::current_state_event(c, room_id, &ev.kind, state_key)? else {
        return Ok(None);
    };
    let Some(current) = storage::get_state_event(c, &id)? else {
        return Ok(None);
    };
    // Only a joined sender's repeat is answered this way; anyone else goes through the
    // auth rules and gets their refusal.
    let joined = storage::membership(c, room_id, &ev.sender)?.is_some_and(|(m, _, _)| m == "join");
    if current.sender != ev.sender || current.redacted_by.is_some() || !joined {
        return Ok(None);
    }
    let mut json: Value = serde_json::from_str(&current.json)?;
    // A restricted join's authorising user is only needed to get in, never to stay:
    // a repeated join without it is the same join.
    if ev.kind == "m.room.member"
        && let Some(content) = json.get_mut("content").and_then(Value::as_object_mut)
    {
        content.remove("join_authorised_via_users_server");
    }
    Ok((json.get("content") == Some(&ev.content)).then_some(id))
}

/// A local event built on the room's current state and authorised, not yet persisted.
pub(super) struct BuiltEvent {
    pub event_id: String,
    pub object: ruma::CanonicalJsonObject,
    pub json: String,
    pub pdu: Pdu,
    pub version: String,
    pub group_before: Option<i64>,
}

/// The DAG fields of a new event in `room_id`: prev events (the forward extremities),
/// auth events (from the current state) and depth.
pub(super) fn dag_fields(
    c: &Connection,
    room_id: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    ev: &NewEvent,
) -> Result<(Vec<EventReference>, Vec<EventReference>, i64), Error> {
    let extremities = storage::forward_extremities(c, room_id)?;
    let (prev, auth_events, depth, _) =
        dag_fields_and_auth_state(c, room_id, rules, ev, extremities)?;
    Ok((prev, auth_events, depth))
}

/// References to stored events as the room version writes them: bare ids from version
/// 3, ids with each event's reference hash in versions 1 and 2.
pub(super) fn references(
    c: &Connection,
    rules: &ruma::room_version_rules::RoomVersionRules,
    ids: Vec<String>,
) -> Result<Vec<EventReference>, Error> {
    if !events::uses_pairs(&rules.event_format) {
        return Ok(ids.into_iter().map(EventReference::id).collect());
    }
    ids.into_iter()
        .map(|id| {
            let Some(e) = storage::get_event_any(c, &id)? else {
                return Err(Error::internal(format!(
                    "referenced event {id} is not stored"
                )));
            };
            let object: ruma::CanonicalJsonObject = serde_json::from_str(&e.json)?;
            let hash = ruma::signatures::reference_hash(&object, rules)
                .map_err(|e| Error::internal(format!("reference hash of {id}: {e}")))?;
            Ok(EventReference::with_hash(id, hash))
        })
        .collect()
}

/// [`dag_fields`] on the given forward extremities, and the part of the current state
/// the event's auth rules read (its auth events and the create event), parsed, for
/// [`check_local_event_with`].
fn dag_fields_and_auth_state(
    c: &Connection,
    room_id: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    ev: &NewEvent,
    extremities: Vec<(String, i64)>,
) -> Result<(Vec<EventReference>, Vec<EventReference>, i64, AuthState), Error> {
    let depth = extremities
        .iter()
        .map(|(_, d)| *d)
        .max()
        .unwrap_or(0)
        .saturating_add(1);
    let prev: Vec<String> = extremities
        .into_iter()
        .take(MAX_PREV_EVENTS)
        .map(|(id, _)| id)
        .collect();

    let sender =
        UserId::parse(&ev.sender).map_err(|e| Error::InvalidParam(format!("bad sender: {e}")))?;
    let content_raw = serde_json::value::to_raw_value(&ev.content)?;
    let kind = TimelineEventType::from(ev.kind.as_str());
    let auth_types = state_res::auth_types_for_event(
        &kind,
        &sender,
        ev.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(|e| Error::BadJson(format!("invalid content for {}: {e}", ev.kind)))?;
    let state = AuthState::load(c, room_id, &auth_types)?;
    let mut auth_events = Vec::with_capacity(auth_types.len());
    for (ty, sk) in &auth_types {
        if let Some(id) = state.event_id(&ty.to_string(), sk)
            && !auth_events.iter().any(|a| a == id)
        {
            auth_events.push(id.to_owned());
        }
    }
    Ok((
        references(c, rules, prev)?,
        references(c, rules, auth_events)?,
        depth,
        state,
    ))
}

/// Build, sign and authorise a local event on the room's current state.
pub(super) fn build_local_event(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: &NewEvent,
    ts: Option<i64>,
) -> Result<BuiltEvent, Error> {
    let Some((version, group_before)) = storage::room_info(c, room_id)? else {
        return Err(Error::Forbidden(format!("unknown room {room_id}")));
    };
    let extremities = storage::forward_extremities(c, room_id)?;
    build_local_event_on(
        c,
        server,
        room_id,
        ev,
        ts,
        (version, group_before),
        extremities,
    )
}

/// [`build_local_event`] on the given forward extremities (ordered, with their depths)
/// of the room at `(version, current state group)`.
pub(super) fn build_local_event_on(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: &NewEvent,
    ts: Option<i64>,
    (version, group_before): (String, Option<i64>),
    extremities: Vec<(String, i64)>,
) -> Result<BuiltEvent, Error> {
    let (_, rules) = rules_for(&version)?;
    let (prev, auth_events, depth, auth_state) =
        dag_fields_and_auth_state(c, room_id, &rules, ev, extremities)?;
    let (event_id, object) = build_pdu(
        &server.identity,
        &rules,
        Some(room_id),
        ev,
        &prev,
        &auth_events,
        depth,
        ts.unwrap_or_else(now_ms),
    )?;
    let json = serde_json::to_string(&object)?;
    let pdu = Pdu::from_json(&event_id, &json)?;
    check_local_event_with(c, &rules, room_id, &pdu, &auth_state)?;
    Ok(BuiltEvent {
        event_id,
        object,
        json,
        pdu,
        version,
        group_before,
    })
}

/// How the room's current state changes when an event joins the timeline.
#[derive(Debug)]
pub(super) enum NewCurrentState {
    /// The event was built on the room's current state: apply it on top (local events).
    ApplyEvent,
    /// The room's whole new current state (a received event: the state after it, or the
    /// resolution of the states of all forward extremities when the DAG forks).
    Replace {
        /// The new current state.
        state: StateMap,
        /// Whether `state` is exactly the DAG state after the event (so its state group
        /// can be reused).
        is_state_after_event: bool,
    },
}

/// An authorised event on its way into the timeline.
pub(super) struct Accepted<'a> {
    pub room_id: &'a str,
    pub version: &'a str,
    pub pdu: &'a Pdu,
    /// The PDU JSON to store.
    pub json: &'a str,
    /// State group of the DAG state before the event.
    pub group_before: Option<i64>,
    /// The event holding the same `(type, state_key)` in the state before the event.
    pub replaces: Option<String>,
    pub current: NewCurrentState,
    /// The client transaction (local events).
    pub txn: Option<ClientTxn<'a>>,
    /// The members' push rules evaluated before the write (local sends), else evaluated
    /// here.
    pub push: Option<crate::push::Planned>,
}

/// Persist an authorised local event: state, memberships, extremities, redaction, counts.
#[allow(clippy::too_many_arguments)]
pub(super) fn persist(
    c: &Connection,
    room_id: &str,
    version: &str,
    pdu: &Pdu,
    json: &str,
    group_before: Option<i64>,
    txn: Option<ClientTxn<'_>>,
    push: Option<crate::push::Planned>,
) -> Result<i64, Error> {
    let replaces = match &pdu.state_key {
        Some(sk) => storage::current_state_event(c, room_id, &pdu.kind.to_string(), sk)?,
        None => None,
    };
    persist_accepted(
        c,
        Accepted {
            room_id,
            version,
            pdu,
            json,
            group_before,
            replaces,
            current: NewCurrentState::ApplyEvent,
            txn,
            push,
        },
    )
}

/// Persist an event into the timeline, local or received: stream position, state groups,
/// current state and memberships, forward extremities, transaction id, redaction, push.
pub(super) fn persist_accepted(c: &Connection, a: Accepted<'_>) -> Result<i64, Error> {
    let Accepted {
        room_id,
        version,
        pdu,
        json,
        group_before,
        replaces,
        current,
        txn,
        push,
    } = a;
    let pos = next_stream_position(c)?;
    let kind = pdu.kind.to_string();
    let mut unsigned = Map::new();
    if let Some(prev_id) = &replaces
        && let Some(prev) = storage::get_event_any(c, prev_id)?
    {
        let prev_json: Value = serde_json::from_str(&prev.json)?;
        unsigned.insert("prev_content".into(), prev_json["content"].clone());
        unsigned.insert("prev_sender".into(), Value::String(prev.sender.clone()));
        unsigned.insert("replaces_state".into(), Value::String(prev_id.clone()));
    }
    // The DAG state after the event.
    let group_after = match &pdu.state_key {
        Some(sk) => {
            let mut changes = StateMap::new();
            changes.insert((kind.clone(), sk.clone()), pdu.event_id.to_string());
            Some(storage::new_state_group(
                c,
                room_id,
                group_before,
                &changes,
            )?)
        }
        None => group_before,
    };
    let mut replace_with = None;
    let room_group = match current {
        NewCurrentState::ApplyEvent => {
            if let Some(sk) = &pdu.state_key
                && let Some(group) = group_after
            {
                storage::set_current_state_group(c, room_id, group)?;
                storage::set_current_state(c, room_id, &kind, sk, pdu.event_id.as_str())?;
                if kind == "m.room.member" {
                    let content: Value = serde_json::from_str(pdu.content.get())?;
                    let membership = content["membership"].as_str().unwrap_or("leave");
                    super::set_membership(c, room_id, sk, membership, pdu.event_id.as_str(), pos)?;
                }
            }
            storage::room_info(c, room_id)?.and_then(|(_, g)| g)
        }
        NewCurrentState::Replace {
            state,
            is_state_after_event,
        } => {
            let group = match group_after {
                Some(g) if is_state_after_event => g,
                _ => {
                    let old_group = storage::room_info(c, room_id)?.and_then(|(_, g)| g);
                    let old = match old_group {
                        Some(g) => storage::load_state_group(c, g)?,
                        None => StateMap::new(),
                    };
                    storage::group_for_state(c, room_id, old_group.map(|g| (g, &old)), &state)?
                }
            };
            // Applied once the event row exists: its own membership is read from it.
            replace_with = Some((state, group));
            Some(group)
        }
    };
    let stored = StoredEvent {
        stream_ordering: pos,
        event_id: pdu.event_id.to_string(),
        room_id: room_id.to_owned(),
        kind: kind.clone(),
        state_key: pdu.state_key.clone(),
        sender: pdu.sender.to_string(),
        depth: pdu.depth,
        origin_server_ts: i64::from(pdu.origin_server_ts.get()),
        json: json.to_owned(),
        unsigned: (!unsigned.is_empty()).then(|| Value::Object(unsigned).to_string()),
        redacted_by: None,
        state_group_before: group_before,
        txn_device: txn.map(|t| t.device.to_owned()),
        txn_id: txn.map(|t| t.txn_id.to_owned()),
        status: EventStatus::Timeline,
        rejection_reason: None,
        state_group_after: group_after,
        room_state_group: room_group,
    };
    storage::insert_event(c, &stored)?;
    crate::metrics::event_persisted(true);
    // Full-text search indexes it after the commit, with others (`crate::search`).
    // Relationships (edits, threads, references): same transaction, for the same reason.
    crate::relations::on_persisted(c, &stored)?;
    if let Some((state, group)) = replace_with {
        replace_current_state(c, room_id, &state, group, pos)?;
    }
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    storage::update_forward_extremities(c, room_id, pdu.event_id.as_str(), pdu.depth, &prev)?;
    if let Some(t) = txn {
        storage::insert_txn(c, &stored.sender, t.device, t.key, stored.stream_ordering)?;
    }
    if kind == "m.room.redaction"
        && let Some(target) = &pdu.redacts
    {
        super::redact::apply_redaction(c, room_id, version, &stored, target.as_str())?;
    }
    crate::push::on_event(c, room_id, version, &stored, push)?;
    Ok(pos)
}

/// Make `state` the room's current state (table, group pointer and memberships); changed
/// memberships take position `pos`.
fn replace_current_state(
    c: &Connection,
    room_id: &str,
    state: &StateMap,
    group: i64,
    pos: i64,
) -> Result<(), Error> {
    let old = storage::current_state(c, room_id)?;
    for ((ty, sk), id) in state {
        if old.get(&(ty.clone(), sk.clone())) == Some(id) {
            continue;
        }
        storage::set_current_state(c, room_id, ty, sk, id)?;
        if ty == "m.room.member" {
            let membership = storage::get_event_any(c, id)?
                .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
                .and_then(|v| v["content"]["membership"].as_str().map(str::to_owned))
                .unwrap_or_else(|| "leave".to_owned());
            super::set_membership(c, room_id, sk, &membership, id, pos)?;
        }
    }
    for ((ty, sk), id) in &old {
        if state.contains_key(&(ty.clone(), sk.clone())) {
            continue;
        }
        storage::delete_current_state(c, room_id, ty, sk)?;
        if ty == "m.room.member" {
            super::set_membership(c, room_id, sk, "leave", id, pos)?;
        }
    }
    storage::set_current_state_group(c, room_id, group)
}

/// A random alphanumeric string.
pub fn random_string(len: usize) -> String {
    use rand::Rng;
    use rand::distributions::Alphanumeric;
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}
