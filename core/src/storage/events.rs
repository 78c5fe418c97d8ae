//! Events (PDUs as canonical JSON), transaction ids and forward extremities.

use rusqlite::{Connection, OptionalExtension, Row, params};

use crate::error::Error;
use crate::streams::BACKFILL_END;

/// Why an event is stored, and so who may see it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventStatus {
    /// In the room's timeline: the only events clients see.
    Timeline,
    /// Stored without a place in the DAG we know (auth events, events whose prev_events
    /// are missing). Usable as an auth event; never served to clients.
    Outlier,
    /// Passed auth against its auth events and the state before it, failed against the
    /// current state: kept (other events may build on it), never served, never a
    /// forward extremity.
    SoftFailed,
    /// Failed auth: kept so it is never fetched again and never used as an auth event.
    Rejected,
}

impl EventStatus {
    /// The stored string.
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Timeline => "timeline",
            EventStatus::Outlier => "outlier",
            EventStatus::SoftFailed => "soft_failed",
            EventStatus::Rejected => "rejected",
        }
    }

    pub(super) fn parse(s: &str) -> EventStatus {
        match s {
            "timeline" => EventStatus::Timeline,
            "outlier" => EventStatus::Outlier,
            "soft_failed" => EventStatus::SoftFailed,
            // Unknown values are treated as the most restrictive.
            _ => EventStatus::Rejected,
        }
    }
}

/// An event as stored.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    /// Position in the event stream.
    pub stream_ordering: i64,
    /// `$…` event id.
    pub event_id: String,
    /// Room it belongs to.
    pub room_id: String,
    /// Event type.
    pub kind: String,
    /// State key for state events.
    pub state_key: Option<String>,
    /// Sender user id.
    pub sender: String,
    /// DAG depth.
    pub depth: i64,
    /// Origin timestamp.
    pub origin_server_ts: i64,
    /// The PDU as canonical JSON (redacted in place once redacted).
    pub json: String,
    /// Server-local `unsigned` additions (prev_content, replaces_state, redacted_because).
    pub unsigned: Option<String>,
    /// Id of the redaction that redacted this event.
    pub redacted_by: Option<String>,
    /// State group holding the room state before this event.
    pub state_group_before: Option<i64>,
    /// Device that sent it with a transaction id, for echoing `transaction_id`.
    pub txn_device: Option<String>,
    /// Client transaction id.
    pub txn_id: Option<String>,
    /// Timeline, outlier, soft-failed or rejected.
    pub status: EventStatus,
    /// Why a rejected event was rejected.
    pub rejection_reason: Option<String>,
    /// State group holding the DAG state after this event, when known.
    pub state_group_after: Option<i64>,
    /// The room's current state group once this (timeline) event was persisted.
    pub room_state_group: Option<i64>,
}

pub(super) const COLUMNS: &str = "stream_ordering, event_id, room_id, type, state_key, sender, depth, origin_server_ts, json, unsigned, redacted_by, state_group_before, txn_device, txn_id, status, rejection_reason, state_group_after, room_state_group";

/// Only events in the timeline are ever served to clients.
const TIMELINE: &str = "status = 'timeline'";

fn from_row(r: &Row<'_>) -> rusqlite::Result<StoredEvent> {
    from_row_at(r, 0)
}

/// [`COLUMNS`] with each name prefixed by a table alias (`e.` …), for joins.
pub(super) fn columns_of(alias: &str) -> String {
    COLUMNS
        .split(", ")
        .map(|c| format!("{alias}.{c}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An event from a row whose [`COLUMNS`] start at index `at`.
pub(super) fn from_row_at(r: &Row<'_>, at: usize) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        stream_ordering: r.get(at)?,
        event_id: r.get(at + 1)?,
        room_id: r.get(at + 2)?,
        kind: r.get(at + 3)?,
        state_key: r.get(at + 4)?,
        sender: r.get(at + 5)?,
        depth: r.get(at + 6)?,
        origin_server_ts: r.get(at + 7)?,
        json: r.get(at + 8)?,
        unsigned: r.get(at + 9)?,
        redacted_by: r.get(at + 10)?,
        state_group_before: r.get(at + 11)?,
        txn_device: r.get(at + 12)?,
        txn_id: r.get(at + 13)?,
        status: EventStatus::parse(&r.get::<_, String>(at + 14)?),
        rejection_reason: r.get(at + 15)?,
        state_group_after: r.get(at + 16)?,
        room_state_group: r.get(at + 17)?,
    })
}

/// Persist a new event row.
pub fn insert_event(c: &Connection, e: &StoredEvent) -> Result<(), Error> {
    c.prepare_cached(&format!(
        "INSERT INTO events ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)"
    ))?
    .execute(params![
        e.stream_ordering,
        e.event_id,
        e.room_id,
        e.kind,
        e.state_key,
        e.sender,
        e.depth,
        e.origin_server_ts,
        e.json,
        e.unsigned,
        e.redacted_by,
        e.state_group_before,
        e.txn_device,
        e.txn_id,
        e.status.as_str(),
        e.rejection_reason,
        e.state_group_after,
        e.room_state_group
    ])?;
    Ok(())
}

/// One timeline event by id (what clients may see; outliers, soft-failed and rejected
/// events are not returned).
pub fn get_event(c: &Connection, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_id = ?1 AND {TIMELINE}"
    ))?
    .query_row([event_id], from_row)
    .optional()?)
}

