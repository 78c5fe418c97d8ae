//! A map bounded in entries and in bytes, least recently used dropped first: what the
//! in-memory caches keep their entries in (the sync caches, push contexts, auth state,
//! access tokens).
//!
//! Entries are kept in use order (a linked hash map), so a lookup, an insertion and
//! each eviction cost the same however many entries are kept: a full cache used to scan
//! every entry for the oldest on each insertion, under its mutex (4,096 scans for each
//! new token once the token cache was full).

use std::borrow::Borrow;
use std::hash::Hash;

use hashlink::LinkedHashMap;

struct Slot<V> {
    value: V,
    bytes: usize,
}

/// Entries of `V` by `K`, each with the size it counts for.
pub(crate) struct Lru<K, V> {
    /// Least recently used first.
    slots: LinkedHashMap<K, Slot<V>>,
    bytes: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq, V> Lru<K, V> {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Lru {
            slots: LinkedHashMap::new(),
            bytes: 0,
            max_entries,
            max_bytes,
        }
    }

    /// The entry for `key`, marked as used now.
    pub(crate) fn get<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.slots.to_back(key).map(|slot| &mut slot.value)
    }

    /// Keep `value` (counting `bytes`) under `key`, dropping the least recently used
    /// entries to stay within the bounds. A value larger than the byte bound is not kept.
    pub(crate) fn put(&mut self, key: K, value: V, bytes: usize) {
        self.remove(&key);
        if bytes > self.max_bytes || self.max_entries == 0 {
            return;
        }
        while self.slots.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some((_, oldest)) = self.slots.pop_front() else {
                break;
            };
            self.bytes -= oldest.bytes;
        }
        self.bytes += bytes;
        self.slots.insert(key, Slot { value, bytes });
    }

    /// How many entries are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q)
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if let Some(s) = self.slots.remove(key) {
            self.bytes -= s.bytes;
        }
    }

    /// Keep only the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let mut freed = 0;
        self.slots.retain(|k, s| {
            let kept = keep(k, &s.value);
            if !kept {
                freed += s.bytes;
            }
            kept
        });
        self.bytes -= freed;
    }

    /// Entries kept and the bytes they count for.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.slots.len(), self.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::Lru;

    #[test]
    fn the_least_recently_used_entry_goes_first() {
        let mut lru = Lru::new(3, 1000);
        lru.put("a", 1, 1);
        lru.put("b", 2, 1);
        lru.put("c", 3, 1);
        // "a" used since: "b" is now the oldest.
        assert_eq!(lru.get("a"), Some(&mut 1));
        lru.put("d", 4, 1);
        assert_eq!(lru.get("b"), None);
        assert_eq!(lru.get("a"), Some(&mut 1));
        assert_eq!(lru.get("c"), Some(&mut 3));
        assert_eq!(lru.get("d"), Some(&mut 4));
        assert_eq!(lru.usage(), (3, 3));
    }

    #[test]
    fn bytes_are_bounded_and_counted_back_on_every_way_out() {
        let mut lru = Lru::new(100, 10);
        lru.put(1, (), 4);
        lru.put(2, (), 4);
        // 4 + 4 + 4 > 10: the oldest makes room.
        lru.put(3, (), 4);
        assert_eq!(lru.usage(), (2, 8));
        assert!(lru.get(&1).is_none());
        // Larger than the whole bound: not kept, nothing dropped for it.
        lru.put(4, (), 11);
        assert_eq!(lru.usage(), (2, 8));
        // Replacing an entry counts its new size only.
        lru.put(2, (), 1);
        assert_eq!(lru.usage(), (2, 5));
        lru.remove(&3);
        assert_eq!(lru.usage(), (1, 1));
        lru.put(5, (), 6);
        lru.retain(|k, _| *k != 5);
        assert_eq!(lru.usage(), (1, 1));
        assert_eq!(lru.len(), 1);
    }

    #[test]
    fn a_full_cache_keeps_its_bound_through_many_insertions() {
        let mut lru = Lru::new(4096, usize::MAX);
        for i in 0..100_000u32 {
            lru.put(i, i, 1);
        }
        assert_eq!(lru.usage(), (4096, 4096));
        // The newest 4,096 are the ones kept.
        assert!(lru.get(&(100_000 - 4096)).is_some());
        assert!(lru.get(&(100_000 - 4097)).is_none());
    }
}
