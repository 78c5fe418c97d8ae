//! Full-text search over timeline events (SQLite FTS5, table `event_search`).
//!
//! One row per searchable timeline event, `rowid` = the event's stream position. The
//! text is `content.body` of `m.room.message`, `content.name` of `m.room.name` or
//! `content.topic` of `m.room.topic`. Which of them (the search `key`) follows from the
//! event's type, so the index stores the text's tokens only (schema 23).
//!
//! Live events (positive stream positions) are not indexed inside the write that
//! persists them: FTS5 writes a segment of its own at every savepoint and commit, so
//! indexing each send on its own cost a segment, its merges and their WAL pages per
//! message. They are indexed after their commit, many to a write ([`index_pending`]),
//! by the node's search indexer and by every search before it reads
//! (`crate::search`), so a search never misses a committed event. `search_indexed.up_to`
//! is the last live position looked at (schema 31). Backfilled history (negative
//! positions) is indexed as it is stored, as before.

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;

use super::StoredEvent;
use crate::error::Error;

/// The searchable keys with the event type each belongs to and the content field that
/// holds its text.
const KEYS: [(&str, &str, &str); 3] = [
    ("content.body", "m.room.message", "body"),
    ("content.name", "m.room.name", "name"),
    ("content.topic", "m.room.topic", "topic"),
];

/// The searchable key and text of an event, if it has one.
pub fn searchable_text(kind: &str, json: &str) -> Option<(&'static str, String)> {
    let &(key, _, field) = KEYS.iter().find(|(_, t, _)| *t == kind)?;
    let v: Value = serde_json::from_str(json).ok()?;
    let text = v["content"][field].as_str()?;
    (!text.trim().is_empty()).then(|| (key, text.to_owned()))
}

/// Index a timeline event now (no-op for events without searchable text): backfilled
/// history, whose positions [`index_pending`] never walks.
pub fn index_event(c: &Connection, e: &StoredEvent) -> Result<(), Error> {
    if let Some((_, text)) = searchable_text(&e.kind, &e.json) {
        c.prepare_cached("INSERT INTO event_search (rowid, text) VALUES (?1, ?2)")?
            .execute(params![e.stream_ordering, text])?;
    }
    Ok(())
}

/// What one [`index_pending`] call did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IndexedBatch {
    /// Live events looked at.
    pub scanned: usize,
    /// Of them, those whose text went into the index.
    pub indexed: usize,
    /// Whether live events past the batch (up to `until`) are still waiting.
    pub more: bool,
}

/// The last live stream position looked at by [`index_pending`].
fn indexed_up_to(c: &Connection) -> Result<i64, Error> {
    Ok(
        c.prepare_cached("SELECT up_to FROM search_indexed WHERE id = 0")?
            .query_row([], |r| r.get(0))
            .optional()?
            .unwrap_or(0),
    )
}

/// Whether some committed live event has not been looked at by [`index_pending`] yet
/// (one index seek).
pub fn search_index_behind(c: &Connection) -> Result<bool, Error> {
    let up_to = indexed_up_to(c)?;
    Ok(
        c.prepare_cached("SELECT EXISTS (SELECT 1 FROM events WHERE stream_ordering > ?1)")?
            .query_row([up_to], |r| r.get(0))?,
    )
}

/// Live events not looked at by [`index_pending`] yet (for tests and metrics: counts
/// them one by one).
pub fn search_index_lag(c: &Connection) -> Result<i64, Error> {
    let up_to = indexed_up_to(c)?;
    Ok(
        c.prepare_cached("SELECT COUNT(*) FROM events WHERE stream_ordering > ?1")?
            .query_row([up_to], |r| r.get(0))?,
    )
}

/// The highest live stream position of a stored event (0 with none).
pub fn newest_live_position(c: &Connection) -> Result<i64, Error> {
    Ok(
        c.prepare_cached("SELECT MAX(MAX(stream_ordering), 0) FROM events")?
            .query_row([], |r| r.get::<_, Option<i64>>(0))?
            .unwrap_or(0),
    )
}

