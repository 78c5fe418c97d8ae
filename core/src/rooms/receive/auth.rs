//! Check 4, auth against the event's own auth events, and the checks against a state
//! (the state before the event, check 5; the current state, check 6).

use std::cell::RefCell;
use std::collections::HashMap;

use ruma::events::StateEventType;
use ruma::{EventId, state_res};
use rusqlite::Connection;

use super::Outcome;
use super::check::Checked;
use super::persist::Room;
use crate::error::Error;
use crate::events::Pdu;
use crate::rooms::load_pdu;
use crate::storage::{self, StateMap};

impl Room<'_> {
    /// Check 4: the auth events are all stored and the event passes auth against them.
    /// `Some` outcome when it does not (missing auth events, or stored as rejected with
    /// `group_before` as the state before it, when known).
    pub(super) fn check_auth_events(
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
}

/// Check the state-dependent auth rules against a state map.
pub(in crate::rooms) fn check_against(
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

/// Check the state-dependent auth rules against the room's current state, looking up
/// only the entries the rules ask for. The outer `Err` is a database failure (the
/// verdict would rest on an entry that could not be read), the inner one the verdict.
pub(in crate::rooms) fn check_against_current(
    c: &Connection,
    rules: &ruma::room_version_rules::AuthorizationRules,
    pdu: &Pdu,
    room_id: &str,
) -> Result<Result<(), String>, Error> {
    let failed = RefCell::new(None);
    let verdict = state_res::check_state_dependent_auth_rules(rules, pdu, |ty, sk| {
        let found = storage::current_state_event(c, room_id, &ty.to_string(), sk)
            .and_then(|id| id.map_or(Ok(None), |id| load_pdu(c, &id)));
        found.unwrap_or_else(|e| {
            failed.replace(Some(e));
            None
        })
    });
    match failed.into_inner() {
        Some(e) => Err(e),
        None => Ok(verdict),
    }
}
