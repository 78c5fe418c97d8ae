//! State resolution for a received event on a read snapshot, before its write: the
//! single writer then only checks that what the resolution read is still so, instead of
//! loading states and resolving them while every other write waits. A peer whose events
//! fork the room (a partition healing, a hostile server) costs a reader, not the writer.
//!
//! Two results are kept: the state before the event (the resolution of the states
//! after its prev events: those never change once stored, so it stays right) and the
//! room's current state after it (the resolution of the states after the forward
//! extremities: right only while the extremities are the same, which the write checks,
//! resolving again when they moved). An event that extends the current state needs no
//! resolution (the write checks it by lookups, `Room::linear_before`); for a message of
//! that kind the local members' push rules are evaluated here instead, as for a local
//! send, and recorded by the write while the room's current state is unchanged.

use ruma::room_version_rules::RoomVersionRules;

use super::auth::check_against_current;
use super::check::Checked;
use super::persist::Room;
use super::resolve::CurrentAhead;
use super::state_before::Before;
use crate::error::Error;
use crate::push::Planned;
use crate::server::Server;
use crate::storage;

/// What was worked out ahead for one received event.
#[derive(Debug, Default)]
pub(in crate::rooms) struct Ahead {
    /// For an event that forks the room: its states, resolved.
    pub(super) resolved: Option<Resolved>,
    /// For a message that extends the current state: whom it notifies.
    pub(super) push: Option<PushAhead>,
}

/// The states a forked event needs, resolved.
#[derive(Debug)]
pub(in crate::rooms) struct Resolved {
    /// The state before the event.
    pub(super) before: Before,
    /// The current state after it, with the extremities it was resolved with.
    pub(super) current: CurrentAhead,
}

/// The push rules of the room's local members evaluated for a received message, and the
/// current state group they were evaluated on: the write records them only while the
/// room is still at that group (the members, their display names and the power levels
/// are then the write's own).
#[derive(Debug)]
pub(in crate::rooms) struct PushAhead {
    pub(super) group: i64,
    pub(super) planned: Planned,
}

