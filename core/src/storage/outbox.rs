//! The durable federation outbox: what each destination still has to receive.
//!
//! PDU rows carry the event id (the JSON is read from `events` when sent, so the outbox
//! stays small); EDU rows carry the EDU's JSON. Rows are deleted only after the
//! destination acknowledged the transaction that carried them.

use rusqlite::{Connection, params};
use serde_json::Value;

use crate::error::Error;

/// One transaction's worth of rows for a destination, oldest first.
#[derive(Debug, Default)]
pub struct OutboxBatch {
    /// Row ids, to delete once delivered.
    pub ids: Vec<i64>,
    /// Full PDU JSON objects.
    pub pdus: Vec<Value>,
    /// EDU objects (`edu_type`, `content`).
    pub edus: Vec<Value>,
}

/// Queue a PDU (by event id) for each destination.
pub fn enqueue_pdu(c: &Connection, destinations: &[String], event_id: &str) -> Result<(), Error> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO federation_outbox (destination, kind, payload, created_ts)
         VALUES (?1, 'pdu', ?2, ?3)",
    )?;
    let now = super::now_ms();
    for d in destinations {
        stmt.execute(params![d, event_id, now])?;
    }
    Ok(())
}

/// Queue a PDU (by event id) for each destination that has no row for it yet: a
/// forwarded event is queued at most once per destination while undelivered. Returns
/// the destinations actually queued. Looks only at each destination's rows (bounded by
/// the outbox limits), through its index.
pub fn enqueue_pdu_once(
    c: &Connection,
    destinations: &[String],
    event_id: &str,
) -> Result<Vec<String>, Error> {
    let mut stmt = c.prepare_cached(
        "INSERT INTO federation_outbox (destination, kind, payload, created_ts)
         SELECT ?1, 'pdu', ?2, ?3 WHERE NOT EXISTS (
             SELECT 1 FROM federation_outbox
             WHERE destination = ?1 AND kind = 'pdu' AND payload = ?2)",
    )?;
    let now = super::now_ms();
    let mut queued = Vec::new();
    for d in destinations {
        if stmt.execute(params![d, event_id, now])? > 0 {
            queued.push(d.clone());
        }
    }
    Ok(queued)
}

/// Drop the undelivered PDU rows for `event_id` queued for `destination`: it sent us the
/// event, so it has it. Returns how many rows went.
pub fn outbox_forget_pdu(
    c: &Connection,
    destination: &str,
    event_id: &str,
) -> Result<usize, Error> {
    Ok(c.prepare_cached(
        "DELETE FROM federation_outbox WHERE destination = ?1 AND kind = 'pdu' AND payload = ?2",
    )?
    .execute(params![destination, event_id])?)
}

/// Whether a PDU row for `event_id` waits for `destination`.
pub fn outbox_has_pdu(c: &Connection, destination: &str, event_id: &str) -> Result<bool, Error> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM federation_outbox WHERE destination = ?1 AND kind = 'pdu' AND payload = ?2",
    )?
    .exists(params![destination, event_id])?)
}

/// How many remembered inbound transactions from `origin` answered for `event_id` (each
/// inbound transaction's answer names its PDUs); for tests and diagnostics.
pub fn inbound_txns_carrying(c: &Connection, origin: &str, event_id: &str) -> Result<i64, Error> {
    let mut stmt =
        c.prepare_cached("SELECT response FROM federation_inbound_txns WHERE origin = ?1")?;
    let mut rows = stmt.query([origin])?;
    let mut n = 0;
    while let Some(row) = rows.next()? {
        let response: String = row.get(0)?;
        let v: Value = serde_json::from_str(&response).unwrap_or(Value::Null);
        if v["pdus"].get(event_id).is_some() {
            n += 1;
        }
    }
    Ok(n)
}

/// Queue an EDU for one destination.
pub fn enqueue_edu(c: &Connection, destination: &str, edu: &Value) -> Result<(), Error> {
    c.execute(
        "INSERT INTO federation_outbox (destination, kind, payload, created_ts)
         VALUES (?1, 'edu', ?2, ?3)",
        params![destination, edu.to_string(), super::now_ms()],
    )?;
    Ok(())
}

