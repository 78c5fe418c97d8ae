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
    // The sender is woken once the write commits (storage::effects).
    storage::enqueue_pdu(c, &destinations, pdu.event_id.as_str())?;
    Ok(())
}

/// Most servers one received event is forwarded to (a random choice among the room's
/// others when there are more). With [`MAX_FORWARDED_PER_TXN`], it bounds the rows one
/// inbound transaction can make this node queue.
pub const MAX_FORWARD_DESTINATIONS: usize = 32;
/// Most PDUs of one inbound transaction that are forwarded (all of a full transaction).
pub const MAX_FORWARDED_PER_TXN: usize = super::sender::MAX_PDUS_PER_TXN;

/// Push across hops: queue an event this node has just accepted from `from` (through
/// `/send`, live, into the timeline) for the room's other joined servers, which may not
/// be able to reach its origin. Not for the event's origin, not for `from`, not for this
/// node; at most once per destination (an undelivered row for the same event is not
/// duplicated, and an event is accepted, hence forwarded, once). Returns the destinations
/// queued.
///
/// The caller decides that the event is worth forwarding (see `send.rs`): never for
/// backfilled, fetched or soft-failed events, nor for our own (the local path queues
/// those for everyone in [`enqueue_event`]).
pub fn forward_received(
    c: &Connection,
    server: &Server,
    room_id: &str,
    event_id: &str,
    event_origin: &str,
    from: &str,
) -> Result<Vec<String>, Error> {
    let destinations = forward_destinations(c, server, room_id, event_origin, from)?;
    if destinations.is_empty() {
        return Ok(destinations);
    }
    storage::enqueue_pdu_once(c, &destinations, event_id)
}

/// Where [`forward_received`] would send an event of `event_origin`'s that came from
/// `from`: the room's joined servers but those three, at most
/// [`MAX_FORWARD_DESTINATIONS`] of them.
pub fn forward_destinations(
    c: &Connection,
    server: &Server,
    room_id: &str,
    event_origin: &str,
    from: &str,
) -> Result<Vec<String>, Error> {
    let mut destinations: Vec<String> = storage::joined_servers(c, room_id)?
        .into_iter()
        .filter(|d| d != server.server_name() && d != event_origin && d != from)
        .collect();
    if destinations.len() > MAX_FORWARD_DESTINATIONS {
        use rand::seq::SliceRandom as _;
        destinations.shuffle(&mut rand::thread_rng());
        destinations.truncate(MAX_FORWARD_DESTINATIONS);
    }
    Ok(destinations)
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
    storage::enqueue_edu(c, destination, edu)
}
