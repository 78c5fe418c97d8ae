//! Fetching what a received event lacks (checks 4 and 5): its missing auth events, from
//! the origin, breadth first within a budget; and when its prev events are not all here,
//! the gap before it, asked for once with `get_missing_events`. Fetching holds no
//! database connection across an await.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ruma::room_version_rules::RoomVersionRules;
use serde_json::Value;

use super::check::{Checked, check_pdu};
use super::state_before::has_state;
use super::{MAX_FETCHES, MISSING_EVENTS_LIMIT, RemoteEvents};
use crate::error::Error;
use crate::events::Pdu;
use crate::server::Server;
use crate::storage;

/// Where a received event came from, and what fetching asks of it.
#[derive(Clone, Copy)]
pub(super) struct Source<'a> {
    pub(super) server: &'a Arc<Server>,
    pub(super) remote: &'a dyn RemoteEvents,
    pub(super) origin: &'a str,
    pub(super) room_id: &'a str,
    pub(super) rules: &'a RoomVersionRules,
}

/// A [`Source`]'s parts, as its functions use them.
type Parts<'a> = (
    &'a Arc<Server>,
    &'a dyn RemoteEvents,
    &'a str,
    &'a str,
    &'a RoomVersionRules,
);

impl<'a> Source<'a> {
    pub(super) fn parts(self) -> Parts<'a> {
        (
            self.server,
            self.remote,
            self.origin,
            self.room_id,
            self.rules,
        )
    }

    /// The auth events `checked` lacks, and when its prev events are not all here, the
    /// gap before it (oldest first) and the auth events the gap lacks: the fetched auth
    /// events in dependency order, and the gap.
    pub(super) async fn auth_events_and_gap(
        self,
        checked: &Checked,
    ) -> Result<(Vec<Checked>, Vec<Checked>), Error> {
        let mut fetcher = Fetcher {
            source: self,
            budget: MAX_FETCHES,
            fetched: HashMap::new(),
        };
        fetcher.fetch_auth_events(&checked.pdu).await?;
        let mut gap = Vec::new();
        let missing_prevs = self.server.db.read(|c| {
            let mut missing = false;
            for p in &checked.pdu.prev_events {
                missing |= !has_state(c, p.as_str())?;
            }
            Ok(missing)
        })?;
        if missing_prevs {
            gap = self.missing_events(&checked.event_id).await?;
            for ev in &gap {
                fetcher.fetch_auth_events(&ev.pdu).await?;
            }
        }
        Ok((fetcher.into_dependency_order(), gap))
    }

    /// The events between the room's forward extremities and `event_id`, from one
    /// `get_missing_events` (each checked; a bad one is dropped with a log line), oldest
    /// first.
    async fn missing_events(self, event_id: &str) -> Result<Vec<Checked>, Error> {
        let (server, remote, origin, room_id, rules) = self.parts();
        let earliest: Vec<String> = server
            .db
            .read(|c| storage::forward_extremities(c, room_id))?
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        let mut gap = Vec::new();
        match remote
            .get_missing_events(
                origin,
                room_id,
                earliest,
                vec![event_id.to_owned()],
                MISSING_EVENTS_LIMIT,
            )
            .await
        {
            Ok(events) => {
                let mut seen = HashSet::new();
                for v in events.into_iter().take(MISSING_EVENTS_LIMIT) {
                    match check_pdu(v, room_id, rules) {
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
        Ok(gap)
    }
}

/// The events of `batch` and the auth events they need that are neither stored here nor
/// in the batch, fetched from `origin` (checked by [`check_pdu`]; at most `budget`
/// fetches), all in auth-dependency order: what is processed with [`Mode::AuthOnly`](super::Mode::AuthOnly)
/// before a batch of backfilled events is put in place.
pub(in crate::rooms) async fn with_auth_events(
    server: &Arc<Server>,
    remote: &dyn RemoteEvents,
    origin: &str,
    room_id: &str,
    rules: &RoomVersionRules,
    batch: &[Checked],
    budget: usize,
) -> Result<Vec<Checked>, Error> {
    let source = Source {
        server,
        remote,
        origin,
        room_id,
        rules,
    };
    let mut fetcher = Fetcher {
        source,
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

/// Most state events, and most auth chain events, taken from one `/state` answer.
const MAX_STATE_EVENTS: usize = crate::rooms::remote_join::MAX_JOIN_STATE;

/// The events of a `/state` answer from `from`: its state (`pdus`) and `auth_chain`, at
/// most [`MAX_STATE_EVENTS`] of each, each checked for format, hashes and signatures
/// (a bad one is dropped with a log line). Returns the ids of the state events, and
/// every event that passed.
pub(in crate::rooms) fn checked_state_answer(
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

/// Fetches missing auth events from the origin, breadth first, within a budget.
struct Fetcher<'a> {
    source: Source<'a>,
    budget: usize,
    fetched: HashMap<String, Checked>,
}

impl Fetcher<'_> {
    async fn fetch_auth_events(&mut self, pdu: &Pdu) -> Result<(), Error> {
        let (server, remote, origin, room_id, rules) = self.source.parts();
        let mut queue: VecDeque<String> = pdu.auth_events.iter().map(|e| e.to_string()).collect();
        while let Some(id) = queue.pop_front() {
            if self.fetched.contains_key(&id) {
                continue;
            }
            if server.db.read(|c| storage::event_status(c, &id))?.is_some() {
                continue;
            }
            if self.budget == 0 {
                tracing::info!(%origin, "fetch budget spent; auth events stay missing");
                return Ok(());
            }
            self.budget -= 1;
            let value = match remote.get_event(origin, &id).await {
                Ok(v) => v,
                Err(e) => {
                    tracing::info!(%origin, event_id = %id, error = %e, "cannot fetch auth event");
                    continue;
                }
            };
            match check_pdu(value, room_id, rules) {
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
pub(in crate::rooms) fn dependency_order(mut pending: Vec<Checked>) -> Vec<Checked> {
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
