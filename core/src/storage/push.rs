//! Push notifications (the per-user result of push-rule evaluation) and pushers.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// Joined members of a room that are users of this server.
pub fn joined_local_members(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT m.user_id FROM memberships m JOIN users u ON u.user_id = m.user_id
         WHERE m.room_id = ?1 AND m.membership = 'join' ORDER BY m.user_id",
    )?;
    let rows = st.query_map(params![room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A notification to record for one user.
#[derive(Clone, Debug)]
pub struct NewNotification<'a> {
    /// Who is notified.
    pub user_id: &'a str,
    /// Room of the event.
    pub room_id: &'a str,
    /// The event's stream position.
    pub stream_ordering: i64,
    /// The event.
    pub event_id: &'a str,
    /// The push actions, as a JSON array.
    pub actions: &'a str,
    /// Whether the actions highlight.
    pub highlight: bool,
    /// When.
    pub ts: i64,
}

/// Record a notification, counting it as unread (it is the room's newest event, so no
/// receipt covers it yet).
pub fn insert_notification(c: &Connection, n: &NewNotification<'_>) -> Result<(), Error> {
    let inserted = c
        .prepare_cached(
            "INSERT OR IGNORE INTO push_notifications
             (user_id, room_id, stream_ordering, event_id, actions, highlight, ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        )?
        .execute(params![
            n.user_id,
            n.room_id,
            n.stream_ordering,
            n.event_id,
            n.actions,
            n.highlight,
            n.ts
        ])?;
    if inserted == 1 {
        c.prepare_cached(
            "INSERT INTO unread_counts (user_id, room_id, notifications, highlights)
             VALUES (?1, ?2, 1, ?3)
             ON CONFLICT (user_id, room_id) DO UPDATE SET
                 notifications = notifications + 1,
                 highlights = highlights + excluded.highlights",
        )?
        .execute(params![n.user_id, n.room_id, i64::from(n.highlight)])?;
    }
    Ok(())
}

/// Recount a user's unread notifications in a room after their read receipt moved: only
/// the notifications after the receipt are visited, never the room's history.
pub fn recount_unread(c: &Connection, room_id: &str, user_id: &str) -> Result<(), Error> {
    // The receipt position first, as a plain value: a bound the index range can use.
    let read_up_to: i64 = c
        .prepare_cached(
            "SELECT COALESCE(MAX(e.stream_ordering), 0) FROM receipts r
             JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = ?1 AND r.user_id = ?2
               AND r.receipt_type IN ('m.read', 'm.read.private')",
        )?
        .query_row(params![room_id, user_id], |r| r.get(0))?;
    c.prepare_cached(
        "UPDATE unread_counts SET (notifications, highlights) = (
             SELECT COUNT(*), COALESCE(SUM(highlight), 0) FROM push_notifications
             WHERE user_id = ?1 AND room_id = ?2 AND stream_ordering > ?3)
         WHERE user_id = ?1 AND room_id = ?2",
    )?
    .execute(params![user_id, room_id, read_up_to])?;
    Ok(())
}

/// The stream position a user has read up to in a room: their newest `m.read` or
/// `m.read.private` receipt in any thread (threads are counted with the room).
const READ_UP_TO: &str = "COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r
         JOIN events e ON e.event_id = r.event_id
         WHERE r.room_id = n.room_id AND r.user_id = n.user_id
           AND r.receipt_type IN ('m.read', 'm.read.private')), 0)";

/// Unread counts: (notifications, highlights) after the user's read receipt. One row
/// lookup, kept current by [`insert_notification`] and [`recount_unread`].
pub fn unread_counts(c: &Connection, room_id: &str, user_id: &str) -> Result<(i64, i64), Error> {
    Ok(c.prepare_cached(
        "SELECT notifications, highlights FROM unread_counts WHERE user_id = ?1 AND room_id = ?2",
    )?
    .query_row(params![user_id, room_id], |r| Ok((r.get(0)?, r.get(1)?)))
    .optional()?
    .unwrap_or((0, 0)))
}

/// A stored notification, for `GET /notifications`.
#[derive(Clone, Debug)]
pub struct NotificationRow {
    /// Room of the event.
    pub room_id: String,
    /// The event's stream position (also the pagination token).
    pub stream_ordering: i64,
    /// The event.
    pub event_id: String,
    /// Push actions JSON.
    pub actions: String,
    /// When.
    pub ts: i64,
    /// Whether the user's read receipt covers it.
    pub read: bool,
}

/// A user's notifications, newest first, before stream position `before`.
pub fn notifications(
    c: &Connection,
    user_id: &str,
    before: i64,
    limit: i64,
    only_highlight: bool,
) -> Result<Vec<NotificationRow>, Error> {
    let sql = format!(
        "SELECT n.room_id, n.stream_ordering, n.event_id, n.actions, n.ts,
                n.stream_ordering <= {READ_UP_TO}
         FROM push_notifications n
         WHERE n.user_id = ?1 AND n.stream_ordering < ?2 AND (?3 = 0 OR n.highlight = 1)
         ORDER BY n.stream_ordering DESC LIMIT ?4"
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params![user_id, before, only_highlight, limit], |r| {
        Ok(NotificationRow {
            room_id: r.get(0)?,
            stream_ordering: r.get(1)?,
            event_id: r.get(2)?,
            actions: r.get(3)?,
            ts: r.get(4)?,
            read: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Store (or replace) a pusher; `pusher` is its JSON as `GET /pushers` returns it.
pub fn set_pusher(
    c: &Connection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
    pusher: &str,
    now: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO pushers (user_id, app_id, pushkey, pusher, created_ts) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, app_id, pushkey) DO UPDATE SET pusher = excluded.pusher",
        params![user_id, app_id, pushkey, pusher, now],
    )?;
    Ok(())
}

/// Remove a user's pusher. Returns whether one existed.
pub fn delete_pusher(
    c: &Connection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> Result<bool, Error> {
    let n = c.execute(
        "DELETE FROM pushers WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
        params![user_id, app_id, pushkey],
    )?;
    Ok(n > 0)
}

/// Remove every pusher of a user (deactivation).
pub fn delete_user_pushers(c: &Connection, user_id: &str) -> Result<(), Error> {
    c.execute("DELETE FROM pushers WHERE user_id = ?1", [user_id])?;
    Ok(())
}

/// Remove the pushers other users have for the same app and key (`append: false`).
pub fn delete_other_users_pushers(
    c: &Connection,
    user_id: &str,
    app_id: &str,
    pushkey: &str,
) -> Result<(), Error> {
    c.execute(
        "DELETE FROM pushers WHERE app_id = ?2 AND pushkey = ?3 AND user_id != ?1",
        params![user_id, app_id, pushkey],
    )?;
    Ok(())
}

/// A user's pushers, as stored JSON.
pub fn pushers(c: &Connection, user_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT pusher FROM pushers WHERE user_id = ?1 ORDER BY created_ts, app_id, pushkey",
    )?;
    let rows = st.query_map(params![user_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
