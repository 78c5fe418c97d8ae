//! Which rooms changed after a stream position, without asking the database (after
//! Synapse's `StreamChangeCache`).
//!
//! An incremental `/sync` builds a section only for the rooms something happened in
//! since its token; for the others it would run its queries only to find nothing. The
//! writer records every room a write touched, at the write's stream position, before the
//! write commits (see [`super::effects`]), so any reader holding a committed token finds
//! every change up to that token here. A write that then fails leaves a record of a
//! change that did not happen: a room built for nothing, never a change missed.
//!
//! Bounded: at most [`MAX_ROOMS`] rooms are remembered. Recording one more forgets them
//! all and raises the floor to the newest position forgotten: for a token below the
//! floor every room counts as changed (the answer is built as if there were no cache),
//! above it the cache is exact again. The floor starts at the position the database
//! opened at, so a token from before a restart finds every room changed.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::streams::StreamPosition;

/// Most rooms remembered (about 100 bytes each).
pub const MAX_ROOMS: usize = 50_000;

/// The last stream position at which each recently changed room changed.
pub struct RoomChanges {
    inner: Mutex<Inner>,
    max_rooms: usize,
}

struct Inner {
    /// For a position below this, every room may have changed.
    floor: StreamPosition,
    /// Rooms changed at or after the floor, with the newest position each changed at.
    latest: HashMap<String, StreamPosition>,
}

impl RoomChanges {
    /// Nothing is known before `floor` (the position the database opened at).
    pub fn new(floor: StreamPosition) -> RoomChanges {
        RoomChanges::with_capacity(floor, MAX_ROOMS)
    }

    fn with_capacity(floor: StreamPosition, max_rooms: usize) -> RoomChanges {
        RoomChanges {
            inner: Mutex::new(Inner {
                floor,
                latest: HashMap::new(),
            }),
            max_rooms,
        }
    }

    /// `room` changed at `pos`.
    pub fn record(&self, room: &str, pos: StreamPosition) {
        let mut inner = self.inner.lock();
        if let Some(p) = inner.latest.get_mut(room) {
            *p = (*p).max(pos);
            return;
        }
        if inner.latest.len() >= self.max_rooms {
            let newest = inner.latest.values().copied().max().unwrap_or(inner.floor);
            inner.floor = inner.floor.max(newest);
            inner.latest.clear();
        }
        if pos > inner.floor {
            inner.latest.insert(room.to_owned(), pos);
        }
    }

    /// Every room may have changed at `pos` (a write too large to list its rooms).
    pub fn record_all(&self, pos: StreamPosition) {
        let mut inner = self.inner.lock();
        if pos > inner.floor {
            inner.floor = pos;
            inner.latest.clear();
        }
    }

    /// Whether `room` may have changed after `since`: false only when it certainly did
    /// not.
    pub fn changed_since(&self, room: &str, since: StreamPosition) -> bool {
        let inner = self.inner.lock();
        since < inner.floor || inner.latest.get(room).is_some_and(|p| *p > since)
    }

    /// How many rooms are remembered.
    pub fn len(&self) -> usize {
        self.inner.lock().latest.len()
    }

    /// Whether no room is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_room_changed_after_a_position_is_reported_and_no_other() {
        let c = RoomChanges::new(10);
        assert!(c.changed_since("!a:x", 9), "below the floor: unknown");
        assert!(!c.changed_since("!a:x", 10));
        c.record("!a:x", 12);
        c.record("!a:x", 11);
        assert!(c.changed_since("!a:x", 11));
        assert!(!c.changed_since("!a:x", 12), "the newest change is kept");
        assert!(!c.changed_since("!b:x", 10));
        c.record_all(15);
        assert!(c.changed_since("!b:x", 14));
        assert!(!c.changed_since("!b:x", 15));
        assert!(c.is_empty());
    }

    #[test]
    fn at_the_bound_it_forgets_and_counts_older_tokens_as_changed() {
        let c = RoomChanges::with_capacity(0, 3);
        for (i, room) in ["!a:x", "!b:x", "!c:x"].iter().enumerate() {
            c.record(room, i as i64 + 1);
        }
        assert_eq!(c.len(), 3);
        c.record("!d:x", 4);
        assert_eq!(c.len(), 1, "the rooms before are forgotten");
        // A token from before the forgotten changes: every room may have changed.
        assert!(c.changed_since("!e:x", 2));
        // From the newest forgotten position on, the cache is exact again.
        assert!(!c.changed_since("!a:x", 3));
        assert!(c.changed_since("!d:x", 3));
    }
}
