//! Event relationships (`event_relations`) and thread activity (`threads`).
//!
//! Lookups for bundled aggregations take a whole page of parent events at once (a JSON
//! array bound to one parameter and expanded with `json_each`), so a response costs a
//! fixed number of queries whatever its length. Every lookup walks the
//! `(relates_to_id, …)` indexes, so its cost is bounded by the children of the events
//! asked about, never by the room's history.

use rusqlite::{Connection, OptionalExtension, params};

use super::events::{columns_of, from_row_at};
use super::{EventStatus, StoredEvent};
use crate::error::Error;

/// One stored relationship: `event_id` relates to `relates_to_id` with `rel_type`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Relation {
    /// The child event.
    pub event_id: String,
    /// The parent event.
    pub relates_to_id: String,
    /// `m.replace`, `m.thread`, `m.reference`, `m.annotation` or any other type.
    pub rel_type: String,
    /// The child's room.
    pub room_id: String,
    /// The child's sender.
    pub sender: String,
    /// The child's event type.
    pub kind: String,
    /// The child's stream position.
    pub stream_ordering: i64,
}

/// Thread summary numbers for one root.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadCounts {
    /// The root event.
    pub root_id: String,
    /// Replies in the window.
    pub count: i64,
    /// Stream position of the newest reply in the window.
    pub latest_pos: i64,
    /// Whether the viewer sent one of the replies.
    pub viewer_replied: bool,
}

fn ids_json(ids: &[&str]) -> Result<String, Error> {
    Ok(serde_json::to_string(ids)?)
}

/// Record a relationship (a new timeline event); a thread reply also moves its thread
/// to the top of the room's thread list.
pub fn insert_relation(c: &Connection, r: &Relation) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT OR IGNORE INTO event_relations
             (event_id, relates_to_id, rel_type, room_id, sender, type, stream_ordering)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        r.event_id,
        r.relates_to_id,
        r.rel_type,
        r.room_id,
        r.sender,
        r.kind,
        r.stream_ordering
    ])?;
    if r.rel_type == "m.thread" {
        c.prepare_cached(
            "INSERT INTO threads (room_id, root_id, latest_event_id, latest_pos)
             VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (room_id, root_id) DO UPDATE
                 SET latest_event_id = excluded.latest_event_id, latest_pos = excluded.latest_pos
                 WHERE excluded.latest_pos > threads.latest_pos",
        )?
        .execute(params![
            r.room_id,
            r.relates_to_id,
            r.event_id,
            r.stream_ordering
        ])?;
    }
    Ok(())
}

