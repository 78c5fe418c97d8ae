//! Push notifications (the per-user result of push-rule evaluation) and pushers.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// Joined members of a room that are users of this server.
pub fn joined_local_members(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT l.user_id FROM local_joins l JOIN users u ON u.user_id = l.user_id
         WHERE l.room_id = ?1 ORDER BY l.user_id",
    )?;
    let rows = st.query_map(params![room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A joined local member to evaluate a new event's push rules for.
#[derive(Clone, Debug)]
pub struct PushRecipient {
    /// The member.
    pub user_id: String,
    /// Their stored `m.push_rules` account data, if any.
    pub push_rules: Option<String>,
    /// Their display name in the room (their member event's `displayname` when it is a
    /// string), else empty.
    pub display_name: String,
}

/// The joined local members of a room, with what push-rule evaluation needs of each, in
/// one statement instead of three per member. Reads the room's local members only
/// (`local_joins`), not all of its members.
pub fn push_recipients(c: &Connection, room_id: &str) -> Result<Vec<PushRecipient>, Error> {
    // The member event is read as `get_state_event` would: timeline or outlier only.
    let mut st = c.prepare_cached(
        "SELECT m.user_id, ad.content,
                IIF(json_type(e.json, '$.content.displayname') = 'text',
                    json_extract(e.json, '$.content.displayname'), '')
         FROM local_joins m
         JOIN users u ON u.user_id = m.user_id
         LEFT JOIN account_data ad
             ON ad.user_id = m.user_id AND ad.room_id = '' AND ad.type = 'm.push_rules'
         LEFT JOIN current_state cs
             ON cs.room_id = m.room_id AND cs.type = 'm.room.member' AND cs.state_key = m.user_id
         LEFT JOIN events e
             ON e.event_id = cs.event_id AND e.status IN ('timeline', 'outlier')
         WHERE m.room_id = ?1
         ORDER BY m.user_id",
    )?;
    let rows = st.query_map([room_id], |r| {
        Ok(PushRecipient {
            user_id: r.get(0)?,
            push_rules: r.get(1)?,
            display_name: r.get::<_, Option<String>>(2)?.unwrap_or_default(),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What a room's push context is built from, as of this snapshot: its
/// [`super::state_version`] and the newest change of anyone's push rules (push rules
/// account data is never deleted, so this only grows). Equal keys mean equal members,
/// display names, power levels and rules. `None` for an unknown room or one without
/// current state.
pub fn push_context_key(c: &Connection, room_id: &str) -> Result<Option<[i64; 3]>, Error> {
    let Some([group, redactions]) = super::state_version(c, room_id)? else {
        return Ok(None);
    };
    let rules: Option<i64> = c
        .prepare_cached(
            "SELECT MAX(stream_ordering) FROM account_data WHERE type = 'm.push_rules'",
        )?
        .query_row([], |r| r.get(0))?;
    Ok(Some([group, redactions, rules.unwrap_or(0)]))
}

/// How many notifying events a room keeps the rows of (newest first; each has a row
/// per local member it notified). Rows past it are dropped whether read or not; unread
/// ones stay counted (see [`recount_unread`]). Per room rather than per user so that a
/// message's rows are written side by side, not one b-tree leaf per member.
pub const NOTIFIED_EVENTS_PER_ROOM: i64 = 50;

/// Notifying events a room may gain past [`NOTIFIED_EVENTS_PER_ROOM`] before its rows are
/// trimmed back to it: one walk of the room's oldest rows per this many notifications.
/// Also how many notifying events' rows are counted when read before they are folded
/// into the stored unread counts (see [`unread_counts`]).
pub const NOTIFICATION_SLACK: i64 = 25;

/// Highlighting events (mentions) a room keeps the highlight rows of past
/// [`NOTIFIED_EVENTS_PER_ROOM`], newest first, so a mention in a busy room stays listed
/// under `only=highlight` after the room's plain notifications moved on.
pub const HIGHLIGHT_EVENTS_KEPT: i64 = 25;

/// Notifications older than this are dropped when the room's rows are next trimmed
/// (Synapse keeps push actions for the same 30 days).
pub const NOTIFICATION_MAX_AGE_MS: i64 = 30 * 24 * 3600 * 1000;

/// Action sets stored as their index here instead of as JSON (schema 16). They are
/// what the default rules produce, as `serde_json` writes ruma's `Action`s; any other
/// set is stored as its JSON text. Part of the schema: never reorder, only append.
const ACTION_CODES: [&str; 5] = [
    r#"["notify"]"#,
    r#"["notify",{"set_tweak":"sound","value":"default"}]"#,
    r#"["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]"#,
    r#"["notify",{"set_tweak":"highlight"}]"#,
    r#"["notify",{"set_tweak":"sound","value":"ring"}]"#,
];

/// The stored form of an action set: its code if it has one, else its JSON.
fn encode_actions(json: &str) -> rusqlite::types::Value {
    match ACTION_CODES.iter().position(|known| *known == json) {
        Some(code) => rusqlite::types::Value::Integer(code as i64),
        None => rusqlite::types::Value::Text(json.to_owned()),
    }
}

/// The JSON of a stored action set; an unknown code or type reads as no actions.
fn decode_actions(stored: rusqlite::types::Value) -> String {
    use rusqlite::types::Value;
    match stored {
        Value::Text(json) => json,
        Value::Integer(code) => usize::try_from(code)
            .ok()
            .and_then(|i| ACTION_CODES.get(i))
            .map_or("[]", |json| json)
            .to_owned(),
        _ => "[]".to_owned(),
    }
}

/// One user's notification of an event, for [`insert_notifications`].
#[derive(Clone, Debug)]
pub struct UserNotification<'a> {
    /// Who is notified.
    pub user_id: &'a str,
    /// The push actions, as a JSON array.
    pub actions: &'a str,
    /// Whether the actions highlight.
    pub highlight: bool,
}

/// Record the notifications of one event (its room and stream position) for the users it
/// notifies: the rows (side by side, at the end of the room's range, one leaf for a
/// room of ten) and the room's count of notifying events. No other write per user: the
/// rows are unread (it is the room's newest event, so no receipt covers it yet) and are
/// counted when read until the room's next fold, every [`NOTIFICATION_SLACK`] notifying
/// events, which also trims the room's rows past the cap.
pub fn insert_notifications(
    c: &Connection,
    room_id: &str,
    stream_ordering: i64,
    notified: &[UserNotification<'_>],
    now_ms: i64,
) -> Result<(), Error> {
    if notified.is_empty() {
        return Ok(());
    }
    // One cached insert per member: cheaper than one statement over a JSON array of
    // them (measured, 10 clients in one room: ~6 % more sends per second).
    let mut insert = c.prepare_cached(
        "INSERT OR IGNORE INTO push_notifications
         (room_id, stream_ordering, user_id, actions, highlight)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?;
    let mut inserted = 0;
    for n in notified {
        inserted += insert.execute(params![
            room_id,
            stream_ordering,
            n.user_id,
            encode_actions(n.actions),
            n.highlight
        ])?;
    }
    if inserted == 0 {
        // Recorded before (the same event persisted again): already counted.
        return Ok(());
    }
    // Counted and checked against the cap and the fold in one statement.
    let events: i64 = c
        .prepare_cached(
            "INSERT INTO push_notification_rooms (room_id, events) VALUES (?1, 1)
             ON CONFLICT (room_id) DO UPDATE SET events = events + 1
             RETURNING events",
        )?
        .query_row([room_id], |r| r.get(0))?;
    if events >= NOTIFIED_EVENTS_PER_ROOM + NOTIFICATION_SLACK {
        trim_notifications(c, room_id, now_ms)?;
    } else if events % NOTIFICATION_SLACK == 0 {
        fold_unread(c, room_id)?;
    }
    Ok(())
}

/// Rows a read walks before it steps from event to event instead (see
/// [`user_rows_after`]).
const ROWS_WALKED: i64 = 512;

/// A user's rows in a room after stream position `after`: (how many, how many
/// highlight). Walks the room's rows after it (every notified member's) when they are
/// few, else steps from one notifying event of the room to the next through the key and
/// looks up the user's row of each: two seeks per event whatever the room's size.
fn user_rows_after(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    after: i64,
) -> Result<(i64, i64), Error> {
    let (walked, count, highlights): (i64, i64, i64) = c
        .prepare_cached(
            "SELECT COUNT(*), COALESCE(SUM(user_id = ?2), 0),
                    COALESCE(SUM(user_id = ?2 AND highlight), 0)
             FROM (SELECT user_id, highlight FROM push_notifications
                   WHERE room_id = ?1 AND stream_ordering > ?3 LIMIT ?4)",
        )?
        .query_row(params![room_id, user_id, after, ROWS_WALKED], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    if walked < ROWS_WALKED {
        return Ok((count, highlights));
    }
    Ok(c.prepare_cached(
        "WITH RECURSIVE ev(pos) AS (
                 SELECT (SELECT MIN(stream_ordering) FROM push_notifications
                         WHERE room_id = ?1 AND stream_ordering > ?3)
                 UNION ALL
                 SELECT (SELECT MIN(stream_ordering) FROM push_notifications
                         WHERE room_id = ?1 AND stream_ordering > ev.pos)
                 FROM ev WHERE ev.pos IS NOT NULL)
             SELECT COUNT(*), COALESCE(SUM(n.highlight), 0)
             FROM ev JOIN push_notifications n
                 ON n.room_id = ?1 AND n.stream_ordering = ev.pos AND n.user_id = ?2",
    )?
    .query_row(params![room_id, user_id, after], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?)
}

/// Add the room's rows not yet counted to each notified user's stored unread counts, and
/// mark the room counted up to its newest row. A row is not yet counted when it is after
/// both the room's last fold and the user's last recount (a receipt); such rows are all
/// after the user's receipt, so all unread. One upsert per user with such rows.
fn fold_unread(c: &Connection, room_id: &str) -> Result<(), Error> {
    let (folded, newest): (i64, i64) = c
        .prepare_cached(
            "SELECT COALESCE((SELECT folded_upto FROM push_notification_rooms
                              WHERE room_id = ?1), 0),
                    COALESCE((SELECT MAX(stream_ordering) FROM push_notifications
                              WHERE room_id = ?1), 0)",
        )?
        .query_row([room_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    c.prepare_cached(
        "INSERT INTO unread_counts (user_id, room_id, notifications, highlights, counted_upto)
         SELECT n.user_id, ?1, COUNT(*), COALESCE(SUM(n.highlight), 0), ?3
         FROM push_notifications n
         LEFT JOIN unread_counts u ON u.user_id = n.user_id AND u.room_id = ?1
         WHERE n.room_id = ?1 AND n.stream_ordering > ?2
           AND n.stream_ordering > COALESCE(u.counted_upto, 0)
         GROUP BY n.user_id
         ON CONFLICT (user_id, room_id) DO UPDATE SET
             notifications = notifications + excluded.notifications,
             highlights = highlights + excluded.highlights,
             counted_upto = excluded.counted_upto",
    )?
    .execute(params![room_id, folded, newest])?;
    c.prepare_cached("UPDATE push_notification_rooms SET folded_upto = ?2 WHERE room_id = ?1")?
        .execute(params![room_id, newest])?;
    Ok(())
}

/// Trim a room's rows to the newest [`NOTIFIED_EVENTS_PER_ROOM`] notifying events (and
/// the highlight rows of the newest [`HIGHLIGHT_EVENTS_KEPT`] highlighting events before
/// them) and the age limit. Visits only this room's events (at most the cap, the slack
/// and the kept highlights). The dropped rows that were unread are remembered per user
/// in `unread_counts.pruned_*`, so the kept counts stay as they were.
pub fn trim_notifications(c: &Connection, room_id: &str, now_ms: i64) -> Result<(), Error> {
    // Counted first, so what is dropped below is in the stored counts.
    fold_unread(c, room_id)?;
    let too_old = now_ms.saturating_sub(NOTIFICATION_MAX_AGE_MS);
    // The room's notifying events, newest first: whether each is past the age limit (an
    // event that is gone counts as old) and whether it highlighted anyone.
    let events: Vec<(i64, bool, bool)> = c
        .prepare_cached(
            "SELECT k.stream_ordering,
                    COALESCE((SELECT e.origin_server_ts FROM events e
                              WHERE e.stream_ordering = k.stream_ordering), 0) < ?2,
                    k.highlight
             FROM (SELECT stream_ordering, MAX(highlight) AS highlight FROM push_notifications
                   WHERE room_id = ?1 GROUP BY stream_ordering) AS k
             ORDER BY k.stream_ordering DESC",
        )?
        .query_map(params![room_id, too_old], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?
        .collect::<Result<_, _>>()?;
    let (all_rows, plain_rows) = doomed_rows(&events);
    let in_window = events
        .iter()
        .take(usize::try_from(NOTIFIED_EVENTS_PER_ROOM).unwrap_or(usize::MAX))
        .filter(|(_, old, _)| !old)
        .count();
    if !all_rows.is_empty() || !plain_rows.is_empty() {
        let (all_rows, plain_rows) = (
            serde_json::to_string(&all_rows)?,
            serde_json::to_string(&plain_rows)?,
        );
        // Read positions are looked up for the users losing rows only.
        c.prepare_cached(
            "WITH dropped AS (SELECT n.user_id, n.stream_ordering, n.highlight
                              FROM push_notifications n
                              WHERE n.room_id = ?1
                                AND (n.stream_ordering IN (SELECT value FROM json_each(?2))
                                     OR (n.highlight = 0 AND n.stream_ordering IN
                                         (SELECT value FROM json_each(?3))))),
                  reads AS (SELECT r.user_id, MAX(e.stream_ordering) AS pos FROM receipts r
                            JOIN events e ON e.event_id = r.event_id
                            WHERE r.room_id = ?1
                              AND r.receipt_type IN ('m.read', 'm.read.private')
                              AND r.user_id IN (SELECT user_id FROM dropped)
                            GROUP BY r.user_id)
             UPDATE unread_counts AS u SET
                 pruned_notifications = u.pruned_notifications + d.n,
                 pruned_highlights = u.pruned_highlights + d.h,
                 pruned_upto = MAX(u.pruned_upto, d.top)
             FROM (SELECT dropped.user_id, COUNT(*) AS n,
                          COALESCE(SUM(dropped.highlight), 0) AS h,
                          MAX(dropped.stream_ordering) AS top
                   FROM dropped LEFT JOIN reads ON reads.user_id = dropped.user_id
                   WHERE dropped.stream_ordering > COALESCE(reads.pos, 0)
                   GROUP BY dropped.user_id) AS d
             WHERE u.user_id = d.user_id AND u.room_id = ?1",
        )?
        .execute(params![room_id, all_rows, plain_rows])?;
        c.prepare_cached(
            "DELETE FROM push_notifications
             WHERE room_id = ?1
               AND (stream_ordering IN (SELECT value FROM json_each(?2))
                    OR (highlight = 0 AND stream_ordering IN (SELECT value FROM json_each(?3))))",
        )?
        .execute(params![room_id, all_rows, plain_rows])?;
    }
    c.prepare_cached("UPDATE push_notification_rooms SET events = ?2 WHERE room_id = ?1")?
        .execute(params![room_id, in_window as i64])?;
    Ok(())
}

/// Which of a room's notifying events (newest first: position, past the age limit,
/// highlighted anyone) lose rows in a trim: (those losing all their rows, those losing
/// the rows that do not highlight). Past the age limit, all rows; past the cap, all rows
/// too, but for the newest [`HIGHLIGHT_EVENTS_KEPT`] highlighting events there, which
/// keep their highlight rows.
fn doomed_rows(events: &[(i64, bool, bool)]) -> (Vec<i64>, Vec<i64>) {
    let cap = usize::try_from(NOTIFIED_EVENTS_PER_ROOM).unwrap_or(usize::MAX);
    let mut highlights_kept = 0;
    let (mut all_rows, mut plain_rows) = (Vec::new(), Vec::new());
    for (i, &(pos, old, highlight)) in events.iter().enumerate() {
        if old {
            all_rows.push(pos);
        } else if i >= cap {
            if highlight && highlights_kept < HIGHLIGHT_EVENTS_KEPT {
                highlights_kept += 1;
                plain_rows.push(pos);
            } else {
                all_rows.push(pos);
            }
        }
    }
    (all_rows, plain_rows)
}

/// Recount a user's unread notifications in a room after their read receipt moved. Only
/// the room's rows after the receipt are looked at, never its history.
///
/// The count is the user's rows after the receipt plus the unread rows a trim dropped
/// (`pruned_*`). Those were all after the receipt of their time and at or before
/// `pruned_upto`: a receipt at or past `pruned_upto` covers them all (the count is
/// exact again and they are forgotten); a receipt before it still counts them all,
/// since where each one was is no longer known (an overcount, never an undercount).
pub fn recount_unread(c: &Connection, room_id: &str, user_id: &str) -> Result<(), Error> {
    // Only this server's users are notified; other servers' receipts count nothing here.
    let local: bool = c
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM users WHERE user_id = ?1)")?
        .query_row([user_id], |r| r.get(0))?;
    if !local {
        return Ok(());
    }
    // The receipt position first, as a plain value: a bound the index range can use.
    let read_up_to: i64 = c
        .prepare_cached(
            "SELECT COALESCE(MAX(e.stream_ordering), 0) FROM receipts r
             JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = ?1 AND r.user_id = ?2
               AND r.receipt_type IN ('m.read', 'm.read.private')",
        )?
        .query_row(params![room_id, user_id], |r| r.get(0))?;
    let (after, after_highlights) = user_rows_after(c, room_id, user_id, read_up_to)?;
    // Counted up to the room's newest row: every later row is after this receipt.
    c.prepare_cached(
        "INSERT INTO unread_counts (user_id, room_id, notifications, highlights)
         VALUES (?1, ?2, 0, 0) ON CONFLICT (user_id, room_id) DO NOTHING",
    )?
    .execute(params![user_id, room_id])?;
    c.prepare_cached(
        "UPDATE unread_counts SET
             notifications = ?4 + IIF(?3 >= pruned_upto, 0, pruned_notifications),
             highlights = ?5 + IIF(?3 >= pruned_upto, 0, pruned_highlights),
             pruned_notifications = IIF(?3 >= pruned_upto, 0, pruned_notifications),
             pruned_highlights = IIF(?3 >= pruned_upto, 0, pruned_highlights),
             counted_upto = (SELECT COALESCE(MAX(stream_ordering), 0) FROM push_notifications
                             WHERE room_id = ?2)
         WHERE user_id = ?1 AND room_id = ?2",
    )?
    .execute(params![
        user_id,
        room_id,
        read_up_to,
        after,
        after_highlights
    ])?;
    Ok(())
}

/// The stream position a user has read up to in a room: their newest `m.read` or
/// `m.read.private` receipt in any thread (threads are counted with the room).
const READ_UP_TO: &str = "COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r
         JOIN events e ON e.event_id = r.event_id
         WHERE r.room_id = n.room_id AND r.user_id = n.user_id
           AND r.receipt_type IN ('m.read', 'm.read.private')), 0)";

/// Up to where a user's stored counts in a room (`u`, their `unread_counts` row; `r`, the
/// room's `push_notification_rooms` row; either may be missing) count its rows: the
/// room's last fold or the user's last recount, whichever is later.
const COUNTED_UPTO: &str = "MAX(COALESCE(u.counted_upto, 0), COALESCE(r.folded_upto, 0))";

/// Unread counts: (notifications, highlights) after the user's read receipt. The stored
/// counts (kept by folds and receipts' recounts) plus the user's rows after both the
/// room's last fold and the user's last recount: at most [`NOTIFICATION_SLACK`]
/// notifying events of the room, walked when few, else stepped through (see
/// [`user_rows_after`]).
pub fn unread_counts(c: &Connection, room_id: &str, user_id: &str) -> Result<(i64, i64), Error> {
    let (notifications, highlights, counted_upto): (i64, i64, i64) = c
        .prepare_cached(&format!(
            "SELECT COALESCE(u.notifications, 0), COALESCE(u.highlights, 0), {COUNTED_UPTO}
             FROM (SELECT 1) LEFT JOIN unread_counts u ON u.user_id = ?1 AND u.room_id = ?2
             LEFT JOIN push_notification_rooms r ON r.room_id = ?2"
        ))?
        .query_row(params![user_id, room_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    let (recent, recent_highlights) = user_rows_after(c, room_id, user_id, counted_upto)?;
    Ok((notifications + recent, highlights + recent_highlights))
}

/// How many notification rows a user has, in all rooms. Walks every row: for tests and
/// diagnostics, not for a request.
pub fn notification_rows(c: &Connection, user_id: &str) -> Result<i64, Error> {
    Ok(
        c.prepare_cached("SELECT COUNT(*) FROM push_notifications WHERE user_id = ?1")?
            .query_row(params![user_id], |r| r.get(0))?,
    )
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
    /// When: the event's `origin_server_ts`.
    pub ts: i64,
    /// Whether the user's read receipt covers it.
    pub read: bool,
}

/// A user's notifications, newest first, before stream position `before`. Reads the rows
/// of each room the user has a membership in or was counted in (an `unread_counts` row),
/// at most the per-room cap's events' rows per room (of all its notified members: the
/// key leads with the room); whether each is read is looked up for the page only.
pub fn notifications(
    c: &Connection,
    user_id: &str,
    before: i64,
    limit: i64,
    only_highlight: bool,
) -> Result<Vec<NotificationRow>, Error> {
    let sql = format!(
        "SELECT n.room_id, n.stream_ordering, e.event_id, n.actions, e.origin_server_ts,
                n.stream_ordering <= {READ_UP_TO}
         FROM (SELECT p.room_id, p.stream_ordering, p.user_id, p.actions
               FROM (SELECT room_id FROM unread_counts WHERE user_id = ?1
                     UNION
                     SELECT room_id FROM memberships WHERE user_id = ?1) AS u
               CROSS JOIN push_notifications p
                   ON p.room_id = u.room_id AND p.stream_ordering < ?2 AND p.user_id = ?1
               WHERE (?3 = 0 OR p.highlight = 1)
                 AND EXISTS (SELECT 1 FROM events x WHERE x.stream_ordering = p.stream_ordering)
               ORDER BY p.stream_ordering DESC LIMIT ?4) AS n
         JOIN events e ON e.stream_ordering = n.stream_ordering
         ORDER BY n.stream_ordering DESC"
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params![user_id, before, only_highlight, limit], |r| {
        Ok(NotificationRow {
            room_id: r.get(0)?,
            stream_ordering: r.get(1)?,
            event_id: r.get(2)?,
            actions: decode_actions(r.get(3)?),
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
    device_id: &str,
    app_id: &str,
    pushkey: &str,
    pusher: &str,
    now: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO pushers (user_id, app_id, pushkey, pusher, created_ts, device_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (user_id, app_id, pushkey)
         DO UPDATE SET pusher = excluded.pusher, device_id = excluded.device_id",
        params![user_id, app_id, pushkey, pusher, now, device_id],
    )?;
    Ok(())
}

/// Remove the pushers a device set (the device is gone).
pub fn delete_device_pushers(c: &Connection, user_id: &str, device_id: &str) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM pushers WHERE user_id = ?1 AND device_id = ?2")?
        .execute(params![user_id, device_id])?;
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

/// Which pusher a push queue row belongs to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PusherKey {
    /// The pusher's user.
    pub user_id: String,
    /// Its app id.
    pub app_id: String,
    /// Its pushkey.
    pub pushkey: String,
}

/// Queue a notification for each http pusher of `user_id`, in the notification's
/// transaction. Returns how many rows were queued (one per pusher).
pub fn enqueue_pushes(
    c: &Connection,
    user_id: &str,
    room_id: &str,
    event_id: &str,
    actions: &str,
    now: i64,
) -> Result<usize, Error> {
    Ok(c.prepare_cached(
        "INSERT INTO push_queue (user_id, app_id, pushkey, room_id, event_id, actions, created_ts)
         SELECT user_id, app_id, pushkey, ?2, ?3, ?4, ?5 FROM pushers
         WHERE user_id = ?1 AND json_extract(pusher, '$.kind') = 'http'",
    )?
    .execute(params![user_id, room_id, event_id, actions, now])?)
}

/// [`enqueue_pushes`] for many users notified of one event, in one statement:
/// `notified` is `(user id, actions JSON)` of each.
pub fn enqueue_pushes_for(
    c: &Connection,
    notified: &[(&str, &str)],
    room_id: &str,
    event_id: &str,
    now: i64,
) -> Result<usize, Error> {
    if notified.is_empty() {
        return Ok(0);
    }
    let notified = serde_json::to_string(notified)?;
    // CROSS JOIN: the notified users drive the loop, each a prefix probe of `pushers`.
    Ok(c.prepare_cached(
        "INSERT INTO push_queue (user_id, app_id, pushkey, room_id, event_id, actions, created_ts)
         SELECT p.user_id, p.app_id, p.pushkey, ?2, ?3, j.value ->> 1, ?4
         FROM json_each(?1) AS j CROSS JOIN pushers p ON p.user_id = j.value ->> 0
         WHERE json_extract(p.pusher, '$.kind') = 'http'",
    )?
    .execute(params![notified, room_id, event_id, now])?)
}

/// Pushers with anything queued.
pub fn push_queue_pushers(c: &Connection) -> Result<Vec<PusherKey>, Error> {
    let mut st = c.prepare_cached("SELECT DISTINCT user_id, app_id, pushkey FROM push_queue")?;
    let rows = st.query_map([], |r| {
        Ok(PusherKey {
            user_id: r.get(0)?,
            app_id: r.get(1)?,
            pushkey: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The oldest queued notification of a pusher, with the pusher itself.
#[derive(Clone, Debug)]
pub struct QueuedPush {
    /// Row id, to delete once delivered.
    pub id: i64,
    /// Room of the event.
    pub room_id: String,
    /// The event.
    pub event_id: String,
    /// Push actions JSON.
    pub actions: String,
    /// The pusher's JSON (as `GET /pushers` returns it).
    pub pusher: String,
    /// When the pusher was created, in milliseconds.
    pub pusher_ts: i64,
}

/// The oldest row queued for `key`, if any.
pub fn push_queue_head(c: &Connection, key: &PusherKey) -> Result<Option<QueuedPush>, Error> {
    Ok(c.prepare_cached(
        "SELECT q.id, q.room_id, q.event_id, q.actions, p.pusher, p.created_ts
         FROM push_queue q JOIN pushers p
           ON p.user_id = q.user_id AND p.app_id = q.app_id AND p.pushkey = q.pushkey
         WHERE q.user_id = ?1 AND q.app_id = ?2 AND q.pushkey = ?3
         ORDER BY q.id LIMIT 1",
    )?
    .query_row(params![key.user_id, key.app_id, key.pushkey], |r| {
        Ok(QueuedPush {
            id: r.get(0)?,
            room_id: r.get(1)?,
            event_id: r.get(2)?,
            actions: r.get(3)?,
            pusher: r.get(4)?,
            pusher_ts: r.get(5)?,
        })
    })
    .optional()?)
}

/// Forget a delivered (or undeliverable) row.
pub fn delete_queued_push(c: &Connection, id: i64) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM push_queue WHERE id = ?1")?
        .execute([id])?;
    Ok(())
}

/// How many rows are queued for a pusher.
pub fn push_queue_depth(c: &Connection, key: &PusherKey) -> Result<i64, Error> {
    Ok(c.prepare_cached(
        "SELECT COUNT(*) FROM push_queue WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3",
    )?
    .query_row(params![key.user_id, key.app_id, key.pushkey], |r| r.get(0))?)
}

/// Keep a pusher's queue within its bounds: drop rows queued before `older_than_ms`
/// and all but the newest `keep`. Returns how many were dropped. Visits only this
/// pusher's rows, through its index.
pub fn trim_push_queue(
    c: &Connection,
    key: &PusherKey,
    keep: usize,
    older_than_ms: i64,
) -> Result<usize, Error> {
    let aged = c
        .prepare_cached(
            "DELETE FROM push_queue WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3
             AND created_ts < ?4",
        )?
        .execute(params![key.user_id, key.app_id, key.pushkey, older_than_ms])?;
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let over = c
        .prepare_cached(
            "DELETE FROM push_queue WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3
             AND id <= (SELECT id FROM push_queue
                        WHERE user_id = ?1 AND app_id = ?2 AND pushkey = ?3
                        ORDER BY id DESC LIMIT 1 OFFSET ?4)",
        )?
        .execute(params![key.user_id, key.app_id, key.pushkey, keep])?;
    Ok(aged + over)
}

/// A user's unread notifications across the rooms they are joined to (the badge): each
/// room's stored count plus its rows not yet counted, as [`unread_counts`] (looked for
/// only in rooms with rows after the counted ones).
pub fn total_unread(c: &Connection, user_id: &str) -> Result<i64, Error> {
    let rooms: Vec<(String, i64, i64, Option<i64>)> = c
        .prepare_cached(&format!(
            "SELECT m.room_id, COALESCE(u.notifications, 0), {COUNTED_UPTO},
                    (SELECT MAX(n.stream_ordering) FROM push_notifications n
                     WHERE n.room_id = m.room_id)
             FROM memberships m
             LEFT JOIN unread_counts u ON u.room_id = m.room_id AND u.user_id = m.user_id
             LEFT JOIN push_notification_rooms r ON r.room_id = m.room_id
             WHERE m.user_id = ?1 AND m.membership = 'join'"
        ))?
        .query_map(params![user_id], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut total = 0;
    for (room_id, counted, upto, newest) in rooms {
        total += counted;
        if newest.is_some_and(|newest| newest > upto) {
            total += user_rows_after(c, &room_id, user_id, upto)?.0;
        }
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use ruma::push::{Action, HighlightTweakValue, Tweak};

    use super::*;

    /// The codes are what `serde_json` writes for ruma's actions of the default rules, so
    /// the common sets really are stored as codes; anything else round-trips as JSON.
    #[test]
    fn action_codes_match_rumas_serialisation() {
        let sound = |s: &str| Action::SetTweak(Tweak::Sound(s.into()));
        let sets = [
            vec![Action::Notify],
            vec![Action::Notify, sound("default")],
            vec![
                Action::Notify,
                sound("default"),
                Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
            ],
            vec![
                Action::Notify,
                Action::SetTweak(Tweak::Highlight(HighlightTweakValue::Yes)),
            ],
            vec![Action::Notify, sound("ring")],
        ];
        for (code, set) in sets.iter().enumerate() {
            let json = serde_json::to_string(set).expect("json");
            assert_eq!(json, ACTION_CODES[code]);
            let stored = encode_actions(&json);
            assert_eq!(stored, rusqlite::types::Value::Integer(code as i64));
            assert_eq!(decode_actions(stored), json);
        }
        let unusual = serde_json::to_string(&[Action::Notify, sound("chime")]).expect("json");
        assert_eq!(decode_actions(encode_actions(&unusual)), unusual);
        assert_eq!(decode_actions(rusqlite::types::Value::Integer(99)), "[]");
        assert_eq!(decode_actions(rusqlite::types::Value::Null), "[]");
    }
}
