//! Criterion micro-benchmarks of the room engine's hot paths, on an in-memory room
//! (room version 12, built with the node's own `events::build_pdu`):
//!
//! - `build_pdu`: build + content hash + sign + reference hash of one message;
//! - `verify_event`: signature and content-hash check of a received PDU;
//! - `auth_check`: state-independent and state-dependent auth rules for one message;
//! - `state_resolution`: ruma's `state_res::resolve` (v2.1) on two forks of a room with
//!   50 members whose name, topic and power levels conflict;
//! - `state_resolution_1000`: the same on two forks of a room with 500 members in which
//!   every member changed their member event on both sides: 1,000 conflicted state
//!   events.
//!
//! `/sync` response building is in `benches/sync.rs` (it needs a node's database).
//!
//! Run: `cargo bench -p warren-core --bench events`. `cargo clippy --all-targets` and
//! `cargo test` only compile this file.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use ruma::events::StateEventType;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, verify_event};
use ruma::state_res::{self, StateMap, utils::event_id_set::EventIdSet};
use ruma::{CanonicalJsonObject, EventId, OwnedEventId, room_version_rules::RoomVersionRules};
use serde_json::{Value, json};
use warren_core::Identity;
use warren_core::events::{
    EventReference, NewEvent, Pdu, build_pdu, room_id_from_create_event_id, rules_for,
};
use warren_core::identity::KEY_ID;

/// Members joined before the fork (besides the creator).
const MEMBERS: usize = 50;

struct Room {
    identity: Identity,
    rules: RoomVersionRules,
    room_id: String,
    events: HashMap<OwnedEventId, Pdu>,
    json: HashMap<OwnedEventId, CanonicalJsonObject>,
    state: StateMap<OwnedEventId>,
    last: String,
    depth: i64,
}

fn user(identity: &Identity, name: &str) -> String {
    format!("@{name}:{}", identity.server_name())
}

impl Room {
    fn new() -> Room {
        let identity = Identity::from_seed([7; 32]).expect("identity from a fixed seed");
        let (_, rules) = rules_for("12").expect("room version 12 is supported");
        let create = NewEvent {
            kind: "m.room.create".into(),
            state_key: Some(String::new()),
            content: json!({"room_version": "12"}),
            sender: user(&identity, "alice"),
            redacts: None,
        };
        let (id, object) =
            build_pdu(&identity, &rules, None, &create, &[], &[], 1, 1).expect("create event");
        let mut room = Room {
            room_id: room_id_from_create_event_id(&id),
            identity,
            rules,
            events: HashMap::new(),
            json: HashMap::new(),
            state: StateMap::new(),
            last: id.clone(),
            depth: 1,
        };
        room.store(&id, object);
        room
    }

    fn store(&mut self, id: &str, object: CanonicalJsonObject) -> OwnedEventId {
        let text = serde_json::to_string(&object).expect("PDU serialises");
        let pdu = Pdu::from_json(id, &text).expect("PDU parses");
        let event_id = pdu.event_id.clone();
        if let Some(sk) = &pdu.state_key {
            self.state.insert(
                (StateEventType::from(pdu.kind.to_string()), sk.clone()),
                event_id.clone(),
            );
        }
        self.events.insert(event_id.clone(), pdu);
        self.json.insert(event_id.clone(), object);
        event_id
    }

    /// Auth events per the spec's selection (the create event is implied in v12).
    fn auth_for(&self, kind: &str, sender: &str, state_key: Option<&str>) -> Vec<String> {
        let mut keys = vec![
            ("m.room.power_levels", String::new()),
            ("m.room.member", sender.to_owned()),
        ];
        if kind == "m.room.member" {
            keys.push(("m.room.join_rules", String::new()));
            if let Some(sk) = state_key {
                keys.push(("m.room.member", sk.to_owned()));
            }
        }
        let mut out = Vec::new();
        for (ty, sk) in keys {
            if let Some(id) = self.state.get(&(StateEventType::from(ty), sk)) {
                let id = id.to_string();
                if !out.contains(&id) {
                    out.push(id);
                }
            }
        }
        out
    }