/// One event by id whatever its status (for auth, state resolution and federation).
pub fn get_event_any(c: &Connection, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    Ok(
        c.prepare_cached(&format!("SELECT {COLUMNS} FROM events WHERE event_id = ?1"))?
            .query_row([event_id], from_row)
            .optional()?,
    )
}

/// The stored JSON of one event by id, whatever its status (for readers that need one
/// field of it, not the whole row).
pub fn event_json(c: &Connection, event_id: &str) -> Result<Option<String>, Error> {
    Ok(
        c.prepare_cached("SELECT json FROM events WHERE event_id = ?1")?
            .query_row([event_id], |r| r.get(0))
            .optional()?,
    )
}

/// Forget a room's forward extremities (before rejoining it on a resident's state).
pub fn clear_forward_extremities(c: &Connection, room_id: &str) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1")?
        .execute([room_id])?;
    Ok(())
}

/// One event by id that may be shown as room state: a timeline event, or an outlier
/// (the state a resident server handed over when this server joined a room over
/// federation is stored as outliers). Soft-failed and rejected events are not returned.
pub fn get_state_event(c: &Connection, event_id: &str) -> Result<Option<StoredEvent>, Error> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_id = ?1 AND status IN ('timeline', 'outlier')"
    ))?
    .query_row([event_id], from_row)
    .optional()?)
}

/// [`get_state_event`] for many ids in one statement (any order; unknown, soft-failed
/// and rejected ones left out).
pub fn get_state_events(c: &Connection, ids: &[&str]) -> Result<Vec<StoredEvent>, Error> {
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE event_id IN (SELECT value FROM json_each(?1))
         AND status IN ('timeline', 'outlier')"
    ))?;
    let rows = st.query_map([serde_json::to_string(ids)?], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The status of a stored event, if it is stored.
pub fn event_status(c: &Connection, event_id: &str) -> Result<Option<EventStatus>, Error> {
    Ok(
        c.prepare_cached("SELECT status FROM events WHERE event_id = ?1")?
            .query_row([event_id], |r| r.get::<_, String>(0))
            .optional()?
            .map(|s| EventStatus::parse(&s)),
    )
}

/// Forget an outlier row, so the event can be persisted again with a place in the DAG.
pub fn delete_outlier(c: &Connection, event_id: &str) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM events WHERE event_id = ?1 AND status = 'outlier'")?
        .execute([event_id])?;
    Ok(())
}

/// Keep at most `cap` rejected events of a room: past `cap` plus a slack of a tenth, the
/// lowest (oldest in the DAG) go, so the trim runs once per many rejections. A rejected
/// event is kept only so it is not fetched and checked again; one that was dropped and
/// comes back is simply rejected again. Visits at most `cap` index entries to count.
pub fn trim_rejected(c: &Connection, room_id: &str, cap: usize) -> Result<usize, Error> {
    let slack = cap / 10 + 1;
    let limit = i64::try_from(cap + slack).unwrap_or(i64::MAX);
    let n: i64 = c
        .prepare_cached(
            "SELECT COUNT(*) FROM (SELECT 1 FROM events
             WHERE room_id = ?1 AND status = 'rejected' LIMIT ?2)",
        )?
        .query_row(params![room_id, limit], |r| r.get(0))?;
    if n < limit {
        return Ok(0);
    }
    let drop = i64::try_from(slack).unwrap_or(i64::MAX);
    Ok(c.prepare_cached(
        "DELETE FROM events WHERE event_id IN (SELECT event_id FROM events
         WHERE room_id = ?1 AND status = 'rejected' ORDER BY depth LIMIT ?2)",
    )?
    .execute(params![room_id, drop])?)
}

