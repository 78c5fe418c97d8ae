//! A map bounded in entries and in bytes, least recently used dropped first: what the
//! in-memory caches keep their entries in (the sync caches, push contexts, auth state,
//! access tokens).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;

struct Slot<V> {
    value: V,
    bytes: usize,
    used: u64,
}

/// Entries of `V` by `K`, each with the size it counts for.
pub(crate) struct Lru<K, V> {
    slots: HashMap<K, Slot<V>>,
    bytes: usize,
    clock: u64,
    max_entries: usize,
    max_bytes: usize,
}

impl<K: Hash + Eq + Clone, V> Lru<K, V> {
    pub(crate) fn new(max_entries: usize, max_bytes: usize) -> Self {
        Lru {
            slots: HashMap::new(),
            bytes: 0,
            clock: 0,
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
        self.clock += 1;
        let clock = self.clock;
        let slot = self.slots.get_mut(key)?;
        slot.used = clock;
        Some(&mut slot.value)
    }

    /// Keep `value` (counting `bytes`) under `key`, dropping the least recently used
    /// entries to stay within the bounds. A value larger than the byte bound is not kept.
    pub(crate) fn put(&mut self, key: K, value: V, bytes: usize) {
        self.remove(&key);
        if bytes > self.max_bytes {
            return;
        }
        while self.slots.len() >= self.max_entries || self.bytes + bytes > self.max_bytes {
            let Some(oldest) = self
                .slots
                .iter()
                .min_by_key(|(_, s)| s.used)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            self.remove(&oldest);
        }
        self.clock += 1;
        self.bytes += bytes;
        self.slots.insert(
            key,
            Slot {
                value,
                bytes,
                used: self.clock,
            },
        );
    }

    /// How many entries are kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn remove(&mut self, key: &K) {
        if let Some(s) = self.slots.remove(key) {
            self.bytes -= s.bytes;
        }
    }

    /// Keep only the entries `keep` accepts.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&K, &V) -> bool) {
        let drop: Vec<K> = self
            .slots
            .iter()
            .filter(|(k, s)| !keep(k, &s.value))
            .map(|(k, _)| k.clone())
            .collect();
        for k in drop {
            self.remove(&k);
        }
    }

    /// Entries kept and the bytes they count for.
    pub(crate) fn usage(&self) -> (usize, usize) {
        (self.slots.len(), self.bytes)
    }
}