    fn new_event(
        &self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            content,
            sender: sender.to_owned(),
            redacts: None,
        }
    }

    fn build(&self, ev: &NewEvent, prev: &str, depth: i64) -> (String, CanonicalJsonObject) {
        let auth = self.auth_for(&ev.kind, &ev.sender, ev.state_key.as_deref());
        build_pdu(
            &self.identity,
            &self.rules,
            Some(&self.room_id),
            ev,
            &[EventReference::id(prev)],
            &EventReference::ids(&auth),
            depth,
            1_000 + depth,
        )
        .expect("build_pdu")
    }

    fn send(
        &mut self,
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: Value,
    ) -> OwnedEventId {
        let ev = self.new_event(sender, kind, state_key, content);
        self.depth += 1;
        let (id, object) = self.build(&ev, &self.last.clone(), self.depth);
        self.last = id.clone();
        self.store(&id, object)
    }

    fn user(&self, name: &str) -> String {
        user(&self.identity, name)
    }

    fn auth_check(&self, pdu: &Pdu) -> Result<(), String> {
        let fetch_event = |id: &EventId| self.events.get(id).cloned();
        state_res::check_state_independent_auth_rules(&self.rules.authorization, pdu, fetch_event)?;
        let fetch_state = |ty: &StateEventType, sk: &str| {
            self.state
                .get(&(ty.clone(), sk.to_owned()))
                .and_then(|id| self.events.get(id).cloned())
        };
        state_res::check_state_dependent_auth_rules(&self.rules.authorization, pdu, fetch_state)
    }

    fn auth_chain(&self, state: &StateMap<OwnedEventId>) -> EventIdSet<OwnedEventId> {
        let mut chain = EventIdSet::new();
        let mut stack: Vec<OwnedEventId> = state
            .values()
            .filter_map(|id| self.events.get(id))
            .flat_map(|p| p.auth_events.clone())
            .collect();
        while let Some(id) = stack.pop() {
            if chain.contains(&id) {
                continue;
            }
            if let Some(p) = self.events.get(&id) {
                stack.extend(p.auth_events.iter().cloned());
            }
            chain.insert(id);
        }
        chain
    }

    /// State resolution (v2.1) of `forks`, with auth chains and the conflicted subgraph
    /// computed in memory the way `core/src/rooms/resolve.rs` does from storage.
    fn resolve(
        &self,
        forks: &[StateMap<OwnedEventId>],
    ) -> Result<StateMap<OwnedEventId>, state_res::Error> {
        let v2 = self
            .rules
            .state_res
            .v2_rules()
            .expect("room version 12 uses state res v2.1");
        let chains = forks.iter().map(|s| self.auth_chain(s)).collect();
        state_res::resolve(
            &self.rules.authorization,
            v2,
            forks,
            chains,
            |id| self.events.get(id).cloned(),
            |conflicted| Some(self.conflicted_subgraph(conflicted)),
        )
    }

    /// Events on auth paths between conflicted events (the conflicted ones included).
    fn conflicted_subgraph(
        &self,
        conflicted: &StateMap<Vec<OwnedEventId>>,
    ) -> EventIdSet<OwnedEventId> {
        let conflicted: HashSet<OwnedEventId> = conflicted.values().flatten().cloned().collect();
        let mut memo: HashMap<OwnedEventId, bool> = HashMap::new();
        fn reaches(
            room: &Room,
            id: &OwnedEventId,
            conflicted: &HashSet<OwnedEventId>,
            memo: &mut HashMap<OwnedEventId, bool>,
        ) -> bool {
            if let Some(&r) = memo.get(id) {
                return r;
            }
            let parents = room
                .events
                .get(id)
                .map(|p| p.auth_events.clone())
                .unwrap_or_default();
            let mut r = false;
            for p in &parents {
                if conflicted.contains(p) || reaches(room, p, conflicted, memo) {
                    r = true;
                }
            }
            memo.insert(id.clone(), r);
            r
        }
        let mut out = EventIdSet::new();
        let mut stack: Vec<OwnedEventId> = conflicted.iter().cloned().collect();
        let mut seen = HashSet::new();
        while let Some(id) = stack.pop() {
            if !seen.insert(id.clone()) {
                continue;
            }
            if conflicted.contains(&id) || reaches(self, &id, &conflicted, &mut memo) {
                out.insert(id.clone());
            }
            if let Some(p) = self.events.get(&id) {
                stack.extend(p.auth_events.iter().cloned());
            }
        }
        out
    }
}

/// A room with the creator, power levels, public join rules and `members` members.
fn room_with_members(members: usize) -> Room {
    let mut room = Room::new();
    let alice = room.user("alice");
    room.send(
        &alice,
        "m.room.member",
        Some(&alice),
        json!({"membership": "join"}),
    );
    room.send(
        &alice,
        "m.room.power_levels",
        Some(""),
        json!({"users": {}, "state_default": 50}),
    );
    room.send(
        &alice,
        "m.room.join_rules",
        Some(""),
        json!({"join_rule": "public"}),
    );
    for i in 0..members {
        let m = room.user(&format!("member{i}"));
        room.send(&m, "m.room.member", Some(&m), json!({"membership": "join"}));
    }
    room
}

/// Members in the room whose every member event conflicts.
const CONFLICTED_MEMBERS: usize = 500;

