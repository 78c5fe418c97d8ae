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
//!
//! A write may also be queued instead of waited for ([`GroupWriter::submit`], for async
//! callers): whoever holds the writer runs the queued writes in its own transaction
//! before it lets go (flat combining), so a queued write costs no thread the writer has
//! to be handed to and no thread blocked while it waits; its caller hears the outcome
//! through a channel once the batch holding it has ended. Whoever releases the writer
//! looks at the queue afterwards, and so does whoever queues a write, so a queued write
//! is never left behind.

use std::collections::{BTreeMap, VecDeque};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};
use rusqlite::Connection;
use tokio::sync::oneshot;

use super::changes::RoomChanges;
use super::effects::{Collector, Effects};
use crate::error::Error;

/// Most writes in one transaction: bounds how long the first of them waits.
const MAX_BATCH: u32 = 16;

/// Most batches a thread that queued a write runs before it leaves the rest to the
/// helper thread (see [`GroupWriter::submit`]).
const SUBMITTER_BATCHES: usize = 2;

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
    /// What to tell the queued writes run in the open transaction once it ends.
    done: Vec<Done>,
}

/// A queued write ([`GroupWriter::submit`]): run on the writer connection in the open
/// transaction, it hands back what to tell its caller once that transaction has ended.
type Job = Box<dyn FnOnce(&Connection, &Collector) -> Done + Send>;

/// Tells a queued write's caller how its batch ended: committed (`None`) or lost (why).
type Done = Box<dyn FnOnce(Option<&str>) + Send>;

