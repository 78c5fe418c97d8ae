//! Event authorisation with ruma-state-res, against the room's current state.

use ruma::{EventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};
use rusqlite::Connection;

use super::load_pdu;
use crate::error::Error;
use crate::events::Pdu;
use crate::storage;

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
    let fetch_event = |id: &EventId| load_pdu(c, id.as_str()).ok().flatten();
    state_res::check_state_independent_auth_rules(&rules.authorization, pdu, fetch_event)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    let fetch_state = |ty: &StateEventType, sk: &str| {
        storage::current_state_event(c, room_id, &ty.to_string(), sk)
            .ok()
            .flatten()
            .and_then(|id| load_pdu(c, &id).ok().flatten())
    };
    state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, fetch_state)
        .map_err(|e| Error::Forbidden(format!("event not allowed: {e}")))?;
    Ok(())
}