/// Timeline events of a room with `after < stream_ordering <= up_to`, newest first when
/// `backwards`, at most `limit`. Positions run through two ranges: the live stream
/// (positive) and, below it, backfilled history (see [`crate::streams::BACKFILL_BASE`]);
/// the negative positions between them hold only non-timeline rows (outliers …), which
/// are never walked through: each range is one index range scan of its own.
pub fn room_events(
    c: &Connection,
    room_id: &str,
    after: i64,
    up_to: i64,
    limit: usize,
    backwards: bool,
) -> Result<Vec<StoredEvent>, Error> {
    let live = (after.max(0), up_to);
    let backfilled = (after, up_to.min(BACKFILL_END - 1));
    let ranges = if backwards {
        [live, backfilled]
    } else {
        [backfilled, live]
    };
    let mut out = Vec::new();
    for (lo, hi) in ranges {
        if lo >= hi || out.len() >= limit {
            continue;
        }
        out.extend(events_in_range(
            c,
            room_id,
            lo,
            hi,
            limit - out.len(),
            backwards,
        )?);
    }
    Ok(out)
}

/// Timeline events of a room with `after < stream_ordering <= up_to` (one range scan).
fn events_in_range(
    c: &Connection,
    room_id: &str,
    after: i64,
    up_to: i64,
    limit: usize,
    backwards: bool,
) -> Result<Vec<StoredEvent>, Error> {
    let order = if backwards { "DESC" } else { "ASC" };
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3
         AND {TIMELINE} ORDER BY stream_ordering {order} LIMIT ?4"
    ))?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![room_id, after, up_to, limit], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The newest timeline event of a room at or before `pos`, within the range `pos` is in:
/// a live position finds live events only, a backfill position backfilled ones.
pub fn last_event_at(
    c: &Connection,
    room_id: &str,
    pos: i64,
) -> Result<Option<StoredEvent>, Error> {
    let lower = if pos >= 0 { 0 } else { i64::MIN };
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?3
             AND stream_ordering <= ?2 AND {TIMELINE} ORDER BY stream_ordering DESC LIMIT 1"
    ))?
    .query_row(params![room_id, pos, lower], from_row)
    .optional()?)
}

/// The oldest timeline event of a room after `pos`.
pub fn first_event_after(
    c: &Connection,
    room_id: &str,
    pos: i64,
) -> Result<Option<StoredEvent>, Error> {
    Ok(c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = ?1 AND stream_ordering > ?2 AND {TIMELINE}
             ORDER BY stream_ordering ASC LIMIT 1"
    ))?
    .query_row(params![room_id, pos], from_row)
    .optional()?)
}

/// Replace an event's JSON after redaction.
pub fn mark_redacted(
    c: &Connection,
    event_id: &str,
    redacted_json: &str,
    redacted_by: &str,
) -> Result<(), Error> {
    c.prepare_cached("UPDATE events SET json = ?2, redacted_by = ?3 WHERE event_id = ?1")?
        .execute(params![event_id, redacted_json, redacted_by])?;
    // What the room's state says may have changed under the same state group.
    c.prepare_cached(
        "UPDATE rooms SET redactions = redactions + 1
         WHERE room_id = (SELECT room_id FROM events
                          WHERE event_id = ?1 AND state_key IS NOT NULL)",
    )?
    .execute([event_id])?;
    Ok(())
}

/// Replace an event's server-local `unsigned` additions.
pub fn set_unsigned(c: &Connection, event_id: &str, unsigned: &str) -> Result<(), Error> {
    c.execute(
        "UPDATE events SET unsigned = ?2 WHERE event_id = ?1",
        params![event_id, unsigned],
    )?;
    Ok(())
}

/// What a client transaction id means for a new send.
#[derive(Debug, PartialEq, Eq)]
pub enum TxnSlot {
    /// A retry: the transaction already produced this event.
    Done(String),
    /// A new transaction, to be remembered under this key.
    Free(String),
}

