//! The room's state at a point of its timeline.

use crate::error::Error;
use crate::storage;

/// The room state right after the event at stream position `pos` (or the newest before it).
pub fn state_at(
    c: &rusqlite::Connection,
    room_id: &str,
    pos: i64,
) -> Result<storage::StateMap, Error> {
    let Some(ev) = storage::last_event_at(c, room_id, pos)? else {
        // Before the first timeline event: the state it was built on (empty for a room
        // created here; the resident's state for a room joined over federation).
        return match storage::first_event_after(c, room_id, pos)?.and_then(|e| e.state_group_before)
        {
            Some(g) => storage::load_state_group(c, g),
            None => Ok(Default::default()),
        };
    };
    // The room's state once the event was persisted (forks resolved), when recorded.
    if let Some(g) = ev.room_state_group {
        return storage::load_state_group(c, g);
    }
    let mut state = match ev.state_group_before {
        Some(g) => storage::load_state_group(c, g)?,
        None => Default::default(),
    };
    if let Some(sk) = &ev.state_key {
        state.insert((ev.kind.clone(), sk.clone()), ev.event_id.clone());
    }
    Ok(state)
}
