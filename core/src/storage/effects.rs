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

use parking_lot::Mutex;
use rusqlite::hooks::Action;
use rusqlite::{Connection, OptionalExtension};

use super::changes::RoomChanges;
use crate::streams::StreamPosition;

const OUTBOX: u8 = 1;
const PUSH_QUEUE: u8 = 2;
const STREAM: u8 = 4;
const AUTH: u8 = 8;

/// Most changed rows of the tables `/sync` reads that one write lists (room by room,
/// user by user); a write changing more (joining a large room) wakes every waiter.
const MAX_TRACKED_ROWS: usize = 256;

/// Most rooms a user's presence or device change wakes the members of, one by one; a
/// user in more rooms wakes every waiter.
const MAX_SHARED_ROOMS: usize = 256;

/// The tables whose changed rows say whose `/sync` a write concerns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracked {
    Events,
    Receipts,
    AccountData,
    Memberships,
    ToDevice,
    DeviceLists,
    Presence,
}

impl Tracked {
    fn of(action: Action, table: &str) -> Option<Tracked> {
        let changed = matches!(action, Action::SQLITE_INSERT | Action::SQLITE_UPDATE);
        let t = match table {
            "events" => Tracked::Events,
            "receipts" => Tracked::Receipts,
            "account_data" => Tracked::AccountData,
            "memberships" => Tracked::Memberships,
            "to_device_inbox" => Tracked::ToDevice,
            "device_list_changes" => Tracked::DeviceLists,
            "presence" => Tracked::Presence,
            _ => return None,
        };
        changed.then_some(t)
    }
}

/// Whose `/sync` a committed write concerns: the long-polls to wake (see
/// [`crate::streams::Notifier::wake`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Rooms whose timeline, state, receipts or unread counts changed.
    pub rooms: Vec<String>,
    /// Users whose own data changed: a membership, account data, to-device messages,
    /// their devices or presence.
    pub users: Vec<String>,
    /// Rooms whose members should look again although the room did not change (a
    /// member's presence or devices did).
    pub members_of: Vec<String>,
    /// Too much changed to list: every waiter looks again.
    pub everyone: bool,
}

impl Touched {
    fn add(list: &mut Vec<String>, v: String) {
        if !list.contains(&v) {
            list.push(v);
        }
    }
}

/// The after-commit effects of one write.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Effects {
    flags: u8,
    /// The stream position the write reached, if it took one.
    pub stream_pos: Option<StreamPosition>,
    /// Whose `/sync` the write concerns (only with a stream position).
    pub touched: Option<Box<Touched>>,
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

    /// An access token, refresh token, device or user was changed or deleted: the
    /// token owners kept in memory are stale (see [`super::token_cache`]).
    pub fn tokens_changed(&self) -> bool {
        self.flags & AUTH != 0
    }
}

/// Runs each write's effects once its batch has committed (installed by the node).
pub type AfterCommit = Box<dyn Fn(Effects) + Send + Sync>;

/// Rows of the tracked tables a write changed.
#[derive(Default)]
struct Rows {
    rows: Vec<(Tracked, i64)>,
    overflow: bool,
}

/// The effects of the write running on the writer connection so far.
#[derive(Clone)]
pub(super) struct Collector {
    flags: Arc<AtomicU8>,
    rows: Arc<Mutex<Rows>>,
    /// Told, before the commit, which rooms each write changed.
    room_changes: Arc<RoomChanges>,
}

impl Collector {
    pub(super) fn new(room_changes: Arc<RoomChanges>) -> Collector {
        Collector {
            flags: Arc::default(),
            rows: Arc::default(),
            room_changes,
        }
    }

    /// Collect on `conn` (the writer) from now on.
    pub(super) fn install(&self, conn: &Connection) {
        let noted = self.flags.clone();
        let rows = self.rows.clone();
        conn.update_hook(Some(
            move |action: Action, _db: &str, table: &str, rowid: i64| {
                let flag = match (action, table) {
                    (Action::SQLITE_INSERT, "federation_outbox") => OUTBOX,
                    (Action::SQLITE_INSERT, "push_queue") => PUSH_QUEUE,
                    (Action::SQLITE_UPDATE, "stream_sequence") => STREAM,
                    // Whatever can end or change an access token's owner: logout,
                    // refresh, device deletion (and its cascade), deactivation.
                    (
                        Action::SQLITE_UPDATE | Action::SQLITE_DELETE,
                        "access_tokens" | "refresh_tokens" | "users",
                    )
                    | (Action::SQLITE_DELETE, "devices") => AUTH,
                    _ => {
                        if let Some(t) = Tracked::of(action, table) {
                            // Only the writer's thread takes it while the writer is held.
                            let mut r = rows.lock();
                            if r.rows.len() < MAX_TRACKED_ROWS {
                                r.rows.push((t, rowid));
                            } else {
                                r.overflow = true;
                            }
                        }
                        return;
                    }
                };
                // Only the writer's thread touches it while the writer is held.
                noted.fetch_or(flag, Ordering::Relaxed);
            },
        ));
    }

