//! Read receipts (`m.read`, `m.read.private`, threaded).

use rusqlite::{Connection, params};

use crate::error::Error;

/// A receipt row.
#[derive(Clone, Debug)]
pub struct Receipt {
    /// `m.read` or `m.read.private`.
    pub receipt_type: String,
    /// Reader.
    pub user_id: String,
    /// `main`, a thread root, or empty for unthreaded.
    pub thread_id: String,
    /// Event read up to.
    pub event_id: String,
    /// When.
    pub ts: i64,
}

/// Record a receipt at a stream position.
pub fn set_receipt(c: &Connection, room_id: &str, r: &Receipt, pos: i64) -> Result<(), Error> {
    c.execute(
        "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
         ON CONFLICT (room_id, receipt_type, user_id, thread_id) DO UPDATE SET event_id = excluded.event_id,
             ts = excluded.ts, stream_ordering = excluded.stream_ordering",
        params![room_id, r.receipt_type, r.user_id, r.thread_id, r.event_id, r.ts, pos],
    )?;
    if matches!(r.receipt_type.as_str(), "m.read" | "m.read.private") {
        super::recount_unread(c, room_id, &r.user_id)?;
    }
    Ok(())
}

/// Receipts of a room changed in `(after, up_to]`.
pub fn receipts_since(
    c: &Connection,
    room_id: &str,
    after: i64,
    up_to: i64,
) -> Result<Vec<Receipt>, Error> {
    let mut st = c.prepare_cached(
        "SELECT receipt_type, user_id, thread_id, event_id, ts FROM receipts
         WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3",
    )?;
    let rows = st.query_map(params![room_id, after, up_to], |r| {
        Ok(Receipt {
            receipt_type: r.get(0)?,
            user_id: r.get(1)?,
            thread_id: r.get(2)?,
            event_id: r.get(3)?,
            ts: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