/// Work out on a read snapshot what a received event's write can take: for an event
/// that extends the current state (the write checks it by lookups), the notifications
/// of a message that passes auth against that state; for one that forks the room, its
/// states resolved. Nothing when its prev events are not all stored with a state. Not
/// called for an event whose auth events had to be fetched: they are stored only by the
/// write, and resolving without them would order its branch wrongly.
pub(super) fn work_ahead(
    server: &Server,
    room_id: &str,
    version: &str,
    rules: &RoomVersionRules,
    checked: &Checked,
) -> Result<Ahead, Error> {
    let pdu = &checked.pdu;
    server.db.read_tx(|c| {
        let room = Room {
            c,
            room_id,
            version,
            rules,
        };
        if let Some(group) = room.linear_before(pdu)? {
            // Only a message that will pass costs an evaluation: a peer's rejected
            // events do not.
            let push = (pdu.state_key.is_none()
                && matches!(
                    check_against_current(c, &rules.authorization, pdu, room_id),
                    Ok(Ok(()))
                ))
            .then(|| {
                let sender = pdu.sender.to_string();
                crate::push::plan_received(c, room_id, version, &sender, &checked.json).ok()
            })
            .flatten()
            .map(|planned| PushAhead { group, planned });
            return Ok(Ahead {
                resolved: None,
                push,
            });
        }
        let Some(before) = room.resolved_before(pdu)? else {
            return Ok(Ahead::default());
        };
        let mut after = before.state.clone();
        if let Some(sk) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), sk.clone()), checked.event_id.clone());
        }
        let extremities = storage::forward_extremities(c, room_id)?;
        let state = room.current_from(pdu, &after, &extremities)?;
        let extremities = super::resolve::sorted_ids(extremities);
        Ok(Ahead {
            resolved: Some(Resolved {
                before,
                current: CurrentAhead { extremities, state },
            }),
            push: None,
        })
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use ruma::room_version_rules::RoomVersionRules;
    use serde_json::{Value, json};

    use super::*;
    use crate::events::{EventReference, NewEvent, build_pdu, rules_for};
    use crate::identity::Identity;
    use crate::rooms::receive::{Outcome, check_pdu, persist};
    use crate::test_support::{ev, node};

    /// A public room of local users and a remote server whose user Bob takes part.
    struct Fixture {
        _dir: tempfile::TempDir,
        _node: crate::Node,
        server: Arc<Server>,
        room: String,
        version: String,
        rules: RoomVersionRules,
        remote: Identity,
        bob: String,
    }

    impl Fixture {
        /// The room, created by `locals[0]` and joined by the others (accounts here,
        /// made by `public_room`), with Bob joined.
        async fn new(locals: &[&str]) -> Fixture {
            let (dir, node) = node().await;
            let server = node.server().clone();
            let users: Vec<String> = locals.iter().map(|u| server.user_id(u)).collect();
            let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
            let room = crate::test_support::public_room(&server, &users[0], &others);
            let (version, _) = server
                .db
                .read(|c| storage::room_info(c, &room))
                .expect("read")
                .expect("room");
            let (_, rules) = rules_for(&version).expect("rules");
            let remote = Identity::from_seed([9; 32]).expect("identity");
            let bob = format!("@bob:{}", remote.server_name());
            let f = Fixture {
                _dir: dir,
                _node: node,
                server,
                room,
                version,
                rules,
                remote,
                bob,
            };
            let (prev, depth) = f.extremities();
            let bob = f.bob.clone();
            let join = f.build(
                "m.room.member",
                Some(&bob),
                json!({"membership": "join"}),
                &prev,
                depth,
                storage::now_ms(),
            );
            assert!(matches!(
                f.write(&join, Ahead::default()),
                Outcome::Accepted { .. }
            ));
            f
        }

        fn current(&self, ty: &str, sk: &str) -> Option<String> {
            self.server
                .db
                .read(|c| storage::current_state_event(c, &self.room, ty, sk))
                .expect("read")
        }

        fn extremities(&self) -> (Vec<String>, i64) {
            let ext = self
                .server
                .db
                .read(|c| storage::forward_extremities(c, &self.room))
                .expect("read");
            let depth = ext.iter().map(|(_, d)| *d).max().unwrap_or(0);
            (ext.into_iter().map(|(id, _)| id).collect(), depth)
        }

        /// Bob's event on `prev`, checked as a received PDU is.
        fn build(
            &self,
            kind: &str,
            sk: Option<&str>,
            content: Value,
            prev: &[String],
            depth: i64,
            ts: i64,
        ) -> Checked {
            let mut auth: Vec<String> = [
                ("m.room.power_levels", ""),
                ("m.room.member", self.bob.as_str()),
            ]
            .into_iter()
            .filter_map(|(ty, k)| self.current(ty, k))
            .collect();
            if kind == "m.room.member" {
                auth.extend(self.current("m.room.join_rules", ""));
            }
            let e = NewEvent {
                kind: kind.into(),
                state_key: sk.map(str::to_owned),
                content,
                sender: self.bob.clone(),
                redacts: None,
            };
            let (_, obj) = build_pdu(
                &self.remote,
                &self.rules,
                Some(&self.room),
                &e,
                &EventReference::ids(prev),
                &EventReference::ids(&auth),
                depth + 1,
                ts,
            )
            .expect("build");
            check_pdu(
                serde_json::to_value(&obj).expect("json"),
                &self.room,
                &self.rules,
            )
            .expect("checks")
        }

        fn ahead(&self, checked: &Checked) -> Ahead {
            work_ahead(
                &self.server,
                &self.room,
                &self.version,
                &self.rules,
                checked,
            )
            .expect("ahead")
        }

        fn write(&self, checked: &Checked, ahead: Ahead) -> Outcome {
            let gathered = persist::Gathered {
                fetched: Vec::new(),
                gap: Vec::new(),
                ahead,
            };
            persist::process_received(
                &self.server,
                &self.room,
                &self.version,
                &self.rules,
                gathered,
                checked,
            )
            .expect("write")
        }

        fn local_sends(&self, e: NewEvent) -> String {
            self.server
                .write(|c| crate::rooms::append_event(c, &self.server, &self.room, e, None))
                .expect("local send")
                .event_id
        }

        /// Whether the write would take `checked` by lookups (`Room::linear_before`).
        fn is_linear(&self, checked: &Checked) -> bool {
            self.server
                .db
                .read(|c| {
                    let room = Room {
                        c,
                        room_id: &self.room,
                        version: &self.version,
                        rules: &self.rules,
                    };
                    room.linear_before(&checked.pdu)
                })
                .expect("read")
                .is_some()
        }

        fn unread(&self, user: &str) -> i64 {
            let user = self.server.user_id(user);
            self.server
                .db
                .read(|c| storage::unread_counts(c, &self.room, &user))
                .expect("read")
                .0
        }
    }

    /// A state resolved ahead is used only while the room's forward extremities are the
    /// ones it was resolved with: here a newer topic lands between the resolution and
    /// the write, and the write resolves again, so the newer topic wins as it must.
    #[tokio::test]
    async fn a_current_state_resolved_ahead_is_redone_when_the_extremities_moved() {
        let f = Fixture::new(&["alice"]).await;
        let alice = f.server.user_id("alice");
        let now = storage::now_ms();
        f.local_sends(ev(
            &alice,
            "m.room.power_levels",
            Some(""),
            json!({"users": {f.bob.clone(): 50}, "state_default": 50}),
        ));
        let (base, depth) = f.extremities();
        let topic_a = f.local_sends(ev(&alice, "m.room.topic", Some(""), json!({"topic": "A"})));
        // Bob's topic on the branch before A, older than A: A stays.
        let topic_b = f.build(
            "m.room.topic",
            Some(""),
            json!({"topic": "B"}),
            &base,
            depth,
            now - 60_000,
        );
        let ahead = f.ahead(&topic_b);
        let resolved = ahead.resolved.as_ref().expect("a fork is resolved ahead");
        assert!(resolved.current.extremities.contains(&topic_a));
        assert!(!f.is_linear(&topic_b), "a fork is no linear event");
        // Alice's newer topic lands before Bob's event is written.
        let topic_d = f.local_sends(ev(&alice, "m.room.topic", Some(""), json!({"topic": "D"})));
        assert!(matches!(f.write(&topic_b, ahead), Outcome::Accepted { .. }));
        assert_eq!(
            f.current("m.room.topic", ""),
            Some(topic_d),
            "a stale resolution was used"
        );

        // Resolved ahead and still current: taken as it is, with the same outcome as a
        // resolution inside the write.
        let (_, depth) = f.extremities();
        let topic_e = f.build(
            "m.room.topic",
            Some(""),
            json!({"topic": "E"}),
            &base,
            depth,
            now + 60_000,
        );
        let ahead = f.ahead(&topic_e);
        assert!(ahead.resolved.is_some(), "resolved ahead");
        assert!(matches!(f.write(&topic_e, ahead), Outcome::Accepted { .. }));
        assert_eq!(
            f.current("m.room.topic", ""),
            Some(topic_e.event_id.clone())
        );
        let (table, group) = f
            .server
            .db
            .read(|c| {
                let (_, g) = storage::room_info(c, &f.room)?.expect("room");
                Ok((
                    storage::current_state(c, &f.room)?,
                    storage::load_state_group(c, g.expect("group"))?,
                ))
            })
            .expect("read");
        assert_eq!(table, group);
    }

    /// A received message's notifications are evaluated ahead and recorded by its
    /// write while the room is as it was; when a member left in between, the write
    /// evaluates again and she is not notified.
    #[tokio::test]
    async fn a_received_message_notifies_as_planned_only_while_the_room_is_unchanged() {
        let f = Fixture::new(&["alice", "carol"]).await;
        let carol = f.server.user_id("carol");
        let say = |body: &str| {
            let (prev, depth) = f.extremities();
            f.build(
                "m.room.message",
                None,
                json!({"msgtype": "m.text", "body": body}),
                &prev,
                depth,
                storage::now_ms(),
            )
        };
        let first = say("hello");
        assert!(f.is_linear(&first));
        let ahead = f.ahead(&first);
        let planned = ahead.push.as_ref().expect("a linear message is planned");
        assert_eq!(
            planned.planned.notified_users(),
            ["@alice", "@carol"].map(|u| format!("{u}:{}", f.server.server_name()))
        );
        assert!(matches!(f.write(&first, ahead), Outcome::Accepted { .. }));
        assert_eq!((f.unread("alice"), f.unread("carol")), (1, 1));

        let second = say("still there?");
        let ahead = f.ahead(&second);
        assert!(ahead.push.is_some());
        f.local_sends(ev(
            &carol,
            "m.room.member",
            Some(&carol),
            json!({"membership": "leave"}),
        ));
        assert!(
            !f.is_linear(&second),
            "built before the leave, it forks the room now"
        );
        assert!(matches!(f.write(&second, ahead), Outcome::Accepted { .. }));
        assert_eq!(
            (f.unread("alice"), f.unread("carol")),
            (2, 1),
            "a member who left in between was notified by a stale plan"
        );
    }
}
