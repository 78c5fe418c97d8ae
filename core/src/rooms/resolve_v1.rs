//! State resolution v1, the original algorithm, used only by room version 1
//! (<https://spec.matrix.org/v1.18/rooms/v1/#state-resolution>). ruma-state-res
//! implements v2 alone, so this is written out here, following Synapse's
//! `synapse/state/v1.py` where the spec is vague:
//!
//! 1. A key is *conflicted* when two state sets hold different events for it; a key
//!    missing from some sets is not (unlike v2). The rest is the unconflicted state,
//!    the start of the partially resolved state R.
//! 2. Conflicted `m.room.power_levels`, then each conflicted `m.room.join_rules`, then
//!    each conflicted `m.room.member` key, are resolved as *auth events*: candidates in
//!    order of ascending depth, then descending SHA-1 of the event id; the first is
//!    taken, and each next one replaces it while it passes the auth rules against R with
//!    the one before in its place; the first that fails ends the walk. R takes the
//!    winners of a step before the next step starts.
//! 3. Every other conflicted key is a *normal* event: the first candidate, by descending
//!    depth then ascending SHA-1, that passes the auth rules against R; the last
//!    candidate if none does.
//!
//! Auth is checked with ruma-state-res's state-dependent rules (the state-independent
//! ones and signatures were checked when each event was received).

use std::collections::{BTreeMap, BTreeSet};

use ruma::events::StateEventType;
use ruma::room_version_rules::AuthorizationRules;
use ruma::state_res;
use sha1::{Digest, Sha1};

use crate::events::Pdu;
use crate::storage::StateMap;

type Key = (String, String);

/// Resolve `states` into one with the v1 algorithm. `fetch` loads an event by id;
/// conflicted events it cannot load, or that were rejected, are left out.
pub(super) fn resolve_v1(
    rules: &AuthorizationRules,
    states: &[&StateMap],
    fetch: impl Fn(&str) -> Option<Pdu>,
) -> StateMap {
    let (mut resolved, conflicted) = separate(states);
    let mut candidates: BTreeMap<Key, Vec<Pdu>> = BTreeMap::new();
    for (key, ids) in conflicted {
        let events: Vec<Pdu> = ids
            .iter()
            .filter_map(|id| fetch(id))
            .filter(|e| !e.rejected)
            .collect();
        match events.as_slice() {
            [] => {}
            // Only one candidate could be loaded: nothing left to resolve.
            [one] => {
                resolved.insert(key, one.event_id.to_string());
            }
            _ => {
                candidates.insert(key, events);
            }
        }
    }
    for step in [
        Step::PowerLevels,
        Step::JoinRules,
        Step::Members,
        Step::Normal,
    ] {
        // Every key of a step is resolved against R as it was when the step began.
        let mut winners = Vec::new();
        for (key, events) in candidates.iter().filter(|(k, _)| Step::of(k) == step) {
            let winner = match step {
                Step::Normal => resolve_normal_events(rules, &resolved, events, &fetch),
                _ => resolve_auth_events(rules, &resolved, key, events, &fetch),
            };
            winners.extend(winner.map(|w| (key.clone(), w)));
        }
        resolved.extend(winners);
    }
    resolved
}

/// The steps of the algorithm, in order: the three kinds of auth events, then the rest.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Step {
    PowerLevels,
    JoinRules,
    Members,
    Normal,
}

impl Step {
    fn of(key: &Key) -> Step {
        match key.0.as_str() {
            "m.room.power_levels" => Step::PowerLevels,
            "m.room.join_rules" => Step::JoinRules,
            "m.room.member" => Step::Members,
            _ => Step::Normal,
        }
    }
}

/// The unconflicted state and the conflicted keys with their candidate event ids.
fn separate(states: &[&StateMap]) -> (StateMap, BTreeMap<Key, BTreeSet<String>>) {
    let mut unconflicted = StateMap::new();
    let mut conflicted: BTreeMap<Key, BTreeSet<String>> = BTreeMap::new();
    for state in states {
        for (key, id) in state.iter() {
            if let Some(ids) = conflicted.get_mut(key) {
                ids.insert(id.clone());
            } else if let Some(existing) = unconflicted.get(key) {
                if existing != id {
                    let ids = BTreeSet::from([existing.clone(), id.clone()]);
                    unconflicted.remove(key);
                    conflicted.insert(key.clone(), ids);
                }
            } else {
                unconflicted.insert(key.clone(), id.clone());
            }
        }
    }
    (unconflicted, conflicted)
}

/// Descending depth, then ascending SHA-1 of the event id (Synapse's `_ordered_events`).
fn ordered(events: &[Pdu]) -> Vec<&Pdu> {
    let mut sorted: Vec<&Pdu> = events.iter().collect();
    sorted.sort_by_cached_key(|e| {
        (
            std::cmp::Reverse(e.depth),
            Sha1::digest(e.event_id.as_str().as_bytes()).to_vec(),
        )
    });
    sorted
}