/// Index the next (at most `batch`) live events after `search_indexed.up_to` and up to
/// position `until`, in position order, and move `up_to` past them. Runs in a write, so every event at or
/// below the highest position handed out is already stored (one writer assigns
/// positions in order and commits in that order). Redacted and non-timeline events are
/// skipped: their text is gone or never shown.
pub fn index_pending(c: &Connection, batch: usize, until: i64) -> Result<IndexedBatch, Error> {
    let up_to = indexed_up_to(c)?;
    let limit = i64::try_from(batch).unwrap_or(i64::MAX).saturating_add(1);
    let rows: Vec<(i64, String, String, bool)> = c
        .prepare_cached(
            "SELECT stream_ordering, type, json,
                    status = 'timeline' AND redacted_by IS NULL
             FROM events WHERE stream_ordering > ?1 AND stream_ordering <= ?3
             ORDER BY stream_ordering LIMIT ?2",
        )?
        .query_map(params![up_to, limit, until], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })?
        .collect::<Result<_, _>>()?;
    let more = rows.len() > batch;
    let mut done = IndexedBatch {
        more,
        ..IndexedBatch::default()
    };
    let mut last = up_to;
    let mut insert = c.prepare_cached("INSERT INTO event_search (rowid, text) VALUES (?1, ?2)")?;
    for (pos, kind, json, shown) in rows.into_iter().take(batch) {
        last = pos;
        done.scanned += 1;
        if !shown {
            continue;
        }
        if let Some((_, text)) = searchable_text(&kind, &json) {
            insert.execute(params![pos, text])?;
            done.indexed += 1;
        }
    }
    if last != up_to {
        c.prepare_cached("UPDATE search_indexed SET up_to = ?1 WHERE id = 0")?
            .execute([last])?;
    }
    Ok(done)
}

/// Drop an event from the index (on redaction).
pub fn unindex_event(c: &Connection, stream_ordering: i64) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM event_search WHERE rowid = ?1")?
        .execute([stream_ordering])?;
    Ok(())
}

/// One search hit, before visibility and filters are applied.
#[derive(Clone, Debug)]
pub struct SearchHit {
    /// Stream position of the event.
    pub stream_ordering: i64,
    /// Room of the event.
    pub room_id: String,
    /// Event type.
    pub kind: String,
    /// Sender.
    pub sender: String,
    /// bm25 score: lower is better (SQLite's FTS5 convention).
    pub bm25: f64,
}

/// Events in `rooms` whose indexed text under one of `keys` matches the FTS5 `query`,
/// best first (`by_rank`) or newest first, at most `cap` rows. Redacted and non-timeline
/// events are never returned.
pub fn search_events(
    c: &Connection,
    query: &str,
    keys: &[&str],
    rooms: &[String],
    by_rank: bool,
    cap: usize,
) -> Result<Vec<SearchHit>, Error> {
    let order = if by_rank {
        "bm25(event_search) ASC, e.stream_ordering DESC"
    } else {
        "e.stream_ordering DESC"
    };
    let mut st = c.prepare_cached(&format!(
        "SELECT e.stream_ordering, e.room_id, e.type, e.sender, bm25(event_search)
         FROM event_search JOIN events e ON e.stream_ordering = event_search.rowid
         WHERE event_search MATCH ?1
           AND e.type IN (SELECT value FROM json_each(?2))
           AND e.room_id IN (SELECT value FROM json_each(?3))
           AND e.status = 'timeline' AND e.redacted_by IS NULL
         ORDER BY {order} LIMIT ?4"
    ))?;
    // A key names the one event type whose text it is.
    let types: Vec<&str> = KEYS
        .iter()
        .filter(|(k, _, _)| keys.contains(k))
        .map(|(_, t, _)| *t)
        .collect();
    let types = serde_json::to_string(&types)?;
    let rooms = serde_json::to_string(rooms)?;
    let cap = i64::try_from(cap).unwrap_or(i64::MAX);
    let rows = st.query_map(params![query, types, rooms, cap], |r| {
        Ok(SearchHit {
            stream_ordering: r.get(0)?,
            room_id: r.get(1)?,
            kind: r.get(2)?,
            sender: r.get(3)?,
            bm25: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An event by stream position (timeline events only).
pub fn event_at(c: &Connection, stream_ordering: i64) -> Result<Option<StoredEvent>, Error> {
    let id: Option<String> = c
        .prepare_cached("SELECT event_id FROM events WHERE stream_ordering = ?1")?
        .query_row([stream_ordering], |r| r.get(0))
        .optional()?;
    match id {
        Some(id) => super::get_event(c, &id),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn searchable_text_picks_the_key() {
        let j = r#"{"content":{"body":"hello world","msgtype":"m.text"}}"#;
        assert_eq!(
            searchable_text("m.room.message", j),
            Some(("content.body", "hello world".to_owned()))
        );
        assert_eq!(searchable_text("m.room.member", j), None);
        assert_eq!(searchable_text("m.room.message", r#"{"content":{}}"#), None);
        assert_eq!(searchable_text("m.room.message", "not json"), None);
        assert_eq!(
            searchable_text("m.room.topic", r#"{"content":{"topic":"t"}}"#),
            Some(("content.topic", "t".to_owned()))
        );
    }
}
