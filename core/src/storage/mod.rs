//! SQLite storage: one writer connection, a small pool of readers, versioned migrations.
//!
//! All SQL lives under this module. The writer is one connection that runs one write at
//! a time, so writes (and the stream positions assigned inside them) commit strictly in
//! order, and a reader never sees a position whose row is still being written. Writes
//! that queue up behind each other share one transaction ([`group_commit`]); WAL
//! checkpoints run on a thread of their own ([`checkpoint`]). Nothing holds a connection
//! across an `.await`.

mod account_data;
mod appservice;
mod backfill;
pub mod changes;
mod checkpoint;
mod cross_signing;
mod delayed_events;
mod device_keys;
mod directory;
pub mod effects;
mod events;
mod federation;
mod group_commit;
pub(crate) use group_commit::Queued;
pub use group_commit::WriterStats;
mod mailbox;
mod media;
mod migrations;
mod openid;
mod outbox;
mod peers;
mod presence;
mod push;
mod receipts;
mod relations;
mod remote_devices;
mod reports;
mod room_keys;
mod rooms;
mod search;
mod state;
mod to_device;
mod token_cache;
pub use token_cache::MAX_TOKENS;
mod users;

pub use account_data::*;
pub use appservice::*;
pub use backfill::*;
pub use cross_signing::*;
pub use delayed_events::*;
pub use device_keys::*;
pub use directory::*;
pub use events::*;
pub use federation::*;
pub use mailbox::*;
pub use media::*;
pub use openid::*;
pub use outbox::*;
pub use peers::*;
pub use presence::*;
pub use push::*;
pub use receipts::*;
pub use relations::*;
pub use remote_devices::*;
pub use reports::*;
pub use room_keys::*;
pub use rooms::*;
pub use search::*;
pub use state::*;
pub use to_device::*;
pub use users::*;

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use parking_lot::Mutex;
use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, StartError};
use crate::streams::StreamPosition;

pub use migrations::SCHEMA_VERSION;

/// Number of read connections. Two cores: more readers would only contend.
const READERS: usize = 3;

/// The database handle. Cheap to share behind an `Arc`.
pub struct Db {
    writer: std::sync::Arc<group_commit::GroupWriter>,
    readers: Vec<Mutex<Connection>>,
    next_reader: AtomicUsize,
    checkpoints: Option<checkpoint::Checkpointer>,
    /// Counts write transactions that have finished (committed or not): see
    /// [`Db::write_generation`].
    writes: AtomicU64,
    /// Runs each write's effects after its commit (see [`effects`]).
    after_commit: std::sync::OnceLock<effects::AfterCommit>,
    /// Which rooms changed after a stream position (see [`changes`]).
    room_changes: std::sync::Arc<changes::RoomChanges>,
    /// The owners of access tokens looked up lately (see [`token_cache`]).
    tokens: token_cache::TokenCache,
    /// The database file, as SQLite names it ([`file_of`]).
    file: Option<String>,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Db")
    }
}

/// Prepared statements kept per connection. A send alone runs a few dozen distinct
/// statements; with rusqlite's default of 16 the cache thrashed and SQLite re-parsed
/// them on every request.
const STATEMENT_CACHE: usize = 256;

/// How long a connection waits for a lock before failing with "database is locked".
const BUSY_TIMEOUT_MS: i64 = 5000;

/// Size the WAL file is cut back to whenever the WAL starts over under load (see
/// [`checkpoint`]; an idle node's WAL is emptied). As large as the WAL the writer starts
/// over at (`checkpoint::RESTART_ABOVE`): cut back to 4 MiB, the file was shortened at
/// every restart and grown again by the next few thousand commits, and growing it (new
/// page-cache pages and blocks for every frame) took a third of a send's time.
pub const WAL_SIZE_LIMIT: i64 = checkpoint::RESTART_ABOVE;

/// Page cache of the writer, in KiB (SQLite's default).
const WRITER_CACHE_KIB: i64 = 2048;
/// Page cache of each reader, in KiB: the readers' working set is the recent end of a
/// few tables, and the OS page cache backs them.
const READER_CACHE_KIB: i64 = 1024;

