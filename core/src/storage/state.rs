//! State groups: snapshots of room state stored as deltas.
//!
//! A group stores only the entries that differ from its `prev_group`. To keep loads
//! bounded, a group whose delta chain would exceed [`MAX_CHAIN`] stores a full snapshot
//! instead, so loading a state never walks more than `MAX_CHAIN` groups, whatever the
//! room's history.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// `(event type, state key)` → event id.
pub type StateMap = BTreeMap<(String, String), String>;

/// Longest delta chain before a full snapshot is written.
pub const MAX_CHAIN: i64 = 32;

/// Store a new group equal to `prev` (if any) with `changes` applied. Returns its id.
pub fn new_state_group(
    c: &Connection,
    room_id: &str,
    prev: Option<i64>,
    changes: &StateMap,
) -> Result<i64, Error> {
    let prev_len: Option<i64> = match prev {
        Some(p) => c
            .query_row(
                "SELECT chain_len FROM state_groups WHERE id = ?1",
                [p],
                |r| r.get(0),
            )
            .optional()?,
        None => None,
    };
    let (prev_group, chain_len, entries) = match (prev, prev_len) {
        (Some(p), Some(len)) if len < MAX_CHAIN => (Some(p), len + 1, changes.clone()),
        (Some(p), Some(_)) => {
            let mut full = load_state_group(c, p)?;
            full.extend(changes.iter().map(|(k, v)| (k.clone(), v.clone())));
            (None, 0, full)
        }
        _ => (None, 0, changes.clone()),
    };
    c.execute(
        "INSERT INTO state_groups (room_id, prev_group, chain_len) VALUES (?1, ?2, ?3)",
        params![room_id, prev_group, chain_len],
    )?;
    let id = c.last_insert_rowid();
    let mut st = c.prepare_cached(
        "INSERT INTO state_group_entries (state_group, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4)",
    )?;
    for ((ty, sk), ev) in &entries {
        st.execute(params![id, ty, sk, ev])?;
    }
    Ok(id)
}

/// A group holding exactly `state`, given a known group `base` holding `base_state`:
/// `base` itself when equal, a delta on it when `state` only adds or changes entries, a
/// full snapshot otherwise.
pub fn group_for_state(
    c: &Connection,
    room_id: &str,
    base: Option<(i64, &StateMap)>,
    state: &StateMap,
) -> Result<i64, Error> {
    match base {
        Some((g, old)) if old == state => Ok(g),
        Some((g, old)) if old.keys().all(|k| state.contains_key(k)) => {
            let changes: StateMap = state
                .iter()
                .filter(|(k, v)| old.get(*k) != Some(*v))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            new_state_group(c, room_id, Some(g), &changes)
        }
        _ => new_state_group(c, room_id, None, state),
    }
}

/// One entry of a group's state: walks the delta chain (at most [`MAX_CHAIN`] groups)
/// only as far as the first group that sets it.
pub fn state_group_lookup(
    c: &Connection,
    group: i64,
    ty: &str,
    state_key: &str,
) -> Result<Option<String>, Error> {
    let mut entry = c.prepare_cached(
        "SELECT event_id FROM state_group_entries
         WHERE state_group = ?1 AND type = ?2 AND state_key = ?3",
    )?;
    let mut prev = c.prepare_cached("SELECT prev_group FROM state_groups WHERE id = ?1")?;
    let mut cur = Some(group);
    while let Some(g) = cur {
        if let Some(id) = entry
            .query_row(params![g, ty, state_key], |r| r.get(0))
            .optional()?
        {
            return Ok(Some(id));
        }
        cur = prev
            .query_row([g], |r| r.get::<_, Option<i64>>(0))
            .optional()?
            .flatten();
    }
    Ok(None)
}

/// The full state of a group.
pub fn load_state_group(c: &Connection, group: i64) -> Result<StateMap, Error> {
    // The chain from this group up to its snapshot (at most MAX_CHAIN + 1 groups), and
    // their entries oldest group first, so each group's entries override the older ones:
    // one statement, kept prepared.
    let mut st = c.prepare_cached(
        "WITH RECURSIVE chain(id, depth) AS (
             SELECT ?1, 0
             UNION ALL
             SELECT g.prev_group, chain.depth + 1 FROM state_groups g JOIN chain ON g.id = chain.id
             WHERE g.prev_group IS NOT NULL AND chain.depth <= ?2
         )
         SELECT e.type, e.state_key, e.event_id
         FROM chain JOIN state_group_entries e ON e.state_group = chain.id
         ORDER BY chain.depth DESC",
    )?;
    let mut state = StateMap::new();
    let rows = st.query_map(params![group, MAX_CHAIN], |r| {
        Ok(((r.get(0)?, r.get(1)?), r.get(2)?))
    })?;
    for row in rows {
        let (k, v) = row?;
        state.insert(k, v);
    }
    Ok(state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deltas_resolve_and_chains_stay_bounded() {
        let mut conn = Connection::open_in_memory().expect("db");
        super::super::migrations::run(&mut conn, "mem").expect("migrate");
        let mut prev = None;
        for i in 0..100 {
            let mut ch = StateMap::new();
            ch.insert(
                ("m.room.member".into(), format!("@u{}:x", i % 10)),
                format!("$e{i}"),
            );
            prev = Some(new_state_group(&conn, "!r:x", prev, &ch).expect("group"));
        }
        let state = load_state_group(&conn, prev.expect("some")).expect("load");
        assert_eq!(state.len(), 10);
        assert_eq!(
            state
                .get(&("m.room.member".into(), "@u3:x".into()))
                .map(String::as_str),
            Some("$e93")
        );
        let max_len: i64 = conn
            .query_row("SELECT MAX(chain_len) FROM state_groups", [], |r| r.get(0))
            .expect("q");
        assert!(max_len <= MAX_CHAIN);
    }
}