/// Whether `event` passes the auth rules against R, with `overlay` replacing one key.
fn passes(
    rules: &AuthorizationRules,
    state: &StateMap,
    overlay: Option<(&Key, &str)>,
    event: &Pdu,
    fetch: &impl Fn(&str) -> Option<Pdu>,
) -> bool {
    state_res::check_state_dependent_auth_rules(rules, event, |ty: &StateEventType, sk: &str| {
        let key = (ty.to_string(), sk.to_owned());
        let id = match overlay {
            Some((k, id)) if *k == key => Some(id),
            _ => state.get(&key).map(String::as_str),
        };
        id.and_then(fetch)
    })
    .is_ok()
}

/// An auth-event key: from the oldest candidate up, each next one wins while it is
/// allowed with the one before in place.
fn resolve_auth_events(
    rules: &AuthorizationRules,
    state: &StateMap,
    key: &Key,
    events: &[Pdu],
    fetch: &impl Fn(&str) -> Option<Pdu>,
) -> Option<String> {
    let mut order = ordered(events);
    order.reverse();
    let (first, rest) = order.split_first()?;
    let mut winner = *first;
    for event in rest {
        if !passes(
            rules,
            state,
            Some((key, winner.event_id.as_str())),
            event,
            fetch,
        ) {
            break;
        }
        winner = event;
    }
    Some(winner.event_id.to_string())
}

