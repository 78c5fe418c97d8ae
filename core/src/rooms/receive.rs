//! Receiving a PDU from another server: the spec's "checks performed on receipt of a
//! PDU", in order.
//!
//! 1. Format: a JSON object within the size limits, the room version's required keys,
//!    the expected room, bounded `prev_events`/`auth_events` in the room version's
//!    reference format. The event id is the reference hash; in room versions 1 and 2
//!    the PDU's own `event_id`, of the sender's server (and an id already stored keeps
//!    its first event). `m.room.create` events are never accepted this way.
//! 2. Signatures: the servers the room version requires (the sender's, for everything
//!    but third-party invites) must have signed; the key comes from the server name.
//!    Failure drops the event.
//! 3. Content hash: on mismatch the event continues in its redacted form.
//! 4. Auth events: missing ones are fetched from the origin (bounded), checked the same
//!    way and stored as outliers; the event must pass auth against them, else it is
//!    stored as rejected.
//! 5. State before the event, from its prev events' states (resolved when they differ);
//!    missing prevs are asked for once with `get_missing_events`, and an event whose
//!    prevs are still missing becomes an outlier. It must pass auth against that state,
//!    else it is rejected.
//! 6. The current state: failing auth there soft-fails the event.
//! 7. Otherwise it joins the timeline like a local event (`append::persist_accepted`),
//!    and the room's current state becomes the resolution of its forward extremities.
//!
//! Fetching is async and holds no database connection; every check and write then runs
//! in one write transaction.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use ruma::canonical_json::redact;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Base64;
use ruma::signatures::{
    PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event,
};
use ruma::state_res;
use ruma::{CanonicalJsonValue, EventId};
use rusqlite::Connection;
use serde_json::Value;

use super::append::{Accepted, NewCurrentState, persist_accepted};
use super::load_pdu;
use super::resolve::resolve_states;
use crate::error::Error;
use crate::events::{Pdu, rules_for};
use crate::identity::{KEY_ID, public_key_from_server_name};
use crate::server::Server;
use crate::storage::{self, EventStatus, StateMap, StoredEvent, next_stream_position};

