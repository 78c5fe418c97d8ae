//! Backfill: history from before this node joined a room, fetched from other servers.
//!
//! A room joined over federation starts its timeline here at the join; the events
//! before it live on the other servers. Where the history has a gap, the missing prev
//! events are kept as the room's *backward extremities* (`storage::backfill_extremities`):
//! the join's prev events when it is persisted ([`note_remote_join`]), then the prev
//! events of each backfilled event that are not here. [`backfill`] asks a server of the
//! room (the one that served the gap first — for the join, the resident it went
//! through — then servers with joined members) for the events before the deepest
//! extremities (`GET /_matrix/federation/v1/backfill/{roomId}?v=…&limit=`) and checks
//! each returned PDU as any received one: format, signatures and content hash
//! ([`check_pdu`](super::receive::check_pdu)), auth against its auth events (missing
//! ones are fetched from the same server) and against the state before it. That state
//! comes from its prev events when they are here; for the oldest events of a batch
//! (whose prev events are older still) it is the serving server's `/state` at the
//! event, checked event by event like the state a join hands over. Accepted events take
//! backfill positions (by depth, below every other position: see
//! [`crate::streams::BACKFILL_BASE`]), so `/messages` pages into them after the live
//! timeline and `/sync` never sees them; rejected ones are stored as rejected and never
//! shown. The room's create event closes the gap: a room with no backward extremities
//! has its whole history here.
//!
//! Bounds, per call: one batch of at most [`MAX_BACKFILL_EVENTS`] events from the first
//! of at most [`MAX_SERVERS_TRIED`] servers that answers, at most [`MAX_STATE_FETCHES`]
//! `/state` requests and [`MAX_FETCHES`](super::MAX_FETCHES) auth-event fetches, all
//! within [`BACKFILL_TIMEOUT`]. History visibility is applied by the serving server (an
//! event we may not see comes redacted) and again here, per user, when it is shown.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use ruma::api::federation::backfill::get_backfill;
use rusqlite::Connection;
use serde_json::Value;

use super::receive::{
    Checked, Mode, Room, check_pdu, checked_state_answer, has_state, with_auth_events,
};
use super::{MAX_FETCHES, Outcome, RemoteEvents};
use crate::error::Error;
use crate::events::rules_for;
use crate::federation::client::{execute, parse_id};
use crate::federation::remote::FederationRemote;
use crate::server::Server;
use crate::storage::{self, StateMap};

/// Most events asked for in one `/backfill` request (what a Warren peer serves at most).
pub const MAX_BACKFILL_EVENTS: usize = 100;
/// Most backward extremities named (`v`) in one request.
pub const MAX_FROM: usize = 20;
/// Most servers asked in one call before giving up for now.
pub const MAX_SERVERS_TRIED: usize = 3;
/// Most `/state` requests for the oldest events of one batch.
pub const MAX_STATE_FETCHES: usize = 2;
/// Longest one call may take, every request included.
pub const BACKFILL_TIMEOUT: Duration = Duration::from_secs(15);
/// Record the gap before a join persisted over federation (in the join's write
/// transaction): its prev events that are not here become backward extremities, to be
/// asked of `via` (the resident the join went through) first.
pub fn note_remote_join(
    c: &Connection,
    room_id: &str,
    join_event_id: &str,
    via: &str,
) -> Result<(), Error> {
    let Some(join) = storage::get_event_any(c, join_event_id)? else {
        return Ok(());
    };
    let json: Value = serde_json::from_str(&join.json)?;
    for prev in refs(&json, "prev_events") {
        if !has_state(c, &prev)? {
            storage::add_backfill_extremity(c, room_id, &prev, join.depth - 1, Some(via))?;
        }
    }
    Ok(())
}

fn refs(json: &Value, field: &str) -> Vec<String> {
    crate::events::reference_ids(json, field)
}

/// What a [`backfill`] call achieved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Backfilled {
    /// Events that joined the room's history.
    pub added: usize,
    /// Whether a server answered (false: none was reachable or willing).
    pub answered: bool,
}

