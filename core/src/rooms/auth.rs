//! Event authorisation with ruma-state-res, against the room's current state.

use std::sync::Arc;

use ruma::{EventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};
use rusqlite::Connection;

use super::load_pdu;
use crate::error::Error;
use crate::events::Pdu;
use crate::storage::{self, EventStatus};

/// The entries of a room's current state that a new event's auth rules read, each with
/// its parsed event, read together once per event (one statement) instead of once by
/// the DAG fields, once by the state-independent check (by event id) and once more by
/// the state-dependent check (by type and state key).
#[derive(Default)]
pub(super) struct AuthState {
    /// The `(type, state_key)` pairs that were read, found or not.
    asked: Vec<(String, String)>,
    /// `((type, state_key), event id)` of the entries found.
    ids: Vec<((String, String), String)>,
    /// The parsed events, by event id (an entry whose event is missing or unreadable
    /// has none; lookups then go to the database as before).
    pdus: Vec<Arc<Pdu>>,
}

impl AuthState {
    /// Read `keys` of the room's current state (plus the create event, which the checks
    /// of room version 12 read by id though it is no auth event there).
    pub(super) fn load(
        c: &Connection,
        room_id: &str,
        keys: &[(StateEventType, String)],
    ) -> Result<AuthState, Error> {
        let mut wanted: Vec<(String, &str)> = keys
            .iter()
            .map(|(ty, sk)| (ty.to_string(), sk.as_str()))
            .collect();
        if !wanted
            .iter()
            .any(|(ty, sk)| ty == "m.room.create" && sk.is_empty())
        {
            wanted.push(("m.room.create".to_owned(), ""));
        }
        let wanted: Vec<(&str, &str)> = wanted.iter().map(|(t, s)| (t.as_str(), *s)).collect();
        let mut state = AuthState {
            asked: wanted
                .iter()
                .map(|(t, s)| ((*t).to_owned(), (*s).to_owned()))
                .collect(),
            ..AuthState::default()
        };
        for entry in storage::current_state_events(c, room_id, &wanted)? {
            if let Some((json, status)) = &entry.row
                && let Ok(mut pdu) = Pdu::from_json(&entry.event_id, json)
            {
                pdu.rejected = *status == EventStatus::Rejected;
                state.pdus.push(Arc::new(pdu));
            }
            state
                .ids
                .push(((entry.kind, entry.state_key), entry.event_id));
        }
        Ok(state)
    }

    /// The current event id of `(ty, state_key)`, if it was read.
    pub(super) fn event_id(&self, ty: &str, state_key: &str) -> Option<&str> {
        self.ids
            .iter()
            .find(|((t, s), _)| t == ty && s == state_key)
            .map(|(_, id)| id.as_str())
    }

    /// Whether `(ty, state_key)` was read (so an entry missing is missing from the state).
    fn was_asked(&self, ty: &str, state_key: &str) -> bool {
        self.asked.iter().any(|(t, s)| t == ty && s == state_key)
    }

    fn pdu(&self, event_id: &str) -> Option<Arc<Pdu>> {
        self.pdus
            .iter()
            .find(|p| p.event_id.as_str() == event_id)
            .cloned()
    }
}

/// Check a local event against its auth events and the current state of the room.
///
/// For local events the auth events are chosen from the current state, so the
/// state-dependent check against the current state covers both spec checks.
pub fn check_local_event(
    c: &Connection,
    rules: &RoomVersionRules,
    room_id: &str,
    pdu: &Pdu,
) -> Result<(), Error> {
    check_local_event_with(c, rules, room_id, pdu, &AuthState::default())
}

/// [`check_local_event`] with the part of the current state the rules read already at
/// hand (read in the same write, so it is the current state); anything else the rules
/// ask for is read from the database.
pub(super) fn check_local_event_with(
    c: &Connection,
    rules: &RoomVersionRules,
    room_id: &str,
    pdu: &Pdu,
    known: &AuthState,
) -> Result<(), Error> {
    let fetch_event = |id: &EventId| {
        known
            .pdu(id.as_str())
            .or_else(|| load_pdu(c, id.as_str()).ok().flatten().map(Arc::new))
    };
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    let fetch_state = |ty: &StateEventType, sk: &str| {
        let ty = ty.to_string();
        let known_id = known.event_id(&ty, sk);
        if let Some(pdu) = known_id.and_then(|id| known.pdu(id)) {
            return Some(pdu);
        }
        let id = match known_id {
            Some(id) => Some(id.to_owned()),
            None if known.was_asked(&ty, sk) => None,
            None => storage::current_state_event(c, room_id, &ty, sk)
                .ok()
                .flatten(),
        };
        id.and_then(|id| load_pdu(c, &id).ok().flatten().map(Arc::new))
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    Ok(())
}
