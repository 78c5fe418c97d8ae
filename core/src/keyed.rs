//! Permits per key: at most `permits` holders of one key at a time, at most `max_keys`
//! keys with holders or waiters at once. A key is forgotten as soon as nobody holds or
//! waits for it, also when a waiter gives up (its future is dropped), so the map never
//! holds more than `max_keys` entries. Used to serialise joins of one room and to share
//! remote media fetch slots fairly between origins.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::Semaphore;

use crate::error::Error;

/// Permits per key, bounded in keys.
pub struct KeyedPermits {
    keys: Mutex<HashMap<String, Arc<Semaphore>>>,
    permits: usize,
    max_keys: usize,
}

/// A permit for one key; dropping it (or the wait for it) releases it.
pub struct KeyedPermit<'a> {
    owner: &'a KeyedPermits,
    key: String,
    semaphore: Arc<Semaphore>,
    held: bool,
}

impl KeyedPermits {
    /// `permits` holders per key, `max_keys` keys at once.
    pub fn new(permits: usize, max_keys: usize) -> KeyedPermits {
        KeyedPermits {
            keys: Mutex::new(HashMap::new()),
            permits,
            max_keys,
        }
    }

    /// Wait for a permit of `key`. A key that is not in use while `max_keys` others are
    /// gets `429 M_LIMIT_EXCEEDED` at once.
    pub async fn acquire(&self, key: &str) -> Result<KeyedPermit<'_>, Error> {
        let semaphore = {
            let mut keys = self.keys.lock();
            if !keys.contains_key(key) && keys.len() >= self.max_keys {
                return Err(Error::LimitExceeded(
                    "too many operations in progress; try again shortly".into(),
                ));
            }
            Arc::clone(
                keys.entry(key.to_owned())
                    .or_insert_with(|| Arc::new(Semaphore::new(self.permits))),
            )
        };
        // The guard exists while waiting, so a waiter that gives up still cleans up.
        let mut slot = KeyedPermit {
            owner: self,
            key: key.to_owned(),
            semaphore,
            held: false,
        };
        slot.semaphore
            .acquire()
            .await
            .map_err(Error::internal)?
            .forget();
        slot.held = true;
        Ok(slot)
    }

    /// Keys with holders or waiters.
    pub fn len(&self) -> usize {
        self.keys.lock().len()
    }

    /// Whether no key is in use.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Drop for KeyedPermit<'_> {
    fn drop(&mut self) {
        if self.held {
            self.semaphore.add_permits(1);
        }
        let mut keys = self.owner.keys.lock();
        // The map's reference and ours: nobody else holds or waits for this key.
        if Arc::strong_count(&self.semaphore) == 2 {
            keys.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn one_key_waits_others_do_not_and_keys_are_forgotten() {
        let locks = KeyedPermits::new(1, 8);
        let first = locks.acquire("a").await.expect("first");
        let waiting = tokio::time::timeout(Duration::from_millis(20), locks.acquire("a")).await;
        assert!(waiting.is_err(), "a second holder of the key did not wait");
        let other = locks.acquire("b").await.expect("other key");
        assert_eq!(locks.len(), 2);
        drop(first);
        let again = locks.acquire("a").await.expect("after the first");
        drop((again, other));
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_leaves_nothing_behind() {
        let locks = KeyedPermits::new(1, 8);
        let held = locks.acquire("a").await.expect("held");
        let gave_up = tokio::time::timeout(Duration::from_millis(10), locks.acquire("a")).await;
        assert!(gave_up.is_err());
        drop(held);
        assert!(locks.is_empty(), "an abandoned wait kept its key");
    }

    #[tokio::test]
    async fn past_the_key_bound_new_keys_get_429() {
        let locks = KeyedPermits::new(2, 3);
        let mut held = Vec::new();
        for k in ["a", "b", "c"] {
            held.push(locks.acquire(k).await.expect("under the bound"));
        }
        assert!(matches!(
            locks.acquire("d").await,
            Err(Error::LimitExceeded(_))
        ));
        // A key in use takes more holders up to its permits.
        held.push(locks.acquire("a").await.expect("second permit of a"));
        drop(held.pop());
        drop(held.pop());
        held.push(locks.acquire("d").await.expect("room for another key"));
        held.clear();
        assert!(locks.is_empty());
    }
}