/// The compile option that turns off SQLite's memory statistics, which take a
/// process-wide mutex around every allocation; [`SHARED_PAGE_CACHE`] takes another
/// around every page fetched (one page cache shared by every connection). The
/// workspace builds SQLite without both (`.cargo/config.toml`); with them, the writer
/// slept on these mutexes, held by a reader on the other core, for about half of the
/// time it held the database. Each connection's
/// page cache is bounded by its own `cache_size` either way, so no memory bound rests on
/// them (SQLite's soft heap limit needs memory statistics and is not used).
const WITHOUT_GLOBAL_MUTEXES: &str = "DEFAULT_MEMSTATUS=0";
/// See [`WITHOUT_GLOBAL_MUTEXES`].
const SHARED_PAGE_CACHE: &str = "ENABLE_MEMORY_MANAGEMENT";

/// Which process-wide mutexes (see [`WITHOUT_GLOBAL_MUTEXES`]) the linked SQLite takes.
fn global_mutexes(conn: &Connection) -> rusqlite::Result<Vec<&'static str>> {
    let mut st = conn.prepare("PRAGMA compile_options")?;
    let options = st
        .query_map([], |r| r.get::<_, String>(0))?
        .collect::<rusqlite::Result<Vec<String>>>()?;
    let mut found = Vec::new();
    if !options.iter().any(|o| o == WITHOUT_GLOBAL_MUTEXES) {
        found.push("memory statistics");
    }
    if options.iter().any(|o| o == SHARED_PAGE_CACHE) {
        found.push("shared page cache");
    }
    Ok(found)
}

/// The database file a connection reads, as SQLite names it: what process-wide caches
/// of what was read tell nodes apart by (two nodes of one process share rooms, not
/// state group ids). `None` for an in-memory database.
pub fn file_of(c: &Connection) -> Option<&str> {
    c.path().filter(|p| !p.is_empty())
}

/// Whether what `c` reads is committed (a reader's snapshot), so that it may be kept
/// under the state version it was read at. The writer's view holds its own uncommitted
/// rows, and a write rolled back hands its state group id and counts out again for a
/// different state; keys of committed states never repeat.
pub fn is_committed_snapshot(c: &Connection) -> bool {
    c.is_readonly(rusqlite::MAIN_DB).unwrap_or(false)
}

/// Ends a reader's transaction when dropped (see [`Db::read_tx`]). A read-only
/// transaction has nothing to commit; `COMMIT` ends it either way.
struct EndRead<'a>(&'a Connection);

impl Drop for EndRead<'_> {
    fn drop(&mut self) {
        let _ = self
            .0
            .prepare_cached("COMMIT")
            .and_then(|mut st| st.execute([]));
    }
}

/// A reader, out of any transaction a caller left open (one that began its own and
/// panicked before ending it), so that what it reads is current.
fn fresh(conn: &Connection) -> &Connection {
    if !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    conn
}

/// Keep each cached statement's query plan whatever values are bound to it. Without
/// this SQLite (3.4x and later) reads a bound `LIMIT ?` while planning, marks the
/// statement to be planned again whenever that parameter is bound, and so parsed and
/// planned every statement with a bound limit on every run: a fifth of an initial
/// `/sync`'s time. Plans here never need the bound values (there is no `ANALYZE` data,
/// and the partial indexes are chosen by literals).
fn stable_plans(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(())
}

fn configure(conn: &Connection) -> rusqlite::Result<()> {
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    stable_plans(conn)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
    conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.pragma_update(None, "busy_timeout", BUSY_TIMEOUT_MS)?;
    Ok(())
}