/// The outcome of a queued write, as its caller receives it.
pub(crate) type Queued<T> = oneshot::Receiver<Result<(T, Effects), Error>>;

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
    /// Writes queued for whoever holds the writer to run ([`GroupWriter::submit`]).
    jobs: Mutex<VecDeque<Job>>,
    /// How many are in `jobs` (read without its lock).
    jobs_queued: AtomicUsize,
    /// Wakes the thread that runs queued writes a [`GroupWriter::write`] left behind
    /// (started with the first queued write).
    helper: OnceLock<SyncSender<()>>,
    /// This writer, for the helper thread (which must not keep it alive).
    me: Weak<GroupWriter>,
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
    pub(super) fn new(conn: Connection, room_changes: Arc<RoomChanges>) -> Arc<GroupWriter> {
        let effects = Collector::new(room_changes);
        effects.install(&conn);
        Arc::new_cyclic(|me| GroupWriter {
            writer: Mutex::new(Writer {
                conn,
                open: None,
                len: 0,
                last_batch: 0,
                done: Vec::new(),
            }),
            queued: AtomicUsize::new(0),
            jobs: Mutex::new(VecDeque::new()),
            jobs_queued: AtomicUsize::new(0),
            helper: OnceLock::new(),
            me: me.clone(),
            commits: Mutex::new(Commits::default()),
            committed: Condvar::new(),
            effects,
            stats: Stats::default(),
        })
    }

    /// Run `f` as one atomic write; returns once it is committed (or failed), with what
    /// it left to do after its commit.
    pub(super) fn write<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<(T, Effects), Error> {
        // Whatever happens below (a panic too), queued writes are not left behind.
        let _after = LookAtQueue(self);
        self.queued.fetch_add(1, Ordering::SeqCst);
        let mut w = self.writer.lock();
        let held_since = Instant::now();
        self.queued.fetch_sub(1, Ordering::SeqCst);
        self.stats.writes.fetch_add(1, Ordering::Relaxed);
        let batch = self.open_batch(&mut w)?;
        let out = match std::panic::catch_unwind(AssertUnwindSafe(|| {
            run_in_savepoint(&w.conn, &self.effects, f)
        })) {
            Ok(out) => out,
            Err(panic) => {
                // A bug, not bad input: undo the whole batch (its other writes fail with
                // it, none is half-applied) and let the panic go on.
                let _ = w.conn.execute_batch("ROLLBACK");
                self.lose(w, batch, held_since, "a write panicked".into());
                std::panic::resume_unwind(panic);
            }
        };
        w.len += 1;
        if w.conn.is_autocommit() {
            // SQLite rolled the whole transaction back on its own (disk full, I/O error):
            // the batch is lost, and every write in it must hear so, this one included.
            let why = match &out {
                Err(e) => e.to_string(),
                Ok(_) => "the transaction was rolled back".to_owned(),
            };
            self.lose(w, batch, held_since, why.clone());
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
        self.commit_and_release(w, batch, held_since)?;
        out
    }

    /// Queue `f` to be run as one atomic write by whoever holds the writer (this thread,
    /// at once, if nobody does); the receiver gets its outcome once the batch holding it
    /// has committed or failed (and an error if it was dropped unrun: its write
    /// panicked, or the writer could not start a transaction).
    pub(super) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Queued<T> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |conn, effects| {
            let out = run_in_savepoint(conn, effects, f);
            Box::new(move |lost: Option<&str>| {
                let out = match (out, lost) {
                    (Err(e), _) => Err(e),
                    (Ok(_), Some(why)) => Err(Error::internal(format!("write lost: {why}"))),
                    (Ok(v), None) => Ok(v),
                };
                // A caller that stopped waiting (a dropped request) needs no answer.
                let _ = tx.send(out);
            })
        });
        {
            let mut jobs = self.jobs.lock();
            jobs.push_back(job);
            self.jobs_queued.store(jobs.len(), Ordering::SeqCst);
        }
        // This thread runs at most two batches (its own write is in the first it runs,
        // or already done by another): its caller is waiting on it, and on a worker
        // thread so are that thread's other tasks. The helper runs what is left.
        if self.run_left_behind(Some(SUBMITTER_BATCHES)) {
            self.wake_helper();
        }
        rx
    }

    /// Wake the helper thread (starting it the first time) to run the queued writes.
    fn wake_helper(&self) {
        let wake = self.helper.get_or_init(|| {
            // One wake-up pending is enough: the helper runs everything queued.
            let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
            let me = self.me.clone();
            let started = std::thread::Builder::new()
                .name("warren-writer".into())
                .spawn(move || {
                    while rx.recv().is_ok() {
                        let Some(writer) = me.upgrade() else {
                            return;
                        };
                        writer.run_left_behind(None);
                    }
                });
            if let Err(e) = started {
                tracing::error!(error = %e, "could not start the writer's helper thread");
            }
            tx
        });
        // Full: a wake-up is already pending. Disconnected: the thread could not start,
        // and the next queued write runs what is left.
        let _ = wake.try_send(());
    }

    /// Run the queued writes, in batches of at most [`MAX_BATCH`], while nobody else holds
    /// the writer (whoever does looks at the queue again once it lets go): called after
    /// queuing a write and by the helper thread, which is woken whenever the writer is
    /// let go with writes queued, so none is left waiting with the writer free. Stops
    /// after `batches` batches if given; returns whether it stopped so with writes still
    /// queued.
    fn run_left_behind(&self, mut batches: Option<usize>) -> bool {
        loop {
            // Pairs with the fence in `LookAtQueue` and the queue's lock in `submit`: a
            // write queued while the writer was held is seen once it is let go.
            std::sync::atomic::fence(Ordering::SeqCst);
            if self.jobs_queued.load(Ordering::SeqCst) == 0 {
                return false;
            }
            if batches == Some(0) {
                return true;
            }
            let Some(mut w) = self.writer.try_lock() else {
                return false;
            };
            batches = batches.map(|b| b - 1);
            let held_since = Instant::now();
            let batch = match self.open_batch(&mut w) {
                Ok(batch) => batch,
                Err(e) => {
                    // Dropped unrun, their callers hear of it; ones queued since are
                    // tried again (the loop looks at the queue once more).
                    tracing::error!(error = %e, "could not start a write transaction");
                    let dropped = {
                        let mut jobs = self.jobs.lock();
                        self.jobs_queued.store(0, Ordering::SeqCst);
                        std::mem::take(&mut *jobs)
                    };
                    self.stats.held(held_since);
                    drop(w);
                    drop(dropped);
                    continue;
                }
            };
            if let Some(why) = self.run_queued(&mut w) {
                self.lose(w, batch, held_since, why);
                continue;
            }
            if self.queued.load(Ordering::SeqCst) > 0 && w.len < MAX_BATCH {
                // A thread is about to take the writer: it commits for these.
                self.stats.held(held_since);
                return false;
            }
            // Its outcome goes to the writes' callers.
            let _ = self.commit_and_release(w, batch, held_since);
        }
    }

    /// Run queued writes in the open transaction while it has room. Returns why the
    /// transaction was lost, if it was (it is then closed).
    fn run_queued(&self, w: &mut Writer) -> Option<String> {
        while w.len < MAX_BATCH {
            // None queued: the transaction is whole.
            let job = self.next_job()?;
            self.stats.writes.fetch_add(1, Ordering::Relaxed);
            match std::panic::catch_unwind(AssertUnwindSafe(|| job(&w.conn, &self.effects))) {
                Ok(done) => w.done.push(done),
                Err(_) => {
                    // A bug in that write (reported by the panic hook): its caller hears
                    // that its write was lost (its channel is dropped), and so do the
                    // others of the batch, undone with it. This thread goes on.
                    let _ = w.conn.execute_batch("ROLLBACK");
                    w.open = None;
                    return Some("a write panicked".into());
                }
            }
            w.len += 1;
            if w.conn.is_autocommit() {
                w.open = None;
                return Some("the transaction was rolled back".into());
            }
        }
        None
    }

    fn next_job(&self) -> Option<Job> {
        let mut jobs = self.jobs.lock();
        let job = jobs.pop_front();
        self.jobs_queued.store(jobs.len(), Ordering::SeqCst);
        job
    }

    /// The open transaction's batch, beginning one if none is open.
    fn open_batch(&self, w: &mut Writer) -> Result<u64, Error> {
        if let Some(b) = w.open {
            return Ok(b);
        }
        w.conn.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        w.last_batch += 1;
        w.open = Some(w.last_batch);
        w.len = 0;
        Ok(w.last_batch)
    }

    /// Commit the open batch, release the writer and tell every write in the batch how
    /// it ended.
    fn commit_and_release(
        &self,
        mut w: parking_lot::MutexGuard<'_, Writer>,
        batch: u64,
        held_since: Instant,
    ) -> Result<(), rusqlite::Error> {
        let result = self.commit(&mut w);
        let done = std::mem::take(&mut w.done);
        self.stats.held(held_since);
        drop(w);
        self.finish(batch, result.as_ref().err().map(|e| e.to_string()), done);
        result
    }

    /// The open batch was lost (rolled back): release the writer and fail every write
    /// in it.
    fn lose(
        &self,
        mut w: parking_lot::MutexGuard<'_, Writer>,
        batch: u64,
        held_since: Instant,
        why: String,
    ) {
        w.open = None;
        let done = std::mem::take(&mut w.done);
        self.stats.held(held_since);
        drop(w);
        self.finish(batch, Some(why), done);
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
        self.queued.load(Ordering::SeqCst) == 0
            && self.jobs_queued.load(Ordering::SeqCst) == 0
            && !self.writer.is_locked()
    }

    /// Run `f` on the connection outside any batch (checkpoints, maintenance): a batch
    /// left open for a writer about to take over is committed first.
    pub(super) fn with_idle_connection<T>(&self, f: impl FnOnce(&Connection) -> T) -> T {
        let _after = LookAtQueue(self);
        let mut w = self.writer.lock();
        let held_since = Instant::now();
        if let Some(batch) = w.open {
            let result = self.commit(&mut w);
            let done = std::mem::take(&mut w.done);
            self.finish(batch, result.err().map(|e| e.to_string()), done);
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

    /// Batch `batch` has ended (committed, or failed with `error`): wake the threads
    /// whose writes were in it and tell the queued ones (`done`).
    fn finish(&self, batch: u64, error: Option<String>, done: Vec<Done>) {
        let mut c = self.commits.lock();
        c.done_up_to = c.done_up_to.max(batch);
        if let Some(e) = &error {
            c.failed.insert(batch, e.clone());
            let oldest = batch.saturating_sub(FAILURES_KEPT_FOR);
            c.failed = c.failed.split_off(&oldest);
        }
        drop(c);
        self.committed.notify_all();
        for tell in done {
            tell(error.as_deref());
        }
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

/// Has the writes left queued when a [`GroupWriter::write`] lets the writer go run by the
/// helper thread, on every way out of the scope that held it: not on that thread, whose
/// caller may hold locks a queued write takes.
struct LookAtQueue<'a>(&'a GroupWriter);

impl Drop for LookAtQueue<'_> {
    fn drop(&mut self) {
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.0.jobs_queued.load(Ordering::SeqCst) > 0 {
            self.0.wake_helper();
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
        GroupWriter::new(conn, Arc::new(RoomChanges::new(0)))
    }

    /// The integers `sql` selects, read on the writer's connection between batches.
    fn column(w: &GroupWriter, sql: &str) -> Vec<i64> {
        w.with_idle_connection(|c| {
            let mut st = c.prepare(sql).expect("prepare");
            st.query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        })
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

    /// Writes queued while the writer is held are run by the holder in its own
    /// transaction: one commit for all of them, and each caller hears its own outcome
    /// (a failed one fails alone) only after that commit.
    #[test]
    fn queued_writes_join_the_holders_transaction() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        let holder = {
            let w = w.clone();
            std::thread::spawn(move || {
                let inner = w.clone();
                // Queued with the writer free: run here and now, by this thread.
                w.submit(move |c| {
                    c.execute("INSERT INTO t VALUES (0, 0)", [])?;
                    started_tx.send(()).expect("signal");
                    while inner.jobs_queued.load(Ordering::SeqCst) < 3 {
                        std::thread::yield_now();
                    }
                    Ok(0)
                })
            })
        };
        started_rx.recv().expect("the first write holds the writer");
        let queued: Vec<_> = (1..=3i64)
            .map(|n| {
                w.submit(move |c| {
                    c.execute("INSERT INTO t VALUES (?1, ?1)", [n])?;
                    if n == 2 {
                        return Err(Error::Forbidden("no twos".into()));
                    }
                    c.execute("UPDATE stream_sequence SET pos = pos + 1", [])?;
                    Ok(n)
                })
            })
            .collect();
        let first = holder
            .join()
            .expect("holder")
            .blocking_recv()
            .expect("answer");
        assert_eq!(first.expect("first write").0, 0);
        let outcomes: Vec<_> = queued
            .into_iter()
            .map(|rx| rx.blocking_recv().expect("answer"))
            .collect();
        assert_eq!(outcomes[0].as_ref().expect("1").0, 1);
        assert!(matches!(outcomes[1], Err(Error::Forbidden(_))));
        let (three, effects) = outcomes[2].as_ref().expect("3");
        assert_eq!((*three, effects.stream_pos), (3, Some(2)), "own effects");
        let stats = w.stats();
        assert_eq!((stats.writes, stats.commits), (4, 1), "{stats:?}");
        let rows = column(&w, "SELECT n FROM t ORDER BY n");
        assert_eq!(rows, [0, 1, 3]);
    }

    /// Writes queued while a blocking write holds the writer are not left waiting once
    /// it lets go (the helper thread runs them), and a queued write that panics loses
    /// only its own batch: the writer goes on.
    #[test]
    fn queued_writes_behind_a_blocking_write_run_and_a_panic_is_contained() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        let queued = w.write(|c| {
            c.execute("INSERT INTO t VALUES (1, 1)", [])?;
            Ok(w.submit(|c| {
                c.execute("INSERT INTO t VALUES (2, 2)", [])?;
                Ok(())
            }))
        });
        let (queued, _) = queued.expect("blocking write");
        queued
            .blocking_recv()
            .expect("answer")
            .expect("queued write");
        let panicked = w.submit(|_| -> Result<(), Error> { panic!("bug") });
        assert!(panicked.blocking_recv().is_err(), "dropped unrun");
        w.submit(|c| {
            c.execute("INSERT INTO t VALUES (3, 3)", [])?;
            Ok(())
        })
        .blocking_recv()
        .expect("answer")
        .expect("write after the panic");
        let rows = column(&w, "SELECT n FROM t ORDER BY n");
        assert_eq!(rows, [1, 2, 3]);
        assert!(w.is_idle());
    }

    /// More writes queued than one transaction takes: run in transactions of at most
    /// [`MAX_BATCH`], every one answered.
    #[test]
    fn a_long_queue_is_run_in_bounded_transactions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        const QUEUED: i64 = 40;
        let (queued, _) = w
            .write(|_| {
                Ok((0..QUEUED)
                    .map(|n| {
                        w.submit(move |c| {
                            c.execute("INSERT INTO t VALUES (?1, ?1)", [n])?;
                            Ok(())
                        })
                    })
                    .collect::<Vec<_>>())
            })
            .expect("blocking write");
        for answer in queued {
            answer
                .blocking_recv()
                .expect("answer")
                .expect("queued write");
        }
        let stats = w.stats();
        let fewest = 1 + (QUEUED as u64).div_ceil(u64::from(MAX_BATCH));
        assert_eq!(stats.writes, 1 + QUEUED as u64, "{stats:?}");
        assert!(
            stats.commits >= fewest,
            "a transaction took more than MAX_BATCH: {stats:?}"
        );
        assert_eq!(column(&w, "SELECT COUNT(*) FROM t"), [QUEUED]);
    }

    /// A queued write that cannot start a transaction (another connection holds the
    /// database's write lock) is dropped unrun, its caller told so, and the writer takes
    /// the next one once the lock is free.
    #[test]
    fn a_queued_write_that_cannot_begin_is_answered_and_the_next_runs() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = writer(&dir);
        w.with_idle_connection(|c| c.busy_timeout(std::time::Duration::ZERO))
            .expect("no busy wait");
        let other = Connection::open(dir.path().join("t.db")).expect("other");
        other.execute_batch("BEGIN IMMEDIATE").expect("lock");
        let refused = w.submit(|c| {
            c.execute("INSERT INTO t VALUES (1, 1)", [])?;
            Ok(())
        });
        assert!(refused.blocking_recv().is_err(), "dropped unrun");
        assert!(w.is_idle(), "nothing left queued");
        other.execute_batch("COMMIT").expect("unlock");
        w.submit(|c| {
            c.execute("INSERT INTO t VALUES (2, 2)", [])?;
            Ok(())
        })
        .blocking_recv()
        .expect("answer")
        .expect("write once the lock is free");
        let rows = column(&w, "SELECT n FROM t");
        assert_eq!(rows, [2]);
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
        let rows = column(&w, "SELECT writer FROM t");
        assert_eq!(rows, [2]);
    }
}
