//! The create event: no prev or auth events, and (room version 12) the room's id comes
//! from it.

use rusqlite::Connection;

use super::append::{persist, random_string};
use super::auth::check_local_event;
use crate::error::Error;
use crate::events::{self, NewEvent, Pdu, build_pdu, rules_for};
use crate::server::Server;
use crate::storage::{self, now_ms};

/// Most create events built for one new room whose id (room version 12: the create
/// event's hash) is taken; past it the insertion fails as before.
const MAX_CREATE_ATTEMPTS: u32 = 16;

/// The create-event path: no prev or auth events, and (v12) the room id comes from it.
pub(super) fn append_create(
    c: &Connection,
    server: &Server,
    version: &str,
    ev: NewEvent,
    is_public: bool,
    room_id: Option<String>,
) -> Result<String, Error> {
    append_create_at(c, server, version, ev, is_public, room_id, now_ms())
}

/// [`append_create`] with the create event's timestamp given (where it starts).
pub(super) fn append_create_at(
    c: &Connection,
    server: &Server,
    version: &str,
    ev: NewEvent,
    is_public: bool,
    room_id: Option<String>,
    ts: i64,
) -> Result<String, Error> {
    let (_, rules) = rules_for(version)?;
    // Room v12 names the room after the create event; older versions take a random id
    // (or the one chosen ahead by an upgrade, whose tombstone names it first).
    let room_id_field = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        Some(room_id.unwrap_or_else(|| new_room_id(server)))
    };
    // From room version 12 the same create event (same sender, content and millisecond)
    // names the same room: a user who creates two identical rooms within a millisecond
    // (a script, a fast enough node) would get the first one's id again, and its
    // insertion fails. A later timestamp makes it another event; a few tries suffice.
    let mut ts = ts;
    let mut attempts = 0;
    let (event_id, object, room_id) = loop {
        let (event_id, object) = build_pdu(
            &server.identity,
            &rules,
            room_id_field.as_deref(),
            &ev,
            &[],
            &[],
            1,
            ts,
        )?;
        let room_id = room_id_field
            .clone()
            .unwrap_or_else(|| events::room_id_from_create_event_id(&event_id));
        attempts += 1;
        if room_id_field.is_some()
            || attempts >= MAX_CREATE_ATTEMPTS
            || storage::room_info(c, &room_id)?.is_none()
        {
            break (event_id, object, room_id);
        }
        ts = ts.saturating_add(1);
    };
    let json = serde_json::to_string(&object)?;
    let pdu = Pdu::from_json(&event_id, &json)?;
    storage::insert_room(c, &room_id, version, &ev.sender, is_public)?;
    check_local_event(c, &rules, &room_id, &pdu)?;
    persist(c, &room_id, version, &pdu, &json, None, None, None)?;
    Ok(room_id)
}

/// A fresh room id of this server (room versions before 12).
pub(super) fn new_room_id(server: &Server) -> String {
    format!("!{}:{}", random_string(18), server.server_name())
}