/// Drop what `destination` has not taken within the bounds: rows queued before
/// `older_than_ms`, and all but the newest `keep` rows. Returns how many were dropped.
/// Dropped PDUs are not lost to the destination: anti-entropy and backfill fetch them
/// when it is back. Visits at most the destination's rows, through its index.
pub fn trim_outbox(
    c: &Connection,
    destination: &str,
    keep: usize,
    older_than_ms: i64,
) -> Result<usize, Error> {
    let aged = c
        .prepare_cached("DELETE FROM federation_outbox WHERE destination = ?1 AND created_ts < ?2")?
        .execute(params![destination, older_than_ms])?;
    let keep = i64::try_from(keep).unwrap_or(i64::MAX);
    let over = c
        .prepare_cached(
            "DELETE FROM federation_outbox WHERE destination = ?1 AND id <= (
                 SELECT id FROM federation_outbox WHERE destination = ?1
                 ORDER BY id DESC LIMIT 1 OFFSET ?2)",
        )?
        .execute(params![destination, keep])?;
    Ok(aged + over)
}

/// Destinations with anything queued.
pub fn outbox_destinations(c: &Connection) -> Result<Vec<String>, Error> {
    let mut stmt = c.prepare_cached("SELECT DISTINCT destination FROM federation_outbox")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rows queued for `destination`, per destination and in total.
pub fn outbox_depth(c: &Connection, destination: &str) -> Result<i64, Error> {
    Ok(c.query_row(
        "SELECT count(*) FROM federation_outbox WHERE destination = ?1",
        [destination],
        |r| r.get(0),
    )?)
}

/// The `limit` largest queues (destination, rows), largest first, and how many
/// destinations have anything queued: one grouped scan of the (trimmed) outbox.
pub fn outbox_largest_depths(
    c: &Connection,
    limit: usize,
) -> Result<(Vec<(String, i64)>, i64), Error> {
    let mut stmt = c.prepare_cached(
        "SELECT destination, count(*) AS n FROM federation_outbox
         GROUP BY destination ORDER BY n DESC, destination",
    )?;
    let mut rows = stmt.query([])?;
    let mut out = Vec::new();
    let mut total = 0;
    while let Some(r) = rows.next()? {
        total += 1;
        if out.len() < limit {
            out.push((r.get(0)?, r.get(1)?));
        }
    }
    Ok((out, total))
}

/// The oldest rows for `destination`: at most `max_pdus` PDUs and `max_edus` EDUs, in
/// queue order. A PDU whose event is gone (cannot happen today; defensive) is skipped
/// but its row still returned so it is cleared.
pub fn outbox_batch(
    c: &Connection,
    destination: &str,
    max_pdus: usize,
    max_edus: usize,
) -> Result<OutboxBatch, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT o.id, o.kind, o.payload, e.json FROM federation_outbox o
         LEFT JOIN events e ON o.kind = 'pdu' AND e.event_id = o.payload
         WHERE o.destination = ?1 ORDER BY o.id LIMIT ?2",
    )?;
    let mut rows = stmt.query(params![destination, (max_pdus + max_edus) as i64])?;
    let mut batch = OutboxBatch::default();
    while let Some(row) = rows.next()? {
        let id: i64 = row.get(0)?;
        let kind: String = row.get(1)?;
        let payload: String = row.get(2)?;
        let json: Option<String> = row.get(3)?;
        if kind == "pdu" {
            if batch.pdus.len() >= max_pdus {
                break;
            }
            if let Some(json) = json {
                batch.pdus.push(serde_json::from_str(&json)?);
            }
        } else {
            if batch.edus.len() >= max_edus {
                break;
            }
            batch.edus.push(serde_json::from_str(&payload)?);
        }
        batch.ids.push(id);
    }
    Ok(batch)
}

/// Forget delivered rows.
pub fn outbox_delete(c: &Connection, ids: &[i64]) -> Result<(), Error> {
    let mut stmt = c.prepare_cached("DELETE FROM federation_outbox WHERE id = ?1")?;
    for id in ids {
        stmt.execute([id])?;
    }
    Ok(())
}

/// The servers of a room's joined members.
pub fn joined_servers(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership = 'join'",
    )?;
    let rows = stmt.query_map([room_id], |r| r.get::<_, String>(0))?;
    super::servers_of(rows)
}

/// How long a processed inbound transaction id is remembered.
const INBOUND_TXN_TTL_MS: i64 = 24 * 3600 * 1000;

