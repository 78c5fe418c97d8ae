//! Work a local send does before its write, on a read snapshot: the event built, signed
//! and authorised ([`prebuild`]) and the members' push rules evaluated
//! ([`crate::push::plan`]), so the single writer holds the database for less of each
//! send (see docs/architecture.md "Writing an event").

use rusqlite::Connection;

use super::append::{BuiltEvent, build_local_event_on};
use super::heads::{RoomHead, Turn};
use crate::error::Error;
use crate::events::{NewEvent, rules_for, uses_pairs};
use crate::server::Server;
use crate::storage;

/// What a local send works out on a reader before its write, so the single writer does
/// less while every other write waits: the members' push rules evaluated
/// ([`crate::push::plan`]) and the event built and signed ([`prebuild`]). Each part
/// left `None` is done in the write.
#[derive(Default)]
pub struct Prepared {
    pub push: Option<crate::push::Planned>,
    pub built: Option<Prebuilt>,
}

/// A local event built, signed and authorised on a reader's snapshot, with the room's
/// forward extremities it was built on (in id order).
pub struct Prebuilt {
    built: BuiltEvent,
    /// The room's state version it was built on (`storage::state_version`: the state
    /// group and the count of redacted state events).
    state_version: Option<[i64; 2]>,
    extremities: Vec<String>,
    /// Its place in the room's chain, if it was built on one: taken when this is
    /// dropped, by the write or by a send that ends without one.
    turn: Option<Turn>,
}

/// Build, sign and authorise a local event ahead of its write, on a read snapshot
/// (`c` inside a read transaction). The write uses it only while the room is as it was
/// ([`Prebuilt::still_current`]): the same forward extremities (so the same prev
/// events and depth) and the same current state (so the same auth events and the same
/// auth decision); otherwise it builds the event again.
///
/// A message is built on the newest message built ahead in the room when the database
/// is where those leave it (see [`super::heads`]), so sends to one room from several
/// clients at once are each still current when their writes come in turn. Not in rooms
/// of versions 1 and 2, whose prev events are referenced with their hashes, read from
/// the stored events.
pub fn prebuild(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: &NewEvent,
    ts: Option<i64>,
) -> Result<Prebuilt, Error> {
    let Some((version, group)) = storage::room_info(c, room_id)? else {
        return Err(Error::Forbidden(format!("unknown room {room_id}")));
    };
    let in_db = storage::forward_extremities(c, room_id)?;
    let (_, rules) = rules_for(&version)?;
    let chains = ev.state_key.is_none() && !uses_pairs(&rules.event_format);
    let room = chains.then(|| server.local_heads.room(room_id));
    // Held while building, so two sends never build on the same tip.
    let mut head = room.as_deref().map(RoomHead::lock);
    let (on, chained) = match (&room, head.as_deref_mut()) {
        (Some(room), Some(head)) => head.extremities(&version, group, in_db, room.taken_up_to()),
        _ => (in_db, false),
    };
    // In id order, as `still_current` reads them.
    let mut extremities: Vec<String> = on.iter().map(|(id, _)| id.clone()).collect();
    extremities.sort_unstable();
    let built = build_local_event_on(c, server, room_id, ev, ts, (version, group), on)?;
    let turn = match (&room, head.as_deref_mut()) {
        (Some(room), Some(head)) if chained => {
            head.built(&built.event_id, built.pdu.depth);
            Some(Turn::next(room, head))
        }
        _ => None,
    };
    Ok(Prebuilt {
        built,
        state_version: storage::state_version(c, room_id)?,
        extremities,
        turn,
    })
}

impl Prebuilt {
    /// The event built, for the write that takes it.
    pub(super) fn into_built(self) -> BuiltEvent {
        self.built
    }

    /// Wait (briefly, see [`Turn`]) until the write of the message built before this
    /// one in the room has taken the writer, so this write finds it written.
    pub async fn wait_turn(&self) {
        if let Some(turn) = &self.turn {
            turn.wait_async().await;
        }
    }

    /// The event built.
    #[cfg(test)]
    pub(super) fn built_pdu(&self) -> &crate::events::Pdu {
        &self.built.pdu
    }

    /// The id of the event built.
    pub fn event_id(&self) -> &str {
        &self.built.event_id
    }

    /// Whether the room (as the write sees it) is still the one the event was built on.
    pub(super) fn still_current(&self, c: &Connection, room_id: &str) -> Result<bool, Error> {
        let Some((version, group)) = storage::room_info(c, room_id)? else {
            return Ok(false);
        };
        // The redactions too: a redaction of a current state event (one received into
        // a gap) changes the state the event was authorised on without a new group.
        if version != self.built.version
            || group != self.built.group_before
            || storage::state_version(c, room_id)? != self.state_version
        {
            return Ok(false);
        }
        // The same extremities make the same prev events and depth: compared as sets,
        // both in id order (the depths, which would need every extremity looked up in
        // `events`, follow from the ids).
        Ok(storage::forward_extremity_ids(c, room_id)? == self.extremities)
    }
}
