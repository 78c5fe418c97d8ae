//! The room's current state once a received event is in the timeline: the resolution
//! of the states after the forward extremities.

use std::collections::HashSet;

use super::persist::Room;
use super::state_before::state_after_event;
use crate::error::Error;
use crate::events::Pdu;
use crate::rooms::append::NewCurrentState;
use crate::rooms::resolve::resolve_states;
use crate::storage::{self, StateMap};

/// The current state after a received event, resolved ahead of its write, and the
/// forward extremities it was resolved with ([`sorted_ids`]).
#[derive(Debug)]
pub(super) struct CurrentAhead {
    pub(super) extremities: Vec<String>,
    pub(super) state: NewCurrentState,
}

/// Forward extremities as a set to compare: their ids, sorted (`forward_extremities`
/// orders by depth only, so ties may come back in either order).
pub(super) fn sorted_ids(extremities: Vec<(String, i64)>) -> Vec<String> {
    let mut ids: Vec<String> = extremities.into_iter().map(|(id, _)| id).collect();
    ids.sort_unstable();
    ids
}

/// Most forward extremities whose states are resolved into the current state.
const MAX_RESOLVED_EXTREMITIES: usize = 10;

impl Room<'_> {
    /// The room's current state once `pdu` (with DAG state `after` after it) is in the
    /// timeline: the resolution of the states after each forward extremity. Taken from
    /// `ahead` (resolved on a read snapshot before the write) when the room's forward
    /// extremities are still the ones it was resolved with.
    pub(super) fn new_current_state(
        &self,
        pdu: &Pdu,
        after: &StateMap,
        ahead: Option<CurrentAhead>,
    ) -> Result<NewCurrentState, Error> {
        let extremities = storage::forward_extremities(self.c, self.room_id)?;
        if let Some(a) = ahead {
            if a.extremities == sorted_ids(extremities.clone()) {
                return Ok(a.state);
            }
            tracing::debug!(event_id = %pdu.event_id, "forward extremities moved since the state was resolved ahead; resolving again");
        }
        self.current_from(pdu, after, &extremities)
    }

    /// [`Room::new_current_state`] with the room's forward extremities given. Reads only.
    pub(super) fn current_from(
        &self,
        pdu: &Pdu,
        after: &StateMap,
        extremities: &[(String, i64)],
    ) -> Result<NewCurrentState, Error> {
        let c = self.c;
        let prevs: HashSet<&str> = pdu.prev_events.iter().map(|e| e.as_str()).collect();
        let others: Vec<&str> = extremities
            .iter()
            .map(|(id, _)| id.as_str())
            .filter(|id| !prevs.contains(id) && *id != pdu.event_id.as_str())
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
        for id in others {
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
    pub(super) fn gap_current_state(
        &self,
        pdu: &Pdu,
        current: StateMap,
    ) -> Result<NewCurrentState, Error> {
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
}
