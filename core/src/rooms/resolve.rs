//! State resolution over stored events: ruma's `resolve` (v2, or v2.1 for room version
//! 12 per the room version rules), fed with auth chains and the conflicted state
//! subgraph walked from storage; room version 1's original algorithm is
//! [`super::resolve_v1`].

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};

use ruma::state_res::{self, utils::event_id_set::EventIdSet};
use ruma::{EventId, OwnedEventId, events::StateEventType, room_version_rules::RoomVersionRules};
use rusqlite::Connection;

use super::load_pdu;
use crate::error::Error;
use crate::events::Pdu;
use crate::storage::StateMap;

/// Most events one auth-chain walk visits before resolution gives up.
const MAX_AUTH_CHAIN: usize = 100_000;

/// Stored events loaded once per resolution.
struct Events<'c> {
    c: &'c Connection,
    cache: RefCell<HashMap<OwnedEventId, Option<Pdu>>>,
}

impl Events<'_> {
    fn get(&self, id: &EventId) -> Option<Pdu> {
        if let Some(hit) = self.cache.borrow().get(id) {
            return hit.clone();
        }
        let loaded = load_pdu(self.c, id.as_str()).ok().flatten();
        self.cache
            .borrow_mut()
            .insert(id.to_owned(), loaded.clone());
        loaded
    }

    fn auth_events(&self, id: &EventId) -> Vec<OwnedEventId> {
        self.get(id).map(|p| p.auth_events).unwrap_or_default()
    }

    /// The full recursive auth chain of a set of events (not including themselves).
    fn auth_chain<'a>(
        &self,
        starts: impl Iterator<Item = &'a OwnedEventId>,
    ) -> Result<EventIdSet<OwnedEventId>, Error> {
        let mut chain = EventIdSet::new();
        let mut stack: Vec<OwnedEventId> = starts.flat_map(|id| self.auth_events(id)).collect();
        while let Some(id) = stack.pop() {
            if chain.contains(&id) {
                continue;
            }
            if chain.len() >= MAX_AUTH_CHAIN {
                return Err(Error::internal("auth chain too large to resolve state"));
            }
            stack.extend(self.auth_events(&id));
            chain.insert(id);
        }
        Ok(chain)
    }

    /// Whether `start` reaches a conflicted event through one or more auth edges.
    fn reaches_conflicted(
        &self,
        start: &OwnedEventId,
        conflicted: &HashSet<OwnedEventId>,
        memo: &mut HashMap<OwnedEventId, bool>,
    ) -> bool {
        let mut visiting = HashSet::new();
        let mut stack = vec![(start.clone(), false)];
        while let Some((id, expanded)) = stack.pop() {
            if memo.contains_key(&id) {
                continue;
            }
            let parents = self.auth_events(&id);
            if expanded {
                let r = parents
                    .iter()
                    .any(|p| conflicted.contains(p) || memo.get(p) == Some(&true));
                memo.insert(id, r);
            } else if visiting.insert(id.clone()) {
                stack.push((id, true));
                stack.extend(
                    parents
                        .into_iter()
                        .filter(|p| !memo.contains_key(p) && !visiting.contains(p))
                        .map(|p| (p, false)),
                );
            }
        }
        memo.get(start).copied().unwrap_or(false)
    }

    /// The conflicted state subgraph (room version 12): every event on an auth-event path
    /// from one conflicted state event to another.
    fn conflicted_subgraph(
        &self,
        conflicted_set: &state_res::StateMap<Vec<OwnedEventId>>,
    ) -> EventIdSet<OwnedEventId> {
        let conflicted: HashSet<OwnedEventId> =
            conflicted_set.values().flatten().cloned().collect();
        // Events reachable from a conflicted event through at least one auth edge.
        let mut below = HashSet::new();
        let mut stack: Vec<OwnedEventId> = conflicted
            .iter()
            .flat_map(|id| self.auth_events(id))
            .collect();
        while let Some(id) = stack.pop() {
            if below.len() >= MAX_AUTH_CHAIN {
                break;
            }
            if below.insert(id.clone()) {
                stack.extend(self.auth_events(&id));
            }
        }
        let mut memo = HashMap::new();
        let mut out = EventIdSet::new();
        for id in &conflicted {
            if self.reaches_conflicted(id, &conflicted, &mut memo) {
                out.insert(id.clone());
            }
        }
        for id in &below {
            if conflicted.contains(id) || self.reaches_conflicted(id, &conflicted, &mut memo) {
                out.insert(id.clone());
            }
        }
        out
    }
}

fn to_ruma(state: &StateMap) -> Result<state_res::StateMap<OwnedEventId>, Error> {
    state
        .iter()
        .map(|((ty, sk), id)| {
            let id = EventId::parse(id)
                .map_err(|e| Error::internal(format!("stored event id {id}: {e}")))?;
            Ok(((StateEventType::from(ty.as_str()), sk.clone()), id))
        })
        .collect()
}

/// Resolve several states of one room into one, with the room version's algorithm.
///
/// `unstored` is an event the states may name that is not persisted yet (the event
/// being received).
pub(super) fn resolve_states(
    c: &Connection,
    rules: &RoomVersionRules,
    states: &[StateMap],
    unstored: Option<&Pdu>,
) -> Result<StateMap, Error> {
    let mut distinct: Vec<&StateMap> = Vec::new();
    for s in states {
        if !distinct.contains(&s) {
            distinct.push(s);
        }
    }
    match distinct.as_slice() {
        [] => return Ok(StateMap::new()),
        [one] => return Ok((*one).clone()),
        _ => {}
    }
    let mut cache = HashMap::new();
    if let Some(pdu) = unstored {
        cache.insert(pdu.event_id.clone(), Some(pdu.clone()));
    }
    let events = Events {
        c,
        cache: RefCell::new(cache),
    };
    let Some(v2) = rules.state_res.v2_rules() else {
        // Room version 1: the original algorithm.
        return Ok(super::resolve_v1::resolve_v1(
            &rules.authorization,
            &distinct,
            |id| EventId::parse(id).ok().and_then(|id| events.get(&id)),
        ));
    };
    let maps = distinct
        .iter()
        .map(|s| to_ruma(s))
        .collect::<Result<Vec<_>, _>>()?;
    let auth_chains = maps
        .iter()
        .map(|m| events.auth_chain(m.values()))
        .collect::<Result<Vec<_>, _>>()?;
    let resolved = state_res::resolve(
        &rules.authorization,
        v2,
        &maps,
        auth_chains,
        |id| events.get(id),
        |conflicted| Some(events.conflicted_subgraph(conflicted)),
    )
    .map_err(|e| Error::internal(format!("state resolution failed: {e}")))?;
    Ok(resolved
        .into_iter()
        .map(|((ty, sk), id)| ((ty.to_string(), sk), id.to_string()))
        .collect())
}
