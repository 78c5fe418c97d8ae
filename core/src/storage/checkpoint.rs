//! WAL checkpoints on a thread of their own.
//!
//! SQLite normally checkpoints inside the commit that pushes the WAL past 1,000 pages:
//! that commit copies the pages back and fsyncs twice while holding the one writer, so
//! every send queued behind it waits milliseconds. Here the writer's automatic
//! checkpoint is off and this thread runs a `PASSIVE` checkpoint (which never blocks the
//! writer or readers) after every [`EVERY_COMMITS`] commits, or [`IDLE_AFTER`] after the
//! last one. An idle node's thread sleeps without waking.

use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

/// Commits between checkpoints under load (about a thousand WAL pages at ~4 pages each).
const EVERY_COMMITS: u32 = 256;
/// How long after the last commit a checkpoint runs when the load stops.
const IDLE_AFTER: Duration = Duration::from_millis(500);

#[derive(Default)]
struct State {
    pending: u32,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
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
        if let Err(e) = conn.pragma_update(None, "busy_timeout", 5000) {
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

    /// Note one commit; wakes the thread on the first and at the threshold.
    pub(super) fn committed(&self) {
        let mut st = self.shared.state.lock();
        st.pending = st.pending.saturating_add(1);
        if st.pending == 1 || st.pending == EVERY_COMMITS {
            self.shared.wake.notify_one();
        }
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
    loop {
        {
            let mut st = shared.state.lock();
            while st.pending == 0 && !st.stop {
                shared.wake.wait(&mut st);
            }
            if st.stop {
                return;
            }
            if st.pending < EVERY_COMMITS {
                // Wait for the load to stop (or reach the threshold).
                let _ = shared.wake.wait_for(&mut st, IDLE_AFTER);
                if st.stop {
                    return;
                }
            }
            st.pending = 0;
        }
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}