    /// A write starts: forget what an earlier one (or a failed one) left.
    pub(super) fn clear(&self) {
        self.flags.store(0, Ordering::Relaxed);
        *self.rows.lock() = Rows::default();
    }

    /// The write's closure succeeded: its effects, read inside its transaction. The
    /// rooms it changed are recorded in [`RoomChanges`] here, before the commit.
    pub(super) fn take(&self, conn: &Connection) -> Result<Effects, rusqlite::Error> {
        let flags = self.flags.swap(0, Ordering::Relaxed);
        let rows = std::mem::take(&mut *self.rows.lock());
        let stream_pos: Option<StreamPosition> = if flags & STREAM != 0 {
            Some(
                conn.prepare_cached("SELECT pos FROM stream_sequence")?
                    .query_row([], |r| r.get(0))?,
            )
        } else {
            None
        };
        // Rows changed without a new stream position are nothing `/sync` returns.
        let touched = match stream_pos {
            Some(pos) if rows.overflow || !rows.rows.is_empty() => {
                let touched = resolve(conn, &rows)?;
                if touched.everyone {
                    self.room_changes.record_all(pos);
                } else {
                    for room in &touched.rooms {
                        self.room_changes.record(room, pos);
                    }
                }
                Some(Box::new(touched))
            }
            _ => None,
        };
        Ok(Effects {
            flags: flags & !STREAM,
            stream_pos,
            touched,
        })
    }
}

/// The rooms and users behind a write's changed rows (rows it changed and then deleted
/// are gone and name nobody).
fn resolve(conn: &Connection, rows: &Rows) -> Result<Touched, rusqlite::Error> {
    let mut t = Touched {
        everyone: rows.overflow,
        ..Touched::default()
    };
    if t.everyone {
        return Ok(t);
    }
    let mut shared_by: Vec<String> = Vec::new();
    for &(table, rowid) in &rows.rows {
        match table {
            Tracked::Events => {
                let row: Option<(String, String, Option<String>)> = conn
                    .prepare_cached(
                        "SELECT room_id, type, state_key FROM events WHERE stream_ordering = ?1",
                    )?
                    .query_row([rowid], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .optional()?;
                if let Some((room, kind, state_key)) = row {
                    Touched::add(&mut t.rooms, room);
                    if kind == "m.room.member"
                        && let Some(user) = state_key
                    {
                        Touched::add(&mut t.users, user);
                    }
                }
            }
            Tracked::Receipts => {
                if let Some(room) =
                    one(conn, "SELECT room_id FROM receipts WHERE rowid = ?1", rowid)?
                {
                    Touched::add(&mut t.rooms, room);
                }
            }
            Tracked::AccountData | Tracked::Memberships | Tracked::ToDevice => {
                let sql = match table {
                    Tracked::AccountData => "SELECT user_id FROM account_data WHERE rowid = ?1",
                    Tracked::Memberships => "SELECT user_id FROM memberships WHERE rowid = ?1",
                    _ => "SELECT user_id FROM to_device_inbox WHERE rowid = ?1",
                };
                if let Some(user) = one(conn, sql, rowid)? {
                    Touched::add(&mut t.users, user);
                }
            }
            Tracked::DeviceLists | Tracked::Presence => {
                let sql = match table {
                    Tracked::DeviceLists => {
                        "SELECT user_id FROM device_list_changes WHERE rowid = ?1"
                    }
                    _ => "SELECT user_id FROM presence WHERE rowid = ?1",
                };
                if let Some(user) = one(conn, sql, rowid)? {
                    Touched::add(&mut shared_by, user.clone());
                    Touched::add(&mut t.users, user);
                }
            }
        }
    }
    // A user's presence and device changes are for everyone sharing a room with them.
    for user in shared_by {
        let mut st = conn.prepare_cached(
            "SELECT room_id FROM memberships WHERE user_id = ?1 AND membership = 'join' LIMIT ?2",
        )?;
        let rooms = st
            .query_map(rusqlite::params![user, MAX_SHARED_ROOMS as i64 + 1], |r| {
                r.get(0)
            })?
            .collect::<Result<Vec<String>, _>>()?;
        if rooms.len() > MAX_SHARED_ROOMS {
            t.everyone = true;
            return Ok(t);
        }
        for room in rooms {
            Touched::add(&mut t.members_of, room);
        }
    }
    Ok(t)
}

/// The first column of the row `rowid` of one query, if that row is still there.
fn one(conn: &Connection, sql: &str, rowid: i64) -> Result<Option<String>, rusqlite::Error> {
    conn.prepare_cached(sql)?
        .query_row([rowid], |r| r.get(0))
        .optional()
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