/// A normal key: the newest candidate that is allowed, else the oldest.
fn resolve_normal_events(
    rules: &AuthorizationRules,
    state: &StateMap,
    events: &[Pdu],
    fetch: &impl Fn(&str) -> Option<Pdu>,
) -> Option<String> {
    let order = ordered(events);
    order
        .iter()
        .find(|e| passes(rules, state, None, e, fetch))
        .or(order.last())
        .map(|e| e.event_id.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use serde_json::{Value, json};

    use super::*;
    use crate::events::rules_for;

    const ALICE: &str = "@alice:x";
    const BOB: &str = "@bob:y";
    const CAROL: &str = "@carol:z";

    /// A room of version 1: its events by id, and the state they make.
    struct Room {
        events: HashMap<String, Pdu>,
        base: StateMap,
    }

    impl Room {
        /// Alice created it and has power 100; Bob joined with power 0.
        fn new() -> Room {
            let mut room = Room {
                events: HashMap::new(),
                base: StateMap::new(),
            };
            room.state(
                "$create:x",
                "m.room.create",
                "",
                ALICE,
                json!({"creator": ALICE}),
                1,
            );
            room.state(
                "$alice:x",
                "m.room.member",
                ALICE,
                ALICE,
                json!({"membership": "join"}),
                2,
            );
            let levels = json!({"users": {ALICE: 100}, "state_default": 50, "kick": 50, "ban": 50});
            room.state("$pl:x", "m.room.power_levels", "", ALICE, levels, 3);
            let public = json!({"join_rule": "public"});
            room.state("$rules:x", "m.room.join_rules", "", ALICE, public, 4);
            room.state(
                "$bob:y",
                "m.room.member",
                BOB,
                BOB,
                json!({"membership": "join"}),
                5,
            );
            room
        }

        /// Add an event to the base state.
        fn state(
            &mut self,
            id: &str,
            kind: &str,
            sk: &str,
            sender: &str,
            content: Value,
            depth: i64,
        ) {
            self.event(id, kind, sk, sender, content, depth);
            self.base.insert((kind.into(), sk.into()), id.into());
        }

        /// A state event known to the room (not in the base state).
        fn event(
            &mut self,
            id: &str,
            kind: &str,
            sk: &str,
            sender: &str,
            content: Value,
            depth: i64,
        ) {
            let json = json!({
                "event_id": id, "room_id": "!r:x", "type": kind, "state_key": sk,
                "sender": sender, "content": content, "depth": depth,
                "origin_server_ts": depth, "prev_events": [], "auth_events": [],
            });
            let pdu = Pdu::from_json(id, &json.to_string()).expect("pdu");
            self.events.insert(id.into(), pdu);
        }

        /// The base state with one key set to each of `ids` in turn, resolved.
        fn resolve(&self, key: (&str, &str), ids: &[&str]) -> StateMap {
            let sets: Vec<StateMap> = ids
                .iter()
                .map(|id| {
                    let mut s = self.base.clone();
                    s.insert((key.0.into(), key.1.into()), (*id).into());
                    s
                })
                .collect();
            let refs: Vec<&StateMap> = sets.iter().collect();
            let (_, rules) = rules_for("1").expect("rules");
            resolve_v1(&rules.authorization, &refs, |id| {
                self.events.get(id).cloned()
            })
        }
    }

    fn at<'a>(state: &'a StateMap, kind: &str, sk: &str) -> &'a str {
        state
            .get(&(kind.into(), sk.into()))
            .map(String::as_str)
            .unwrap_or("")
    }

    #[test]
    fn power_levels_go_to_the_newest_that_the_one_before_allows() {
        let mut room = Room::new();
        let pl = |bob: i64| json!({"users": {ALICE: 100, BOB: bob}, "state_default": 50});
        room.event("$pl_a:x", "m.room.power_levels", "", ALICE, pl(50), 10);
        // Bob raises himself past his own level: not allowed once Alice's stands.
        room.event("$pl_b:y", "m.room.power_levels", "", BOB, pl(100), 11);
        // Alice lowers Bob again: allowed.
        room.event("$pl_c:x", "m.room.power_levels", "", ALICE, pl(20), 12);

        let s = room.resolve(("m.room.power_levels", ""), &["$pl_a:x", "$pl_b:y"]);
        assert_eq!(at(&s, "m.room.power_levels", ""), "$pl_a:x");
        let s = room.resolve(("m.room.power_levels", ""), &["$pl_a:x", "$pl_c:x"]);
        assert_eq!(at(&s, "m.room.power_levels", ""), "$pl_c:x");
        // The walk stops at Bob's: Alice's later one is never reached.
        let s = room.resolve(
            ("m.room.power_levels", ""),
            &["$pl_a:x", "$pl_b:y", "$pl_c:x"],
        );
        assert_eq!(at(&s, "m.room.power_levels", ""), "$pl_a:x");
        // The unconflicted rest stays.
        assert_eq!(at(&s, "m.room.create", ""), "$create:x");
        assert_eq!(at(&s, "m.room.member", BOB), "$bob:y");
    }

    #[test]
    fn a_member_conflict_keeps_the_kick_but_not_an_unauthorised_ban() {
        let mut room = Room::new();
        room.event(
            "$kick:x",
            "m.room.member",
            BOB,
            ALICE,
            json!({"membership": "leave"}),
            6,
        );
        room.event(
            "$ban:z",
            "m.room.member",
            BOB,
            CAROL,
            json!({"membership": "ban"}),
            7,
        );
        let s = room.resolve(("m.room.member", BOB), &["$bob:y", "$kick:x"]);
        assert_eq!(at(&s, "m.room.member", BOB), "$kick:x");
        // Carol is not in the room: her ban fails after the kick, which stays.
        let s = room.resolve(("m.room.member", BOB), &["$bob:y", "$kick:x", "$ban:z"]);
        assert_eq!(at(&s, "m.room.member", BOB), "$kick:x");
    }

    #[test]
    fn a_normal_conflict_takes_the_deepest_allowed_event() {
        let mut room = Room::new();
        room.event(
            "$name_a:x",
            "m.room.name",
            "",
            ALICE,
            json!({"name": "A"}),
            8,
        );
        // Bob (power 0) may not name the room (state_default 50).
        room.event("$name_b:y", "m.room.name", "", BOB, json!({"name": "B"}), 9);
        room.event(
            "$name_c:x",
            "m.room.name",
            "",
            ALICE,
            json!({"name": "C"}),
            7,
        );
        let s = room.resolve(("m.room.name", ""), &["$name_a:x", "$name_b:y"]);
        assert_eq!(at(&s, "m.room.name", ""), "$name_a:x");
        let s = room.resolve(("m.room.name", ""), &["$name_a:x", "$name_c:x"]);
        assert_eq!(at(&s, "m.room.name", ""), "$name_a:x");
        // None allowed: the least deep.
        room.event("$name_d:y", "m.room.name", "", BOB, json!({"name": "D"}), 3);
        let s = room.resolve(("m.room.name", ""), &["$name_b:y", "$name_d:y"]);
        assert_eq!(at(&s, "m.room.name", ""), "$name_d:y");
    }

    #[test]
    fn equal_depths_are_ordered_by_the_sha1_of_the_id() {
        let mut room = Room::new();
        room.event(
            "$one:x",
            "m.room.topic",
            "",
            ALICE,
            json!({"topic": "1"}),
            8,
        );
        room.event(
            "$two:x",
            "m.room.topic",
            "",
            ALICE,
            json!({"topic": "2"}),
            8,
        );
        let expected = ["$one:x", "$two:x"]
            .into_iter()
            .min_by_key(|id| Sha1::digest(id.as_bytes()).to_vec())
            .expect("two");
        for ids in [["$one:x", "$two:x"], ["$two:x", "$one:x"]] {
            let s = room.resolve(("m.room.topic", ""), &ids);
            assert_eq!(at(&s, "m.room.topic", ""), expected);
        }
    }

    #[test]
    fn keys_missing_from_some_states_are_not_conflicted() {
        let a = StateMap::from([(("m.room.name".into(), String::new()), "$n:x".into())]);
        let b = StateMap::from([(("m.room.topic".into(), String::new()), "$t:x".into())]);
        let c = StateMap::from([(("m.room.name".into(), String::new()), "$m:x".into())]);
        let (unconflicted, conflicted) = separate(&[&a, &b, &c]);
        assert_eq!(unconflicted.len(), 1);
        assert_eq!(at(&unconflicted, "m.room.topic", ""), "$t:x");
        assert_eq!(conflicted.len(), 1);
        let names = &conflicted[&("m.room.name".to_owned(), String::new())];
        assert_eq!(names.len(), 2);
    }
}
