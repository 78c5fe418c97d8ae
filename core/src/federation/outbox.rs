//! Deciding who must receive what, inside the write transaction that creates it.

use rusqlite::Connection;

use crate::error::Error;
use crate::events::Pdu;
use crate::server::Server;
use crate::storage;

/// Queue a new local event for every other server in its room: the servers of joined
/// members after the event, plus the server of a membership event's target (a kicked,
/// banned or leaving remote user's server must hear of it even though they are gone).
pub fn enqueue_event(
    c: &Connection,
    server: &Server,
    room_id: &str,
    pdu: &Pdu,
) -> Result<(), Error> {
    let mut destinations = storage::joined_servers(c, room_id)?;
    if pdu.kind.to_string() == "m.room.member"
        && let Some(target_server) = pdu
            .state_key
            .as_deref()
            .and_then(|k| k.rsplit_once(':'))
            .map(|(_, s)| s)
        && !destinations.iter().any(|d| d == target_server)
    {
        destinations.push(target_server.to_owned());
    }
    destinations.retain(|d| d != server.server_name());
    if destinations.is_empty() {
        return Ok(());
    }
    storage::enqueue_pdu(c, &destinations, pdu.event_id.as_str())?;
    server.mark_outbox_dirty();
    Ok(())
}

/// Queue an EDU for one destination.
pub fn enqueue_edu(
    c: &Connection,
    server: &Server,
    destination: &str,
    edu: &serde_json::Value,
) -> Result<(), Error> {
    if destination == server.server_name() {
        return Ok(());
    }
    storage::enqueue_edu(c, destination, edu)?;
    server.mark_outbox_dirty();
    Ok(())
}