/// Fetch one batch of older history for `room_id` (see the module documentation).
/// Peers' failures are logged and end the call with what was done; `Err` is for our own
/// (database) failures.
pub async fn backfill(server: &Arc<Server>, room_id: &str) -> Result<Backfilled, Error> {
    match tokio::time::timeout(BACKFILL_TIMEOUT, backfill_once(server, room_id)).await {
        Ok(r) => r,
        Err(_) => {
            tracing::info!(%room_id, "backfill timed out");
            Ok(Backfilled::default())
        }
    }
}

async fn backfill_once(server: &Arc<Server>, room_id: &str) -> Result<Backfilled, Error> {
    let own = server.server_name().to_owned();
    let Some((version, extremities, joined, create_id)) = server.db.read(|c| {
        let Some((version, _)) = storage::room_info(c, room_id)? else {
            return Ok(None);
        };
        let ext = storage::backfill_extremities(c, room_id, MAX_FROM)?;
        let joined = storage::joined_servers(c, room_id)?;
        let create = storage::current_state_event(c, room_id, "m.room.create", "")?;
        Ok(Some((version, ext, joined, create)))
    })?
    else {
        return Ok(Backfilled::default());
    };
    let Some(create_id) = create_id else {
        return Ok(Backfilled::default());
    };
    if extremities.is_empty() {
        return Ok(Backfilled::default());
    }
    let (_, rules) = rules_for(&version)?;
    let mut servers: Vec<String> = Vec::new();
    for s in extremities
        .iter()
        .filter_map(|e| e.via.clone())
        .chain(joined)
    {
        if s != own && !servers.contains(&s) {
            servers.push(s);
        }
    }
    let v = extremities
        .iter()
        .map(|e| parse_id(&e.event_id))
        .collect::<Result<Vec<_>, _>>()?;
    let limit = ruma::UInt::new_saturating(MAX_BACKFILL_EVENTS as u64);
    let request = get_backfill::v1::Request::new(parse_id(room_id)?, v, limit);
    for dest in servers.into_iter().take(MAX_SERVERS_TRIED) {
        let answer = match execute(server, &dest, request.clone()).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "backfill request failed");
                continue;
            }
        };
        let pdus: Vec<Value> = answer
            .pdus
            .iter()
            .take(MAX_BACKFILL_EVENTS)
            .filter_map(|pdu| serde_json::from_str(pdu.get()).ok())
            .collect();
        if pdus.is_empty() {
            continue;
        }
        let added = apply(server, &dest, room_id, &version, &rules, &create_id, pdus).await?;
        tracing::info!(%room_id, %dest, added, "backfilled history");
        return Ok(Backfilled {
            added,
            answered: true,
        });
    }
    Ok(Backfilled::default())
}

