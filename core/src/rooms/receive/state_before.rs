//! Check 5: the state before a received event, from its prev events' states (resolved
//! when they differ), or, when its prev events stay missing, as the server that sent it
//! gives it (`/state`).

use rusqlite::Connection;

use super::check::Checked;
use super::fetch::{Source, checked_state_answer, with_auth_events};
use super::persist::{Mode, Room};
use super::{MAX_FETCHES, Outcome};
use crate::error::Error;
use crate::events::Pdu;
use crate::rooms::resolve::resolve_states;
use crate::storage::{self, EventStatus, StateMap, StoredEvent};

/// Whether an event is stored with a known state after it (so it can be a prev event).
pub(in crate::rooms) fn has_state(c: &Connection, event_id: &str) -> Result<bool, Error> {
    Ok(
        storage::get_event_any(c, event_id)?.is_some_and(|e| match e.status {
            EventStatus::Timeline | EventStatus::SoftFailed => true,
            EventStatus::Rejected => e.state_group_before.is_some(),
            EventStatus::Outlier => false,
        }),
    )
}

impl Source<'_> {
    /// Accept `checked` with the state before it as `origin` gives it (`/state`): each
    /// state event checked (format, signatures, auth against its auth events), the event
    /// checked against that state and against the current state, as any received event.
    /// `None` when the state cannot be had.
    pub(super) async fn with_state_from(
        self,
        version: &str,
        checked: Checked,
    ) -> Result<Option<Outcome>, Error> {
        let (server, remote, origin, room_id, rules) = self.parts();
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
            let state = given_state(c, room_id, &ids)?;
            tracing::debug!(event_id = %checked.event_id, given = ids.len(), kept = state.len(), "state before a received event, from its sender");
            room.process_with_sender_state(checked, &state, origin)
        })?;
        Ok(Some(outcome))
    }
}

/// The state made of the stored, unrejected events among `ids` (a `/state` answer's).
fn given_state(c: &Connection, room_id: &str, ids: &[String]) -> Result<StateMap, Error> {
    let mut state = StateMap::new();
    for id in ids {
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
    Ok(state)
}

impl Room<'_> {
    /// Process `checked` with the state before it given by `origin`.
    fn process_with_sender_state(
        &self,
        checked: Checked,
        state: &StateMap,
        origin: &str,
    ) -> Result<Outcome, Error> {
        let prevs: Vec<String> = checked
            .pdu
            .prev_events
            .iter()
            .map(|p| p.to_string())
            .collect();
        let depth = checked.pdu.depth;
        let outcome = self.process_given(checked, Mode::Full, Some(state), None)?;
        if matches!(outcome, Outcome::Accepted { .. }) {
            // Its missing prev events are a gap behind it (backward extremities): one
            // that arrives later has a child here already, so it is not a forward
            // extremity, and backfill may fill the gap from `origin`.
            for p in prevs {
                if !has_state(self.c, &p)? {
                    storage::add_backfill_extremity(
                        self.c,
                        self.room_id,
                        &p,
                        depth - 1,
                        Some(origin),
                    )?;
                }
            }
        }
        Ok(outcome)
    }

    /// The room's current state group, when `pdu` extends the room's current state (the
    /// `current_state` table and the room's `current_state_group` are written together,
    /// by `append::persist_accepted`, so checks against the table are checks against the
    /// group):
    /// every prev event is in the timeline (or soft-failed) with that group as the state
    /// after it, and every forward extremity is one of them. Then the state before the
    /// event is the current state, nothing needs resolving, and the current state after
    /// it is the state after the event. `None` otherwise, and for a gap (history behind
    /// a stored event), which [`Room::state_before`] and the resolution handle. Reads a
    /// row per prev event and per forward extremity, whatever the size of the state.
    pub(super) fn linear_before(&self, pdu: &Pdu) -> Result<Option<i64>, Error> {
        let c = self.c;
        let Some((_, Some(current))) = storage::room_info(c, self.room_id)? else {
            return Ok(None);
        };
        if pdu.prev_events.is_empty() {
            return Ok(None);
        }
        for p in &pdu.prev_events {
            let Some(prev) = storage::get_event_any(c, p.as_str())? else {
                return Ok(None);
            };
            let after = match prev.status {
                EventStatus::Timeline | EventStatus::SoftFailed => {
                    match (&prev.state_key, prev.state_group_after) {
                        (_, Some(g)) => Some(g),
                        (None, None) => prev.state_group_before,
                        (Some(_), None) => None,
                    }
                }
                EventStatus::Rejected | EventStatus::Outlier => None,
            };
            if after != Some(current) {
                return Ok(None);
            }
        }
        let extremities = storage::forward_extremities(c, self.room_id)?;
        let extends = !extremities.is_empty()
            && extremities
                .iter()
                .all(|(id, _)| pdu.prev_events.iter().any(|p| p.as_str() == id));
        if !extends || self.is_gap(pdu)? {
            return Ok(None);
        }
        Ok(Some(current))
    }

    /// Whether every prev event of `pdu` is stored with a known state after it.
    pub(super) fn prevs_have_state(&self, pdu: &Pdu) -> Result<bool, Error> {
        for p in &pdu.prev_events {
            if !has_state(self.c, p.as_str())? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// The DAG state before `pdu` and a group holding it; `None` when a prev event is
    /// missing or an outlier.
    pub(super) fn state_before(&self, pdu: &Pdu) -> Result<Option<(StateMap, i64)>, Error> {
        match self.resolved_before(pdu)? {
            Some(before) => self.group_for(before).map(Some),
            None => Ok(None),
        }
    }

    /// The states after `pdu`'s prev events and their resolution, the state before it;
    /// `None` when a prev event is missing or an outlier, or the states cannot be
    /// resolved. Reads only, so it can run on a read snapshot ahead of the write (see
    /// [`super::ahead`]): the states after stored events never change.
    pub(super) fn resolved_before(&self, pdu: &Pdu) -> Result<Option<Before>, Error> {
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
        match resolve_states(c, self.rules, &maps, None) {
            Ok(state) => Ok(Some(Before { state, states })),
            Err(e) => {
                tracing::warn!(event_id = %pdu.event_id, error = %e, "cannot resolve the state before a received event");
                Ok(None)
            }
        }
    }

    /// The resolved state before an event, with a group holding it: one of the prev
    /// events' groups when it holds exactly this state, else a new one on top of one.
    pub(super) fn group_for(&self, before: Before) -> Result<(StateMap, i64), Error> {
        let Before { state, states } = before;
        let base = states
            .iter()
            .find_map(|(s, g)| g.filter(|_| *s == state).map(|g| (g, s)))
            .or_else(|| states.iter().find_map(|(s, g)| g.map(|g| (g, s))));
        let group = storage::group_for_state(self.c, self.room_id, base, &state)?;
        Ok((state, group))
    }

    /// A group for the DAG state after `pdu`, given the state before it.
    pub(super) fn group_after(
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
}

/// The state before a received event, resolved from the states after its prev events.
#[derive(Debug)]
pub(super) struct Before {
    /// The resolution.
    pub(super) state: StateMap,
    /// The states after the prev events, with the groups holding them when known.
    states: Vec<(StateMap, Option<i64>)>,
}

/// The DAG state after a stored event, with the group holding it when there is one.
pub(super) fn state_after_event(
    c: &Connection,
    e: &StoredEvent,
) -> Result<(StateMap, Option<i64>), Error> {
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