/// A boxed future, as [`RemoteEvents`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where missing events come from (over the P2P federation client; in tests, memory).
pub trait RemoteEvents: Send + Sync {
    /// `GET /_matrix/federation/v1/event/{eventId}` on `origin`: the PDU JSON.
    fn get_event<'a>(
        &'a self,
        origin: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>>;

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}` on `origin`.
    fn get_missing_events<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        earliest: Vec<String>,
        latest: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Value>, Error>>;

    /// `GET /_matrix/federation/v1/state/{roomId}?event_id=` on `origin`: the state
    /// before the event (`pdus`) and its auth chain (`auth_chain`).
    fn state_before<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>> {
        let _ = (origin, room_id, event_id);
        Box::pin(async { Err(Error::NotFound("no state from this source".into())) })
    }
}

/// What became of a received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the room's timeline.
    Accepted {
        /// The event id.
        event_id: String,
        /// Its stream position.
        stream_pos: i64,
    },
    /// Stored, but it failed auth against the current state: never served, never built on.
    SoftFailed {
        /// The event id.
        event_id: String,
    },
    /// Stored without a place in the timeline (its prev events are unknown).
    Outlier {
        /// The event id.
        event_id: String,
    },
    /// Dropped, or stored as rejected when it failed the auth rules.
    Rejected {
        /// The event id, when the PDU was well-formed enough to have one.
        event_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// Already in the timeline (or soft-failed): nothing done.
    AlreadyKnown {
        /// The event id.
        event_id: String,
    },
}

/// Largest PDU accepted, in canonical JSON bytes.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Most events fetched (auth events and gap events together) for one received PDU.
pub const MAX_FETCHES: usize = 100;
/// How many events one `get_missing_events` call asks for.
pub const MISSING_EVENTS_LIMIT: usize = 10;

/// Rejected events kept per room (see [`storage::trim_rejected`]): a peer sending signed
/// events that fail auth cannot grow the database without limit.
pub const MAX_REJECTED_PER_ROOM: usize = 1000;
/// Most forward extremities whose states are resolved into the current state.
const MAX_RESOLVED_EXTREMITIES: usize = 10;

/// A PDU that passed the format and signature checks.
#[derive(Clone, Debug)]
pub(super) struct Checked {
    pub(super) event_id: String,
    /// The JSON to store (redacted when the content hash did not match; no `unsigned`).
    pub(super) json: String,
    pub(super) pdu: Pdu,
}

pub(super) type Dropped = (Option<String>, String);

/// Checks 1–3: format, event id, signatures, content hash. Needs no database.
///
/// A room version 12 create event carries no `room_id`: it is accepted when the room id
/// is the one its event id names.
pub(super) fn check_pdu(
    value: Value,
    room_id: &str,
    rules: &RoomVersionRules,
) -> Result<Checked, Dropped> {
    let drop = |reason: String| (None, reason);
    if !value.is_object() {
        return Err(drop("PDU is not a JSON object".into()));
    }
    let mut object = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(drop("PDU is not a JSON object".into())),
        Err(e) => return Err(drop(format!("PDU is not canonical JSON: {e}"))),
    };
    // Servers add `unsigned` in transit; it is not ours to keep (nor signed).
    object.remove("unsigned");
    let size = serde_json::to_vec(&object)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(drop(format!("PDU is {size} bytes, over {MAX_PDU_BYTES}")));
    }
    state_res::check_pdu_format(&object, &rules.event_format)
        .map_err(|e| drop(format!("bad PDU format: {e}")))?;
    let v12_create = rules.authorization.room_create_event_id_as_room_id
        && matches!(object.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
        && !object.contains_key("room_id");
    match object.get("room_id") {
        Some(CanonicalJsonValue::String(r)) if r == room_id => {}
        None if v12_create => {}
        _ => return Err(drop(format!("PDU is not for room {room_id}"))),
    }
    let event_id = crate::events::event_id_of(&object, rules).map_err(drop)?;
    if rules.event_format.require_event_id {
        check_own_event_id(&object, &event_id).map_err(drop)?;
    }
    if v12_create && crate::events::room_id_from_create_event_id(&event_id) != room_id {
        return Err(drop(format!(
            "create event {event_id} does not name room {room_id}"
        )));
    }
    let dropped = |reason: String| (Some(event_id.clone()), reason);
    check_reference_format(&object, rules).map_err(dropped)?;

    // Signatures: every server the room version requires, keys from the server names.
    let servers = required_server_signatures_to_verify_event(&object, &rules.signatures)
        .map_err(|e| dropped(format!("cannot tell who must sign: {e}")))?;
    let mut keys = PublicKeyMap::new();
    for server in &servers {
        let Some(key) = public_key_from_server_name(server.as_str()) else {
            return Err(dropped(format!(
                "{server} is not a P2P server name (64 hex characters)"
            )));
        };
        let mut set = BTreeMap::new();
        set.insert(KEY_ID.to_owned(), Base64::new(key.to_vec()));
        keys.insert(server.to_string(), set);
    }
    let verified =
        verify_event(&keys, &object, rules).map_err(|e| dropped(format!("bad signature: {e}")))?;
    if verified == Verified::Signatures {
        // The content hash does not match: keep only what the signatures cover.
        tracing::info!(%event_id, "received event fails its content hash; storing it redacted");
        object = redact(object, &rules.redaction, None)
            .map_err(|e| dropped(format!("cannot redact: {e}")))?;
    }
    let json = serde_json::to_string(&object).map_err(|e| dropped(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &json).map_err(|e| dropped(e.to_string()))?;
    Ok(Checked {
        event_id,
        json,
        pdu,
    })
}

/// Room versions 1 and 2: an event's own id must name its sender's server, which then
/// signs it (the signature check requires the id's server and the sender's), so no
/// server can mint ids in another's name.
fn check_own_event_id(object: &ruma::CanonicalJsonObject, event_id: &str) -> Result<(), String> {
    let sender = match object.get("sender") {
        Some(CanonicalJsonValue::String(s)) => s.as_str(),
        _ => return Err("the PDU has no sender".into()),
    };
    let id_server = event_id.split_once(':').map(|(_, s)| s);
    let sender_server = sender.split_once(':').map(|(_, s)| s);
    if id_server.is_none() || id_server != sender_server {
        return Err(format!(
            "event id {event_id} is not of the sender's server ({sender})"
        ));
    }
    Ok(())
}

/// `prev_events` and `auth_events` in the room version's format (bare ids, or
/// `[id, hashes]` pairs in versions 1 and 2), within the spec's bounds.
fn check_reference_format(
    object: &ruma::CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(), String> {
    for field in ["prev_events", "auth_events"] {
        let mut lists = serde_json::Map::new();
        if let Some(list) = object.get(field) {
            lists.insert(
                field.to_owned(),
                serde_json::to_value(list).map_err(|e| e.to_string())?,
            );
        }
        // (The lengths were bounded by `check_pdu_format`.)
        crate::events::parse_references(
            &Value::Object(lists),
            field,
            &rules.event_format,
            usize::MAX,
        )?;
    }
    Ok(())
}

/// Receive one PDU from `origin` for `room_id`: check it, fetch what it needs, store it
/// as the spec says (timeline, soft-failed, outlier or rejected).
///
/// `Err` is only for our own failures (database); everything a peer can cause is an
/// [`Outcome`].
pub async fn receive_pdu(
    server: &Arc<Server>,
    remote: &dyn RemoteEvents,
    origin: &str,
    room_id: &str,
    pdu: Value,
) -> Result<Outcome, Error> {
    let Some((version, _)) = server.db.read(|c| storage::room_info(c, room_id))? else {
        return Ok(Outcome::Rejected {
            event_id: None,
            reason: format!("this server is not in room {room_id}"),
        });
    };
    let rules = match rules_for(&version) {
        Ok((_, rules)) => rules,
        Err(e) => {
            return Ok(Outcome::Rejected {
                event_id: None,
                reason: e.to_string(),
            });
        }
    };
    // A copy of an event already settled here (forwarding and anti-entropy bring the
    // same event many times: in a mesh of n nodes each new event arrives up to n - 1
    // times): its id alone (the reference hash, which covers the room and everything
    // the signatures do) says so, without checking signatures again. In room versions 1
    // and 2 the id is the sender's choice, and another event under a settled id is
    // ignored the same way: the first one stays (see `is_another_event`).
    if pdu.get("room_id").and_then(Value::as_str) == Some(room_id)
        && let Ok(event_id) = super::event_id_of(&pdu, &version)
        && matches!(
            server.db.read(|c| storage::event_status(c, &event_id))?,
            Some(EventStatus::Timeline | EventStatus::SoftFailed)
        )
    {
        return Ok(Outcome::AlreadyKnown { event_id });
    }
    let checked = match check_pdu(pdu, room_id, &rules) {
        Ok(c) => c,
        Err((event_id, reason)) => {
            tracing::info!(%origin, ?event_id, %reason, "dropped received PDU");
            return Ok(Outcome::Rejected { event_id, reason });
        }
    };
    let event_id = checked.event_id.clone();
    match server.db.read(|c| storage::get_event_any(c, &event_id))? {
        Some(e) if matches!(e.status, EventStatus::Timeline | EventStatus::SoftFailed) => {
            return Ok(Outcome::AlreadyKnown { event_id });
        }
        Some(e) if e.status == EventStatus::Rejected => {
            return Ok(Outcome::Rejected {
                event_id: Some(event_id),
                reason: e.rejection_reason.unwrap_or_else(|| "rejected".into()),
            });
        }
        _ => {}
    }

    // Fetching phase: no connection is held across an await.
    let mut fetcher = Fetcher {
        server,
        remote,
        origin,
        room_id,
        rules: &rules,
        budget: MAX_FETCHES,
        fetched: HashMap::new(),
    };
    fetcher.fetch_auth_events(&checked.pdu).await?;
    let mut gap = Vec::new();
    let missing_prevs = server.db.read(|c| {
        let mut missing = false;
        for p in &checked.pdu.prev_events {
            missing |= !has_state(c, p.as_str())?;
        }
        Ok(missing)
    })?;
    if missing_prevs {
        let earliest: Vec<String> = server
            .db
            .read(|c| storage::forward_extremities(c, room_id))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        match remote
            .get_missing_events(
                origin,
                room_id,
                earliest,
                vec![event_id.clone()],
                MISSING_EVENTS_LIMIT,
            )
            .await
        {
            Ok(events) => {
                let mut seen = HashSet::new();
                for v in events.into_iter().take(MISSING_EVENTS_LIMIT) {
                    match check_pdu(v, room_id, &rules) {
                        Ok(ev) if ev.event_id != event_id && seen.insert(ev.event_id.clone()) => {
                            gap.push(ev)
                        }
                        Ok(_) => {}
                        Err((id, reason)) => {
                            tracing::info!(%origin, ?id, %reason, "dropped missing event");
                        }
                    }
                }
            }
            Err(e) => tracing::info!(%origin, %event_id, error = %e, "get_missing_events failed"),
        }
        // Oldest first.
        gap.sort_by(|a, b| {
            (a.pdu.depth, a.pdu.origin_server_ts, &a.event_id).cmp(&(
                b.pdu.depth,
                b.pdu.origin_server_ts,
                &b.event_id,
            ))
        });
        for ev in &gap {
            fetcher.fetch_auth_events(&ev.pdu).await?;
        }
    }
    let fetched = fetcher.into_dependency_order();

    // Check-and-persist phase: one write transaction.
    let media = crate::media::remote::remote_references(server, &checked.pdu);
    let outcome = server.write(|tx| {
        let room = Room {
            c: tx,
            room_id,
            version: &version,
            rules: &rules,
        };
        for ev in fetched {
            let id = ev.event_id.clone();
            let outcome = room.process(ev, Mode::AuthOnly)?;
            tracing::debug!(event_id = %id, ?outcome, "fetched auth event");
        }
        for ev in gap {
            let id = ev.event_id.clone();
            let outcome = room.process(ev, Mode::Full)?;
            tracing::debug!(event_id = %id, ?outcome, "missing event");
        }
        room.process(checked.clone(), Mode::Full)
    })?;
    // Prev events that stayed missing (the gap reaches back further than one
    // `get_missing_events`, or into history from before our join, known here only as
    // state): the state before the event comes from the server that sent it, checked
    // event by event as a join's state, as Synapse does for missing prevs. Without it
    // the event would stay an outlier, out of every timeline, for good.
    let outcome = match outcome {
        Outcome::Outlier { .. } => {
            with_state_from(server, remote, origin, room_id, &version, &rules, checked)
                .await?
                .unwrap_or(outcome)
        }
        other => other,
    };
    // After the commit, off the PDU's path: queue the media it refers to for prefetching.
    if matches!(outcome, Outcome::Accepted { .. }) {
        crate::media::remote::prefetch(server, media);
    }
    Ok(outcome)
}

/// The events of `batch` and the auth events they need that are neither stored here nor
/// in the batch, fetched from `origin` (checked by [`check_pdu`]; at most `budget`
/// fetches), all in auth-dependency order: what is processed with [`Mode::AuthOnly`]
/// before a batch of backfilled events is put in place.
pub(super) async fn with_auth_events(
    server: &Arc<Server>,
    remote: &dyn RemoteEvents,
    origin: &str,
    room_id: &str,
    rules: &RoomVersionRules,
    batch: &[Checked],
    budget: usize,
) -> Result<Vec<Checked>, Error> {
    let mut fetcher = Fetcher {
        server,
        remote,
        origin,
        room_id,
        rules,
        budget,
        fetched: batch
            .iter()
            .map(|e| (e.event_id.clone(), e.clone()))
            .collect(),
    };
    for ev in batch {
        fetcher.fetch_auth_events(&ev.pdu).await?;
    }
    Ok(fetcher.into_dependency_order())
}

/// Whether an event is stored with a known state after it (so it can be a prev event).
pub(super) fn has_state(c: &Connection, event_id: &str) -> Result<bool, Error> {
    Ok(
        storage::get_event_any(c, event_id)?.is_some_and(|e| match e.status {
            EventStatus::Timeline | EventStatus::SoftFailed => true,
            EventStatus::Rejected => e.state_group_before.is_some(),
            EventStatus::Outlier => false,
        }),
    )
}

/// Most state events, and most auth chain events, taken from one `/state` answer.
const MAX_STATE_EVENTS: usize = super::remote_join::MAX_JOIN_STATE;

/// The events of a `/state` answer from `from`: its state (`pdus`) and `auth_chain`, at
/// most [`MAX_STATE_EVENTS`] of each, each checked for format, hashes and signatures
/// (a bad one is dropped with a log line). Returns the ids of the state events, and
/// every event that passed.
pub(super) fn checked_state_answer(
    answer: &Value,
    room_id: &str,
    rules: &RoomVersionRules,
    from: &str,
) -> (Vec<String>, Vec<Checked>) {
    let mut ids = Vec::new();
    let mut events = Vec::new();
    for (is_state, list) in [(true, &answer["pdus"]), (false, &answer["auth_chain"])] {
        for v in list.as_array().into_iter().flatten().take(MAX_STATE_EVENTS) {
            match check_pdu(v.clone(), room_id, rules) {
                Ok(ev) => {
                    if is_state {
                        ids.push(ev.event_id.clone());
                    }
                    events.push(ev);
                }
                Err((eid, reason)) => {
                    tracing::info!(%from, ?eid, %reason, "dropped an event of a /state answer");
                }
            }
        }
    }
    (ids, events)
}

/// Accept `checked` with the state before it as `origin` gives it (`/state`): each state
/// event checked (format, signatures, auth against its auth events), the event checked
/// against that state and against the current state, as any received event. `None`
/// when the state cannot be had.
async fn with_state_from(
    server: &Arc<Server>,
    remote: &dyn RemoteEvents,
    origin: &str,
    room_id: &str,
    version: &str,
    rules: &RoomVersionRules,
    checked: Checked,
) -> Result<Option<Outcome>, Error> {
    let answer = match remote
        .state_before(origin, room_id, &checked.event_id)
        .await
    {
        Ok(a) => a,
        Err(e) => {
            tracing::info!(%origin, event_id = %checked.event_id, error = %e, "cannot fetch the state before a received event");
            return Ok(None);
        }
    };
    let (ids, state_events) = checked_state_answer(&answer, room_id, rules, origin);
    let mut seeds = state_events.clone();
    seeds.push(checked.clone());
    let auth =
        with_auth_events(server, remote, origin, room_id, rules, &seeds, MAX_FETCHES).await?;
    let outcome = server.write(|c| {
        let room = Room {
            c,
            room_id,
            version,
            rules,
        };
        for ev in auth.into_iter().chain(state_events) {
            // (The room's create event is here already: it comes back as known.)
            if ev.event_id != checked.event_id {
                room.process(ev, Mode::AuthOnly)?;
            }
        }
        let mut state = StateMap::new();
        for id in &ids {
            if let Some(e) = storage::get_event_any(c, id)?
                && e.status != EventStatus::Rejected
                && let Some(sk) = e.state_key
            {
                state.insert((e.kind, sk), e.event_id);
            }
        }
        // The room's create event never changes: ours stands in if the answer left it
        // out.
        let create = ("m.room.create".to_owned(), String::new());
        if !state.contains_key(&create)
            && let Some(id) = storage::current_state_event(c, room_id, "m.room.create", "")?
        {
            state.insert(create, id);
        }
        tracing::debug!(event_id = %checked.event_id, given = ids.len(), kept = state.len(), "state before a received event, from its sender");
        let prevs: Vec<String> = checked.pdu.prev_events.iter().map(|p| p.to_string()).collect();
        let depth = checked.pdu.depth;
        let outcome = room.process_given(checked, Mode::Full, Some(&state))?;
        if matches!(outcome, Outcome::Accepted { .. }) {
            // Its missing prev events are a gap behind it (backward extremities): one
            // that arrives later has a child here already, so it is not a forward
            // extremity, and backfill may fill the gap from `origin`.
            for p in prevs {
                if !has_state(c, &p)? {
                    storage::add_backfill_extremity(c, room_id, &p, depth - 1, Some(origin))?;
                }
            }
        }
        Ok(outcome)
    })?;
    Ok(Some(outcome))
}

/// Fetches missing auth events from the origin, breadth first, within a budget.
struct Fetcher<'a> {
    server: &'a Arc<Server>,
    remote: &'a dyn RemoteEvents,
    origin: &'a str,
    room_id: &'a str,
    rules: &'a RoomVersionRules,
    budget: usize,
    fetched: HashMap<String, Checked>,
}

impl Fetcher<'_> {
    async fn fetch_auth_events(&mut self, pdu: &Pdu) -> Result<(), Error> {
        let mut queue: VecDeque<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
        while let Some(id) = queue.pop_front() {
            if self.fetched.contains_key(&id) {
                continue;
            }
            if self
                .server
                .db
                .read(|c| storage::event_status(c, &id))?
                .is_some()
            {
                continue;
            }
            if self.budget == 0 {
                tracing::info!(origin = %self.origin, "fetch budget spent; auth events stay missing");
                return Ok(());
            }
            self.budget -= 1;
            let value = match self.remote.get_event(self.origin, &id).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::info!(origin = %self.origin, event_id = %id, error = %e, "cannot fetch auth event");
                    continue;
                }
            };
            match check_pdu(value, self.room_id, self.rules) {
                // A server answering with another event than asked for is ignored.
                Ok(ev) if ev.event_id == id => {
                    queue.extend(ev.pdu.auth_events.iter().map(|e| e.to_string()));
                    self.fetched.insert(id, ev);
                }
                Ok(ev) => {
                    tracing::info!(asked = %id, got = %ev.event_id, "fetched event has another id");
                }
                Err((_, reason)) => {
                    tracing::info!(event_id = %id, %reason, "fetched auth event dropped");
                }
            }
        }
        Ok(())
    }

    /// The fetched events, each after the fetched events among its auth events.
    fn into_dependency_order(self) -> Vec<Checked> {
        dependency_order(self.fetched.into_values().collect())
    }
}

/// Events ordered so that each comes after the events of the list among its auth events.
pub(super) fn dependency_order(mut pending: Vec<Checked>) -> Vec<Checked> {
    pending.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    pending.dedup_by(|a, b| a.event_id == b.event_id);
    let mut out: Vec<Checked> = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let waiting: HashSet<String> = pending.iter().map(|e| e.event_id.clone()).collect();
        let (ready, rest): (Vec<Checked>, Vec<Checked>) = pending.into_iter().partition(|e| {
            e.pdu
                .auth_events
                .iter()
                .all(|a| !waiting.contains(a.as_str()))
        });
        if ready.is_empty() {
            // A cycle (impossible with hashed ids; in room versions 1 and 2 a server can
            // sign events that name each other, which then fail their auth checks for want
            // of stored auth events): give the rest in any order.
            out.extend(rest);
            break;
        }
        out.extend(ready);
        pending = rest;
    }
    out
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Mode {
    /// An auth event: checked against its auth events, stored as an outlier.
    AuthOnly,
    /// An event of the state or auth chain a resident server gave us when we joined:
    /// like `AuthOnly`, but the room's create event is accepted too.
    JoinState,
    /// Every check; the timeline if it passes.
    Full,
}

/// One room's checks and writes, inside the write transaction.
pub(super) struct Room<'a> {
    pub(super) c: &'a Connection,
    pub(super) room_id: &'a str,
    pub(super) version: &'a str,
    pub(super) rules: &'a RoomVersionRules,
}

impl Room<'_> {
    pub(super) fn process(&self, ev: Checked, mode: Mode) -> Result<Outcome, Error> {
        self.process_given(ev, mode, None)
    }

    /// [`Room::process`], with the state before the event given (from the server that
    /// sent it) for when its prev events are not all here.
    pub(super) fn process_given(
        &self,
        ev: Checked,
        mode: Mode,
        given_state: Option<&StateMap>,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let event_id = ev.event_id.clone();
        if let Some(e) = storage::get_event_any(c, &event_id)? {
            if is_another_event(self.rules, &e.json, &ev) {
                return Ok(another_event(event_id));
            }
            match e.status {
                EventStatus::Timeline | EventStatus::SoftFailed => {
                    return Ok(Outcome::AlreadyKnown { event_id });
                }
                EventStatus::Rejected => {
                    return Ok(Outcome::Rejected {
                        event_id: Some(event_id),
                        reason: e.rejection_reason.unwrap_or_else(|| "rejected".into()),
                    });
                }
                EventStatus::Outlier if mode != Mode::Full => {
                    return Ok(Outcome::Outlier { event_id });
                }
                // Known as an outlier: look again, its prev events may be known now (the
                // outlier row is replaced when the event is stored again).
                EventStatus::Outlier => {}
            }
        }
        let pdu = &ev.pdu;
        if pdu.kind == TimelineEventType::RoomCreate && mode != Mode::JoinState {
            return Ok(Outcome::Rejected {
                event_id: Some(event_id),
                reason: "m.room.create is only accepted when creating or joining a room".into(),
            });
        }

        // 4. Auth events: all known, and the event passes auth against them.
        if let Some(outcome) = self.check_auth_events(&ev, None)? {
            return Ok(outcome);
        }
        let rules = &self.rules.authorization;
        if mode != Mode::Full {
            self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            return Ok(Outcome::Outlier { event_id });
        }

        // 5. The state before the event, from its prev events (or as given).
        let from_prevs = self.state_before(pdu)?;
        let Some((before, group_before)) = (match (from_prevs, given_state) {
            (Some(known), _) => Some(known),
            (None, Some(state)) => Some((
                state.clone(),
                storage::group_for_state(c, self.room_id, None, state)?,
            )),
            (None, None) => None,
        }) else {
            self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            return Ok(Outcome::Outlier { event_id });
        };
        if let Err(e) = check_against(c, rules, pdu, &before) {
            return self.store_rejected(
                &ev,
                format!("against the state before it: {e}"),
                Some(group_before),
            );
        }

        // A gap behind a stored event (a backward extremity: its child was accepted
        // with the state its sender gave) is history, not news: the timeline has moved
        // past it, so it is not soft-failed (as backfilled events are not), and it
        // changes the current state only by what it does to the forward extremities.
        // So is an event a stored outlier names as a prev event (history from before our
        // join that comes live: see `storage::has_outlier_child`).
        let is_gap = storage::is_backfill_extremity(c, self.room_id, &event_id)?
            || storage::has_outlier_child(c, self.room_id, &event_id, pdu.depth)?;

        // 6. The current state.
        let current = storage::current_state(c, self.room_id)?;
        if !is_gap
            && current != before
            && let Err(e) = check_against(c, rules, pdu, &current)
        {
            tracing::info!(%event_id, error = %e, "soft-failing received event");
            let after = self.group_after(pdu, group_before, &before)?;
            self.store_other(
                &ev,
                EventStatus::SoftFailed,
                None,
                Some(group_before),
                after,
            )?;
            return Ok(Outcome::SoftFailed { event_id });
        }

        // 7. Into the timeline; the current state follows the forward extremities.
        let mut after = before.clone();
        if let Some(sk) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), sk.clone()), event_id.clone());
        }
        let new_current = if is_gap {
            self.gap_current_state(pdu, current)?
        } else {
            self.new_current_state(pdu, &after)?
        };
        let replaces = pdu
            .state_key
            .as_ref()
            .and_then(|sk| before.get(&(pdu.kind.to_string(), sk.clone())).cloned());
        storage::delete_outlier(c, &event_id)?;
        let stream_pos = persist_accepted(
            c,
            Accepted {
                room_id: self.room_id,
                version: self.version,
                pdu,
                json: &ev.json,
                group_before: Some(group_before),
                replaces,
                current: new_current,
                txn: None,
            },
        )?;
        Ok(Outcome::Accepted {
            event_id,
            stream_pos,
        })
    }

    /// Check 4: the auth events are all stored and the event passes auth against them.
    /// `Some` outcome when it does not (missing auth events, or stored as rejected with
    /// `group_before` as the state before it, when known).
    fn check_auth_events(
        &self,
        ev: &Checked,
        group_before: Option<i64>,
    ) -> Result<Option<Outcome>, Error> {
        let c = self.c;
        let pdu = &ev.pdu;
        let event_id = ev.event_id.clone();
        let mut auth_state: HashMap<(StateEventType, String), Pdu> = HashMap::new();
        for a in &pdu.auth_events {
            let Some(auth) = load_pdu(c, a.as_str())? else {
                // Not stored: the event may come again once its auth events can be had.
                return Ok(Some(Outcome::Rejected {
                    event_id: Some(event_id),
                    reason: format!("auth event {a} is missing"),
                }));
            };
            if let Some(sk) = &auth.state_key {
                auth_state.insert((auth.kind.to_string().into(), sk.clone()), auth);
            }
        }
        let rules = &self.rules.authorization;
        // From room version 12 the create event is not listed: the room id names it.
        if rules.room_create_event_id_as_room_id
            && let Some(create) =
                load_pdu(c, &format!("${}", self.room_id.trim_start_matches('!')))?
        {
            auth_state
                .entry((StateEventType::RoomCreate, String::new()))
                .or_insert(create);
        }
        if let Err(e) = state_res::check_state_independent_auth_rules(rules, pdu, |id: &EventId| {
            load_pdu(c, id.as_str()).ok().flatten()
        }) {
            return self
                .store_rejected(ev, format!("auth events: {e}"), group_before)
                .map(Some);
        }
        if let Err(e) = state_res::check_state_dependent_auth_rules(rules, pdu, |ty, sk| {
            auth_state.get(&(ty.clone(), sk.to_owned())).cloned()
        }) {
            return self
                .store_rejected(ev, format!("against its auth events: {e}"), group_before)
                .map(Some);
        }
        Ok(None)
    }

    /// A backfilled event: history older than the room's timeline here, fetched with
    /// `/backfill`. Checked as any received event (signatures and hashes were checked by
    /// [`check_pdu`]; here auth against its auth events and against the state before
    /// it), where the state before it comes from its prev events when they are here, else
    /// from `given_state` (the serving server's `/state` at the event). It takes a
    /// backfill position (by depth: see [`crate::streams::BACKFILL_BASE`]), its search
    /// text and its relationship (edits, reactions, threads), and changes nothing
    /// else: not the current state, the forward extremities, memberships or
    /// notifications,
    /// and it is never soft-failed (it is history, not news). The room's
    /// create event (`create_id`), stored as an outlier when the room was joined, joins
    /// the timeline this way at the start of its history.
    pub(super) fn process_backfilled(
        &self,
        ev: Checked,
        given_state: Option<&StateMap>,
        create_id: &str,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let event_id = ev.event_id.clone();
        if let Some(e) = storage::get_event_any(c, &event_id)? {
            if is_another_event(self.rules, &e.json, &ev) {
                return Ok(another_event(event_id));
            }
            match e.status {
                EventStatus::Timeline | EventStatus::SoftFailed => {
                    return Ok(Outcome::AlreadyKnown { event_id });
                }
                EventStatus::Rejected => {
                    return Ok(Outcome::Rejected {
                        event_id: Some(event_id),
                        reason: e.rejection_reason.unwrap_or_else(|| "rejected".into()),
                    });
                }
                // Known as an outlier (an auth or state event): it takes its place in
                // the timeline now.
                EventStatus::Outlier => {}
            }
        }
        let pdu = &ev.pdu;
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        if is_create && event_id != create_id {
            return Ok(Outcome::Rejected {
                event_id: Some(event_id),
                reason: "not this room's create event".into(),
            });
        }
        // The state before it first: a rejected event keeps it, so the history built on
        // it (the state after a rejected event is the state before it) can go on.
        let (before, group_before) = if is_create {
            (StateMap::new(), None)
        } else if let Some((state, group)) = self.state_before(pdu)? {
            (state, Some(group))
        } else if let Some(state) = given_state {
            let group = storage::group_for_state(c, self.room_id, None, state)?;
            (state.clone(), Some(group))
        } else {
            if storage::event_status(c, &event_id)?.is_none() {
                self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            }
            return Ok(Outcome::Outlier { event_id });
        };
        if let Some(outcome) = self.check_auth_events(&ev, group_before)? {
            return Ok(outcome);
        }
        if !is_create && let Err(e) = check_against(c, &self.rules.authorization, pdu, &before) {
            return self.store_rejected(
                &ev,
                format!("against the state before it: {e}"),
                group_before,
            );
        }
        let Some(pos) = storage::next_backfill_position(c, pdu.depth)? else {
            // A depth no real room reaches: kept out of the timeline.
            if storage::event_status(c, &event_id)?.is_none() {
                self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            }
            return Ok(Outcome::Outlier { event_id });
        };
        let group_after = match group_before {
            Some(g) => self.group_after(pdu, g, &before)?,
            None => {
                let mut after = StateMap::new();
                if let Some(sk) = &pdu.state_key {
                    after.insert((pdu.kind.to_string(), sk.clone()), event_id.clone());
                }
                Some(storage::group_for_state(c, self.room_id, None, &after)?)
            }
        };
        // What a client shows for a state change: the content it replaced.
        let mut unsigned = serde_json::Map::new();
        if let Some(sk) = &pdu.state_key
            && let Some(prev_id) = before.get(&(pdu.kind.to_string(), sk.clone()))
            && let Some(prev) = storage::get_event_any(c, prev_id)?
        {
            let prev_json: Value = serde_json::from_str(&prev.json)?;
            unsigned.insert("prev_content".into(), prev_json["content"].clone());
            unsigned.insert("prev_sender".into(), Value::String(prev.sender.clone()));
            unsigned.insert("replaces_state".into(), Value::String(prev_id.clone()));
        }
        storage::delete_outlier(c, &event_id)?;
        let stored = StoredEvent {
            stream_ordering: pos,
            event_id: event_id.clone(),
            room_id: self.room_id.to_owned(),
            kind: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            depth: pdu.depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: ev.json.clone(),
            unsigned: (!unsigned.is_empty()).then(|| Value::Object(unsigned).to_string()),
            redacted_by: None,
            state_group_before: group_before,
            txn_device: None,
            txn_id: None,
            status: EventStatus::Timeline,
            rejection_reason: None,
            state_group_after: group_after,
            room_state_group: None,
        };
        storage::insert_event(c, &stored)?;
        crate::metrics::event_persisted(false);
        // History is searchable like the rest (search orders it below live events).
        storage::index_event(c, &stored)?;
        // Edits, reactions and thread replies from before the join count in bundled
        // aggregations and `/relations` (a backfilled thread reply never displaces a
        // live one as its thread's newest: its position is lower).
        crate::relations::on_persisted(c, &stored)?;
        Ok(Outcome::Accepted {
            event_id,
            stream_pos: pos,
        })
    }

    /// The DAG state before `pdu` and a group holding it; `None` when a prev event is
    /// missing or an outlier.
    pub(super) fn state_before(&self, pdu: &Pdu) -> Result<Option<(StateMap, i64)>, Error> {
        let c = self.c;
        let mut states: Vec<(StateMap, Option<i64>)> = Vec::new();
        for p in &pdu.prev_events {
            let Some(prev) = storage::get_event_any(c, p.as_str())? else {
                return Ok(None);
            };
            match prev.status {
                EventStatus::Outlier => return Ok(None),
                // A rejected event changes nothing: the state after it is the state before.
                EventStatus::Rejected => match prev.state_group_before {
                    Some(g) => states.push((storage::load_state_group(c, g)?, Some(g))),
                    None => return Ok(None),
                },
                EventStatus::Timeline | EventStatus::SoftFailed => {
                    states.push(state_after_event(c, &prev)?);
                }
            }
        }
        if states.is_empty() {
            // Only a create event has no prev events, and those never come this way.
            return Ok(None);
        }
        let maps: Vec<StateMap> = states.iter().map(|(s, _)| s.clone()).collect();
        let state = match resolve_states(c, self.rules, &maps, None) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(event_id = %pdu.event_id, error = %e, "cannot resolve the state before a received event");
                return Ok(None);
            }
        };
        // Reuse a group that holds exactly this state, else store one.
        let base = states
            .iter()
            .find_map(|(s, g)| g.filter(|_| *s == state).map(|g| (g, s)))
            .or_else(|| states.iter().find_map(|(s, g)| g.map(|g| (g, s))));
        let group = storage::group_for_state(c, self.room_id, base, &state)?;
        Ok(Some((state, group)))
    }

    /// A group for the DAG state after `pdu`, given the state before it.
    fn group_after(
        &self,
        pdu: &Pdu,
        group_before: i64,
        before: &StateMap,
    ) -> Result<Option<i64>, Error> {
        let Some(sk) = &pdu.state_key else {
            return Ok(Some(group_before));
        };
        let mut after = before.clone();
        after.insert((pdu.kind.to_string(), sk.clone()), pdu.event_id.to_string());
        Ok(Some(storage::group_for_state(
            self.c,
            self.room_id,
            Some((group_before, before)),
            &after,
        )?))
    }

    /// The room's current state once `pdu` (with DAG state `after` after it) is in the
    /// timeline: the resolution of the states after each forward extremity.
    fn new_current_state(&self, pdu: &Pdu, after: &StateMap) -> Result<NewCurrentState, Error> {
        let c = self.c;
        let prevs: HashSet<&str> = pdu.prev_events.iter().map(|e| e.as_str()).collect();
        let others: Vec<String> = storage::forward_extremities(c, self.room_id)?
            .into_iter()
            .map(|(id, _)| id)
            .filter(|id| !prevs.contains(id.as_str()) && id != pdu.event_id.as_str())
            .take(MAX_RESOLVED_EXTREMITIES)
            .collect();
        let just_this = NewCurrentState::Replace {
            state: after.clone(),
            is_state_after_event: true,
        };
        if others.is_empty() {
            return Ok(just_this);
        }
        let mut states = vec![after.clone()];
        for id in &others {
            if let Some(e) = storage::get_event_any(c, id)? {
                states.push(state_after_event(c, &e)?.0);
            }
        }
        match resolve_states(c, self.rules, &states, Some(pdu)) {
            Ok(state) => {
                let is_state_after_event = state == *after;
                Ok(NewCurrentState::Replace {
                    state,
                    is_state_after_event,
                })
            }
            Err(e) => {
                tracing::warn!(event_id = %pdu.event_id, error = %e, "cannot resolve the current state; using the event's");
                Ok(just_this)
            }
        }
    }

    /// The room's current state once `pdu`, a gap behind a stored event, is in the
    /// timeline: it is not a forward extremity, but its prev events stop being ones (a
    /// node that had it before its child never counted them), so the current state is
    /// the resolution of the states after the extremities that remain; `current` when
    /// none would.
    fn gap_current_state(&self, pdu: &Pdu, current: StateMap) -> Result<NewCurrentState, Error> {
        let c = self.c;
        let prevs: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
        let before = storage::forward_extremities(c, self.room_id)?;
        // (`persist_accepted` does this again, to no effect.)
        storage::remove_prev_extremities(c, self.room_id, &prevs)?;
        let remaining: Vec<String> = storage::forward_extremities(c, self.room_id)?
            .into_iter()
            .map(|(id, _)| id)
            .take(MAX_RESOLVED_EXTREMITIES)
            .collect();
        let keep = NewCurrentState::Replace {
            state: current,
            is_state_after_event: false,
        };
        if remaining.is_empty() || remaining.len() == before.len() {
            return Ok(keep);
        }
        let mut states = Vec::new();
        for id in &remaining {
            if let Some(e) = storage::get_event_any(c, id)? {
                states.push(state_after_event(c, &e)?.0);
            }
        }
        match resolve_states(c, self.rules, &states, None) {
            Ok(state) => Ok(NewCurrentState::Replace {
                state,
                is_state_after_event: false,
            }),
            Err(e) => {
                tracing::warn!(event_id = %pdu.event_id, error = %e, "cannot resolve the current state; keeping it");
                Ok(keep)
            }
        }
    }

    fn store_rejected(
        &self,
        ev: &Checked,
        reason: String,
        group_before: Option<i64>,
    ) -> Result<Outcome, Error> {
        tracing::info!(event_id = %ev.event_id, %reason, "rejected received event");
        self.store_other(
            ev,
            EventStatus::Rejected,
            Some(reason.clone()),
            group_before,
            group_before,
        )?;
        // A gap behind a stored event is settled: its prev events are no forward
        // extremities (the state after a rejected event is the one before it).
        if group_before.is_some() {
            let prevs: Vec<String> = ev.pdu.prev_events.iter().map(|e| e.to_string()).collect();
            storage::close_gap(self.c, self.room_id, &ev.event_id, &prevs)?;
        }
        storage::trim_rejected(self.c, self.room_id, MAX_REJECTED_PER_ROOM)?;
        Ok(Outcome::Rejected {
            event_id: Some(ev.event_id.clone()),
            reason,
        })
    }

    /// Store an event outside the timeline, at a negative stream position.
    fn store_other(
        &self,
        ev: &Checked,
        status: EventStatus,
        rejection_reason: Option<String>,
        group_before: Option<i64>,
        group_after: Option<i64>,
    ) -> Result<(), Error> {
        let pdu = &ev.pdu;
        storage::delete_outlier(self.c, &ev.event_id)?;
        let stored = StoredEvent {
            stream_ordering: -next_stream_position(self.c)?,
            event_id: ev.event_id.clone(),
            room_id: self.room_id.to_owned(),
            kind: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            depth: pdu.depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: ev.json.clone(),
            unsigned: None,
            redacted_by: None,
            state_group_before: group_before,
            txn_device: None,
            txn_id: None,
            status,
            rejection_reason,
            state_group_after: group_after,
            room_state_group: None,
        };
        storage::insert_event(self.c, &stored)?;
        crate::metrics::event_persisted(false);
        Ok(())
    }
}

/// Room versions 1 and 2: whether the stored event `stored_json` is another event than
/// `ev` under the same id. Ids there are chosen by the sending server, not computed from
/// the content, so a server could reuse one; the first event stays (as in Synapse), and
/// nothing built on it changes under anyone's feet. Later versions' ids are hashes of
/// the content, so a stored event with the id is always the same one.
pub(super) fn is_another_event(rules: &RoomVersionRules, stored_json: &str, ev: &Checked) -> bool {
    if !rules.event_format.require_event_id {
        return false;
    }
    // The reference hash ignores signatures and survives redaction: a copy redacted on
    // either side (or signed by more servers) is still the same event.
    let hash = |json: &str| {
        serde_json::from_str::<ruma::CanonicalJsonObject>(json)
            .ok()
            .and_then(|o| ruma::signatures::reference_hash(&o, rules).ok())
    };
    hash(stored_json) != hash(&ev.json)
}

fn another_event(event_id: String) -> Outcome {
    tracing::info!(%event_id, "refused a received event reusing the id of another");
    Outcome::Rejected {
        event_id: Some(event_id),
        reason: "the event id is taken by another event here".into(),
    }
}

/// Check the state-dependent auth rules against a state map.
pub(super) fn check_against(
    c: &Connection,
    rules: &ruma::room_version_rules::AuthorizationRules,
    pdu: &Pdu,
    state: &StateMap,
) -> Result<(), String> {
    state_res::check_state_dependent_auth_rules(rules, pdu, |ty, sk| {
        state
            .get(&(ty.to_string(), sk.to_owned()))
            .and_then(|id| load_pdu(c, id).ok().flatten())
    })
}

/// The DAG state after a stored event, with the group holding it when there is one.
fn state_after_event(c: &Connection, e: &StoredEvent) -> Result<(StateMap, Option<i64>), Error> {
    if let Some(g) = e.state_group_after {
        return Ok((storage::load_state_group(c, g)?, Some(g)));
    }
    let mut state = match e.state_group_before {
        Some(g) => storage::load_state_group(c, g)?,
        None => StateMap::new(),
    };
    match &e.state_key {
        Some(sk) => {
            state.insert((e.kind.clone(), sk.clone()), e.event_id.clone());
            Ok((state, None))
        }
        None => Ok((state, e.state_group_before)),
    }
}
