//! Backfill bookkeeping: where a room's history has a gap (backward extremities) and the
//! positions backfilled events take (see [`crate::streams::backfill_position`]).

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::streams::{BACKFILL_BASE, BACKFILL_END, BACKFILL_TIE_BITS, backfill_position};

/// A prev event this node lacks, where backfilling a room goes on from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackfillExtremity {
    /// The missing event.
    pub event_id: String,
    /// Its (expected) depth: its child's minus one.
    pub depth: i64,
    /// The server to ask first, when one is known.
    pub via: Option<String>,
}

/// Remember that `event_id` (a prev event of a stored event) is missing from `room_id`.
/// Keeps the greatest depth and the first `via` given.
pub fn add_backfill_extremity(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    depth: i64,
    via: Option<&str>,
) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO backfill_extremities (room_id, event_id, depth, via) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id, event_id) DO UPDATE SET depth = MAX(depth, excluded.depth),
             via = COALESCE(via, excluded.via)",
    )?
    .execute(params![room_id, event_id, depth, via])?;
    Ok(())
}

/// The event is stored now (or will never be fetched): no longer a gap. Returns whether
/// it was one.
pub fn remove_backfill_extremity(
    c: &Connection,
    room_id: &str,
    event_id: &str,
) -> Result<bool, Error> {
    Ok(
        c.prepare_cached("DELETE FROM backfill_extremities WHERE room_id = ?1 AND event_id = ?2")?
            .execute(params![room_id, event_id])?
            > 0,
    )
}

/// Set a backward extremity's depth to the event's own (once it is known, from the
/// event itself), rather than its child's less one.
pub fn set_backfill_extremity_depth(
    c: &Connection,
    room_id: &str,
    event_id: &str,
    depth: i64,
) -> Result<(), Error> {
    c.prepare_cached(
        "UPDATE backfill_extremities SET depth = ?3 WHERE room_id = ?1 AND event_id = ?2",
    )?
    .execute(params![room_id, event_id, depth])?;
    Ok(())
}

/// Whether `event_id` is a backward extremity of `room_id`: missing here, and the prev
/// event of a stored event.
pub fn is_backfill_extremity(c: &Connection, room_id: &str, event_id: &str) -> Result<bool, Error> {
    Ok(
        c.prepare_cached(
            "SELECT 1 FROM backfill_extremities WHERE room_id = ?1 AND event_id = ?2",
        )?
        .exists(params![room_id, event_id])?,
    )
}

/// The depth of the room's first live event (the join that brought this node in, or the
/// create event for the room's creator): events below it are history from before this
/// node joined, which only backfill fetches (into backfill positions), never the live
/// paths (`get_missing_events` asks for nothing below it, as Synapse's `min_depth`).
/// `None` when the room has no live event here.
pub fn live_start_depth(c: &Connection, room_id: &str) -> Result<Option<i64>, Error> {
    Ok(c.prepare_cached(
        "SELECT depth FROM events WHERE room_id = ?1 AND stream_ordering > 0
             ORDER BY stream_ordering LIMIT 1",
    )?
    .query_row([room_id], |r| r.get(0))
    .optional()?)
}

