//! WAL checkpoints on a thread of their own.
//!
//! SQLite normally checkpoints inside the commit that pushes the WAL past 1,000 pages:
//! that commit copies the pages back and fsyncs twice while holding the one writer, so
//! every send queued behind it waits milliseconds. Here the writer's automatic
//! checkpoint is off and this thread runs a `PASSIVE` checkpoint (which never blocks the
//! writer or readers) after every [`EVERY_COMMITS`] commits, or [`IDLE_AFTER`] after the
//! last one. An idle node's thread sleeps without waking.
//!
//! The WAL is bounded ([`RESTART_ABOVE`], emptied when idle): a passive checkpoint
//! cannot copy frames that a reader's snapshot still needs, and the writer can only start
//! the WAL over once every frame is copied, so under steady reads (fifty long-polling
//! `/sync` clients) passive checkpoints alone let the WAL grow for ever (5.4 GiB after
//! 90 s). When the WAL holds more than [`RESTART_ABOVE`], this thread asks the writer for
//! a `RESTART` checkpoint: the next write, once committed, runs it on the writer
//! connection between batches (from any other connection it could never catch the
//! writer lock free under load). It waits at most [`BUSY_WAIT_MS`] for the current
//! readers to finish (they are short: nothing holds a read across an `.await`), and the
//! write after it starts the WAL from the beginning; `journal_size_limit`
//! ([`super::WAL_SIZE_LIMIT`], as large as [`RESTART_ABOVE`]) then cuts the file back
//! if it grew past that while readers held it. When the load stops, this
//! thread's own `TRUNCATE` checkpoint empties the WAL file.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

/// Commits between checkpoints under load (about a thousand WAL pages at ~4 pages each).
const EVERY_COMMITS: u32 = 256;
/// How long after the last commit a checkpoint runs when the load stops.
const IDLE_AFTER: Duration = Duration::from_millis(500);
/// WAL content past which the writer restarts the WAL.
pub(super) const RESTART_ABOVE: i64 = 16 * 1024 * 1024;
/// How long a checkpoint waits for readers (and the writer waits for it, since a
/// `RESTART` or `TRUNCATE` checkpoint holds writes back while it waits). One that cannot
/// finish in time gives up and is tried again; writes are never held longer than this.
const BUSY_WAIT_MS: i64 = 100;

/// Which checkpoint to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Passive,
    Restart,
    Truncate,
}

impl Mode {
    fn pragma(self) -> &'static str {
        match self {
            Mode::Passive => "PRAGMA wal_checkpoint(PASSIVE)",
            Mode::Restart => "PRAGMA wal_checkpoint(RESTART)",
            Mode::Truncate => "PRAGMA wal_checkpoint(TRUNCATE)",
        }
    }
}

#[derive(Default)]
struct State {
    pending: u32,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// The WAL is over [`RESTART_ABOVE`]: the writer should restart it.
    restart_wanted: AtomicBool,
}

/// Handle to the checkpoint thread; stops it when dropped.
pub(super) struct Checkpointer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Open a connection of its own and start the thread; `None` if either fails.
    pub(super) fn start(path: &Path) -> Option<Checkpointer> {
        let conn = match Connection::open(path) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "no checkpoint connection; SQLite checkpoints on commit");
                return None;
            }
        };
        if let Err(e) = conn
            .pragma_update(None, "busy_timeout", BUSY_WAIT_MS)
            .and_then(|()| conn.pragma_update(None, "journal_size_limit", super::WAL_SIZE_LIMIT))
        {
            tracing::warn!(error = %e, "checkpoint connection unusable");
            return None;
        }
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let thread = std::thread::Builder::new()
            .name("warren-checkpoint".into())
            .spawn(move || run(&conn, &theirs))
            .ok()?;
        Some(Checkpointer {
            shared,
            thread: Some(thread),
        })
    }

    /// Whether the WAL should be restarted now; clears the request (one writer acts).
    pub(super) fn take_restart_request(&self) -> bool {
        self.shared.restart_wanted.swap(false, Ordering::AcqRel)
    }

    /// Note one commit; wakes the thread on the first and at the threshold. A thread so
    /// far behind that commits keep piling up (starved of CPU) cannot be relied on to
    /// notice a big WAL: the writer then restarts the WAL itself, every
    /// [`EVERY_COMMITS`] commits, until the thread catches up.
    pub(super) fn committed(&self) {
        let mut st = self.shared.state.lock();
        st.pending = st.pending.saturating_add(1);
        if st.pending == 1 || st.pending == EVERY_COMMITS {
            self.shared.wake.notify_one();
        }
        if st.pending > EVERY_COMMITS && st.pending.is_multiple_of(EVERY_COMMITS) {
            self.shared.restart_wanted.store(true, Ordering::Release);
        }
    }

    /// Restart the WAL from the writer connection, between batches (see the module
    /// comment). One that readers kept from finishing while the WAL is past twice
    /// [`RESTART_ABOVE`] is asked for again at once: each following write then waits (at
    /// most [`BUSY_WAIT_MS`]) for a moment without readers, which bounds the WAL where
    /// retrying only every [`EVERY_COMMITS`] commits did not.
    pub(super) fn restart_on(&self, conn: &Connection) {
        let _ = conn.busy_timeout(Duration::from_millis(BUSY_WAIT_MS as u64));
        let page_size: i64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get(0))
            .unwrap_or(4096);
        match checkpoint(conn, Mode::Restart) {
            // It collided with the checkpoint thread's own run: the next write tries again
            // (the WAL grew without limit when this request was dropped).
            Ok(None) => self.shared.restart_wanted.store(true, Ordering::Release),
            Ok(Some(frames)) if frames.saturating_mul(page_size) > 2 * RESTART_ABOVE => {
                self.shared.restart_wanted.store(true, Ordering::Release);
            }
            Ok(Some(_)) => {}
            Err(e) => tracing::warn!(error = %e, "WAL restart failed"),
        }
        let _ = conn.busy_timeout(Duration::from_millis(super::BUSY_TIMEOUT_MS as u64));
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.shared.state.lock().stop = true;
        self.shared.wake.notify_one();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(conn: &Connection, shared: &Shared) {
    let page_size: i64 = conn
        .query_row("PRAGMA page_size", [], |r| r.get(0))
        .unwrap_or(4096);
    loop {
        let idle = {
            let mut st = shared.state.lock();
            while st.pending == 0 && !st.stop {
                shared.wake.wait(&mut st);
            }
            if st.stop {
                return;
            }
            let mut idle = false;
            if st.pending < EVERY_COMMITS {
                // Wait for the load to stop (or reach the threshold). Idle means no
                // commit at all during the wait.
                let before = st.pending;
                let timed_out = shared.wake.wait_for(&mut st, IDLE_AFTER).timed_out();
                if st.stop {
                    return;
                }
                idle = timed_out && st.pending == before;
            }
            st.pending = 0;
            idle
        };
        // Idle: nothing waits on the writer, so empty the file. Under load: copy what
        // can be copied without waiting, and have the writer start the WAL over once it
        // is big. While the writer is asked to, stay out of its way: a checkpoint holds
        // SQLite's checkpoint lock, which makes the writer's restart fail at once, and
        // under a fast load this thread's passive runs (tens of milliseconds each) came
        // back to back, so the writer's restart never found the lock free.
        // (Looked at again once the load stops, when no write will act on the request.)
        if !idle && shared.restart_wanted.load(Ordering::Acquire) {
            let mut st = shared.state.lock();
            st.pending = st.pending.max(1);
            continue;
        }
        let mode = if idle { Mode::Truncate } else { Mode::Passive };
        let ran = match checkpoint(conn, mode) {
            Ok(Some(frames)) => {
                let big = frames.saturating_mul(page_size) > RESTART_ABOVE;
                shared.restart_wanted.store(big, Ordering::Release);
                true
            }
            // The writer was restarting the WAL: leave its request as it is.
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, ?mode, "WAL checkpoint failed");
                true
            }
        };
        // After a run under load, or an idle one that readers (or the writer's restart)
        // kept from finishing, look again once the load stops, even if no commit comes
        // to wake this thread.
        if !idle || !ran || shared.restart_wanted.load(Ordering::Acquire) {
            let mut st = shared.state.lock();
            st.pending = st.pending.max(1);
        }
    }
}

