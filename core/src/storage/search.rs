//! Full-text search over timeline events (SQLite FTS5, table `event_search`).
//!
//! One row per searchable timeline event, `rowid` = the event's stream position. The
//! text is `content.body` of `m.room.message`, `content.name` of `m.room.name` or
//! `content.topic` of `m.room.topic`. Which of them (the search `key`) follows from the
//! event's type, so the index stores the text's tokens only (schema 23).

use rusqlite::{Connection, params};
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

/// Index a timeline event (no-op for events without searchable text).
pub fn index_event(c: &Connection, e: &StoredEvent) -> Result<(), Error> {
    if let Some((_, text)) = searchable_text(&e.kind, &e.json) {
        c.prepare_cached("INSERT INTO event_search (rowid, text) VALUES (?1, ?2)")?
            .execute(params![e.stream_ordering, text])?;
    }
    Ok(())
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
    let id: Option<String> = rusqlite::OptionalExtension::optional(
        c.prepare_cached("SELECT event_id FROM events WHERE stream_ordering = ?1")?
            .query_row([stream_ordering], |r| r.get(0)),
    )?;
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
