//! Application services' positions in the event stream and their pending transaction.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::storage::StoredEvent;
use crate::streams::StreamPosition;

/// Where an appservice is in the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppserviceStream {
    /// Everything up to here was delivered (or was of no interest to it).
    pub pos: StreamPosition,
    /// The typing serial delivered.
    pub typing_serial: u64,
    /// The last transaction id used.
    pub last_txn: i64,
    /// A transaction built and not yet acknowledged: id, the position it reaches, body.
    pub pending: Option<(i64, StreamPosition, String)>,
}

/// Give an appservice its row if it has none, at `start` (the stream's current
/// position: a new appservice gets what happens from now on, not the node's history).
pub fn ensure_appservice_stream(
    c: &Connection,
    as_id: &str,
    start: StreamPosition,
) -> Result<(), Error> {
    c.prepare_cached("INSERT OR IGNORE INTO appservice_stream (as_id, pos) VALUES (?1, ?2)")?
        .execute(params![as_id, start])?;
    Ok(())
}

/// The appservice's row (see [`ensure_appservice_stream`]).
pub fn appservice_stream(c: &Connection, as_id: &str) -> Result<AppserviceStream, Error> {
    let row = c
        .prepare_cached(
            "SELECT pos, typing_serial, last_txn, pending_txn, pending_up_to, pending_body
             FROM appservice_stream WHERE as_id = ?1",
        )?
        .query_row(params![as_id], |r| {
            let txn: Option<i64> = r.get(3)?;
            let up_to: Option<i64> = r.get(4)?;
            let body: Option<String> = r.get(5)?;
            Ok(AppserviceStream {
                pos: r.get(0)?,
                typing_serial: r.get::<_, i64>(1)?.max(0) as u64,
                last_txn: r.get(2)?,
                pending: match (txn, up_to, body) {
                    (Some(t), Some(u), Some(b)) => Some((t, u, b)),
                    _ => None,
                },
            })
        })?;
    Ok(row)
}

/// The position of an appservice, if it has a row.
pub fn appservice_pos(c: &Connection, as_id: &str) -> Result<Option<StreamPosition>, Error> {
    Ok(c.query_row(
        "SELECT pos FROM appservice_stream WHERE as_id = ?1",
        params![as_id],
        |r| r.get(0),
    )
    .optional()?)
}

/// How many timeline events lie in `(after, up_to]`.
pub fn timeline_events_after(
    c: &Connection,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<i64, Error> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
           AND status = 'timeline'",
        params![after, up_to],
        |r| r.get(0),
    )?)
}

/// Record a transaction to send: it takes the next id and covers up to `up_to`.
pub fn set_appservice_pending(
    c: &Connection,
    as_id: &str,
    up_to: StreamPosition,
    typing_serial: u64,
    body: &str,
) -> Result<i64, Error> {
    let txn: i64 = c.query_row(
        "UPDATE appservice_stream SET last_txn = last_txn + 1, pending_txn = last_txn + 1,
             pending_up_to = ?2, pending_body = ?3, typing_serial = ?4
         WHERE as_id = ?1 RETURNING pending_txn",
        params![as_id, up_to, body, typing_serial as i64],
        |r| r.get(0),
    )?;
    Ok(txn)
}

/// The pending transaction was taken (or there was nothing of interest up to `up_to`):
/// move the position on.
pub fn advance_appservice(
    c: &Connection,
    as_id: &str,
    up_to: StreamPosition,
    typing_serial: u64,
) -> Result<(), Error> {
    c.prepare_cached(
        "UPDATE appservice_stream SET pos = MAX(pos, ?2), typing_serial = ?3,
             pending_txn = NULL, pending_up_to = NULL, pending_body = NULL
         WHERE as_id = ?1",
    )?
    .execute(params![as_id, up_to, typing_serial as i64])?;
    Ok(())
}

/// Timeline events in `(after, up_to]`, oldest first, at most `limit`.
pub fn timeline_events_between(
    c: &Connection,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<StoredEvent>, Error> {
    let sql = format!(
        "SELECT {} FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?2
           AND status = 'timeline' ORDER BY stream_ordering LIMIT ?3",
        super::events::COLUMNS
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params![after, up_to, limit as i64], |r| {
        super::events::from_row_at(r, 0)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Public receipts written in `(after, up_to]` in any room, at most `limit`:
/// `(room, receipt)`.
pub fn receipts_between(
    c: &Connection,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<(String, super::Receipt)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT room_id, receipt_type, user_id, thread_id, event_id, ts FROM receipts
         WHERE stream_ordering > ?1 AND stream_ordering <= ?2 AND receipt_type = 'm.read'
         ORDER BY stream_ordering LIMIT ?3",
    )?;
    let rows = st.query_map(params![after, up_to, limit as i64], |r| {
        Ok((
            r.get(0)?,
            super::Receipt {
                receipt_type: r.get(1)?,
                user_id: r.get(2)?,
                thread_id: r.get(3)?,
                event_id: r.get(4)?,
                ts: r.get(5)?,
            },
        ))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Presence rows changed in `(after, up_to]`, at most `limit`.
pub fn presence_between(
    c: &Connection,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<super::PresenceRow>, Error> {
    let mut out = Vec::new();
    let ids: Vec<String> = c
        .prepare_cached(
            "SELECT user_id FROM presence WHERE stream_ordering > ?1 AND stream_ordering <= ?2
             ORDER BY stream_ordering LIMIT ?3",
        )?
        .query_map(params![after, up_to, limit as i64], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for id in ids {
        if let Some(p) = super::presence(c, &id)? {
            out.push(p);
        }
    }
    Ok(out)
}

/// A to-device message as an appservice gets it.
#[derive(Clone, Debug)]
pub struct InboxMessage {
    /// Recipient.
    pub user_id: String,
    /// Recipient device.
    pub device_id: String,
    /// Sender.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content JSON.
    pub content: String,
}

/// To-device messages queued in `(after, up_to]` for any device, oldest first.
pub fn to_device_between(
    c: &Connection,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<InboxMessage>, Error> {
    let mut st = c.prepare_cached(
        "SELECT user_id, device_id, sender, type, content FROM to_device_inbox
         WHERE stream_ordering > ?1 AND stream_ordering <= ?2 ORDER BY stream_ordering LIMIT ?3",
    )?;
    let rows = st.query_map(params![after, up_to, limit as i64], |r| {
        Ok(InboxMessage {
            user_id: r.get(0)?,
            device_id: r.get(1)?,
            sender: r.get(2)?,
            event_type: r.get(3)?,
            content: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Local users that have at least one device.
pub fn users_with_devices(c: &Connection) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached("SELECT DISTINCT user_id FROM devices")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
