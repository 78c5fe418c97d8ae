//! The last initial `/sync` answers (no `since`), kept per (user, device, filter,
//! `full_state`) so that a client repeating an initial sync (an app restarted without its
//! token, a retry after a timeout) gets the same bytes at once instead of a rebuild.
//!
//! An answer is served again only while nothing it could depend on has changed: no write
//! transaction has finished since its snapshot was opened ([`crate::storage::Db::write_generation`]:
//! events, receipts, account data, to-device messages, device lists and keys, push
//! rules, unread counts, presence all change only through the single writer) and the
//! notifier's token (stream position and typing serial) is the one it was built at.
//! That is coarser than per user (any write on the node invalidates every entry), and
//! never stale. Times inside an answer (`age`, presence `last_active_ago`) are as of when
//! it was built; an entry older than [`MAX_AGE`] is rebuilt.
//!
//! Bounds: [`MAX_ENTRIES`] answers and [`MAX_BYTES`] of them in all, least recently used
//! dropped first; an answer larger than the byte bound is not kept.

use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use crate::lru::Lru;
use crate::streams::SyncToken;

/// Answers kept at most.
pub const MAX_ENTRIES: usize = 32;
/// Bytes of answers kept at most, all entries together.
pub const MAX_BYTES: usize = 16 * 1024 * 1024;
/// An answer older than this is rebuilt even if nothing changed (it carries `age`s).
pub const MAX_AGE: Duration = Duration::from_secs(60);

/// What an initial sync answer is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Key {
    /// The syncing user.
    pub user_id: String,
    /// Their device (to-device messages, key counts, transaction ids are per device).
    pub device_id: String,
    /// The filter exactly as the client gave it (an inline JSON filter or a filter id;
    /// stored filters never change), empty for none.
    pub filter: String,
    /// The `full_state` parameter.
    pub full_state: bool,
}

/// The state of the node an answer was built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Built {
    /// [`crate::storage::Db::write_generation`], read before the snapshot was opened.
    pub writes: u64,
    /// The notifier's token the answer was built at.
    pub token: SyncToken,
}

struct Entry {
    built: Built,
    at: Instant,
    body: Bytes,
}

/// The cache; one per server.
pub struct InitialSyncCache {
    inner: Mutex<Lru<Key, Entry>>,
}

impl Default for InitialSyncCache {
    fn default() -> Self {
        InitialSyncCache {
            inner: Mutex::new(Lru::new(MAX_ENTRIES, MAX_BYTES)),
        }
    }
}

impl InitialSyncCache {
    /// The answer for `key`, if one was built from exactly the node state `now`. An entry
    /// that no longer matches is dropped.
    pub fn get(&self, key: &Key, now: Built) -> Option<Bytes> {
        let mut inner = self.inner.lock();
        let fresh = match inner.get(key) {
            None => return None,
            Some(e) if e.built == now && e.at.elapsed() < MAX_AGE => Some(e.body.clone()),
            Some(_) => None,
        };
        if fresh.is_none() {
            inner.remove(key);
        }
        fresh
    }

    /// Keep an answer built from `built`, dropping the least recently used to stay
    /// within the bounds.
    pub fn put(&self, key: Key, built: Built, body: Bytes) {
        let mut inner = self.inner.lock();
        // Entries built from an older node state can never be served again.
        inner.retain(|_, e| e.built == built);
        let bytes = body.len();
        let entry = Entry {
            built,
            at: Instant::now(),
            body,
        };
        inner.put(key, entry, bytes);
    }

    /// Drop a device's answers (logout, device deleted).
    pub fn forget_device(&self, user_id: &str, device_id: &str) {
        self.inner
            .lock()
            .retain(|k, _| k.user_id != user_id || k.device_id != device_id);
    }

    /// Drop every answer of a user (logout everywhere, deactivation).
    pub fn forget_user(&self, user_id: &str) {
        self.inner.lock().retain(|k, _| k.user_id != user_id);
    }

    /// Answers kept now and their total size in bytes.
    pub fn usage(&self) -> (usize, usize) {
        self.inner.lock().usage()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(user: &str, device: &str) -> Key {
        Key {
            user_id: user.into(),
            device_id: device.into(),
            filter: String::new(),
            full_state: false,
        }
    }

    const AT: Built = Built {
        writes: 7,
        token: SyncToken {
            pos: 10,
            typing: 2,
            to_device: None,
        },
    };

    #[test]
    fn served_only_while_nothing_changed() {
        let c = InitialSyncCache::default();
        c.put(key("@a:x", "D"), AT, Bytes::from_static(b"{}"));
        assert_eq!(c.get(&key("@a:x", "D"), AT).as_deref(), Some(&b"{}"[..]));
        assert_eq!(c.get(&key("@a:x", "E"), AT), None, "another device");
        let typed = Built {
            token: SyncToken {
                typing: 3,
                ..AT.token
            },
            ..AT
        };
        assert_eq!(c.get(&key("@a:x", "D"), typed), None, "typing changed");
        assert_eq!(c.usage(), (0, 0), "a stale entry is dropped");
        c.put(key("@a:x", "D"), AT, Bytes::from_static(b"{}"));
        let written = Built { writes: 8, ..AT };
        assert_eq!(c.get(&key("@a:x", "D"), written), None, "a write finished");
    }

    #[test]
    fn bounded_by_entries_and_bytes_least_recently_used_first() {
        let c = InitialSyncCache::default();
        for i in 0..MAX_ENTRIES + 5 {
            c.put(
                key("@a:x", &format!("D{i}")),
                AT,
                Bytes::from(vec![b' '; 10]),
            );
            // Keep the first one in use: it is never the least recently used.
            assert!(c.get(&key("@a:x", "D0"), AT).is_some());
        }
        assert_eq!(c.usage(), (MAX_ENTRIES, MAX_ENTRIES * 10));
        assert!(
            c.get(&key("@a:x", "D1"), AT).is_none(),
            "oldest unused dropped"
        );
        // Byte bound: answers of a third of it each, three fit with nothing else.
        let third = MAX_BYTES / 3;
        for i in 0..4 {
            c.put(
                key("@b:x", &format!("D{i}")),
                AT,
                Bytes::from(vec![b' '; third]),
            );
        }
        let (n, bytes) = c.usage();
        assert!(bytes <= MAX_BYTES, "{bytes}");
        assert!(n <= 3, "{n}");
        assert!(c.get(&key("@b:x", "D3"), AT).is_some());
        assert!(c.get(&key("@b:x", "D0"), AT).is_none());
        // Larger than the whole bound: not kept.
        c.put(key("@c:x", "D"), AT, Bytes::from(vec![b' '; MAX_BYTES + 1]));
        assert!(c.get(&key("@c:x", "D"), AT).is_none());
        assert!(c.usage().1 <= MAX_BYTES);
    }

    #[test]
    fn newer_state_drops_older_entries_and_logout_forgets() {
        let c = InitialSyncCache::default();
        c.put(key("@a:x", "D"), AT, Bytes::from_static(b"1"));
        c.put(key("@a:x", "E"), AT, Bytes::from_static(b"2"));
        c.put(key("@b:x", "D"), AT, Bytes::from_static(b"3"));
        c.forget_device("@a:x", "D");
        assert_eq!(c.usage().0, 2);
        c.forget_user("@a:x");
        assert_eq!(c.usage(), (1, 1));
        let later = Built { writes: 9, ..AT };
        c.put(key("@c:x", "D"), later, Bytes::from_static(b"4"));
        assert_eq!(c.usage(), (1, 1), "the entry of an older state is gone");
    }
}
