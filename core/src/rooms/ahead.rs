//! Work a local send does before its write, on a read snapshot: the event built, signed
//! and authorised ([`prebuild`]) and the members' push rules evaluated
//! ([`crate::push::plan`]), so the single writer holds the database for less of each
//! send (see docs/architecture.md "Writing an event").

use rusqlite::Connection;

use super::append::{BuiltEvent, build_local_event};
use crate::error::Error;
use crate::events::NewEvent;
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
/// forward extremities it was built on.
pub struct Prebuilt {
    built: BuiltEvent,
    extremities: Vec<String>,
}

/// Build, sign and authorise a local event ahead of its write, on a read snapshot
/// (`c` inside a read transaction). The write uses it only while the room is as it was
/// ([`Prebuilt::still_current`]): the same forward extremities (so the same prev
/// events and depth) and the same current state (so the same auth events and the same
/// auth decision). Another event in the room in between makes the write build it again.
pub fn prebuild(
    c: &Connection,
    server: &Server,
    room_id: &str,
    ev: &NewEvent,
    ts: Option<i64>,
) -> Result<Prebuilt, Error> {
    let extremities = storage::forward_extremities(c, room_id)?
        .into_iter()
        .map(|(id, _)| id)
        .collect();
    let built = build_local_event(c, server, room_id, ev, ts)?;
    Ok(Prebuilt { built, extremities })
}

impl Prebuilt {
    /// The event built, for the write that takes it.
    pub(super) fn into_built(self) -> BuiltEvent {
        self.built
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
        if version != self.built.version || group != self.built.group_before {
            return Ok(false);
        }
        let now = storage::forward_extremities(c, room_id)?;
        Ok(now.len() == self.extremities.len()
            && now.iter().zip(&self.extremities).all(|((a, _), b)| a == b))
    }
}
