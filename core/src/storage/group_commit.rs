//! The single writer, with group commit.
//!
//! Every write runs on the one writer connection, one at a time. Committing each write
//! on its own costs a WAL append of every page it touched; under load most of those
//! pages (the same index leaves, the stream counter) are touched again by the next write.
//! So a write that finishes while others are queued for the writer does not commit: it
//! leaves the transaction open, hands the connection to the next writer and waits. The
//! last write of the run (nobody queued, or [`MAX_BATCH`] writes in the transaction)
//! commits for all of them and wakes them. Each write still runs in a savepoint of its
//! own, so a write that fails is rolled back alone; and no caller returns before the
//! transaction holding its write has committed, so an acknowledged write is durable and
//! readers only ever see committed positions. With no concurrency this is exactly one
//! transaction per write.
//!
//! Each write also hands back its after-commit [`Effects`] (collected while it ran, see
//! [`super::effects`]) only once the batch holding it has committed; a write that fails
//! or whose batch is lost hands back none.

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;

use super::changes::RoomChanges;
use super::effects::{Collector, Effects};
use crate::error::Error;

/// Most writes in one transaction: bounds how long the first of them waits.
const MAX_BATCH: u32 = 16;

/// How many batches back a failure is remembered for the writes waiting on it (far
/// more than can be waiting: a batch holds at most [`MAX_BATCH`] writes).
const FAILURES_KEPT_FOR: u64 = 1 << 16;

struct Writer {
    conn: Connection,
    /// The open transaction's batch number, if one is open.
    open: Option<u64>,
    /// Writes in the open transaction.
    len: u32,
    /// The last batch number handed out.
    last_batch: u64,
}

#[derive(Default)]
struct Commits {
    /// Every batch up to this one has committed or failed.
    done_up_to: u64,
    /// Recent batches whose commit failed, with the error.
    failed: BTreeMap<u64, String>,
}

/// The writer connection and its batching state.
pub(super) struct GroupWriter {
    writer: Mutex<Writer>,
    /// Threads waiting for the writer: the current one hands over instead of committing.
    queued: AtomicUsize,
    commits: Mutex<Commits>,
    committed: Condvar,
    /// The effects of the write holding the writer.
    effects: Collector,
    /// How much the writer has done (see [`WriterStats`]).
    stats: Stats,
}

/// What the single writer has done since the database was opened: how busy it is is how
/// close the node is to its write throughput (every write waits for it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Writes run (committed or failed).
    pub writes: u64,
    /// Transactions committed (each holding one write or several, see the module's
    /// documentation).
    pub commits: u64,
    /// Time the writer was held by a write, a commit or maintenance (a checkpoint that
    /// restarts the WAL), in nanoseconds.
    pub busy_ns: u64,
}

#[derive(Default)]
struct Stats {
    writes: AtomicU64,
    commits: AtomicU64,
    busy_ns: AtomicU64,
}

