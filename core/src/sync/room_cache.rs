//! The rendered timeline and state of each room as an initial `/sync` last showed it to a
//! user, kept per (user, room, timeline and state filters), so that the next initial
//! sync of that user (a new device logging in, an app restarted without its token)
//! builds only what changed: rooms whose events did not move are copied, not read,
//! judged by visibility and rendered again, their summary (member counts, heroes) not
//! counted again. What is per device or per request (unread counts, receipts, typing,
//! account data) is always built fresh.
//!
//! A section is served again only while the room's events are the ones it was built
//! from: the room's newest and oldest stream positions up to the sync's token
//! ([`Span`], two index lookups). Every change a section shows comes with a room event
//! of its own: a new message or state, a membership (which moves history visibility),
//! an edit or reaction (bundled aggregations), a redaction (which also rewrites its
//! target in place), backfilled history (older positions). A section is personal only
//! through `unsigned.transaction_id`, echoed to the device that sent an event: one that
//! echoes none serves any device that sent none of its events; one that echoes some
//! serves only that device. Times inside it (`unsigned.age`) are as of the build, so a
//! section older than [`MAX_AGE`] is built again.
//!
//! Bounds: [`MAX_ENTRIES`] sections and [`MAX_BYTES`] of rendered events in all, least
//! recently used dropped first; a section larger than [`MAX_SECTION_BYTES`] is not kept.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde_json::value::RawValue;

use crate::lru::Lru;

/// Sections kept at most.
pub const MAX_ENTRIES: usize = 2048;
/// Bytes of rendered events kept at most, all sections together.
pub const MAX_BYTES: usize = 8 * 1024 * 1024;
/// The largest section kept.
pub const MAX_SECTION_BYTES: usize = 512 * 1024;
/// A section older than this is built again even if its room did not change.
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// Whose view of which room, under which filters.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    pub user_id: String,
    pub room_id: String,
    /// The timeline and state filters, serialised.
    pub filters: String,
}

/// The room's events a section was built from: the newest and oldest stream positions
/// of the room's events up to the sync's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Span {
    pub newest: Option<i64>,
    pub oldest: Option<i64>,
}

/// A room's rendered `timeline` and `state`.
#[derive(Clone, Debug)]
pub struct Section {
    pub timeline: Vec<Box<RawValue>>,
    pub limited: bool,
    pub prev_batch: String,
    pub state: Vec<Box<RawValue>>,
    /// The room `summary` (member counts and heroes), when the section carries one.
    pub summary: Option<serde_json::Value>,
}

/// What a room cache keeps per room: [`Section`] for `/sync`, a rendered room for
/// sliding sync.
pub trait Cached: Clone {
    /// The rendered bytes it counts for against [`MAX_BYTES`].
    fn bytes(&self) -> usize;
}

impl Cached for Section {
    fn bytes(&self) -> usize {
        self.timeline
            .iter()
            .chain(&self.state)
            .map(|e| e.get().len())
            .sum::<usize>()
            + self.prev_batch.len()
            + self.summary.as_ref().map_or(0, |s| s.to_string().len())
    }
}

/// Which devices a section may be shown to (see the module's comment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Echoes {
    /// The device whose transaction ids the section echoes, if any.
    pub device: Option<String>,
    /// Every device of the user that sent an event of the section (its transaction id
    /// would be echoed to that device).
    pub senders: Vec<String>,
}

impl Echoes {
    fn serves(&self, device_id: &str) -> bool {
        match &self.device {
            Some(d) => d == device_id,
            None => !self.senders.iter().any(|d| d == device_id),
        }
    }
}

struct Entry<S> {
    span: Span,
    echoes: Echoes,
    at: Instant,
    section: S,
}

/// A cache of rendered rooms (one of each kind per node).
pub struct RoomCache<S> {
    inner: Mutex<Lru<Key, Entry<S>>>,
}

/// The rooms kept between initial `/sync`s.
pub type RoomSectionCache = RoomCache<Section>;

impl<S> Default for RoomCache<S> {
    fn default() -> Self {
        RoomCache::with_bounds(MAX_ENTRIES, MAX_BYTES)
    }
}

impl<S> RoomCache<S> {
    /// A cache of at most `entries` rooms and `bytes` of rendered events.
    pub fn with_bounds(entries: usize, bytes: usize) -> Self {
        RoomCache {
            inner: Mutex::new(Lru::new(entries, bytes)),
        }
    }
}

impl<S: Cached> RoomCache<S> {
    /// The section for `key` if it was built from exactly the room's events `span` and
    /// may be shown to `device_id`. An entry that no longer matches its room is dropped.
    pub fn get(&self, key: &Key, span: Span, device_id: &str) -> Option<S> {
        let mut inner = self.inner.lock();
        let e = inner.get(key)?;
        if e.span != span || e.at.elapsed() >= MAX_AGE {
            inner.remove(key);
            return None;
        }
        e.echoes.serves(device_id).then(|| e.section.clone())
    }

