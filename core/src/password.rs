//! Password hashing with argon2id, bounded.
//!
//! One argon2id hash takes [`MEMORY_KIB`] of memory and tens of milliseconds of a core.
//! Unbounded, 64 concurrent wrong-password logins (no account needed) took a node to
//! 1.26 GiB. Here at most [`concurrency`] hashes run at once (no more than the cores, and
//! at most two: a login is rare, a phone's memory is not), at most [`MAX_WAITING`] more
//! wait for a turn, and anything past that is refused at once with
//! `429 M_LIMIT_EXCEEDED` before any memory is taken.
//!
//! Parameters: argon2id, m = 19 MiB, t = 2, p = 1 — the first of OWASP's recommended
//! settings, and the argon2 crate's default, so hashes stored by earlier versions verify
//! unchanged. At two at a time that is at most 38 MiB while hashing, returned to the
//! system when the hash ends (see [`crate::memory`]). A stored hash carries its own
//! parameters, so changing them later keeps old passwords working.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};
use tokio::sync::Semaphore;

use crate::error::Error;

/// Memory of one hash, in KiB (argon2's `m_cost`).
pub const MEMORY_KIB: u32 = argon2::Params::DEFAULT_M_COST;

/// Requests that may wait for a hashing slot; more are refused with 429.
pub const MAX_WAITING: usize = 32;

/// How long a refused caller is told to wait.
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Slots {
    running: Semaphore,
    waiting: AtomicUsize,
}

static SLOTS: LazyLock<Slots> = LazyLock::new(|| Slots {
    running: Semaphore::new(concurrency()),
    waiting: AtomicUsize::new(0),
});

/// Hashes that may run at once: the cores, at most two.
pub fn concurrency() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 2)
}

/// Counts a caller as waiting until it gets its slot or gives up (its request dropped).
struct Waiting;

impl Drop for Waiting {
    fn drop(&mut self) {
        SLOTS.waiting.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Run `f` on a blocking thread once a hashing slot is free.
async fn bounded<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Error> {
    if SLOTS.waiting.fetch_add(1, Ordering::AcqRel) >= MAX_WAITING {
        SLOTS.waiting.fetch_sub(1, Ordering::AcqRel);
        return Err(Error::RateLimited(RETRY_AFTER));
    }
    let waiting = Waiting;
    let permit = SLOTS.running.acquire().await.map_err(Error::internal)?;
    drop(waiting);
    tokio::task::spawn_blocking(move || {
        let out = f();
        drop(permit);
        out
    })
    .await
    .map_err(Error::internal)
}

/// Hash a password with argon2id.
pub async fn hash_password(password: String) -> Result<String, Error> {
    bounded(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await?
    .map_err(Error::internal)
}

/// Check a password against a stored argon2 hash. `Ok(false)` for a wrong password or an
/// unreadable hash; `Err` (429) when too many hashes are already waiting.
pub async fn verify_password(password: String, hash: String) -> Result<bool, Error> {
    bounded(move || {
        PasswordHash::new(&hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
    })
    .await
}

/// Hashes waiting for a slot now (for tests and the admin report).
pub fn waiting() -> usize {
    SLOTS.waiting.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn hashes_verify_and_a_storm_is_refused_past_the_queue() {
        let hash = hash_password("secret".into()).await.expect("hash");
        assert!(
            verify_password("secret".into(), hash.clone())
                .await
                .expect("ok")
        );
        assert!(
            !verify_password("wrong".into(), hash.clone())
                .await
                .expect("ok")
        );
        assert!(
            !verify_password("x".into(), "not a hash".into())
                .await
                .expect("ok")
        );

        // Far more at once than may run or wait: some are refused with 429 straight
        // away, the rest all finish, and never more than the slots run at once.
        let storm = 4 * (MAX_WAITING + concurrency());
        let tasks: Vec<_> = (0..storm)
            .map(|_| tokio::spawn(verify_password("wrong".into(), hash.clone())))
            .collect();
        let (mut refused, mut done) = (0, 0);
        for t in tasks {
            match t.await.expect("task") {
                Ok(ok) => {
                    assert!(!ok);
                    done += 1;
                }
                Err(Error::RateLimited(after)) => {
                    assert_eq!(after, RETRY_AFTER);
                    refused += 1;
                }
                Err(e) => panic!("unexpected {e}"),
            }
        }
        assert!(refused > 0, "nothing refused out of {storm}");
        assert!(done >= concurrency(), "only {done} done");
        assert_eq!(waiting(), 0);
    }
}
