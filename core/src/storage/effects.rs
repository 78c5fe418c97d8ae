//! What a write leaves to do once it has committed: wake the tasks that wait for the
//! rows it added, publish the stream position it took.
//!
//! The write transaction collects these itself, from the rows it changes: an SQLite
//! update hook on the writer connection notes every insert into a queue table
//! (`federation_outbox`, `push_queue`) and every new stream position
//! (`stream_sequence`) while a write runs. No caller has to remember to mark anything,
//! and storage needs to know nothing of the tasks it wakes.
//!
//! Each write's effects are its own (the writer runs one write at a time, and the
//! collector is emptied when each starts), are dropped if the write fails (its savepoint
//! is rolled back) and are handed back only once the batch holding the write has
//! committed (see [`super::group_commit`]). [`super::Db::write`] passes them to the
//! after-commit handler the node installs ([`super::Db::set_after_commit`]): a write
//! wakes the federation sender after its own rows are visible, never before. An insert
//! undone inside a write that then succeeds (an inner savepoint) costs at most a
//! spurious wake-up.
//!
//! Cheap: one atomic OR per changed row of those tables, a table-name comparison per
//! changed row, no allocation; the stream position is read only by a write that took
//! one.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use rusqlite::Connection;
use rusqlite::hooks::Action;

use crate::streams::StreamPosition;

const OUTBOX: u8 = 1;
const PUSH_QUEUE: u8 = 2;
const STREAM: u8 = 4;

/// The after-commit effects of one write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    flags: u8,
    /// The stream position the write reached, if it took one.
    pub stream_pos: Option<StreamPosition>,
}

impl Effects {
    /// Nothing to do.
    pub fn is_empty(&self) -> bool {
        self.flags == 0 && self.stream_pos.is_none()
    }

    /// Federation traffic was queued: wake the federation sender.
    pub fn federation_queued(&self) -> bool {
        self.flags & OUTBOX != 0
    }

    /// Rows were queued for HTTP pushers: wake the push deliverer.
    pub fn pushes_queued(&self) -> bool {
        self.flags & PUSH_QUEUE != 0
    }
}

/// Runs each write's effects once its batch has committed (installed by the node).
pub type AfterCommit = Box<dyn Fn(Effects) + Send + Sync>;

/// The effects of the write running on the writer connection so far.
#[derive(Clone, Default)]
pub(super) struct Collector(Arc<AtomicU8>);

impl Collector {
    /// Collect on `conn` (the writer) from now on.
    pub(super) fn install(&self, conn: &Connection) {
        let noted = self.0.clone();
        conn.update_hook(Some(
            move |action: Action, _db: &str, table: &str, _rowid: i64| {
                let flag = match (action, table) {
                    (Action::SQLITE_INSERT, "federation_outbox") => OUTBOX,
                    (Action::SQLITE_INSERT, "push_queue") => PUSH_QUEUE,
                    (Action::SQLITE_UPDATE, "stream_sequence") => STREAM,
                    _ => return,
                };
                // Only the writer's thread touches it while the writer is held.
                noted.fetch_or(flag, Ordering::Relaxed);
            },
        ));
    }

    /// A write starts: forget what an earlier one (or a failed one) left.
    pub(super) fn clear(&self) {
        self.0.store(0, Ordering::Relaxed);
    }

    /// The write's closure succeeded: its effects, read inside its transaction.
    pub(super) fn take(&self, conn: &Connection) -> Result<Effects, rusqlite::Error> {
        let flags = self.0.swap(0, Ordering::Relaxed);
        let stream_pos = if flags & STREAM != 0 {
            Some(
                conn.prepare_cached("SELECT pos FROM stream_sequence")?
                    .query_row([], |r| r.get(0))?,
            )
        } else {
            None
        };
        Ok(Effects {
            flags: flags & !STREAM,
            stream_pos,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;
    use rusqlite::Connection;

    use super::Effects;
    use crate::error::Error;
    use crate::storage::{self, Db};

    /// The handler the node installs runs once per write that has effects, after the
    /// commit (another connection sees the rows), never for a write that fails.
    #[test]
    fn the_after_commit_handler_sees_committed_rows_only() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db.sqlite");
        let db = Db::open(&path).expect("open");
        let seen: Arc<Mutex<Vec<(Effects, i64)>>> = Arc::default();
        {
            let seen = seen.clone();
            let other = Mutex::new(Connection::open(&path).expect("other"));
            db.set_after_commit(Box::new(move |e| {
                let rows: i64 = other
                    .lock()
                    .query_row("SELECT COUNT(*) FROM federation_outbox", [], |r| r.get(0))
                    .expect("count");
                seen.lock().push((e, rows));
            }));
        }
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": {} });
        db.write(|c| storage::enqueue_edu(c, "elsewhere", &edu))
            .expect("queue");
        let failed = db.write(|c| -> Result<(), Error> {
            storage::enqueue_edu(c, "elsewhere", &edu)?;
            Err(Error::Forbidden("no".into()))
        });
        assert!(failed.is_err());
        db.write(|_| Ok(())).expect("empty write");
        let pos = db.write(storage::next_stream_position).expect("position");
        let seen = seen.lock();
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(seen[0].0.federation_queued());
        assert_eq!(seen[0].1, 1, "woken before the rows were committed");
        assert!(!seen[1].0.federation_queued());
        assert_eq!(seen[1].0.stream_pos, Some(pos));
    }
}