/// Look a client transaction up in its scope. Transaction ids are scoped per device and
/// per endpoint (the spec; Synapse keys them by the request path): the same id sent to
/// another room, as another event type or redacting another event, is a new
/// transaction. The plain id is the key of the first use, so the common case stores
/// nothing extra; a reuse in another scope is keyed by the id and its scope.
pub fn txn_lookup(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    txn_id: &str,
    scope: (&str, &str, Option<&str>),
) -> Result<TxnSlot, Error> {
    let (room_id, kind, redacts) = scope;
    // The row is keyed by a hash; the event itself says whose transaction it was.
    let find = |key: &str| -> Result<Option<(String, bool)>, Error> {
        Ok(c.prepare_cached(
            "SELECT e.event_id, e.room_id = ?5 AND e.type = ?6
                 AND json_extract(e.json, '$.redacts') IS ?7
             FROM event_txns t JOIN events e ON e.stream_ordering = t.stream_ordering
             WHERE t.key = ?1 AND e.sender = ?2 AND e.txn_device = ?3 AND e.txn_id = ?4",
        )?
        .query_row(
            params![
                txn_key(user_id, device_id, key),
                user_id,
                device_id,
                txn_id,
                room_id,
                kind,
                redacts
            ],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?)
    };
    match find(txn_id)? {
        None => return Ok(TxnSlot::Free(txn_id.to_owned())),
        Some((event_id, true)) => return Ok(TxnSlot::Done(event_id)),
        Some((_, false)) => {}
    }
    let scoped = format!(
        "{txn_id}\u{1f}{room_id}\u{1f}{kind}\u{1f}{}",
        redacts.unwrap_or_default()
    );
    Ok(match find(&scoped)? {
        Some((event_id, _)) => TxnSlot::Done(event_id),
        None => TxnSlot::Free(scoped),
    })
}

/// The key of a client transaction in `event_txns`: the first 8 bytes of the SHA-256 of
/// the user id, device id and transaction key (each length-prefixed, so no two triples
/// share an input). 64 bits, so a collision is practically impossible, and harmless:
/// a hit must also match the event's own sender, device and transaction id.
pub(crate) fn txn_key(user_id: &str, device_id: &str, key: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for part in [user_id, device_id, key] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let digest = h.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    i64::from_le_bytes(first)
}

/// Remember which event (by its stream position, which names it in fewer bytes than
/// its id) a client transaction produced. `key` is the transaction's key from
/// [`txn_lookup`]; the event row holds the sender, device and plain transaction id.
pub fn insert_txn(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    key: &str,
    stream_ordering: i64,
) -> Result<(), Error> {
    // REPLACE: a row under the same key that is not this client's (a 64-bit collision)
    // gives way; the newer transaction is the one a retry can still come for.
    c.prepare_cached("INSERT OR REPLACE INTO event_txns (key, stream_ordering) VALUES (?1, ?2)")?
        .execute(params![txn_key(user_id, device_id, key), stream_ordering])?;
    Ok(())
}

/// Forget client transaction ids of events sent before `older_than_ms`, at most `limit`
/// of them: as Synapse, a transaction id is remembered for a day (a client retries within
/// seconds or minutes), so the table holds a day of sends, not every send ever.
pub fn prune_event_txns(c: &Connection, older_than_ms: i64, limit: usize) -> Result<usize, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    Ok(c.prepare_cached(
        "DELETE FROM event_txns WHERE key IN (
             SELECT t.key FROM event_txns t
             JOIN events e ON e.stream_ordering = t.stream_ordering
             WHERE e.origin_server_ts < ?1 LIMIT ?2)",
    )?
    .execute(params![older_than_ms, limit])?)
}