/// Run one checkpoint; returns the frames left in the WAL for the next decision (all of
/// them if readers kept it from finishing, none once the WAL was started over or
/// emptied, or not in WAL mode at all), or `None` if it could not run: another
/// connection was checkpointing at that moment (SQLite answers busy at once, without
/// calling the busy handler).
fn checkpoint(conn: &Connection, mode: Mode) -> rusqlite::Result<Option<i64>> {
    let (busy, log, _copied): (i64, i64, i64) =
        conn.query_row(mode.pragma(), [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    if log < 0 {
        if busy == 0 {
            // Not in WAL mode (a file system without shared memory): no WAL to bound.
            return Ok(Some(0));
        }
        tracing::debug!(
            ?mode,
            "WAL checkpoint could not run (another one under way)"
        );
        return Ok(None);
    }
    if busy != 0 {
        tracing::debug!(
            ?mode,
            log,
            "WAL checkpoint could not finish (readers or a writer busy)"
        );
        return Ok(Some(log));
    }
    Ok(Some(match mode {
        Mode::Passive => log,
        Mode::Restart | Mode::Truncate => 0,
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Instant;

    use super::super::Db;
    use super::*;

    fn wal_bytes(db_path: &Path) -> u64 {
        let wal = db_path.with_file_name("warren.db-wal");
        std::fs::metadata(wal).map_or(0, |m| m.len())
    }

    /// Readers that always hold a snapshot kept passive checkpoints from ever finishing,
    /// and the WAL grew without limit. Drive 48 MiB of writes under such readers: the
    /// WAL stays under 64 MiB throughout and is cut to at most 4 MiB once the load stops.
    #[test]
    fn wal_stays_bounded_under_constant_readers_and_shrinks_when_idle() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("warren.db");
        let db = Arc::new(Db::open(&path).expect("open"));
        db.write(|c| {
            c.execute_batch("CREATE TABLE soak (x BLOB NOT NULL)")?;
            Ok(())
        })
        .expect("schema");
        let stop = Arc::new(AtomicBool::new(false));
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let (db, stop) = (db.clone(), stop.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        let _ = db.read_tx(|c| {
                            let n: i64 =
                                c.query_row("SELECT COUNT(*) FROM soak", [], |r| r.get(0))?;
                            std::thread::sleep(Duration::from_millis(2));
                            Ok(n)
                        });
                    }
                })
            })
            .collect();
        let blob = vec![7u8; 16 * 1024];
        let mut max_wal = 0;
        for _ in 0..3072 {
            db.write(|c| {
                c.execute("INSERT INTO soak (x) VALUES (?1)", [&blob])?;
                Ok(())
            })
            .expect("write");
            max_wal = max_wal.max(wal_bytes(&path));
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().expect("reader");
        }
        assert!(
            max_wal <= 64 * 1024 * 1024,
            "WAL reached {max_wal} bytes under load"
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while wal_bytes(&path) > 4 * 1024 * 1024 {
            assert!(
                Instant::now() < deadline,
                "WAL still {} bytes 5 s after the load",
                wal_bytes(&path)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}