/// The answer given to an inbound transaction already processed, if any.
pub fn inbound_txn_response(
    c: &Connection,
    origin: &str,
    txn_id: &str,
) -> Result<Option<Value>, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT response FROM federation_inbound_txns WHERE origin = ?1 AND txn_id = ?2",
    )?;
    let mut rows = stmt.query(params![origin, txn_id])?;
    match rows.next()? {
        Some(row) => Ok(Some(serde_json::from_str(&row.get::<_, String>(0)?)?)),
        None => Ok(None),
    }
}

/// Remember an inbound transaction's answer, and forget ones older than a day.
pub fn record_inbound_txn(
    c: &Connection,
    origin: &str,
    txn_id: &str,
    response: &Value,
) -> Result<(), Error> {
    let now = super::now_ms();
    c.execute(
        "INSERT OR REPLACE INTO federation_inbound_txns (origin, txn_id, response, received_ts)
         VALUES (?1, ?2, ?3, ?4)",
        params![origin, txn_id, response.to_string(), now],
    )?;
    c.execute(
        "DELETE FROM federation_inbound_txns WHERE received_ts < ?1",
        [now - INBOUND_TXN_TTL_MS],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn a_forwarded_pdu_is_queued_once_per_destination_and_forgotten_when_received() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        let dests = vec!["b".to_owned(), "c".to_owned()];
        let first = db
            .write(|c| enqueue_pdu_once(c, &dests, "$e"))
            .expect("queue");
        assert_eq!(first, dests);
        // Again, and with one new destination: only the new one is queued.
        let again = db
            .write(|c| enqueue_pdu_once(c, &["b".to_owned(), "d".to_owned()], "$e"))
            .expect("queue again");
        assert_eq!(again, vec!["d".to_owned()]);
        assert_eq!(db.read(|c| outbox_depth(c, "b")).expect("depth"), 1);
        // B sent us the event: it has it, its row goes; C's stays.
        let gone = db
            .write(|c| outbox_forget_pdu(c, "b", "$e"))
            .expect("forget");
        assert_eq!(gone, 1);
        assert!(!db.read(|c| outbox_has_pdu(c, "b", "$e")).expect("has"));
        assert!(db.read(|c| outbox_has_pdu(c, "c", "$e")).expect("has"));
    }

    #[test]
    fn the_largest_queues_are_listed_up_to_the_limit_with_the_total() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        db.write(|c| {
            for (dest, n) in [("a", 1), ("b", 3), ("c", 2)] {
                for i in 0..n {
                    enqueue_edu(
                        c,
                        dest,
                        &json!({"edu_type": "m.typing", "content": {"n": i}}),
                    )?;
                }
            }
            Ok(())
        })
        .expect("queue");
        let (top, total) = db.read(|c| outbox_largest_depths(c, 2)).expect("depths");
        assert_eq!(top, vec![("b".to_owned(), 3), ("c".to_owned(), 2)]);
        assert_eq!(total, 3);
    }

    #[test]
    fn a_destination_queue_is_trimmed_to_its_newest_rows_and_by_age() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        db.write(|c| {
            for i in 0..30 {
                enqueue_edu(
                    c,
                    "gone",
                    &json!({"edu_type": "m.typing", "content": {"n": i}}),
                )?;
            }
            for i in 0..5 {
                enqueue_edu(
                    c,
                    "here",
                    &json!({"edu_type": "m.typing", "content": {"n": i}}),
                )?;
            }
            Ok(())
        })
        .expect("queue");
        let dropped = db.write(|c| trim_outbox(c, "gone", 10, 0)).expect("trim");
        assert_eq!(dropped, 20);
        let (gone, here) = db
            .read(|c| Ok((outbox_depth(c, "gone")?, outbox_depth(c, "here")?)))
            .expect("depth");
        assert_eq!((gone, here), (10, 5));
        // The newest ten are what is left, oldest first.
        let batch = db
            .read(|c| outbox_batch(c, "gone", 50, 100))
            .expect("batch");
        let ns: Vec<i64> = batch
            .edus
            .iter()
            .filter_map(|e| e["content"]["n"].as_i64())
            .collect();
        assert_eq!(ns, (20..30).collect::<Vec<_>>());
        // Everything queued before the cut-off goes, whatever the count.
        let dropped = db
            .write(|c| trim_outbox(c, "gone", 10, super::super::now_ms() + 1))
            .expect("trim by age");
        assert_eq!(dropped, 10);
        assert_eq!(db.read(|c| outbox_depth(c, "here")).expect("depth"), 5);
    }
}