/// The room's forward extremities with their depths, deepest first (ties by event id, so
/// two readings of the same extremities compare equal as lists).
pub fn forward_extremities(c: &Connection, room_id: &str) -> Result<Vec<(String, i64)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT f.event_id, e.depth FROM forward_extremities f JOIN events e ON e.event_id = f.event_id
         WHERE f.room_id = ?1 ORDER BY e.depth DESC, f.event_id",
    )?;
    let rows = st.query_map([room_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The ids of the room's forward extremities, in id order: their depths not read (one
/// b-tree, no event looked up).
pub fn forward_extremity_ids(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT event_id FROM forward_extremities WHERE room_id = ?1 ORDER BY event_id",
    )?;
    let rows = st.query_map([room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether `event_id` is one of the room's forward extremities.
pub fn is_forward_extremity(c: &Connection, room_id: &str, event_id: &str) -> Result<bool, Error> {
    Ok(
        c.prepare_cached("SELECT 1 FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2")?
            .exists(params![room_id, event_id])?,
    )
}

/// Most soft-failed or rejected ancestors walked through when a new event's prev events
/// are updated (a chain longer than this leaves an extra extremity, which the next event
/// sent here merges).
const MAX_SKIPPED_ANCESTORS: usize = 200;

/// A new event becomes an extremity; the events it references stop being ones (see
/// [`remove_prev_extremities`]). An event that was a gap behind a stored event (a
/// backward extremity: its child came first, accepted with the state its sender gave)
/// has a child already: it closes the gap and is not a forward extremity. Nor is one
/// that a stored outlier names as a prev event (see [`has_outlier_child`]).
pub fn update_forward_extremities(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    depth: i64,
    prev_events: &[String],
) -> Result<(), Error> {
    remove_prev_extremities(c, room_id, prev_events)?;
    let was_gap = crate::storage::remove_backfill_extremity(c, room_id, event_id)?;
    if !was_gap && !has_outlier_child(c, room_id, event_id, depth)? {
        c.prepare_cached(
            "INSERT OR IGNORE INTO forward_extremities (room_id, event_id) VALUES (?1, ?2)",
        )?
        .execute(params![room_id, event_id])?;
    }
    Ok(())
}

/// Whether a stored outlier of the room names `event_id` (a stored event) as a prev
/// event: the event has a child here already, so it is no forward extremity, whatever
/// order the two came in. The outliers are the state and auth chain a join brought, so
/// this is mostly the history from before this node joined: an event of it that comes
/// live after the join (a peer's delayed delivery or forwarding, a peer's extremity
/// pulled by anti-entropy) joins the timeline on top of what it refers to, but its
/// child (say the room's current name, or a member's second join) is held only as
/// state, and no gap pull ever brings that child into the timeline (it is below the
/// join), so the event would stay a forward extremity no other node has. Children
/// are deeper than their parents, so only the outliers deeper than the event are
/// read (none for a new event at the top of the DAG; index `events_outlier_depth`):
/// `depth` is the event's. Both
/// reference forms are matched: ids (room version 3 on) and `[id, hashes]` pairs
/// (versions 1 and 2).
pub fn has_outlier_child(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    depth: i64,
) -> Result<bool, Error> {
    Ok(c.prepare_cached(OUTLIER_CHILD)?
        .exists(params![room_id, event_id, depth])?)
}

/// The newest and oldest stream positions of a room's events up to `up_to` (index
/// `events_room_stream`, two seeks): what a cached sync section of the room was built
/// from (see `sync::room_cache`).
pub fn room_span(
    c: &Connection,
    room_id: &str,
    up_to: i64,
) -> Result<(Option<i64>, Option<i64>), Error> {
    Ok(c.prepare_cached(
        "SELECT (SELECT max(stream_ordering) FROM events
                 WHERE room_id = ?1 AND stream_ordering <= ?2),
                (SELECT min(stream_ordering) FROM events WHERE room_id = ?1)",
    )?
    .query_row(params![room_id, up_to], |r| Ok((r.get(0)?, r.get(1)?)))?)
}

/// [`has_outlier_child`]'s query: `(room, event id, depth)`.
const OUTLIER_CHILD: &str = "SELECT 1 FROM events e, json_each(e.json, '$.prev_events') p
     WHERE e.room_id = ?1 AND e.status = 'outlier' AND e.depth > ?3
       AND json_valid(e.json)
       AND (p.value = ?2 OR (p.type = 'array' AND json_extract(p.value, '$[0]') = ?2))
     LIMIT 1";

/// A soft-failed or rejected event stored where it was a gap behind a stored event
/// (a backward extremity): the gap is closed, and its prev events stop being forward
/// extremities, as they would have had the event been here before its child (the
/// child's prev events then led through it). Returns whether it was a gap.
pub fn close_gap(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    prev_events: &[String],
) -> Result<bool, Error> {
    let was_gap = crate::storage::remove_backfill_extremity(c, room_id, event_id)?;
    if was_gap {
        remove_prev_extremities(c, room_id, prev_events)?;
    }
    Ok(was_gap)
}

/// The events a new event references stop being forward extremities. When a prev event
/// is soft-failed or rejected (it never became an extremity itself), its own prev
/// events stop being extremities too, through any chain of such events, as Synapse's
/// `_get_prevs_before_rejected` does: otherwise a node that soft-failed an event of
/// another branch would keep that branch's older tip as an extremity, and nodes would
/// disagree about the room's extremities after a partition heals.
pub fn remove_prev_extremities(
    c: &Connection,
    room_id: &str,
    prev_events: &[String],
) -> Result<(), Error> {
    let mut del =
        c.prepare_cached("DELETE FROM forward_extremities WHERE room_id = ?1 AND event_id = ?2")?;
    let mut todo: Vec<String> = prev_events.to_vec();
    let mut seen = std::collections::HashSet::new();
    while let Some(p) = todo.pop() {
        if !seen.insert(p.clone()) {
            continue;
        }
        del.execute(params![room_id, p])?;
        if seen.len() > MAX_SKIPPED_ANCESTORS {
            continue;
        }
        let skipped = matches!(
            event_status(c, &p)?,
            Some(EventStatus::SoftFailed | EventStatus::Rejected)
        );
        if skipped && let Some(ev) = get_event_any(c, &p)? {
            todo.extend(crate::events::reference_ids_in(&ev.json, "prev_events"));
        }
    }
    Ok(())
}

/// The position of the newest timeline event of one of `types` at or before `up_to`:
/// sliding sync's `bump_stamp`. One index probe per type, whatever the room's length.
pub fn newest_of_types(
    c: &Connection,
    room_id: &str,
    types: &[&str],
    up_to: i64,
) -> Result<Option<i64>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT stream_ordering FROM events WHERE room_id = ?1 AND type = ?2 AND stream_ordering <= ?3
         AND {TIMELINE} ORDER BY stream_ordering DESC LIMIT 1"
    ))?;
    let mut newest = None;
    for ty in types {
        let pos: Option<i64> = st
            .query_row(params![room_id, ty, up_to], |r| r.get(0))
            .optional()?;
        newest = newest.max(pos);
    }
    Ok(newest)
}

