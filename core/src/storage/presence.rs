//! Presence rows: one per user (local or remote) whose presence this node knows.
//!
//! `stream_ordering` is the position of the last *significant* change (state, status
//! message, currently-active); `/sync` reports rows whose position is in its window. A
//! mere activity bump updates `last_active_ts` in place, without a new position, so
//! syncing clients do not wake each other up every time one of them syncs.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::streams::StreamPosition;

/// One user's presence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceRow {
    /// Whose.
    pub user_id: String,
    /// `online`, `unavailable` or `offline`.
    pub state: String,
    /// Free text set by the user.
    pub status_msg: Option<String>,
    /// When the user was last active (ms since the epoch).
    pub last_active_ts: i64,
    /// Whether the user is actively using a client now.
    pub currently_active: bool,
    /// Position of the last significant change.
    pub stream_ordering: StreamPosition,
}

fn row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PresenceRow> {
    Ok(PresenceRow {
        user_id: r.get(0)?,
        state: r.get(1)?,
        status_msg: r.get(2)?,
        last_active_ts: r.get(3)?,
        currently_active: r.get(4)?,
        stream_ordering: r.get(5)?,
    })
}

const COLUMNS: &str =
    "user_id, state, status_msg, last_active_ts, currently_active, stream_ordering";

/// A user's presence row.
pub fn presence(c: &Connection, user_id: &str) -> Result<Option<PresenceRow>, Error> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM presence WHERE user_id = ?1"
    ))?
    .query_row([user_id], row)
    .optional()?)
}

/// Store a user's presence (all fields, `stream_ordering` included).
pub fn set_presence(c: &Connection, p: &PresenceRow) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, currently_active, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id) DO UPDATE SET state = excluded.state,
             status_msg = excluded.status_msg, last_active_ts = excluded.last_active_ts,
             currently_active = excluded.currently_active,
             stream_ordering = excluded.stream_ordering",
    )?
    .execute(params![
        p.user_id,
        p.state,
        p.status_msg,
        p.last_active_ts,
        p.currently_active,
        p.stream_ordering
    ])?;
    Ok(())
}

/// Record activity without a significant change (no new stream position).
pub fn touch_presence(c: &Connection, user_id: &str, last_active_ts: i64) -> Result<(), Error> {
    c.prepare_cached("UPDATE presence SET last_active_ts = ?2 WHERE user_id = ?1")?
        .execute(params![user_id, last_active_ts])?;
    Ok(())
}

/// Presence rows changed in `(after, up_to]` of the user themself and of users who share
/// a joined room with them, at most `limit`, oldest change first.
pub fn presence_visible_to(
    c: &Connection,
    user_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<PresenceRow>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM presence p
         WHERE p.stream_ordering > ?2 AND p.stream_ordering <= ?3
           AND (p.user_id = ?1 OR EXISTS (
               SELECT 1 FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
               WHERE m1.user_id = ?1 AND m1.membership = 'join'
                 AND m2.user_id = p.user_id AND m2.membership = 'join'))
         ORDER BY p.stream_ordering LIMIT ?4"
    ))?;
    let rows = st.query_map(params![user_id, after, up_to, limit as i64], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Users of `server` (local users) shown `online` whose last activity is before
/// `cutoff_ts`: the idle sweep turns them `unavailable`.
pub fn idle_online_users(
    c: &Connection,
    server: &str,
    cutoff_ts: i64,
) -> Result<Vec<PresenceRow>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM presence
         WHERE state = 'online' AND last_active_ts < ?2
           AND substr(user_id, length(user_id) - length(?1)) = ':' || ?1
         LIMIT 1000"
    ))?;
    let rows = st.query_map(params![server, cutoff_ts], row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether two users share a joined room (or are the same user).
pub fn shares_room_or_self(c: &Connection, a: &str, b: &str) -> Result<bool, Error> {
    Ok(a == b || super::share_room(c, a, b)?)
}

/// Users joined to a room now.
pub fn joined_members(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership = 'join' ORDER BY user_id",
    )?;
    let rows = st.query_map([room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Most remote presence rows held back for users who share no room yet; past it the
/// longest-held go. What is lost is refreshed by the user's next change.
pub const MAX_PENDING_PRESENCE: i64 = 1000;
/// How long a held-back presence row is worth placing (ms): the join that makes its
/// user share a room follows within seconds.
pub const PENDING_PRESENCE_TTL_MS: i64 = 10 * 60 * 1000;

/// Hold a remote user's presence (its `stream_ordering` is ignored) until a join makes
/// them share a room; drops expired rows and the longest-held beyond the cap.
pub fn hold_presence(c: &Connection, p: &PresenceRow, now: i64) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT OR REPLACE INTO presence_pending
             (user_id, state, status_msg, last_active_ts, currently_active, received_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        p.user_id,
        p.state,
        p.status_msg,
        p.last_active_ts,
        p.currently_active,
        now
    ])?;
    c.prepare_cached("DELETE FROM presence_pending WHERE received_ts < ?1")?
        .execute([now - PENDING_PRESENCE_TTL_MS])?;
    c.prepare_cached(
        "DELETE FROM presence_pending WHERE user_id IN (
             SELECT user_id FROM presence_pending ORDER BY received_ts DESC, user_id
             LIMIT -1 OFFSET ?1)",
    )?
    .execute([MAX_PENDING_PRESENCE])?;
    Ok(())
}

/// Take the held-back presence of `user_id`, if any is still fresh at `now`.
pub fn take_pending_presence(
    c: &Connection,
    user_id: &str,
    now: i64,
) -> Result<Option<PresenceRow>, Error> {
    let held = c
        .prepare_cached(
            "DELETE FROM presence_pending WHERE user_id = ?1
             RETURNING user_id, state, status_msg, last_active_ts, currently_active, received_ts",
        )?
        .query_row([user_id], row)
        .optional()?;
    // `row` read `received_ts` into `stream_ordering`: judge freshness by it, then clear it.
    Ok(held
        .filter(|p| p.stream_ordering >= now - PENDING_PRESENCE_TTL_MS)
        .map(|p| PresenceRow {
            stream_ordering: 0,
            ..p
        }))
}

/// Users with held-back presence who are joined to `room_id`.
pub fn pending_presence_in_room(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT p.user_id FROM presence_pending p JOIN memberships m
             ON m.user_id = p.user_id AND m.room_id = ?1 AND m.membership = 'join'",
    )?;
    let rows = st.query_map([room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any presence is held back for `user_id` (a primary-key lookup: the common
/// answer on every join is no).
pub fn has_pending_presence(c: &Connection, user_id: &str) -> Result<bool, Error> {
    Ok(
        c.prepare_cached("SELECT 1 FROM presence_pending WHERE user_id = ?1")?
            .exists([user_id])?,
    )
}

/// How many presence rows are held back (for tests and metrics).
pub fn pending_presence_count(c: &Connection) -> Result<i64, Error> {
    Ok(c.query_row("SELECT count(*) FROM presence_pending", [], |r| r.get(0))?)
}
