//! Reports of events and rooms (`POST /rooms/{roomId}/report[/{eventId}]`), for admins.

use rusqlite::{Connection, params};

use crate::error::Error;

/// A stored report.
#[derive(Clone, Debug)]
pub struct Report {
    /// Row id.
    pub id: i64,
    /// When it was received (ms since the epoch).
    pub received_ts: i64,
    /// The reported room.
    pub room_id: String,
    /// The reported event; `None` for a report of the room itself.
    pub event_id: Option<String>,
    /// Who reported.
    pub user_id: String,
    /// Their reason.
    pub reason: Option<String>,
    /// The (deprecated) score, -100..=0.
    pub score: Option<i64>,
}

/// Store a report; returns its id.
pub fn insert_report(c: &Connection, r: &Report) -> Result<i64, Error> {
    c.prepare_cached(
        "INSERT INTO event_reports (received_ts, room_id, event_id, user_id, reason, score)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        r.received_ts,
        r.room_id,
        r.event_id,
        r.user_id,
        r.reason,
        r.score
    ])?;
    Ok(c.last_insert_rowid())
}

/// Reports with an id below `before` (all when `None`), newest first, at most `limit`.
pub fn list_reports(
    c: &Connection,
    before: Option<i64>,
    limit: usize,
) -> Result<Vec<Report>, Error> {
    let mut st = c.prepare_cached(
        "SELECT id, received_ts, room_id, event_id, user_id, reason, score FROM event_reports
         WHERE id < ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = st.query_map(params![before.unwrap_or(i64::MAX), limit as i64], |r| {
        Ok(Report {
            id: r.get(0)?,
            received_ts: r.get(1)?,
            room_id: r.get(2)?,
            event_id: r.get(3)?,
            user_id: r.get(4)?,
            reason: r.get(5)?,
            score: r.get(6)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