impl Db {
    /// Open (or create) the database file and bring its schema up to date.
    pub fn open(path: &Path) -> Result<Db, StartError> {
        let shown = path.display().to_string();
        let open_err =
            |e: rusqlite::Error| StartError::Other(format!("cannot open database {shown}: {e}"));
        let mut writer = Connection::open(path).map_err(open_err)?;
        configure(&writer).map_err(open_err)?;
        match global_mutexes(&writer) {
            Ok(found) if !found.is_empty() => tracing::warn!(
                mutexes = ?found,
                "SQLite built with process-wide mutexes; writes will be slower (build with the workspace's .cargo/config.toml)"
            ),
            Ok(_) => {}
            Err(e) => tracing::debug!(error = %e, "cannot read SQLite's compile options"),
        }
        migrations::run(&mut writer, &shown)?;
        // Each write runs in a savepoint of its own (group commit), so SQLite keeps the
        // original of every page the write changes in a sub-journal, which it spills to
        // a temporary file past 64 KiB: a send touches more pages than that, and created,
        // wrote and deleted a file in /var/tmp every time (a quarter of a send's time).
        // In memory, it holds at most the pages of the write running, which the page
        // cache and the WAL hold too. Set after the migrations, whose temporary tables
        // and sorts may be large.
        writer
            .pragma_update(None, "temp_store", "MEMORY")
            .map_err(open_err)?;
        // WAL checkpoints (which fsync) run on their own thread, not inside a commit that
        // every other writer is waiting for; SQLite's own checkpoint-on-commit stays the
        // fallback if that thread cannot start.
        let checkpoints = checkpoint::Checkpointer::start(path);
        if checkpoints.is_some() {
            writer
                .pragma_update(None, "wal_autocheckpoint", 0)
                .map_err(open_err)?;
        }
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let conn = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
            )
            .map_err(open_err)?;
            conn.pragma_update(None, "busy_timeout", 5000)
                .map_err(open_err)?;
            conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)
                .map_err(open_err)?;
            conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            stable_plans(&conn).map_err(open_err)?;
            readers.push(Mutex::new(conn));
        }
        let opened_at: StreamPosition = writer
            .query_row("SELECT pos FROM stream_sequence", [], |r| r.get(0))
            .map_err(open_err)?;
        let room_changes = std::sync::Arc::new(changes::RoomChanges::new(opened_at));
        let file = file_of(&writer).map(str::to_owned);
        Ok(Db {
            writer: group_commit::GroupWriter::new(writer, room_changes.clone()),
            room_changes,
            readers,
            next_reader: AtomicUsize::new(0),
            checkpoints,
            writes: AtomicU64::new(0),
            after_commit: std::sync::OnceLock::new(),
            tokens: token_cache::TokenCache::new(),
            file,
        })
    }

    /// Install what runs each write's [`effects::Effects`] once the write has committed
    /// (the node wakes its tasks and publishes stream positions). Set once; until then
    /// effects are dropped.
    pub fn set_after_commit(&self, f: effects::AfterCommit) {
        if self.after_commit.set(f).is_err() {
            tracing::warn!("the database's after-commit handler is already set");
        }
    }

    /// Run `f` as one atomic write: all of it is kept if it returns `Ok`, none of it
    /// otherwise. Returns once the write is committed (see [`group_commit`]), after
    /// running its effects (see [`effects`]).
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        self.write_counted(f, true)
    }

    /// [`Db::write`] for a write whose rows no `/sync` answer shows (the search index):
    /// it does not move [`Db::write_generation`], so the answers kept for repeated
    /// initial syncs stay valid across it.
    pub fn write_unseen_by_sync<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
    ) -> Result<T, Error> {
        self.write_counted(f, false)
    }

    /// Queue `f` as one atomic write for whoever holds the writer to run in its
    /// transaction, or run it here and now if nobody does (see
    /// [`group_commit::GroupWriter::submit`]); what it returns is to be handed to
    /// [`Db::after_write`] once received, as [`Db::write`] does. For async callers
    /// (`Server::write_async`), which wait without blocking a thread. The caller must
    /// hold no lock a queued write may take: this thread may run others' writes.
    pub(crate) fn submit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Queued<T> {
        self.writer.submit(f)
    }

    fn write_counted<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, Error>,
        counted: bool,
    ) -> Result<T, Error> {
        let out = self.writer.write(f);
        self.after_write(out, counted)
    }

    /// What follows every write once its batch has ended, on the caller's side (a
    /// write's count, its effects, a WAL restart asked for).
    pub(crate) fn after_write<T>(
        &self,
        out: Result<(T, effects::Effects), Error>,
        counted: bool,
    ) -> Result<T, Error> {
        // Counted after the commit, whatever the outcome: a reader that saw the same
        // generation before it opened its snapshot and after it is done knows no write
        // changed anything in between.
        if counted {
            self.writes.fetch_add(1, Ordering::SeqCst);
        }
        let (out, effects) = out?;
        // Before the caller hears of the commit: a logged-out token fails from now on.
        if effects.tokens_changed() {
            self.tokens.invalidate();
        }
        if !effects.is_empty()
            && let Some(run) = self.after_commit.get()
        {
            run(effects);
        }
        if let Some(c) = &self.checkpoints {
            c.committed();
            if c.take_restart_request() {
                // Waits for the writer and for readers: off an async worker's reactor.
                crate::blocking::off_the_reactor(|| {
                    self.writer.with_idle_connection(|conn| c.restart_on(conn))
                });
            }
        }
        Ok(out)
    }

    /// Which rooms changed after a stream position, as far as this process saw them
    /// written (every position before it opened counts as "any room").
    pub fn room_changes(&self) -> &changes::RoomChanges {
        &self.room_changes
    }

    /// How many write transactions have finished. Read it before opening a snapshot: a
    /// later reading that is still the same means nothing was written since (answers
    /// built from that snapshot are still current; see [`crate::sync::initial_cache`]).
    pub fn write_generation(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    /// What the single writer has done since the database was opened (writes, commits,
    /// time held).
    pub fn writer_stats(&self) -> WriterStats {
        self.writer.stats()
    }

    /// Whether the writer is free right now (a hint for callers deciding whether a
    /// write will have to wait).
    pub fn writer_is_idle(&self) -> bool {
        self.writer.is_idle()
    }

    /// Run `f` on a read connection (a consistent snapshot for its duration when it uses
    /// a transaction; single statements are consistent on their own).
    pub fn read<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        // Prefer a free reader; fall back to waiting on the round-robin choice.
        for r in &self.readers {
            if let Some(conn) = r.try_lock() {
                return f(fresh(&conn));
            }
        }
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % self.readers.len();
        let conn = self.readers[i].lock();
        f(fresh(&conn))
    }

    /// Run `f` inside a read transaction, so several queries see one snapshot.
    pub fn read_tx<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        self.read(|conn| {
            // Cached statements: every send and every `/sync` opens one of these.
            conn.prepare_cached("BEGIN DEFERRED")?.execute([])?;
            // Ended however `f` ends, a panic included: a reader left inside a
            // transaction would answer from its old snapshot for ever after.
            let _end = EndRead(conn);
            f(conn)
        })
    }

    /// Who owns an access token, if anyone: from the owners kept in memory while no
    /// write has changed tokens, devices or users since, else read (see
    /// [`token_cache`]).
    pub fn token_owner(&self, token: &str) -> Result<Option<TokenOwner>, Error> {
        self.tokens
            .owner(token, || self.read(|c| users::token_owner(c, token)))
    }

    /// The highest committed stream position.
    pub fn max_stream_position(&self) -> Result<StreamPosition, Error> {
        self.read(|c| Ok(c.query_row("SELECT pos FROM stream_sequence", [], |r| r.get(0))?))
    }

    /// The database file, as SQLite names it ([`file_of`]).
    pub fn file(&self) -> Option<&str> {
        self.file.as_deref()
    }

    /// Flush the WAL into the main file (on clean shutdown).
    pub fn checkpoint(&self) -> Result<(), Error> {
        self.writer
            .with_idle_connection(|conn| conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);"))?;
        Ok(())
    }

    /// Size of the database file plus WAL, in bytes.
    pub fn size_bytes(&self) -> Result<i64, Error> {
        self.read(|c| {
            let pages: i64 = c.query_row("PRAGMA page_count", [], |r| r.get(0))?;
            let size: i64 = c.query_row("PRAGMA page_size", [], |r| r.get(0))?;
            Ok(pages * size)
        })
    }
}

