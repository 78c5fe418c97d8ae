//! State resolution for a received event on a read snapshot, before its write: the
//! single writer then only checks that what the resolution read is still so, instead of
//! loading states and resolving them while every other write waits. A peer whose events
//! fork the room (a partition healing, a hostile server) costs a reader, not the writer.
//!
//! Two results are kept: the state before the event (the resolution of the states
//! after its prev events: those never change once stored, so it stays right) and the
//! room's current state after it (the resolution of the states after the forward
//! extremities: right only while the extremities are the same, which the write checks,
//! resolving again when they moved). An event that extends the current state is left
//! to the write's lookups (`Room::linear_before`), which need no resolution.

use ruma::room_version_rules::RoomVersionRules;

use super::check::Checked;
use super::persist::Room;
use super::resolve::CurrentAhead;
use super::state_before::Before;
use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// What was resolved ahead for one received event.
#[derive(Debug)]
pub(in crate::rooms) struct Ahead {
    /// The state before the event.
    pub(super) before: Before,
    /// The current state after it, with the extremities it was resolved with.
    pub(super) current: CurrentAhead,
}

/// Resolve the states a received event needs on a read snapshot. `None` when the
/// write should do it all: its prev events are not all stored with a state, or it
/// extends the current state.
pub(super) fn resolve_ahead(
    server: &Server,
    room_id: &str,
    version: &str,
    rules: &RoomVersionRules,
    checked: &Checked,
) -> Result<Option<Ahead>, Error> {
    let pdu = &checked.pdu;
    server.db.read_tx(|c| {
        let room = Room {
            c,
            room_id,
            version,
            rules,
        };
        if room.linear_before(pdu)?.is_some() {
            return Ok(None);
        }
        let Some(before) = room.resolved_before(pdu)? else {
            return Ok(None);
        };
        let mut after = before.state.clone();
        if let Some(sk) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), sk.clone()), checked.event_id.clone());
        }
        let extremities = storage::forward_extremities(c, room_id)?;
        let state = room.current_from(pdu, &after, &extremities)?;
        Ok(Some(Ahead {
            before,
            current: CurrentAhead { extremities, state },
        }))
    })
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::events::{EventReference, NewEvent, build_pdu, rules_for};
    use crate::identity::Identity;
    use crate::rooms::receive::{Outcome, check_pdu, persist};
    use crate::test_support::{ev, node};

    /// A state resolved ahead is used only while the room's forward extremities are the
    /// ones it was resolved with: here a newer topic lands between the resolution and
    /// the write, and the write resolves again, so the newer topic wins as it must.
    #[tokio::test]
    async fn a_current_state_resolved_ahead_is_redone_when_the_extremities_moved() {
        let (_dir, node) = node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let room = crate::test_support::public_room(&server, &alice, &[]);
        let (version, _) = server
            .db
            .read(|c| storage::room_info(c, &room))
            .expect("read")
            .expect("room");
        let (_, rules) = rules_for(&version).expect("rules");
        let remote = Identity::from_seed([9; 32]).expect("identity");
        let bob = format!("@bob:{}", remote.server_name());
        let current = |ty: &str, sk: &str| {
            server
                .db
                .read(|c| storage::current_state_event(c, &room, ty, sk))
                .expect("read")
        };
        let extremities = || -> (Vec<String>, i64) {
            let ext = server
                .db
                .read(|c| storage::forward_extremities(c, &room))
                .expect("read");
            let depth = ext.iter().map(|(_, d)| *d).max().unwrap_or(0);
            (ext.into_iter().map(|(id, _)| id).collect(), depth)
        };
        let build =
            |kind: &str, sk: Option<&str>, content: Value, prev: &[String], depth: i64, ts: i64| {
                let mut auth: Vec<String> =
                    [("m.room.power_levels", ""), ("m.room.member", bob.as_str())]
                        .into_iter()
                        .filter_map(|(ty, k)| current(ty, k))
                        .collect();
                if kind == "m.room.member" {
                    auth.extend(current("m.room.join_rules", ""));
                }
                let e = NewEvent {
                    kind: kind.into(),
                    state_key: sk.map(str::to_owned),
                    content,
                    sender: bob.clone(),
                    redacts: None,
                };
                let (_, obj) = build_pdu(
                    &remote,
                    &rules,
                    Some(&room),
                    &e,
                    &EventReference::ids(prev),
                    &EventReference::ids(&auth),
                    depth + 1,
                    ts,
                )
                .expect("build");
                check_pdu(serde_json::to_value(&obj).expect("json"), &room, &rules).expect("checks")
            };
        let write = |checked: &Checked, ahead: Option<Ahead>| {
            persist::process_received(
                &server,
                &room,
                &version,
                &rules,
                Vec::new(),
                Vec::new(),
                checked,
                ahead,
            )
            .expect("write")
        };
        let alice_sends = |e: NewEvent| {
            server
                .write(|c| crate::rooms::append_event(c, &server, &room, e, None))
                .expect("alice sends")
                .event_id
        };
        let now = storage::now_ms();

        let (prev, depth) = extremities();
        let join = build(
            "m.room.member",
            Some(&bob),
            json!({"membership": "join"}),
            &prev,
            depth,
            now,
        );
        assert!(matches!(write(&join, None), Outcome::Accepted { .. }));
        alice_sends(ev(
            &alice,
            "m.room.power_levels",
            Some(""),
            json!({"users": {bob.clone(): 50}, "state_default": 50}),
        ));
        let (base, depth) = extremities();
        let topic_a = alice_sends(ev(&alice, "m.room.topic", Some(""), json!({"topic": "A"})));
        // Bob's topic on the branch before A, older than A: A stays.
        let topic_b = build(
            "m.room.topic",
            Some(""),
            json!({"topic": "B"}),
            &base,
            depth,
            now - 60_000,
        );
        let ahead = resolve_ahead(&server, &room, &version, &rules, &topic_b)
            .expect("resolve")
            .expect("a fork is resolved ahead");
        assert!(
            ahead
                .current
                .extremities
                .iter()
                .any(|(id, _)| *id == topic_a)
        );
        // Alice's newer topic lands before Bob's event is written.
        let topic_d = alice_sends(ev(&alice, "m.room.topic", Some(""), json!({"topic": "D"})));
        assert!(matches!(
            write(&topic_b, Some(ahead)),
            Outcome::Accepted { .. }
        ));
        assert_eq!(
            current("m.room.topic", ""),
            Some(topic_d),
            "a stale resolution was used"
        );

        // Resolved ahead and still current: taken as it is, with the same outcome as a
        // resolution inside the write.
        let (_, depth) = extremities();
        let topic_e = build(
            "m.room.topic",
            Some(""),
            json!({"topic": "E"}),
            &base,
            depth,
            now + 60_000,
        );
        let ahead = resolve_ahead(&server, &room, &version, &rules, &topic_e)
            .expect("resolve")
            .expect("resolved ahead");
        assert!(matches!(
            write(&topic_e, Some(ahead)),
            Outcome::Accepted { .. }
        ));
        assert_eq!(current("m.room.topic", ""), Some(topic_e.event_id.clone()));
        let (table, group) = server
            .db
            .read(|c| {
                let (_, g) = storage::room_info(c, &room)?.expect("room");
                Ok((
                    storage::current_state(c, &room)?,
                    storage::load_state_group(c, g.expect("group"))?,
                ))
            })
            .expect("read");
        assert_eq!(table, group);
    }
}