    /// Keep a section built from `span`, dropping the least recently used to stay within
    /// the bounds; one larger than [`MAX_SECTION_BYTES`] is not kept.
    pub fn put(&self, key: Key, span: Span, echoes: Echoes, section: S) {
        let bytes = section.bytes();
        let mut inner = self.inner.lock();
        if bytes > MAX_SECTION_BYTES {
            inner.remove(&key);
            return;
        }
        let entry = Entry {
            span,
            echoes,
            at: Instant::now(),
            section,
        };
        inner.put(key, entry, bytes);
    }

    /// Drop every section of a user (deactivation, logout everywhere).
    pub fn forget_user(&self, user_id: &str) {
        self.inner.lock().retain(|k, _| k.user_id != user_id);
    }

    /// Sections kept now and their rendered bytes.
    pub fn usage(&self) -> (usize, usize) {
        self.inner.lock().usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(room: &str) -> Key {
        Key {
            user_id: "@u:x".into(),
            room_id: room.into(),
            filters: String::new(),
        }
    }

    fn section(bytes: usize) -> Section {
        let text = format!("\"{}\"", "a".repeat(bytes.saturating_sub(2)));
        Section {
            timeline: vec![RawValue::from_string(text).expect("json")],
            limited: false,
            prev_batch: String::new(),
            state: Vec::new(),
            summary: None,
        }
    }

    const SPAN: Span = Span {
        newest: Some(10),
        oldest: Some(1),
    };

    fn anyone() -> Echoes {
        Echoes {
            device: None,
            senders: Vec::new(),
        }
    }

    #[test]
    fn served_only_while_the_room_is_unchanged() {
        let cache = RoomSectionCache::default();
        cache.put(key("!a:x"), SPAN, anyone(), section(10));
        assert!(cache.get(&key("!a:x"), SPAN, "D").is_some());
        let moved = Span {
            newest: Some(11),
            ..SPAN
        };
        assert!(cache.get(&key("!a:x"), moved, "D").is_none());
        // The stale entry went with the miss.
        assert!(cache.get(&key("!a:x"), SPAN, "D").is_none());
        assert_eq!(cache.usage(), (0, 0));
        // Backfilled history moves the oldest position.
        cache.put(key("!a:x"), SPAN, anyone(), section(10));
        let backfilled = Span {
            oldest: Some(-5),
            ..SPAN
        };
        assert!(cache.get(&key("!a:x"), backfilled, "D").is_none());
    }

    #[test]
    fn transaction_ids_are_echoed_only_to_their_device() {
        let cache = RoomSectionCache::default();
        // Built for device A, which sent one of the events: A's alone.
        let mine = Echoes {
            device: Some("A".into()),
            senders: vec!["A".into()],
        };
        cache.put(key("!a:x"), SPAN, mine, section(10));
        assert!(cache.get(&key("!a:x"), SPAN, "A").is_some());
        assert!(cache.get(&key("!a:x"), SPAN, "B").is_none());
        // Built for a new device C: any device that sent nothing in it, not A.
        let others = Echoes {
            device: None,
            senders: vec!["A".into()],
        };
        cache.put(key("!a:x"), SPAN, others, section(10));
        assert!(cache.get(&key("!a:x"), SPAN, "C").is_some());
        assert!(cache.get(&key("!a:x"), SPAN, "D").is_some());
        assert!(cache.get(&key("!a:x"), SPAN, "A").is_none());
    }

    #[test]
    fn bounded_by_entries_and_bytes_least_recently_used_first() {
        let cache = RoomSectionCache::default();
        for i in 0..MAX_ENTRIES + 10 {
            cache.put(key(&format!("!{i}:x")), SPAN, anyone(), section(8));
            // Keep the first one in use: it is never the least recently used.
            assert!(cache.get(&key("!0:x"), SPAN, "D").is_some());
        }
        assert_eq!(cache.usage().0, MAX_ENTRIES);
        assert!(
            cache.get(&key("!1:x"), SPAN, "D").is_none(),
            "oldest unused dropped"
        );
        assert!(cache.get(&key("!0:x"), SPAN, "D").is_some());

        let big = MAX_SECTION_BYTES - 16;
        for i in 0..(MAX_BYTES / big) + 4 {
            cache.put(key(&format!("!big{i}:x")), SPAN, anyone(), section(big));
        }
        assert!(cache.usage().1 <= MAX_BYTES);
        cache.put(
            key("!huge:x"),
            SPAN,
            anyone(),
            section(MAX_SECTION_BYTES + 1),
        );
        assert!(
            cache.get(&key("!huge:x"), SPAN, "D").is_none(),
            "too large to keep"
        );

        cache.forget_user("@u:x");
        assert_eq!(cache.usage(), (0, 0));
    }
}
