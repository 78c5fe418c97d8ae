//! Event authorisation with ruma-state-res, against the room's current state.

use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

use ruma::{EventId, events::StateEventType, room_version_rules::RoomVersionRules, state_res};
use rusqlite::Connection;

use super::load_pdu;
use crate::error::Error;
use crate::events::Pdu;
use crate::lru::Lru;
use crate::storage::{self, EventStatus};

#[cfg(test)]
#[path = "auth_kept_tests.rs"]
mod kept_tests;

/// Auth states read on committed snapshots, by database file, room, the room's
/// [`storage::state_version`] (state group and redactions of state events, so equal
/// versions mean equal events) and the keys asked: a room's messages come from a few
/// senders, and reading and parsing the create event, the power levels and the sender's
/// member event again for every message was a third of building it ahead. Bounded:
/// [`KEPT_ENTRIES`] entries and [`KEPT_BYTES`] of the JSON they were parsed from, least
/// recently used dropped first. A node starting forgets its file's ([`forget_database`]).
static KEPT: LazyLock<Mutex<Lru<KeptKey, AuthState>>> =
    LazyLock::new(|| Mutex::new(Lru::new(KEPT_ENTRIES, KEPT_BYTES)));
/// Auth states kept at most.
pub const KEPT_ENTRIES: usize = 512;
/// JSON bytes of the events of the kept auth states at most.
pub const KEPT_BYTES: usize = 4 << 20;

type KeptKey = (String, String, [i64; 2], Vec<(String, String)>);

/// Forget the auth states kept for the database at `path` (see
/// [`crate::push::forget_database`]).
pub fn forget_database(path: &str) {
    KEPT.lock().retain(|(p, ..), _| p.as_str() != path);
}

/// How many auth states are kept (for tests of the bound).
#[cfg(test)]
pub(crate) fn kept() -> usize {
    KEPT.lock().len()
}

/// The entries of a room's current state that a new event's auth rules read, each with
/// its parsed event, read together once per event (one statement) instead of once by
/// the DAG fields, once by the state-independent check (by event id) and once more by
/// the state-dependent check (by type and state key).
#[derive(Clone, Default)]
pub(super) struct AuthState {
    /// The `(type, state_key)` pairs that were read, found or not.
    asked: Vec<(String, String)>,
    /// `((type, state_key), event id)` of the entries found.
    ids: Vec<((String, String), String)>,
    /// The parsed events, by event id (an entry whose event is missing or unreadable
    /// has none; lookups then go to the database as before).
    pdus: Vec<Arc<Pdu>>,
    /// For an auth state read on a committed snapshot (and kept in [`KEPT`]): the
    /// `(sender, type)` of message events the rules allowed on it (see
    /// [`check_local_event_with`]), shared by every copy of the kept entry. `None` for
    /// one the writer read itself.
    allowed: Option<Arc<Mutex<Allowed>>>,
}

/// Whether the auth rules treat events of `kind` apart (reading their content, their
/// state key or the event they redact): create, member, third-party invite, power
/// levels (checked whatever the state key), redaction, aliases.
fn has_rules_of_its_own(kind: &str) -> bool {
    matches!(
        kind,
        "m.room.create"
            | "m.room.member"
            | "m.room.third_party_invite"
            | "m.room.power_levels"
            | "m.room.redaction"
            | "m.room.aliases"
    )
}

/// `(sender, type)` pairs of message events allowed on one auth state.
type Allowed = Vec<(String, String)>;

/// Most `(sender, type)` decisions remembered per kept auth state.
pub(super) const ALLOWED_KEPT: usize = 16;

impl AuthState {
    /// Read `keys` of the room's current state (plus the create event, which the checks
    /// of room version 12 read by id though it is no auth event there), or take them
    /// from [`KEPT`].
    pub(super) fn load(
        c: &Connection,
        room_id: &str,
        keys: &[(StateEventType, String)],
    ) -> Result<AuthState, Error> {
        let mut asked: Vec<(String, String)> = keys
            .iter()
            .map(|(ty, sk)| (ty.to_string(), sk.clone()))
            .collect();
        if !asked
            .iter()
            .any(|(ty, sk)| ty == "m.room.create" && sk.is_empty())
        {
            asked.push(("m.room.create".to_owned(), String::new()));
        }
        let kept_key = match (storage::state_version(c, room_id)?, storage::file_of(c)) {
            (Some(version), Some(file)) => {
                Some((file.to_owned(), room_id.to_owned(), version, asked.clone()))
            }
            _ => None,
        };
        if let Some(k) = &kept_key
            && let Some(hit) = KEPT.lock().get(k)
        {
            return Ok(hit.clone());
        }
        let (mut state, bytes) = Self::read(c, room_id, asked)?;
        if let Some(k) = kept_key.filter(|_| storage::is_committed_snapshot(c)) {
            state.allowed = Some(Arc::default());
            KEPT.lock().put(k, state.clone(), bytes);
        }
        Ok(state)
    }

    /// [`AuthState::load`] from the database, with the bytes of JSON it parsed.
    fn read(
        c: &Connection,
        room_id: &str,
        asked: Vec<(String, String)>,
    ) -> Result<(AuthState, usize), Error> {
        let wanted: Vec<(&str, &str)> = asked
            .iter()
            .map(|(t, s)| (t.as_str(), s.as_str()))
            .collect();
        let entries = storage::current_state_events(c, room_id, &wanted)?;
        let mut state = AuthState {
            asked,
            ..AuthState::default()
        };
        let mut bytes = 0;
        for entry in entries {
            if let Some((json, status)) = &entry.row
                && let Ok(mut pdu) = Pdu::from_json(&entry.event_id, json)
            {
                pdu.rejected = *status == EventStatus::Rejected;
                bytes += json.len();
                state.pdus.push(Arc::new(pdu));
            }
            state
                .ids
                .push(((entry.kind, entry.state_key), entry.event_id));
        }
        Ok((state, bytes))
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

    /// Whether a message event of `kind` from `sender` was allowed on this state before.
    fn allowed_before(&self, sender: &str, kind: &str) -> bool {
        self.allowed
            .as_ref()
            .is_some_and(|a| a.lock().iter().any(|(s, k)| s == sender && k == kind))
    }

    /// Remember that a message event of `kind` from `sender` is allowed on this state.
    fn remember_allowed(&self, sender: &str, kind: &str) {
        if let Some(a) = &self.allowed {
            let mut a = a.lock();
            if a.len() < ALLOWED_KEPT && !a.iter().any(|(s, k)| s == sender && k == kind) {
                a.push((sender.to_owned(), kind.to_owned()));
            }
        }
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
    // For an event without a state key, of a type the rules have no rule of its own
    // for, the rules read only its type, its sender and the auth state: its auth events
    // are chosen from that state, and its content is not looked at. So a type a sender
    // was allowed to send on a state (one read on a committed snapshot, whose key never
    // comes back with other state) is allowed again without running the rules.
    let (sender, kind) = (pdu.sender.as_str(), pdu.kind.to_string());
    let decided_once = pdu.state_key.is_none() && !has_rules_of_its_own(&kind);
    if decided_once && known.allowed_before(sender, &kind) {
        return Ok(());
    }
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
    if decided_once {
        known.remember_allowed(sender, &kind);
    }
    Ok(())
}