/// A room of [`CONFLICTED_MEMBERS`] members, then two forks from its last event in which
/// each member sets a different display name: 1,000 conflicted member events.
fn widely_forked_room() -> (Room, Vec<StateMap<OwnedEventId>>) {
    let mut room = room_with_members(CONFLICTED_MEMBERS);
    let base_last = room.last.clone();
    let base_depth = room.depth;
    let base_state = room.state.clone();
    let mut forks = Vec::new();
    for side in ["one", "two"] {
        room.last = base_last.clone();
        room.depth = base_depth;
        room.state = base_state.clone();
        for i in 0..CONFLICTED_MEMBERS {
            let m = room.user(&format!("member{i}"));
            let content = json!({"membership": "join", "displayname": format!("{side} {i}")});
            room.send(&m, "m.room.member", Some(&m), content);
        }
        forks.push(room.state.clone());
    }
    room.state = base_state;
    (room, forks)
}

/// A room with the creator, power levels, public join rules and [`MEMBERS`] members; then
/// two forks from its last event that set name, topic and power levels differently.
fn forked_room() -> (Room, Vec<StateMap<OwnedEventId>>) {
    let mut room = room_with_members(MEMBERS);
    let alice = room.user("alice");
    let base_last = room.last.clone();
    let base_depth = room.depth;
    let base_state = room.state.clone();

    let fork = |room: &mut Room, name: &str, extra: Option<(&str, Value)>| {
        room.last = base_last.clone();
        room.depth = base_depth;
        room.state = base_state.clone();
        room.send(&alice, "m.room.name", Some(""), json!({"name": name}));
        if let Some((kind, content)) = extra {
            room.send(&alice, kind, Some(""), content);
        }
        room.state.clone()
    };
    let member0 = room.user("member0");
    let one = fork(
        &mut room,
        "fork one",
        Some((
            "m.room.power_levels",
            json!({"users": {member0: 50}, "state_default": 50}),
        )),
    );
    let two = fork(
        &mut room,
        "fork two",
        Some(("m.room.topic", json!({"topic": "two"}))),
    );
    room.state = base_state;
    (room, vec![one, two])
}

fn benches(c: &mut Criterion) {
    let (room, forks) = forked_room();
    let alice = room.user("alice");
    let message = room.new_event(
        &alice,
        "m.room.message",
        None,
        json!({"msgtype": "m.text", "body": "hello"}),
    );

    c.bench_function(
        "build_pdu (message: build, hash, sign, reference hash)",
        |b| b.iter(|| black_box(room.build(black_box(&message), &room.last, room.depth + 1))),
    );

    let (id, object) = room.build(&message, &room.last, room.depth + 1);
    let mut keys = PublicKeyMap::new();
    let mut set = BTreeMap::new();
    set.insert(
        KEY_ID.to_owned(),
        Base64::new(room.identity.public_key().to_vec()),
    );
    keys.insert(room.identity.server_name().to_owned(), set);
    verify_event(&keys, &object, &room.rules).expect("our own event verifies");
    c.bench_function("verify_event (signature + content hash)", |b| {
        b.iter(|| black_box(verify_event(&keys, black_box(&object), &room.rules)))
    });

    let text = serde_json::to_string(&object).expect("PDU serialises");
    let pdu = Pdu::from_json(&id, &text).expect("PDU parses");
    room.auth_check(&pdu)
        .expect("a member's message is allowed");
    c.bench_function("auth_check (message, 52 members)", |b| {
        b.iter(|| black_box(room.auth_check(black_box(&pdu))))
    });

    let resolve = || room.resolve(&forks);
    let resolved = resolve().expect("the forks resolve");
    assert_eq!(
        resolved.len(),
        forks[0].len() + 1,
        "resolved state has every key"
    );
    c.bench_function(
        "state_resolution (2 forks, 3 conflicted keys, 52 members)",
        |b| b.iter(|| black_box(resolve())),
    );
}

fn wide_resolution(c: &mut Criterion) {
    let (room, forks) = widely_forked_room();
    let resolve = || room.resolve(&forks);
    let resolved = resolve().expect("the forks resolve");
    let conflicted = forks[0]
        .iter()
        .filter(|(k, v)| forks[1].get(*k) != Some(*v))
        .count();
    assert_eq!(conflicted, CONFLICTED_MEMBERS, "every member key conflicts");
    assert_eq!(
        resolved.len(),
        forks[0].len(),
        "resolved state has every key"
    );
    let mut group = c.benchmark_group("wide");
    group.sample_size(10);
    group.bench_function(
        "state_resolution_1000 (2 forks, 500 conflicted keys = 1,000 state events)",
        |b| b.iter(|| black_box(resolve())),
    );
    group.finish();
}

criterion_group!(events, benches, wide_resolution);
criterion_main!(events);
