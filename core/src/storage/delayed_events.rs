//! Delayed events (MSC4140): events a client asked the node to send later.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Error;

/// A delayed event as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DelayedEvent {
    /// Its id, given to the client.
    pub delay_id: String,
    /// Who it is sent as.
    pub user_id: String,
    /// The device that scheduled it.
    pub device_id: String,
    /// The client's transaction id, for retries.
    pub txn_id: Option<String>,
    /// Room.
    pub room_id: String,
    /// Event type.
    pub kind: String,
    /// State key, for a state event.
    pub state_key: Option<String>,
    /// Content JSON.
    pub content: String,
    /// The delay asked for (a restart waits this long again).
    pub delay_ms: i64,
    /// When the delay (last) started, ms since the epoch.
    pub running_since: i64,
    /// When it is due, ms since the epoch.
    pub send_at: i64,
}

const COLUMNS: &str = "delay_id, user_id, device_id, txn_id, room_id, type, state_key, content, delay_ms, running_since, send_at";

fn from_row(r: &Row<'_>) -> rusqlite::Result<DelayedEvent> {
    Ok(DelayedEvent {
        delay_id: r.get(0)?,
        user_id: r.get(1)?,
        device_id: r.get(2)?,
        txn_id: r.get(3)?,
        room_id: r.get(4)?,
        kind: r.get(5)?,
        state_key: r.get(6)?,
        content: r.get(7)?,
        delay_ms: r.get(8)?,
        running_since: r.get(9)?,
        send_at: r.get(10)?,
    })
}

/// Store a delayed event.
pub fn insert_delayed_event(c: &Connection, d: &DelayedEvent) -> Result<(), Error> {
    c.execute(
        &format!("INSERT INTO delayed_events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)"),
        params![
            d.delay_id,
            d.user_id,
            d.device_id,
            d.txn_id,
            d.room_id,
            d.kind,
            d.state_key,
            d.content,
            d.delay_ms,
            d.running_since,
            d.send_at
        ],
    )?;
    Ok(())
}

/// The delayed event a device scheduled with this transaction id.
pub fn delayed_event_by_txn(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> Result<Option<DelayedEvent>, Error> {
    Ok(c
        .query_row(
            &format!("SELECT {COLUMNS} FROM delayed_events WHERE user_id = ?1 AND device_id = ?2 AND txn_id = ?3"),
            params![user_id, device_id, txn_id],
            from_row,
        )
        .optional()?)
}

/// One delayed event of a user's.
pub fn delayed_event(
    c: &Connection,
    user_id: &str,
    delay_id: &str,
) -> Result<Option<DelayedEvent>, Error> {
    Ok(c.query_row(
        &format!("SELECT {COLUMNS} FROM delayed_events WHERE delay_id = ?1 AND user_id = ?2"),
        params![delay_id, user_id],
        from_row,
    )
    .optional()?)
}

/// A user's delayed events, oldest first, at most `limit` after `after` (a delay id).
pub fn user_delayed_events(
    c: &Connection,
    user_id: &str,
    limit: usize,
) -> Result<Vec<DelayedEvent>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE user_id = ?1 ORDER BY running_since, delay_id LIMIT ?2"
    ))?;
    let rows = st.query_map(params![user_id, limit as i64], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many delayed events a user has waiting.
pub fn count_delayed_events(c: &Connection, user_id: &str) -> Result<usize, Error> {
    let n: i64 = c.query_row(
        "SELECT COUNT(*) FROM delayed_events WHERE user_id = ?1",
        params![user_id],
        |r| r.get(0),
    )?;
    Ok(usize::try_from(n).unwrap_or(usize::MAX))
}

/// Remove a delayed event; whether it was there.
pub fn delete_delayed_event(c: &Connection, delay_id: &str) -> Result<bool, Error> {
    Ok(c.execute(
        "DELETE FROM delayed_events WHERE delay_id = ?1",
        params![delay_id],
    )? > 0)
}

/// Start a delayed event's delay again from `now`.
pub fn restart_delayed_event(c: &Connection, delay_id: &str, now: i64) -> Result<bool, Error> {
    Ok(c.execute(
        "UPDATE delayed_events SET running_since = ?2, send_at = ?2 + delay_ms WHERE delay_id = ?1",
        params![delay_id, now],
    )? > 0)
}

/// Delayed events due at `now`, soonest first, at most `limit`.
pub fn due_delayed_events(
    c: &Connection,
    now: i64,
    limit: usize,
) -> Result<Vec<DelayedEvent>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM delayed_events WHERE send_at <= ?1 ORDER BY send_at LIMIT ?2"
    ))?;
    let rows = st.query_map(params![now, limit as i64], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// When the next delayed event is due.
pub fn next_delayed_event_at(c: &Connection) -> Result<Option<i64>, Error> {
    Ok(c.query_row("SELECT MIN(send_at) FROM delayed_events", [], |r| r.get(0))?)
}

/// Delayed state events of a user for this state key (a state event the user sends
/// now supersedes them).
pub fn delayed_state_events_for(
    c: &Connection,
    user_id: &str,
    room_id: &str,
    kind: &str,
    state_key: &str,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT delay_id FROM delayed_events
         WHERE user_id = ?1 AND room_id = ?2 AND type = ?3 AND state_key = ?4",
    )?;
    let rows = st.query_map(params![user_id, room_id, kind, state_key], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