/// Forget the relationship of a redacted event. A redacted thread reply hands the
/// thread's "newest reply" to the previous one (or drops the thread when none is left).
pub fn delete_relation(c: &Connection, event_id: &str) -> Result<(), Error> {
    let gone: Option<(String, String, String)> = c
        .prepare_cached(
            "DELETE FROM event_relations WHERE event_id = ?1
             RETURNING relates_to_id, rel_type, room_id",
        )?
        .query_row([event_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?;
    let Some((root, rel_type, room_id)) = gone else {
        return Ok(());
    };
    if rel_type != "m.thread" {
        return Ok(());
    }
    let latest: Option<(String, i64)> = c
        .prepare_cached(
            "SELECT event_id, stream_ordering FROM event_relations
             WHERE relates_to_id = ?1 AND rel_type = 'm.thread' AND room_id = ?2
             ORDER BY stream_ordering DESC LIMIT 1",
        )?
        .query_row(params![root, room_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    match latest {
        Some((id, pos)) => {
            c.prepare_cached(
                "UPDATE threads SET latest_event_id = ?3, latest_pos = ?4
                 WHERE room_id = ?1 AND root_id = ?2",
            )?
            .execute(params![room_id, root, id, pos])?;
        }
        None => {
            c.prepare_cached("DELETE FROM threads WHERE room_id = ?1 AND root_id = ?2")?
                .execute(params![room_id, root])?;
        }
    }
    Ok(())
}

/// The relationship an event has, if it has one.
pub fn relation_of(c: &Connection, event_id: &str) -> Result<Option<Relation>, Error> {
    Ok(c.prepare_cached(
        "SELECT event_id, relates_to_id, rel_type, room_id, sender, type, stream_ordering
         FROM event_relations WHERE event_id = ?1",
    )?
    .query_row([event_id], |r| {
        Ok(Relation {
            event_id: r.get(0)?,
            relates_to_id: r.get(1)?,
            rel_type: r.get(2)?,
            room_id: r.get(3)?,
            sender: r.get(4)?,
            kind: r.get(5)?,
            stream_ordering: r.get(6)?,
        })
    })
    .optional()?)
}

/// Whether `sender` already annotated `parent` with `key` using an event of `kind`.
pub fn has_annotation(
    c: &Connection,
    parent: &str,
    sender: &str,
    kind: &str,
    key: &str,
) -> Result<bool, Error> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM event_relations r JOIN events e ON e.event_id = r.event_id
         WHERE r.relates_to_id = ?1 AND r.rel_type = 'm.annotation' AND r.sender = ?2
           AND r.type = ?3 AND e.redacted_by IS NULL
           AND json_extract(e.json, '$.content.\"m.relates_to\".key') = ?4
         LIMIT 1",
    )?
    .query_row(params![parent, sender, kind, key], |_| Ok(()))
    .optional()?
    .is_some())
}

/// The newest valid replacement (`m.replace`) of each parent, as the spec defines one:
/// same room, same sender, same type, neither a state event, `m.new_content` present
/// (unless encrypted), not redacted, inside the window `(min, max]`. Newest means the
/// highest `origin_server_ts`, then the lexicographically largest event id.
pub fn latest_edits(
    c: &Connection,
    parents: &[&str],
    min: i64,
    max: i64,
) -> Result<Vec<(String, StoredEvent)>, Error> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let cols = columns_of("e");
    let sql = format!(
        "SELECT parent_id, {inner} FROM (
             SELECT r.relates_to_id AS parent_id, {cols},
                    ROW_NUMBER() OVER (PARTITION BY r.relates_to_id
                        ORDER BY e.origin_server_ts DESC, e.event_id DESC) AS rn
             FROM json_each(?1) j
             JOIN event_relations r ON r.relates_to_id = j.value AND r.rel_type = 'm.replace'
             JOIN events p ON p.event_id = r.relates_to_id
             JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = p.room_id AND r.sender = p.sender AND e.type = p.type
               AND p.state_key IS NULL AND e.state_key IS NULL
               AND e.status = 'timeline' AND e.redacted_by IS NULL
               AND e.stream_ordering > ?2 AND e.stream_ordering <= ?3
               AND (e.type = 'm.room.encrypted'
                    OR json_type(e.json, '$.content.\"m.new_content\"') = 'object')
         ) WHERE rn = 1",
        inner = super::events::COLUMNS,
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map(params![ids_json(parents)?, min, max], |r| {
        Ok((r.get::<_, String>(0)?, from_row_at(r, 1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether any of `ids` is the parent of a relation (a thread reply, an edit, a
/// reference, an annotation), in any window: most timelines have none, and then there is
/// nothing to bundle and no need to ask for each kind.
pub fn any_relations(c: &Connection, ids: &[&str]) -> Result<bool, Error> {
    if ids.is_empty() {
        return Ok(false);
    }
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM json_each(?1) j
                        JOIN event_relations r ON r.relates_to_id = j.value)",
    )?
    .query_row([ids_json(ids)?], |r| r.get(0))?)
}

/// Reply counts, newest reply and the viewer's participation for each thread root, over
/// the replies inside the window `(min, max]`. Roots without replies are left out.
pub fn thread_counts(
    c: &Connection,
    roots: &[&str],
    room_id: &str,
    viewer: &str,
    min: i64,
    max: i64,
) -> Result<Vec<ThreadCounts>, Error> {
    if roots.is_empty() {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(
        "SELECT r.relates_to_id, COUNT(*), MAX(r.stream_ordering), MAX(r.sender = ?3)
         FROM json_each(?1) j
         JOIN event_relations r ON r.relates_to_id = j.value AND r.rel_type = 'm.thread'
         WHERE r.room_id = ?2 AND r.stream_ordering > ?4 AND r.stream_ordering <= ?5
         GROUP BY r.relates_to_id",
    )?;
    let rows = st.query_map(params![ids_json(roots)?, room_id, viewer, min, max], |r| {
        Ok(ThreadCounts {
            root_id: r.get(0)?,
            count: r.get(1)?,
            latest_pos: r.get(2)?,
            viewer_replied: r.get::<_, i64>(3)? != 0,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The `m.reference` children of each parent inside the window `(min, max]`, oldest
/// first, at most `per_parent` each.
pub fn references(
    c: &Connection,
    parents: &[&str],
    room_id: &str,
    min: i64,
    max: i64,
    per_parent: usize,
) -> Result<Vec<(String, String)>, Error> {
    if parents.is_empty() {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(
        "SELECT parent_id, event_id FROM (
             SELECT r.relates_to_id AS parent_id, r.event_id, r.stream_ordering,
                    ROW_NUMBER() OVER (PARTITION BY r.relates_to_id
                        ORDER BY r.stream_ordering) AS rn
             FROM json_each(?1) j
             JOIN event_relations r ON r.relates_to_id = j.value AND r.rel_type = 'm.reference'
             WHERE r.room_id = ?2 AND r.stream_ordering > ?3 AND r.stream_ordering <= ?4
         ) WHERE rn <= ?5 ORDER BY parent_id, stream_ordering",
    )?;
    let rows = st.query_map(
        params![ids_json(parents)?, room_id, min, max, per_parent as i64],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Timeline events at these stream positions (any order).
pub fn events_at_positions(c: &Connection, positions: &[i64]) -> Result<Vec<StoredEvent>, Error> {
    if positions.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM json_each(?1) j JOIN events e ON e.stream_ordering = j.value
         WHERE e.status = '{}'",
        columns_of("e"),
        EventStatus::Timeline.as_str()
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map([serde_json::to_string(positions)?], |r| from_row_at(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Timeline events with these ids (any order; unknown ids are left out).
pub fn events_by_ids(c: &Connection, ids: &[&str]) -> Result<Vec<StoredEvent>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let sql = format!(
        "SELECT {} FROM json_each(?1) j JOIN events e ON e.event_id = j.value
         WHERE e.status = '{}'",
        columns_of("e"),
        EventStatus::Timeline.as_str()
    );
    let mut st = c.prepare_cached(&sql)?;
    let rows = st.query_map([ids_json(ids)?], |r| from_row_at(r, 0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What `/relations` asks for.
#[derive(Clone, Debug)]
pub struct ChildrenQuery<'a> {
    /// The parent event.
    pub parent: &'a str,
    /// Its room (children in other rooms are never returned).
    pub room_id: &'a str,
    /// Only this relationship type.
    pub rel_type: Option<&'a str>,
    /// Only this event type.
    pub event_type: Option<&'a str>,
    /// How many levels of relationships to follow (1: direct children only).
    pub depth: u32,
    /// Only children with `after < stream_ordering <= up_to`.
    pub after: i64,
    /// See `after`.
    pub up_to: i64,
    /// At most this many.
    pub limit: usize,
    /// Newest first.
    pub backwards: bool,
}

/// Child events of a parent, in stream order. Direct children are read straight off
/// the parent's index; with `depth > 1` the relationship tree below the parent is walked
/// (a recursive query, bounded by the depth).
pub fn children(c: &Connection, q: &ChildrenQuery<'_>) -> Result<Vec<StoredEvent>, Error> {
    let order = if q.backwards { "DESC" } else { "ASC" };
    let cols = columns_of("e");
    let sql = if q.depth <= 1 {
        // With a relationship type the `(relates_to_id, rel_type, stream_ordering)` index
        // serves the page directly; without one, `(relates_to_id, stream_ordering)` does.
        let rel_type = if q.rel_type.is_some() {
            "r.rel_type = ?3"
        } else {
            "?3 IS NULL"
        };
        format!(
            "SELECT {cols} FROM event_relations r JOIN events e ON e.event_id = r.event_id
             WHERE r.relates_to_id = ?1 AND r.room_id = ?2
               AND {rel_type} AND (?4 IS NULL OR r.type = ?4)
               AND r.stream_ordering > ?5 AND r.stream_ordering <= ?6
               AND e.status = 'timeline'
             ORDER BY r.stream_ordering {order} LIMIT ?7"
        )
    } else {
        format!(
            "WITH RECURSIVE tree(event_id, depth) AS (
                 SELECT event_id, 1 FROM event_relations WHERE relates_to_id = ?1 AND room_id = ?2
                 UNION
                 SELECT r.event_id, tree.depth + 1
                 FROM event_relations r JOIN tree ON r.relates_to_id = tree.event_id
                 WHERE tree.depth < ?8 AND r.room_id = ?2
             )
             SELECT {cols} FROM tree
             JOIN event_relations r ON r.event_id = tree.event_id
             JOIN events e ON e.event_id = tree.event_id
             WHERE (?3 IS NULL OR r.rel_type = ?3) AND (?4 IS NULL OR r.type = ?4)
               AND r.stream_ordering > ?5 AND r.stream_ordering <= ?6
               AND e.status = 'timeline'
             ORDER BY e.stream_ordering {order} LIMIT ?7"
        )
    };
    let mut st = c.prepare_cached(&sql)?;
    let limit = q.limit as i64;
    let rows = if q.depth <= 1 {
        st.query_map(
            params![
                q.parent,
                q.room_id,
                q.rel_type,
                q.event_type,
                q.after,
                q.up_to,
                limit
            ],
            |r| from_row_at(r, 0),
        )?
        .collect::<Result<Vec<_>, _>>()?
    } else {
        st.query_map(
            params![
                q.parent,
                q.room_id,
                q.rel_type,
                q.event_type,
                q.after,
                q.up_to,
                limit,
                i64::from(q.depth)
            ],
            |r| from_row_at(r, 0),
        )?
        .collect::<Result<Vec<_>, _>>()?
    };
    Ok(rows)
}

/// Thread roots of a room by latest activity, newest first: `(root_id, latest_pos)` with
/// `latest_pos <= up_to`, at most `limit`. With `participant`, only threads that user
/// started or replied to.
pub fn threads_page(
    c: &Connection,
    room_id: &str,
    up_to: i64,
    limit: usize,
    participant: Option<&str>,
) -> Result<Vec<(String, i64)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT t.root_id, t.latest_pos FROM threads t
         WHERE t.room_id = ?1 AND t.latest_pos <= ?2
           AND (?3 IS NULL
                OR EXISTS (SELECT 1 FROM events e WHERE e.event_id = t.root_id AND e.sender = ?3)
                OR EXISTS (SELECT 1 FROM event_relations r
                           WHERE r.relates_to_id = t.root_id AND r.rel_type = 'm.thread'
                             AND r.sender = ?3))
         ORDER BY t.latest_pos DESC LIMIT ?4",
    )?;
    let rows = st.query_map(params![room_id, up_to, participant, limit as i64], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Which of `parents` have at least one child whose relationship type is one of
/// `rel_types` and whose sender is one of `senders` (`None`: any).
pub fn parents_with_children(
    c: &Connection,
    parents: &[&str],
    rel_types: Option<&[String]>,
    senders: Option<&[String]>,
) -> Result<std::collections::HashSet<String>, Error> {
    if parents.is_empty() {
        return Ok(Default::default());
    }
    let mut st = c.prepare_cached(
        "SELECT DISTINCT r.relates_to_id FROM json_each(?1) j
         JOIN event_relations r ON r.relates_to_id = j.value
         WHERE (?2 IS NULL OR r.rel_type IN (SELECT value FROM json_each(?2)))
           AND (?3 IS NULL OR r.sender IN (SELECT value FROM json_each(?3)))",
    )?;
    let rel_types = rel_types.map(serde_json::to_string).transpose()?;
    let senders = senders.map(serde_json::to_string).transpose()?;
    let rows = st.query_map(params![ids_json(parents)?, rel_types, senders], |r| {
        r.get::<_, String>(0)
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