/// The room's backward extremities inside its live timeline, deepest first, at most
/// `limit`: gaps left where an event was accepted with the state its sender gave
/// because its prev events could not be had (see `rooms::receive`), as opposed to the
/// history from before this node joined (below the depth of the room's first live
/// event, which is the join, or the create event for the room's creator). Anti-entropy
/// pulls these from peers, so that every node ends with the same timeline.
///
/// Only the gaps to ask `via` about: those it was the origin of (it sent the event
/// accepted with its state, so it has what lies behind), or with no origin known. A
/// gap is then asked of one peer, not of every peer in every pass.
pub fn live_backfill_extremities(
    c: &Connection,
    room_id: &str,
    via: &str,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut st = c.prepare_cached(
        "SELECT event_id FROM backfill_extremities WHERE room_id = ?1
             AND (via = ?2 OR via IS NULL) AND depth >= (
             SELECT depth FROM events WHERE room_id = ?1 AND stream_ordering > 0
             ORDER BY stream_ordering LIMIT 1)
         ORDER BY depth DESC, event_id LIMIT ?3",
    )?;
    let rows = st.query_map(params![room_id, via, limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The room's deepest backward extremities, at most `limit`.
pub fn backfill_extremities(
    c: &Connection,
    room_id: &str,
    limit: usize,
) -> Result<Vec<BackfillExtremity>, Error> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut st = c.prepare_cached(
        "SELECT event_id, depth, via FROM backfill_extremities WHERE room_id = ?1
         ORDER BY depth DESC, event_id LIMIT ?2",
    )?;
    let rows = st.query_map(params![room_id, limit], |r| {
        Ok(BackfillExtremity {
            event_id: r.get(0)?,
            depth: r.get(1)?,
            via: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the room's history has a gap backfilling may fill. One index probe.
pub fn has_backfill_extremities(c: &Connection, room_id: &str) -> Result<bool, Error> {
    Ok(
        c.prepare_cached("SELECT 1 FROM backfill_extremities WHERE room_id = ?1 LIMIT 1")?
            .query_row([room_id], |_| Ok(()))
            .optional()?
            .is_some(),
    )
}

/// Whether the room has history before its live timeline: backfilled events, or a gap
/// that backfilling may fill. Two index probes.
pub fn has_earlier_history(c: &Connection, room_id: &str) -> Result<bool, Error> {
    if has_backfill_extremities(c, room_id)? {
        return Ok(true);
    }
    Ok(c.prepare_cached(
        "SELECT 1 FROM events WHERE room_id = ?1 AND stream_ordering >= ?2
             AND stream_ordering < ?3 AND status = 'timeline' LIMIT 1",
    )?
    .query_row(params![room_id, BACKFILL_BASE, BACKFILL_END], |_| Ok(()))
    .optional()?
    .is_some())
}

/// A free backfill position for an event of `depth` (after the other events of that
/// depth); `None` when the depth is out of range or a depth has a million events.
/// One primary-key probe.
pub fn next_backfill_position(c: &Connection, depth: i64) -> Result<Option<i64>, Error> {
    let (Some(first), Some(last)) = (
        backfill_position(depth, 0),
        backfill_position(depth, (1 << BACKFILL_TIE_BITS) - 1),
    ) else {
        return Ok(None);
    };
    let taken: Option<i64> = c
        .prepare_cached(
            "SELECT MAX(stream_ordering) FROM events WHERE stream_ordering >= ?1 AND stream_ordering <= ?2",
        )?
        .query_row(params![first, last], |r| r.get(0))?;
    Ok(match taken {
        None => Some(first),
        Some(p) if p < last => Some(p + 1),
        Some(_) => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extremities_and_positions() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        db.write(|c| {
            add_backfill_extremity(c, "!r:x", "$a", 5, Some("peer"))?;
            add_backfill_extremity(c, "!r:x", "$b", 9, None)?;
            add_backfill_extremity(c, "!r:x", "$a", 7, Some("other"))?;
            add_backfill_extremity(c, "!s:x", "$c", 1, None)?;
            Ok(())
        })
        .expect("write");
        let ext = db
            .read(|c| backfill_extremities(c, "!r:x", 10))
            .expect("read");
        let ids: Vec<(&str, i64, Option<&str>)> = ext
            .iter()
            .map(|e| (e.event_id.as_str(), e.depth, e.via.as_deref()))
            .collect();
        assert_eq!(ids, vec![("$b", 9, None), ("$a", 7, Some("peer"))]);
        assert!(db.read(|c| has_earlier_history(c, "!r:x")).expect("read"));
        db.write(|c| {
            remove_backfill_extremity(c, "!r:x", "$a")?;
            remove_backfill_extremity(c, "!r:x", "$b")
        })
        .expect("write");
        assert!(!db.read(|c| has_earlier_history(c, "!r:x")).expect("read"));
        let first = db
            .read(|c| next_backfill_position(c, 3))
            .expect("read")
            .expect("in range");
        assert_eq!(Some(first), backfill_position(3, 0));
        assert_eq!(
            db.read(|c| next_backfill_position(c, -1)).expect("read"),
            None
        );
    }
    #[test]
    fn room_events_walk_the_live_stream_then_backfilled_history() {
        use crate::storage::{EventStatus, StoredEvent, insert_event, room_events};
        let dir = tempfile::tempdir().expect("tempdir");
        let db = super::super::Db::open(&dir.path().join("warren.db")).expect("open");
        let ev = |pos: i64, id: &str, status: EventStatus| StoredEvent {
            stream_ordering: pos,
            event_id: id.to_owned(),
            room_id: "!r:x".into(),
            kind: "m.room.message".into(),
            state_key: None,
            sender: "@a:x".into(),
            depth: 1,
            origin_server_ts: 0,
            json: "{}".into(),
            unsigned: None,
            redacted_by: None,
            state_group_before: None,
            txn_device: None,
            txn_id: None,
            status,
            rejection_reason: None,
            state_group_after: None,
            room_state_group: None,
        };
        let deep = backfill_position(30, 0).expect("pos");
        db.write(|c| {
            insert_event(c, &ev(7, "$live7", EventStatus::Timeline))?;
            insert_event(c, &ev(5, "$live5", EventStatus::Timeline))?;
            insert_event(c, &ev(-6, "$outlier", EventStatus::Outlier))?;
            // Arrived in this order, sorted by depth.
            insert_event(c, &ev(deep, "$depth30", EventStatus::Timeline))?;
            let shallow = next_backfill_position(c, 10)?.expect("pos");
            insert_event(c, &ev(shallow, "$depth10", EventStatus::Timeline))?;
            let tie = next_backfill_position(c, 30)?.expect("pos");
            assert_eq!(tie, deep + 1);
            insert_event(c, &ev(tie, "$depth30b", EventStatus::Timeline))
        })
        .expect("write");
        let ids = |after: i64, up_to: i64, limit: usize, backwards: bool| -> Vec<String> {
            db.read(|c| room_events(c, "!r:x", after, up_to, limit, backwards))
                .expect("read")
                .into_iter()
                .map(|e| e.event_id)
                .collect()
        };
        assert_eq!(
            ids(i64::MIN, i64::MAX, 10, true),
            ["$live7", "$live5", "$depth30b", "$depth30", "$depth10"]
        );
        assert_eq!(
            ids(i64::MIN, i64::MAX, 10, false),
            ["$depth10", "$depth30", "$depth30b", "$live5", "$live7"]
        );
        // A page that ends in the live stream continues below it; limits hold across.
        assert_eq!(ids(i64::MIN, 6, 2, true), ["$live5", "$depth30b"]);
        assert_eq!(ids(i64::MIN, deep, 5, true), ["$depth30", "$depth10"]);
        // /sync ranges start at a token (never negative): no backfilled event.
        assert_eq!(ids(0, i64::MAX, 10, true), ["$live7", "$live5"]);
        assert_eq!(ids(4, 7, 10, false), ["$live5", "$live7"]);
    }
}