/// The distinct `(type, state_key)` of state events in a room's timeline in
/// `(after, up_to]`: what may have changed in the room state over that gap.
pub fn state_keys_between(
    c: &Connection,
    room_id: &str,
    after: i64,
    up_to: i64,
) -> Result<Vec<(String, String)>, Error> {
    let mut st = c.prepare_cached(&format!(
        "SELECT DISTINCT type, state_key FROM events WHERE room_id = ?1 AND stream_ordering > ?2
         AND stream_ordering <= ?3 AND state_key IS NOT NULL AND {TIMELINE}"
    ))?;
    let rows = st.query_map(params![room_id, after, up_to], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a room has timeline events in `(after, up_to]`.
pub fn has_events_between(
    c: &Connection,
    room_id: &str,
    after: i64,
    up_to: i64,
) -> Result<bool, Error> {
    Ok(c.prepare_cached(&format!(
        "SELECT 1 FROM events WHERE room_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3
             AND {TIMELINE} LIMIT 1"
    ))?
    .query_row(params![room_id, after, up_to], |_| Ok(()))
    .optional()?
    .is_some())
}

/// The timeline event of a room closest to `ts` in one direction: the newest with
/// `origin_server_ts <= ts` (`forward == false`) or the oldest with `>= ts`. Uses the
/// `(room_id, origin_server_ts)` index, so it never scans the room's history.
pub fn event_near_ts(
    c: &Connection,
    room_id: &str,
    ts: i64,
    forward: bool,
) -> Result<Option<StoredEvent>, Error> {
    Ok(events_near_ts(c, room_id, ts, forward, 1)?
        .into_iter()
        .next())
}

/// Up to `limit` timeline events of a room from `ts` on in one direction, nearest first
/// (see [`event_near_ts`]).
pub fn events_near_ts(
    c: &Connection,
    room_id: &str,
    ts: i64,
    forward: bool,
    limit: usize,
) -> Result<Vec<StoredEvent>, Error> {
    let (cmp, order) = if forward {
        (">=", "ASC")
    } else {
        ("<=", "DESC")
    };
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut st = c.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = ?1 AND origin_server_ts {cmp} ?2 AND {TIMELINE}
             ORDER BY origin_server_ts {order}, stream_ordering {order} LIMIT ?3"
    ))?;
    let rows = st.query_map(params![room_id, ts, limit], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(n: i64, room: &str) -> StoredEvent {
        StoredEvent {
            stream_ordering: -n,
            event_id: format!("$r{n}"),
            room_id: room.to_owned(),
            kind: "m.room.message".into(),
            state_key: None,
            sender: "@evil:x".into(),
            depth: n,
            origin_server_ts: 0,
            json: "{}".into(),
            unsigned: None,
            redacted_by: None,
            state_group_before: None,
            txn_device: None,
            txn_id: None,
            status: EventStatus::Rejected,
            rejection_reason: Some("auth".into()),
            state_group_after: None,
            room_state_group: None,
        }
    }

    /// A timeline event at `pos` sent by `@a:x` from device `DEV` as transaction `txn`.
    fn sent(pos: i64, room: &str, txn: &str) -> StoredEvent {
        let mut e = rejected(pos, room);
        e.stream_ordering = pos;
        e.status = EventStatus::Timeline;
        e.rejection_reason = None;
        e.sender = "@a:x".into();
        e.txn_device = Some("DEV".into());
        e.txn_id = Some(txn.into());
        e
    }

    /// Run on every persisted event: it must read only the room's outliers deeper than
    /// the event, never the room's history.
    #[test]
    fn the_outlier_child_check_reads_only_deeper_outliers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        let plan = db
            .read(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {OUTLIER_CHILD}"))?;
                let rows = st.query_map(params!["!r:x", "$a", 4], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?.join("\n"))
            })
            .expect("plan");
        assert!(
            plan.contains("USING INDEX events_outlier_depth (room_id=? AND depth>?)"),
            "{plan}"
        );
    }

    #[test]
    fn an_event_an_outlier_refers_to_is_no_forward_extremity() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        // (stream position, id, depth, status, prev_events)
        let ev = |pos: i64, id: &str, depth: i64, status: EventStatus, prevs: &str| {
            let mut e = rejected(pos.abs(), "!r:x");
            e.stream_ordering = pos;
            e.event_id = id.to_owned();
            e.depth = depth;
            e.status = status;
            e.rejection_reason = None;
            e.json = format!(r#"{{"prev_events":{prevs}}}"#);
            e
        };
        let outlier = EventStatus::Outlier;
        db.write(|c| {
            // Held as state: `$b` (referring to `$a`, room version 3 on) and `$d`
            // (referring to `$c`, versions 1 and 2: `[id, hashes]`).
            insert_event(c, &ev(-1, "$b", 5, outlier, r#"["$a"]"#))?;
            insert_event(c, &ev(-2, "$d", 7, outlier, r#"[["$c",{"sha256":"x"}]]"#))?;
            assert!(has_outlier_child(c, "!r:x", "$a", 4)?);
            assert!(has_outlier_child(c, "!r:x", "$c", 6)?);
            assert!(!has_outlier_child(c, "!r:x", "$b", 5)?, "no child");
            assert!(!has_outlier_child(c, "!s:x", "$a", 4)?, "another room");
            assert!(
                !has_outlier_child(c, "!r:x", "$a", 5)?,
                "children are deeper than their parents"
            );
            // `$a` comes into the timeline late: it is no forward extremity; `$e`, on
            // top of it, is one.
            insert_event(c, &ev(3, "$a", 4, EventStatus::Timeline, "[]"))?;
            update_forward_extremities(c, "!r:x", "$a", 4, &[])?;
            assert!(!is_forward_extremity(c, "!r:x", "$a")?);
            insert_event(c, &ev(4, "$e", 5, EventStatus::Timeline, r#"["$a"]"#))?;
            update_forward_extremities(c, "!r:x", "$e", 5, &["$a".to_owned()])?;
            assert!(is_forward_extremity(c, "!r:x", "$e")?);
            Ok(())
        })
        .expect("write");
    }

    #[test]
    fn transaction_keys_differ_by_user_device_and_key() {
        let k = txn_key("@a:x", "DEV", "t1");
        assert_eq!(k, txn_key("@a:x", "DEV", "t1"));
        for other in [
            txn_key("@b:x", "DEV", "t1"),
            txn_key("@a:x", "DEV2", "t1"),
            txn_key("@a:x", "DEV", "t2"),
            // No two triples share an input: the parts are length-prefixed.
            txn_key("@a:x", "DEVt", "1"),
        ] {
            assert_ne!(k, other);
        }
    }

    #[test]
    fn a_transaction_row_answers_only_its_own_client() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        db.write(|c| {
            insert_event(c, &sent(1, "!r:x", "t1"))?;
            insert_txn(c, "@a:x", "DEV", "t1", 1)?;
            // A row whose key points at an event of another client (as a hash
            // collision would): never taken for that client's retry.
            c.execute(
                "INSERT INTO event_txns (key, stream_ordering) VALUES (?1, 1)",
                [txn_key("@b:x", "DEV", "t1")],
            )?;
            Ok(())
        })
        .expect("insert");
        let scope = ("!r:x", "m.room.message", None);
        let lookup = |user: &str| {
            db.read(|c| txn_lookup(c, user, "DEV", "t1", scope))
                .expect("read")
        };
        assert_eq!(lookup("@a:x"), TxnSlot::Done("$r1".into()));
        assert_eq!(lookup("@b:x"), TxnSlot::Free("t1".into()));
    }

    #[test]
    fn transaction_ids_older_than_the_cutoff_are_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        db.write(|c| {
            for n in 1..=30_i64 {
                let mut e = sent(n, "!r:x", &format!("t{n}"));
                e.origin_server_ts = n * 1000;
                insert_event(c, &e)?;
                insert_txn(c, "@a:x", "DEV", &format!("t{n}"), n)?;
            }
            Ok(())
        })
        .expect("insert");
        // Events sent before t = 20 s lose their transaction ids, ten at a time.
        let first = db
            .write(|c| prune_event_txns(c, 20_000, 10))
            .expect("prune");
        let second = db
            .write(|c| prune_event_txns(c, 20_000, 10))
            .expect("prune");
        assert_eq!((first, second), (10, 9));
        let scope = ("!r:x", "m.room.message", None);
        let txn = |t: &str| {
            db.read(|c| txn_lookup(c, "@a:x", "DEV", t, scope))
                .expect("read")
        };
        assert_eq!(txn("t19"), TxnSlot::Free("t19".into()));
        assert_eq!(txn("t20"), TxnSlot::Done("$r20".into()));
        assert_eq!(txn("t30"), TxnSlot::Done("$r30".into()));
    }

    #[test]
    fn transaction_ids_are_scoped_per_room_type_and_target() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        let lookup = |scope: (&str, &str, Option<&str>)| {
            db.read(|c| txn_lookup(c, "@a:x", "DEV", "t1", scope))
                .expect("read")
        };
        let here = ("!r:x", "m.room.message", None);
        assert_eq!(lookup(here), TxnSlot::Free("t1".into()));
        db.write(|c| {
            insert_event(c, &sent(1, "!r:x", "t1"))?;
            insert_txn(c, "@a:x", "DEV", "t1", 1)
        })
        .expect("insert");
        assert_eq!(lookup(here), TxnSlot::Done("$r1".into()));
        // The same id in another room, as another type or redacting: new transactions,
        // each under a key of its own.
        for other in [
            ("!other:x", "m.room.message", None),
            ("!r:x", "m.reaction", None),
            ("!r:x", "m.room.redaction", Some("$r1")),
        ] {
            let TxnSlot::Free(key) = lookup(other) else {
                panic!("{other:?} counted as a retry");
            };
            assert_ne!(key, "t1");
        }
        let other = ("!other:x", "m.room.message", None);
        let TxnSlot::Free(key) = lookup(other) else {
            panic!("a retry");
        };
        db.write(|c| {
            insert_event(c, &sent(2, "!other:x", "t1"))?;
            insert_txn(c, "@a:x", "DEV", &key, 2)
        })
        .expect("insert");
        assert_eq!(lookup(other), TxnSlot::Done("$r2".into()));
        assert_eq!(lookup(here), TxnSlot::Done("$r1".into()));
    }

    #[test]
    fn rejected_events_are_kept_within_the_cap() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        let count = |room: &str| {
            db.read(|c| {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM events WHERE room_id = ?1 AND status = 'rejected'",
                    [room],
                    |r| r.get::<_, i64>(0),
                )?)
            })
            .expect("count")
        };
        db.write(|c| {
            insert_event(c, &rejected(1_000_000, "!other:x"))?;
            for n in 1..=500 {
                insert_event(c, &rejected(n, "!r:x"))?;
                trim_rejected(c, "!r:x", 100)?;
            }
            Ok(())
        })
        .expect("insert");
        let kept = count("!r:x");
        assert!((100..=111).contains(&kept), "{kept} rejected events kept");
        // The newest (deepest) are kept; another room is untouched.
        let newest = db
            .read(|c| Ok(get_event_any(c, "$r500")?.is_some()))
            .expect("read");
        assert!(newest);
        assert_eq!(count("!other:x"), 1);
    }
}
