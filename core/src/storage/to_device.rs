//! The to-device inbox: messages waiting for one device, each at its own stream
//! position, deleted once the device acknowledges a sync token past them.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::streams::StreamPosition;

/// A to-device message waiting in an inbox.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToDeviceRow {
    /// Its stream position.
    pub stream_ordering: StreamPosition,
    /// Sending user.
    pub sender: String,
    /// Event type.
    pub event_type: String,
    /// Content JSON text.
    pub content: String,
}

/// Record a to-device transaction id; false when it was already used (a retry).
pub fn claim_to_device_txn(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
) -> Result<bool, Error> {
    Ok(c.execute(
        "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES (?1, ?2, ?3)
         ON CONFLICT DO NOTHING",
        params![user_id, device_id, txn_id],
    )? > 0)
}

/// Messages waiting for a device, counted up to `cap` (never more rows visited).
pub fn pending_to_device(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    cap: usize,
) -> Result<usize, Error> {
    let cap = i64::try_from(cap).unwrap_or(i64::MAX);
    let n: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM to_device_inbox
             WHERE user_id = ?1 AND device_id = ?2 LIMIT ?3)",
        )?
        .query_row(params![user_id, device_id, cap], |r| r.get(0))?;
    Ok(usize::try_from(n).unwrap_or(0))
}

/// Queue one message for a device at `pos`.
pub fn insert_to_device(
    c: &Connection,
    pos: StreamPosition,
    user_id: &str,
    device_id: &str,
    sender: &str,
    event_type: &str,
    content: &str,
) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO to_device_inbox (stream_ordering, user_id, device_id, sender, type, content)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        pos, user_id, device_id, sender, event_type, content
    ])?;
    Ok(())
}

/// Up to `limit` messages for a device in `(after, up_to]`, oldest first.
pub fn to_device_since(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
    limit: usize,
) -> Result<Vec<ToDeviceRow>, Error> {
    let mut st = c.prepare_cached(
        "SELECT stream_ordering, sender, type, content FROM to_device_inbox
         WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering > ?3 AND stream_ordering <= ?4
         ORDER BY stream_ordering LIMIT ?5",
    )?;
    let rows = st.query_map(
        params![user_id, device_id, after, up_to, limit as i64],
        |r| {
            Ok(ToDeviceRow {
                stream_ordering: r.get(0)?,
                sender: r.get(1)?,
                event_type: r.get(2)?,
                content: r.get(3)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the device has any message at or below `up_to` (cheap check before taking the
/// writer to delete acknowledged messages).
pub fn has_to_device_up_to(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    up_to: StreamPosition,
) -> Result<bool, Error> {
    Ok(c.query_row(
        "SELECT 1 FROM to_device_inbox WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3 LIMIT 1",
        params![user_id, device_id, up_to],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// Delete the messages a device has acknowledged (positions at or below `up_to`).
pub fn delete_to_device_up_to(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    up_to: StreamPosition,
) -> Result<usize, Error> {
    Ok(c.execute(
        "DELETE FROM to_device_inbox WHERE user_id = ?1 AND device_id = ?2 AND stream_ordering <= ?3",
        params![user_id, device_id, up_to],
    )?)
}

/// How long the id of a to-device message received over federation is remembered.
const SEEN_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

/// Record an inbound federated to-device message id; false when it was seen before.
/// Ids older than a week are forgotten.
pub fn claim_federated_to_device(
    c: &Connection,
    origin: &str,
    sender: &str,
    message_id: &str,
) -> Result<bool, Error> {
    let now = super::now_ms();
    c.prepare_cached("DELETE FROM federation_to_device_seen WHERE received_ts < ?1")?
        .execute([now - SEEN_TTL_MS])?;
    Ok(c.prepare_cached(
        "INSERT INTO federation_to_device_seen (origin, sender, message_id, received_ts)
         VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )?
    .execute(params![origin, sender, message_id, now])?
        > 0)
}