/// Check and store one `/backfill` answer from `dest`; returns how many events joined
/// the room's history.
async fn apply(
    server: &Arc<Server>,
    dest: &str,
    room_id: &str,
    version: &str,
    rules: &ruma::room_version_rules::RoomVersionRules,
    create_id: &str,
    pdus: Vec<Value>,
) -> Result<usize, Error> {
    // 1–3: format, signatures, hashes. Oldest first, so prev events come before.
    let mut seen = HashSet::new();
    let mut batch: Vec<Checked> = Vec::new();
    for v in pdus {
        match check_pdu(v, room_id, rules) {
            Ok(ev) if seen.insert(ev.event_id.clone()) => batch.push(ev),
            Ok(_) => {}
            Err((id, reason)) => {
                tracing::info!(%dest, ?id, %reason, "dropped a backfilled event");
            }
        }
    }
    batch.sort_by(|a, b| {
        (a.pdu.depth, a.pdu.origin_server_ts, &a.event_id).cmp(&(
            b.pdu.depth,
            b.pdu.origin_server_ts,
            &b.event_id,
        ))
    });
    // The events whose prev events are neither here nor in the batch: the state before
    // them is asked of the serving server (the deepest first: they join what we have).
    let needs_state: Vec<String> = server.db.read(|c| {
        let mut out = Vec::new();
        for ev in batch.iter().rev() {
            if ev.event_id == create_id {
                continue;
            }
            let mut missing = false;
            for p in &ev.pdu.prev_events {
                missing |= !seen.contains(p.as_str()) && !has_state(c, p.as_str())?;
            }
            if missing && !has_state(c, &ev.event_id)? {
                out.push(ev.event_id.clone());
            }
        }
        Ok(out)
    })?;
    let remote = FederationRemote::new(server.clone());
    let mut given: HashMap<String, Vec<String>> = HashMap::new();
    let mut state_events: Vec<Checked> = Vec::new();
    for id in needs_state.into_iter().take(MAX_STATE_FETCHES) {
        let answer = match remote.state_before(dest, room_id, &id).await {
            Ok(a) => a,
            Err(e) => {
                tracing::info!(%room_id, %dest, event_id = %id, error = %e, "cannot fetch the state before a backfilled event");
                continue;
            }
        };
        let (ids, events) = checked_state_answer(&answer, room_id, rules, dest);
        state_events.extend(events.into_iter().filter(|ev| !seen.contains(&ev.event_id)));
        given.insert(id, ids);
    }
    // 4: the auth events the batch and those states need, fetched from the same server.
    let mut seeds = state_events;
    seeds.extend(batch.iter().cloned());
    let auth = with_auth_events(server, &remote, dest, room_id, rules, &seeds, MAX_FETCHES).await?;
    let in_batch: HashSet<&str> = batch.iter().map(|e| e.event_id.as_str()).collect();
    let auth: Vec<Checked> = auth
        .into_iter()
        .filter(|e| !in_batch.contains(e.event_id.as_str()))
        .collect();

    // Check and persist: one write transaction.
    server.write(|c| {
        let room = Room {
            c,
            room_id,
            version,
            rules,
        };
        for ev in auth {
            let mode = if ev.event_id == create_id {
                Mode::JoinState
            } else {
                Mode::AuthOnly
            };
            room.process(ev, mode)?;
        }
        // The given states, as far as their events passed their checks.
        let mut states: HashMap<String, StateMap> = HashMap::new();
        for (at, ids) in &given {
            let mut state = StateMap::new();
            for id in ids {
                if let Some(e) = storage::get_event_any(c, id)?
                    && e.status != storage::EventStatus::Rejected
                    && let Some(sk) = e.state_key
                {
                    state.insert((e.kind, sk), e.event_id);
                }
            }
            states.insert(at.clone(), state);
        }
        let mut added = 0;
        for ev in batch {
            let id = ev.event_id.clone();
            let depth = ev.pdu.depth;
            let prevs: Vec<String> = ev.pdu.prev_events.iter().map(|p| p.to_string()).collect();
            let outcome = room.process_backfilled(ev, states.get(&id), create_id)?;
            tracing::debug!(event_id = %id, ?outcome, "backfilled event");
            match outcome {
                Outcome::Accepted { .. } | Outcome::Rejected { .. } => {
                    if matches!(outcome, Outcome::Accepted { .. }) {
                        added += 1;
                    }
                    // Settled (a rejected event is never shown, but the history behind
                    // it goes on): the gap moves to its prev events, which (a gap in
                    // the live timeline) stop being forward extremities here.
                    storage::close_gap(c, room_id, &id, &prevs)?;
                    for p in prevs {
                        if !has_state(c, &p)? {
                            storage::add_backfill_extremity(c, room_id, &p, depth - 1, Some(dest))?;
                        }
                    }
                }
                Outcome::AlreadyKnown { .. } => {
                    storage::remove_backfill_extremity(c, room_id, &id)?;
                }
                // No state known for it: the gap stays where it is.
                Outcome::Outlier { .. } | Outcome::SoftFailed { .. } => {}
            }
        }
        Ok(added)
    })
}

#[cfg(test)]
mod tests {
    //! A fake resident server (an in-memory transport answering `make_join`,
    //! `send_join`, `backfill` and `event` with events it signs) lets a node join, then
    //! backfill a history holding an event that fails auth and one with a bad signature.

    use std::collections::HashMap;
    use std::sync::Arc;

    use bytes::Bytes;
    use serde_json::{Value, json};
    use tokio::sync::broadcast;

    use super::*;
    use crate::events::{EventReference, NewEvent, build_pdu};
    use crate::federation::{FederationTransport, PeerEvent, TransportFuture};
    use crate::identity::Identity;
    use crate::storage::EventStatus;