impl Stats {
    fn held(&self, since: Instant) {
        let ns = u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.busy_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

impl GroupWriter {
    pub(super) fn new(conn: Connection, room_changes: Arc<RoomChanges>) -> GroupWriter {
        let effects = Collector::new(room_changes);
        effects.install(&conn);
        GroupWriter {
            writer: Mutex::new(Writer {
                conn,
                open: None,
                len: 0,
                last_batch: 0,
            }),
            queued: AtomicUsize::new(0),
            commits: Mutex::new(Commits::default()),
            committed: Condvar::new(),
            effects,
            stats: Stats::default(),
        }
    }

    /// Run `f` as one atomic write; returns once it is committed (or failed), with what
    /// it left to do after its commit.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<(T, Effects), Error> {
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut w = self.writer.lock();
        let held_since = Instant::now();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let batch = match w.open {
            Some(b) => b,
            None => {
                if let Err(e) = w.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([]) {
                    return Err(e.into());
                }
                w.last_batch += 1;
                w.open = Some(w.last_batch);
                w.len = 0;
                w.last_batch
            }
        };
        let out = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_in_savepoint(&w.conn, &self.effects, f)
        })) {
            Ok(out) => out,
            Err(panic) => {
                // A bug, not bad input: undo the whole batch (its other writes fail with
                // it, none is half-applied) and let the panic go on.
                let _ = w.conn.execute_batch("ROLLBACK");
                w.open = None;
                self.stats.held(held_since);
                drop(w);
                self.finish(batch, Some("a write panicked".into()));
                std::panic::resume_unwind(panic);
            }
        };
        w.len += 1;
        if w.conn.is_autocommit() {
            // SQLite rolled the whole transaction back on its own (disk full, I/O error):
            // the batch is lost, and every write in it must hear so, this one included.
            w.open = None;
            self.stats.held(held_since);
            drop(w);
            let why = match &out {
                Err(e) => e.to_string(),
                Ok(_) => "the transaction was rolled back".to_owned(),
            };
            self.finish(batch, Some(why.clone()));
            return match out {
                Err(e) => Err(e),
                Ok(_) => Err(Error::internal(format!("write lost: {why}"))),
            };
        }
        if self.queued.load(Ordering::SeqCst) > 0 && w.len < MAX_BATCH {
            // Someone is about to take the writer: they (or a later one) commit for us.
            self.stats.held(held_since);
            drop(w);
            self.wait_for(batch)?;
            return out;
        }
        let result = self.commit(&mut w);
        self.stats.held(held_since);
        drop(w);
        self.finish(batch, result.as_ref().err().map(|e| e.to_string()));
        result?;
        out
    }

    /// What the writer has done so far.
    pub(super) fn stats(&self) -> WriterStats {
        WriterStats {
            writes: self.stats.writes.load(Ordering::Relaxed),
            commits: self.stats.commits.load(Ordering::Relaxed),
            busy_ns: self.stats.busy_ns.load(Ordering::Relaxed),
        }
    }

    /// Whether nobody holds or waits for the writer right now (a hint: it may change at
    /// once).
    pub(super) fn is_idle(&self) -> bool {
        self.queued.load(Ordering::SeqCst) == 0 && !self.writer.is_locked()
    }

    /// Run `f` on the connection outside any batch (checkpoints, maintenance): a batch
    /// left open for a writer about to take over is committed first.
    pub(super) fn with_idle_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let mut w = self.writer.lock();
        let held_since = Instant::now();
        if let Some(batch) = w.open {
            let result = self.commit(&mut w);
            self.finish(batch, result.err().map(|e| e.to_string()));
        }
        let out = f(&w.conn);
        self.stats.held(held_since);
        out
    }

    /// [`commit`], counted.
    fn commit(&self, w: &mut Writer) -> Result<(), rusqlite::Error> {
        let result = commit(w);
        if result.is_ok() {
            self.stats.commits.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    fn finish(&self, batch: u64, error: Option<String>) {
        let mut c = self.commits.lock();
        c.done_up_to = c.done_up_to.max(batch);
        if let Some(e) = error {
            c.failed.insert(batch, e);
            let oldest = batch.saturating_sub(FAILURES_KEPT_FOR);
            c.failed = c.failed.split_off(&oldest);
        }
        drop(c);
        self.committed.notify_all();
    }

    fn wait_for(&self, batch: u64) -> Result<(), Error> {
        let mut c = self.commits.lock();
        while c.done_up_to < batch {
            self.committed.wait(&mut c);
        }
        match c.failed.get(&batch) {
            Some(e) => Err(Error::internal(format!("commit failed: {e}"))),
            None => Ok(()),
        }
    }
}

/// Commit the open batch (rolling back if the commit fails, so no transaction is left
/// half open) and mark it closed.
fn commit(w: &mut Writer) -> Result<(), rusqlite::Error> {
    let result = w
        .conn
        .prepare_cached("COMMIT")
        .and_then(|mut st| st.execute([]))
        .map(|_| ());
    if result.is_err() && !w.conn.is_autocommit() {
        let _ = w.conn.execute_batch("ROLLBACK");
    }
    w.open = None;
    result
}

/// Run one write in its own savepoint: kept if it succeeds, undone alone if it fails.
/// Its effects are taken inside the savepoint, so reading them can fail the write too.
fn run_in_savepoint<T>(
    conn: &Connection,
    effects: &Collector,
    f: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<(T, Effects), Error> {
    conn.prepare_cached("SAVEPOINT write")?.execute([])?;
    effects.clear();
    let out = f(conn).and_then(|v| Ok((v, effects.take(conn)?)));
    match out {
        Ok(v) => {
            conn.prepare_cached("RELEASE write")?.execute([])?;
            Ok(v)
        }
        Err(e) => {
            // Unless SQLite already rolled everything back (the caller checks).
            if !conn.is_autocommit() {
                conn.prepare_cached("ROLLBACK TO write")?.execute([])?;
                conn.prepare_cached("RELEASE write")?.execute([])?;
            }
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn writer(dir: &tempfile::TempDir) -> Arc<GroupWriter> {
        let conn = Connection::open(dir.path().join("t.db")).expect("open");
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             CREATE TABLE t (writer INTEGER NOT NULL, n INTEGER NOT NULL);
             CREATE TABLE federation_outbox (id INTEGER PRIMARY KEY, destination TEXT);
             CREATE TABLE stream_sequence (pos INTEGER NOT NULL);
             INSERT INTO stream_sequence (pos) VALUES (0);",
        )
        .expect("schema");
        Arc::new(GroupWriter::new(conn, Arc::new(RoomChanges::new(0))))
    }

    /// Many threads writing at once: every successful write is kept, every failed one
    /// is undone alone, and each caller returns only after its write committed.
    #[test]
    fn concurrent_writes_commit_together_and_fail_alone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let reader = Connection::open(dir.path().join("t.db")).expect("reader");
        let threads: Vec<_> = (0..8i64)
            .map(|t| {
                let w = w.clone();
                let path = dir.path().join("t.db");
                std::thread::spawn(move || {
                    let check = Connection::open(path).expect("check");
                    for n in 0..200i64 {
                        let r = w.write(|c| {
                            c.execute("INSERT INTO t VALUES (?1, ?2)", [t, n])?;
                            if n % 10 == 7 {
                                return Err(Error::Forbidden("no sevens".into()));
                            }
                            Ok(())
                        });
                        assert_eq!(r.is_ok(), n % 10 != 7);
                        // Committed before the call returned: visible to another connection.
                        let seen: i64 = check
                            .query_row(
                                "SELECT COUNT(*) FROM t WHERE writer = ?1 AND n = ?2",
                                [t, n],
                                |r| r.get(0),
                            )
                            .expect("count");
                        assert_eq!(seen, i64::from(n % 10 != 7));
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("writer thread");
        }
        let total: i64 = reader
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(total, 8 * 180);
    }

    /// A write that finishes while another is queued leaves the commit to it: two
    /// writes, one transaction, and both callers see their write committed.
    #[test]
    fn a_queued_write_joins_the_open_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let first = {
            let w = w.clone();
            std::thread::spawn(move || {
                let inner = w.clone();
                w.write(|c| {
                    c.execute("INSERT INTO t VALUES (1, 1)", [])?;
                    started_tx.send(()).expect("signal");
                    // Hold the writer until the second write is queued behind it.
                    while inner.queued.load(Ordering::SeqCst) == 0 {
                        std::thread::yield_now();
                    }
                    Ok(())
                })
            })
        };
        started_rx.recv().expect("first write started");
        w.write(|c| {
            c.execute("INSERT INTO t VALUES (2, 2)", [])?;
            Ok(())
        })
        .expect("second write");
        first.join().expect("first thread").expect("first write");
        assert_eq!(w.writer.lock().last_batch, 1, "one transaction for both");
        let stats = w.stats();
        assert_eq!((stats.writes, stats.commits), (2, 1), "{stats:?}");
        assert!(stats.busy_ns > 0, "{stats:?}");
        let total: i64 = w.with_idle_connection(|c| {
            c.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
                .expect("count")
        });
        assert_eq!(total, 2);
    }

    /// Two writes in one transaction each get their own effects, only once the batch
    /// holding them has committed; a failed write's effects are dropped and do not leak
    /// into the next write.
    #[test]
    fn each_write_in_a_batch_gets_its_own_effects_after_the_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let path = dir.path().join("t.db");
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let first = {
            let w = w.clone();
            let path = path.clone();
            std::thread::spawn(move || {
                let inner = w.clone();
                let (_, effects) = w
                    .write(|c| {
                        c.execute(
                            "INSERT INTO federation_outbox (destination) VALUES ('d')",
                            [],
                        )?;
                        c.execute("UPDATE stream_sequence SET pos = pos + 1", [])?;
                        started_tx.send(()).expect("signal");
                        while inner.queued.load(Ordering::SeqCst) == 0 {
                            std::thread::yield_now();
                        }
                        Ok(())
                    })
                    .expect("first write");
                // Handed back after the commit: another connection sees the row.
                let other = Connection::open(path).expect("other");
                let seen: i64 = other
                    .query_row("SELECT COUNT(*) FROM federation_outbox", [], |r| r.get(0))
                    .expect("count");
                (effects, seen)
            })
        };
        started_rx.recv().expect("first write started");
        let (_, second) = w
            .write(|c| {
                c.execute("INSERT INTO t VALUES (2, 2)", [])?;
                Ok(())
            })
            .expect("second write");
        let (first, seen) = first.join().expect("first thread");
        assert_eq!(w.writer.lock().last_batch, 1, "one transaction for both");
        let stats = w.stats();
        assert_eq!((stats.writes, stats.commits), (2, 1), "{stats:?}");
        assert!(stats.busy_ns > 0, "{stats:?}");
        assert!(first.federation_queued() && !first.pushes_queued());
        assert_eq!(first.stream_pos, Some(1));
        assert_eq!(seen, 1, "effects handed back before the commit");
        assert!(
            second.is_empty(),
            "the second write took the first's effects"
        );

        let failed = w.write(|c| -> Result<(), Error> {
            c.execute(
                "INSERT INTO federation_outbox (destination) VALUES ('d')",
                [],
            )?;
            Err(Error::Forbidden("no".into()))
        });
        assert!(failed.is_err());
        let (_, after) = w.write(|_| Ok(())).expect("empty write");
        assert!(
            after.is_empty(),
            "a failed write's effects leaked: {after:?}"
        );
    }

    /// When the transaction ends under a write (here an explicit ROLLBACK stands in for
    /// SQLite abandoning it on a full disk), that write fails, nothing of it is kept, and
    /// the next write starts a fresh transaction.
    #[test]
    fn a_transaction_lost_mid_batch_fails_its_writes_and_the_writer_recovers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let lost = w.write(|c| {
            c.execute("INSERT INTO t VALUES (1, 1)", [])?;
            c.execute_batch("ROLLBACK")?;
            Ok(())
        });
        assert!(
            lost.is_err(),
            "a write whose transaction vanished reports an error"
        );
        w.write(|c| {
            c.execute("INSERT INTO t VALUES (2, 2)", [])?;
            Ok(())
        })
        .expect("next write");
        let total: i64 = w.with_idle_connection(|c| {
            c.query_row("SELECT COUNT(*) FROM t WHERE writer = 1", [], |r| r.get(0))
                .expect("count")
        });
        assert_eq!(total, 0);
        assert!(
            w.writer.lock().conn.is_autocommit(),
            "no transaction left open"
        );
    }

    #[test]
    fn a_panicking_write_is_undone_and_the_writer_stays_usable() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let caught = std::panic::catch_unwind(AssertUnwindSafe(|| {
            let _ = w.write(|c| -> Result<(), Error> {
                c.execute("INSERT INTO t VALUES (1, 1)", [])?;
                panic!("bug");
            });
        }));
        assert!(caught.is_err());
        w.write(|c| {
            c.execute("INSERT INTO t VALUES (2, 2)", [])?;
            Ok(())
        })
        .expect("write after panic");
        let rows: Vec<i64> = w.with_idle_connection(|c| {
            let mut st = c.prepare("SELECT writer FROM t").expect("prepare");
            st.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        });
        assert_eq!(rows, [2]);
    }
}
