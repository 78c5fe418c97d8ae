//! Walks of a room's DAG for `/backfill` and `/get_missing_events`. Only events stored
//! here are walked; a prev event we do not have ends that branch.

use std::collections::{BTreeSet, BinaryHeap};

use rusqlite::Connection;

use super::visible::{event_refs, load_pdu};
use crate::error::Error;
use crate::storage::StoredEvent;

/// Most events one `/backfill` answers with.
pub const MAX_BACKFILL: usize = 100;

/// Most events one `/get_missing_events` answers with.
pub const MAX_MISSING_EVENTS: usize = 20;

/// The `from` events and their ancestors, up to `limit` (capped at [`MAX_BACKFILL`]):
/// a breadth-first walk of `prev_events` that always continues from the deepest event
/// seen so far, so the answer is depth-descending (ties: newest stream position first).
/// Events of `from` that are not in `room_id` are skipped.
pub fn backfill(
    c: &Connection,
    room_id: &str,
    from: &[String],
    limit: usize,
) -> Result<Vec<StoredEvent>, Error> {
    let limit = limit.min(MAX_BACKFILL);
    let mut seen = BTreeSet::new();
    let mut heap = BinaryHeap::new();
    let mut push = |heap: &mut BinaryHeap<_>, id: &str| -> Result<(), Error> {
        if !seen.insert(id.to_owned()) {
            return Ok(());
        }
        if let Some(ev) = load_pdu(c, id)?
            && ev.room_id == room_id
        {
            heap.push(Deepest(ev));
        }
        Ok(())
    };
    for id in from {
        push(&mut heap, id)?;
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let Some(Deepest(ev)) = heap.pop() else { break };
        for prev in event_refs(&ev, "prev_events") {
            push(&mut heap, &prev)?;
        }
        out.push(ev);
    }
    Ok(out)
}

/// Orders events by depth, then stream position (a max-heap pops the deepest first).
struct Deepest(StoredEvent);

impl Deepest {
    fn key(&self) -> (i64, i64) {
        (self.0.depth, self.0.stream_ordering)
    }
}

impl PartialEq for Deepest {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}
impl Eq for Deepest {}
impl PartialOrd for Deepest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Deepest {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.key().cmp(&other.key())
    }
}

/// The events a server is missing between what it has (`earliest`) and what it saw
/// (`latest`): a breadth-first walk of the `prev_events` of `latest`, never entering
/// `earliest`, not going below `min_depth`, up to `limit` (capped at
/// [`MAX_MISSING_EVENTS`]). The `latest` events themselves are not included. Answered
/// oldest first (depth, then stream position), as Synapse does, so the receiver can
/// apply them in order.
pub fn missing_events(
    c: &Connection,
    room_id: &str,
    earliest: &[String],
    latest: &[String],
    limit: usize,
    min_depth: i64,
) -> Result<Vec<StoredEvent>, Error> {
    let limit = limit.min(MAX_MISSING_EVENTS);
    let mut seen: BTreeSet<String> = earliest.iter().cloned().collect();
    let mut front = Vec::new();
    for id in latest {
        if seen.insert(id.clone())
            && let Some(ev) = load_pdu(c, id)?
            && ev.room_id == room_id
        {
            front.push(ev);
        }
    }
    let mut out = Vec::new();
    'walk: while !front.is_empty() {
        let mut next = Vec::new();
        for ev in &front {
            for prev in event_refs(ev, "prev_events") {
                if out.len() >= limit {
                    break 'walk;
                }
                if !seen.insert(prev.clone()) {
                    continue;
                }
                let Some(p) = load_pdu(c, &prev)? else {
                    continue;
                };
                if p.room_id != room_id || p.depth < min_depth {
                    continue;
                }
                out.push(p.clone());
                next.push(p);
            }
        }
        front = next;
    }
    out.sort_by_key(|e| (e.depth, e.stream_ordering));
    Ok(out)
}