    struct FakeResident {
        answers: HashMap<&'static str, Value>,
        events: HashMap<String, Value>,
        peers: broadcast::Sender<PeerEvent>,
    }

    impl FederationTransport for FakeResident {
        fn request(&self, _dest: &str, request: http::Request<Bytes>) -> TransportFuture<'_> {
            let path = request.uri().path().to_owned();
            let answer = if let Some(id) = path.strip_prefix("/_matrix/federation/v1/event/") {
                let id = percent_encoding::percent_decode_str(id)
                    .decode_utf8_lossy()
                    .to_string();
                self.events
                    .get(&id)
                    .map(|pdu| json!({"origin": "x", "origin_server_ts": 0, "pdus": [pdu]}))
            } else {
                self.answers
                    .iter()
                    .find(|(prefix, _)| path.starts_with(*prefix))
                    .map(|(_, v)| v.clone())
            };
            Box::pin(async move {
                let (status, body) = match answer {
                    Some(v) => (200, v),
                    None => (404, json!({"errcode": "M_NOT_FOUND", "error": "no"})),
                };
                Ok(http::Response::builder()
                    .status(status)
                    .body(Bytes::from(body.to_string()))
                    .expect("response"))
            })
        }

        fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
            self.peers.subscribe()
        }
    }

    #[tokio::test]
    async fn backfilled_events_are_checked_as_any_received_pdu() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();

        let resident = Identity::from_seed([7; 32]).expect("identity");
        let impostor = Identity::from_seed([9; 32]).expect("identity");
        let fake = resident.server_name().to_owned();
        let room = format!("!history:{fake}");
        let alice = format!("@alice:{fake}");
        let (_, rules) = rules_for("11").expect("rules");
        let mut pdus: Vec<(String, Value)> = Vec::new();
        let mut ev = |who: &Identity,
                      sender: &str,
                      kind: &str,
                      state_key: Option<&str>,
                      content: Value,
                      prev: &[&str],
                      auth: &[&str],
                      depth: i64|
         -> String {
            let prev: Vec<String> = prev.iter().map(|s| s.to_string()).collect();
            let auth: Vec<String> = auth.iter().map(|s| s.to_string()).collect();
            let new = NewEvent {
                kind: kind.into(),
                state_key: state_key.map(str::to_owned),
                content,
                sender: sender.to_owned(),
                redacts: None,
            };
            let (id, object) = build_pdu(
                who,
                &rules,
                Some(&room),
                &new,
                &EventReference::ids(&prev),
                &EventReference::ids(&auth),
                depth,
                1_000 + depth,
            )
            .expect("build");
            pdus.push((id.clone(), serde_json::to_value(&object).expect("json")));
            id
        };
        let r = &resident;
        let create = ev(
            r,
            &alice,
            "m.room.create",
            Some(""),
            json!({"room_version": "11"}),
            &[],
            &[],
            1,
        );
        let join = ev(
            r,
            &alice,
            "m.room.member",
            Some(&alice),
            json!({"membership": "join"}),
            &[&create],
            &[&create],
            2,
        );
        let power = ev(
            r,
            &alice,
            "m.room.power_levels",
            Some(""),
            json!({"users": {alice.clone(): 100}}),
            &[&join],
            &[&create, &join],
            3,
        );
        let rules_ev = ev(
            r,
            &alice,
            "m.room.join_rules",
            Some(""),
            json!({"join_rule": "public"}),
            &[&power],
            &[&create, &join, &power],
            4,
        );
        let good1 = ev(
            r,
            &alice,
            "m.room.message",
            None,
            json!({"body": "good 1"}),
            &[&rules_ev],
            &[&create, &join, &power],
            5,
        );
        // Sent by someone who never joined: fails auth.
        let mallory = ev(
            r,
            &format!("@mallory:{fake}"),
            "m.room.message",
            None,
            json!({"body": "intruder"}),
            &[&good1],
            &[&create, &power],
            6,
        );
        let good2 = ev(
            r,
            &alice,
            "m.room.message",
            None,
            json!({"body": "good 2"}),
            &[&mallory],
            &[&create, &join, &power],
            7,
        );
        // Claims to be alice's but is signed by another key: dropped.
        let forged = ev(
            &impostor,
            &alice,
            "m.room.message",
            None,
            json!({"body": "forged"}),
            &[&good2],
            &[&create, &join, &power],
            8,
        );
        let good3 = ev(
            r,
            &alice,
            "m.room.message",
            None,
            json!({"body": "good 3"}),
            &[&good2],
            &[&create, &join, &power],
            8,
        );
        let by_id: HashMap<String, Value> = pdus.iter().cloned().collect();
        let pdu = |id: &str| by_id[id].clone();
        let mut backfill: Vec<Value> = [
            &good3, &forged, &good2, &mallory, &good1, &rules_ev, &power, &join, &create,
        ]
        .iter()
        .map(|id| pdu(id))
        .collect();
        // A copy of a good event with its content changed: its hash fails, so only its
        // redacted form (no body) may be kept.
        let mut altered = pdu(&good1);
        altered["content"]["body"] = json!("altered");
        backfill.push(altered);

        let bob = server.user_id("bob");
        let template = json!({
            "room_version": "11",
            "event": {
                "room_id": room, "type": "m.room.member", "sender": bob, "state_key": bob,
                "content": {"membership": "join"}, "origin": server.server_name(),
                "origin_server_ts": 2_000, "depth": 9, "prev_events": [good3],
                "auth_events": [create, power, rules_ev],
            }
        });
        let transport = Arc::new(FakeResident {
            answers: HashMap::from([
                ("/_matrix/federation/v1/make_join/", template),
                (
                    "/_matrix/federation/v2/send_join/",
                    json!({"state": [pdu(&create), pdu(&join), pdu(&power), pdu(&rules_ev)],
                           "auth_chain": [pdu(&create), pdu(&join), pdu(&power)]}),
                ),
                (
                    "/_matrix/federation/v1/backfill/",
                    json!({"origin": fake, "origin_server_ts": 0, "pdus": backfill}),
                ),
            ]),
            events: by_id.clone(),
            peers: broadcast::channel(4).0,
        });
        assert!(node.set_transport(transport));
        let joined = crate::membership::join(
            &server,
            &crate::requester::Requester::node_acting_for(bob.clone()),
            &room,
            serde_json::Map::new(),
            vec![fake.clone()],
        )
        .await
        .expect("join");
        let gap = server
            .db
            .read(|c| storage::backfill_extremities(c, &room, 10))
            .expect("read");
        assert_eq!(gap.len(), 1);
        assert_eq!(
            (gap[0].event_id.as_str(), gap[0].via.as_deref()),
            (good3.as_str(), Some(fake.as_str()))
        );

        let done = super::backfill(&server, &room).await.expect("backfill");
        assert!(done.answered);
        let (timeline, statuses, gap) = server
            .db
            .read(|c| {
                let t = storage::room_events(c, &room, i64::MIN, i64::MAX, 50, false)?;
                let mut s = Vec::new();
                for id in [&mallory, &forged] {
                    s.push(storage::event_status(c, id)?);
                }
                Ok((t, s, storage::backfill_extremities(c, &room, 10)?))
            })
            .expect("read");
        let ids: Vec<&str> = timeline.iter().map(|e| e.event_id.as_str()).collect();
        assert_eq!(
            ids,
            vec![
                create.as_str(),
                join.as_str(),
                power.as_str(),
                rules_ev.as_str(),
                good1.as_str(),
                good2.as_str(),
                good3.as_str(),
                joined.as_str()
            ],
            "history in depth order, then the join"
        );
        // Backfilled below the live stream; the join is the only live event.
        assert!(
            timeline[..7]
                .iter()
                .all(|e| crate::streams::is_backfill_position(e.stream_ordering))
        );
        assert!(timeline[7].stream_ordering > 0);
        assert!(
            timeline[4].json.contains("good 1"),
            "the good copy was kept"
        );
        assert_eq!(statuses, vec![Some(EventStatus::Rejected), None]);
        assert!(gap.is_empty(), "the creation closes the gap: {gap:?}");
        // The state before a backfilled event is known (visibility needs it).
        assert!(
            timeline[..7]
                .iter()
                .all(|e| e.state_group_before.is_some() || e.kind == "m.room.create")
        );
        node.shutdown().await.expect("shutdown");
    }
}