/// Bytes on disk per table and index (SQLite's `dbstat`), largest first: what the
/// database is made of, for measurements and reports.
pub fn table_sizes(c: &Connection) -> Result<Vec<(String, i64)>, Error> {
    let mut st = c.prepare(
        "SELECT name, SUM(pgsize) AS bytes FROM dbstat GROUP BY name ORDER BY bytes DESC, name",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Take the next stream position. Must be called inside the write transaction that
/// persists the row carrying it, so positions commit in order.
pub fn next_stream_position(tx: &rusqlite::Connection) -> Result<StreamPosition, Error> {
    // Two cached statements, not `RETURNING` (which SQLite runs through an ephemeral
    // table it opens and frees on every call) nor an uncached `query_row`: every event
    // takes a position.
    tx.prepare_cached("UPDATE stream_sequence SET pos = pos + 1")?
        .execute([])?;
    Ok(tx
        .prepare_cached("SELECT pos FROM stream_sequence")?
        .query_row([], |r| r.get(0))?)
}

/// Current time in milliseconds since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The distinct servers of user ids, in the order first seen.
fn servers_of(
    users: impl Iterator<Item = rusqlite::Result<String>>,
) -> Result<Vec<String>, crate::error::Error> {
    let mut servers: Vec<String> = Vec::new();
    for user in users {
        if let Some((_, s)) = user?.rsplit_once(':')
            && !servers.iter().any(|x| x == s)
        {
            servers.push(s.to_owned());
        }
    }
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use rusqlite::{StatementStatus, params};

    use super::*;

    /// How often the cached statement `sql` was planned again, after running it `runs`
    /// times with a different bound limit each time.
    fn replans(c: &Connection, sql: &str, runs: i64) -> Result<i32, Error> {
        for limit in 0..runs {
            let mut st = c.prepare_cached(sql)?;
            st.query_map(params!["!room:x", limit], |r| r.get::<_, String>(0))?
                .for_each(drop);
        }
        Ok(c.prepare_cached(sql)?
            .get_status(StatementStatus::RePrepare))
    }

    /// The build keeps `.cargo/config.toml`'s flags: without them every statement of the
    /// writer and the readers takes SQLite's global mutexes.
    #[test]
    fn sqlite_is_built_without_process_wide_mutexes() -> Result<(), Error> {
        let conn = Connection::open_in_memory()?;
        assert_eq!(global_mutexes(&conn)?, Vec::<&str>::new());
        Ok(())
    }

    #[test]
    fn statements_with_a_bound_limit_are_planned_once() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let db = Db::open(&dir.path().join("warren.db")).map_err(Error::internal)?;
        let sql = "SELECT user_id FROM memberships WHERE room_id = ?1
                   ORDER BY user_id LIMIT ?2";
        assert_eq!(db.read(|c| replans(c, sql, 5))?, 0, "on a reader");
        assert_eq!(db.write(|c| replans(c, sql, 5))?, 0, "on the writer");
        Ok(())
    }

    /// A read transaction whose closure panics is still ended, and a reader left inside
    /// one by a caller is taken out of it: later reads see later commits.
    #[test]
    fn a_reader_never_stays_on_an_old_snapshot() -> Result<(), Error> {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("warren.db")).expect("open");
        let pos = || db.max_stream_position();
        let before = pos()?;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = db.read_tx(|c| -> Result<(), Error> {
                c.query_row("SELECT pos FROM stream_sequence", [], |r| {
                    r.get::<_, i64>(0)
                })?;
                panic!("a bug while reading");
            });
        }));
        assert!(panicked.is_err());
        // A caller that begins a transaction of its own and leaves it open.
        db.read(|c| Ok(c.execute_batch("BEGIN; SELECT pos FROM stream_sequence;")?))?;
        db.write(|c| next_stream_position(c).map(|_| ()))?;
        assert!(pos()? > before, "the reader sees the commit");
        Ok(())
    }
}
