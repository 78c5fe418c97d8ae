//! Events built ahead of their write ([`super::prebuild`]): taken by the write while the
//! room is as it was, built again when another event came in between.

use serde_json::json;

use super::{Appended, Prebuilt, Prepared, append_event, append_prepared, load_pdu, prebuild};
use crate::events::NewEvent;
use crate::rooms::CreateRoom;
use crate::server::Server;
use crate::storage;
use crate::test_support::{ev, message, node, public_room, room_with};

/// What `room_writes::send_message` works out before its write: the push plan and the
/// event built ahead, on one read snapshot.
fn prepare(server: &Server, room: &str, msg: &NewEvent) -> Prepared {
    server
        .db
        .read_tx(|c| {
            Ok(Prepared {
                push: crate::push::plan(c, room, msg)?,
                built: Some(prebuild(c, server, room, msg, None)?),
            })
        })
        .expect("ahead")
}

/// The event built ahead alone (no push plan).
fn built_ahead(server: &Server, room: &str, msg: &NewEvent) -> Prebuilt {
    server
        .db
        .read_tx(|c| prebuild(c, server, room, msg, None))
        .expect("prebuild")
}

/// The write of a send, with what was worked out before it.
fn write_prepared(server: &Server, room: &str, msg: NewEvent, prepared: Prepared) -> Appended {
    server
        .write(|c| append_prepared(c, server, room, msg, None, None, prepared, |_| Ok(())))
        .expect("write")
}

/// A stored event's prev events.
fn prev_of(server: &Server, event_id: &str) -> Vec<String> {
    let pdu = server
        .db
        .read(|c| load_pdu(c, event_id))
        .expect("read")
        .expect("stored");
    pdu.prev_events.iter().map(|e| e.to_string()).collect()
}

/// Only the event built ahead, as a write takes it.
fn only(built: Prebuilt) -> Prepared {
    Prepared {
        push: None,
        built: Some(built),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prebuilt_event_is_used_only_while_the_room_is_unchanged() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_with(&server, &alice, &[], CreateRoom::default());
    let ahead = |body: &str| built_ahead(&server, &room, &message(&alice, body));

    // Nothing in between: the write takes the event built ahead, as it was built.
    let early = ahead("first");
    let early_id = early.event_id().to_owned();
    let first = write_prepared(&server, &room, message(&alice, "first"), only(early));
    assert_eq!(first.event_id, early_id, "the prebuilt event was persisted");

    // Built ahead, then another event arrives first: the write builds it again on top.
    let stale = ahead("third");
    let stale_id = stale.event_id().to_owned();
    let second = server
        .write(|c| append_event(c, &server, &room, message(&alice, "second"), None))
        .expect("second");
    let third = write_prepared(&server, &room, message(&alice, "third"), only(stale));
    assert_ne!(
        third.event_id, stale_id,
        "a stale prebuilt event is not persisted"
    );
    assert_eq!(
        prev_of(&server, &third.event_id),
        vec![second.event_id.clone()],
        "built on the newest event"
    );
    let extremities = server
        .db
        .read(|c| storage::forward_extremities(c, &room))
        .expect("extremities");
    assert_eq!(extremities.len(), 1, "no fork: {extremities:?}");
    assert_eq!(extremities[0].0, third.event_id);
}

/// A push plan made with a prebuilt event holds only as long as that event does: a
/// member who leaves in between is not notified of the message built again after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_in_between_is_not_notified_by_a_stale_plan() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    let room = public_room(&server, &alice, &[&bob]);
    let msg = message(&alice, "are you there");
    let ahead = prepare(&server, &room, &msg);
    server
        .write(|c| {
            let leave = ev(
                &bob,
                "m.room.member",
                Some(&bob),
                json!({"membership": "leave"}),
            );
            append_event(c, &server, &room, leave, None)
        })
        .expect("leave");
    write_prepared(&server, &room, msg, ahead);
    let rows = server
        .db
        .read(|c| storage::notifications(c, &bob, i64::MAX, 10, false))
        .expect("rows");
    assert!(rows.is_empty(), "notified after leaving: {rows:?}");
}

/// Sends to one room from several clients at once: each is built ahead on the message
/// built ahead before it, so when the writes come in the order the events were built,
/// every write takes its event as built, and the timeline is one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_built_ahead_together_are_each_built_on_the_one_before() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    let room = public_room(&server, &alice, &[&bob]);
    let ahead = |sender: &str, body: &str| prepare(&server, &room, &message(sender, body));
    let write = |sender: &str, body: &str, prepared| {
        write_prepared(&server, &room, message(sender, body), prepared)
    };

    // Three built before any is written, then written in turn.
    let first = ahead(&alice, "one");
    let second = ahead(&bob, "two");
    let third = ahead(&alice, "three");
    let ids: Vec<String> = [&first, &second, &third]
        .iter()
        .map(|p| p.built.as_ref().expect("built").event_id().to_owned())
        .collect();
    let written = [
        write(&alice, "one", first).event_id,
        write(&bob, "two", second).event_id,
        write(&alice, "three", third).event_id,
    ];
    assert_eq!(written.to_vec(), ids, "every write took its event as built");
    assert_eq!(prev_of(&server, &ids[1]), vec![ids[0].clone()]);
    assert_eq!(prev_of(&server, &ids[2]), vec![ids[1].clone()]);
    let extremities = server
        .db
        .read(|c| storage::forward_extremities(c, &room))
        .expect("extremities");
    assert_eq!(extremities, vec![(ids[2].clone(), extremities[0].1)]);

    // Alice and bob were each notified of the other's messages.
    let notified = |user: &str| {
        server
            .db
            .read(|c| storage::notifications(c, user, i64::MAX, 10, false))
            .expect("rows")
            .len()
    };
    assert_eq!(notified(&bob), 2, "bob: one and three");
    assert_eq!(notified(&alice), 1, "alice: two");
}

/// A message built on one built ahead whose write never came (its send failed after
/// building) cannot be persisted as built: its write builds it again on what the room
/// holds, and the chain starts again from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_built_on_one_never_written_is_built_again() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_with(&server, &alice, &[], CreateRoom::default());
    let ahead = |body: &str| built_ahead(&server, &room, &message(&alice, body));
    let write =
        |body: &str, built| write_prepared(&server, &room, message(&alice, body), only(built));
    let before = server
        .db
        .read(|c| storage::forward_extremities(c, &room))
        .expect("extremities");
    let lost = ahead("lost");
    let next = ahead("next");
    let lost_id = lost.event_id().to_owned();
    let next_id = next.event_id().to_owned();
    drop(lost);
    let written = write("next", next);
    assert_ne!(
        written.event_id, next_id,
        "built on an event that is not stored"
    );
    assert_eq!(
        prev_of(&server, &written.event_id),
        vec![before[0].0.clone()],
        "not on {lost_id}"
    );

    // The next message is built on what the database holds, and taken as built.
    let after = ahead("after");
    let after_id = after.event_id().to_owned();
    assert_eq!(write("after", after).event_id, after_id);
}

/// A message built ahead that another message overtook is built again on the newer
/// one, and notifies the members once, as the room now stands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overtaken_message_is_built_again_and_notifies_once() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    let room = public_room(&server, &alice, &[&bob]);
    let msg = message(&alice, "overtaken");
    let ahead = prepare(&server, &room, &msg);
    let built_id = ahead.built.as_ref().expect("built").event_id().to_owned();
    let other = server
        .write(|c| append_event(c, &server, &room, message(&bob, "first"), None))
        .expect("other");
    let sent = write_prepared(&server, &room, msg, ahead);
    assert_ne!(sent.event_id, built_id, "built again on the newer message");
    assert_eq!(prev_of(&server, &sent.event_id), vec![other.event_id]);
    let rows = server
        .db
        .read(|c| storage::notifications(c, &bob, i64::MAX, 10, false))
        .expect("rows");
    assert_eq!(rows.len(), 1, "bob notified once: {rows:?}");
    assert_eq!(rows[0].event_id, sent.event_id);
}

/// In a room of version 1, prev events are referenced with their hashes, read from the
/// stored events: a message is built ahead on what the database holds, never on one
/// not yet written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_do_not_chain_in_rooms_of_version_1() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let create = CreateRoom {
        room_version: Some("1".into()),
        ..Default::default()
    };
    let room = room_with(&server, &alice, &[], create);
    let ahead = |body: &str| built_ahead(&server, &room, &message(&alice, body));
    let first = ahead("one");
    let second = ahead("two");
    let prev = |p: &Prebuilt| -> Vec<String> {
        p.built_pdu()
            .prev_events
            .iter()
            .map(|e| e.to_string())
            .collect()
    };
    assert_eq!(
        prev(&first),
        prev(&second),
        "both on the stored extremities"
    );
}

/// Many clients sending to one room at once, as the handler runs each send (built ahead
/// on the room's chain, waiting for its turn, then the write): every message is stored
/// once, the timeline stays one line (each message's one prev event is the message
/// before it), and the room ends with one forward extremity.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_to_one_room_make_one_line() {
    const CLIENTS: usize = 8;
    const EACH: usize = 25;
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let users: Vec<String> = (0..CLIENTS)
        .map(|i| server.user_id(&format!("u{i}")))
        .collect();
    let others: Vec<&str> = users[1..].iter().map(String::as_str).collect();
    let room = public_room(&server, &users[0], &others);
    let before = server
        .db
        .read(|c| storage::forward_extremities(c, &room))
        .expect("extremities");
    let mut tasks = tokio::task::JoinSet::new();
    for (i, user) in users.iter().enumerate() {
        let (server, room, user) = (server.clone(), room.clone(), user.clone());
        tasks.spawn(async move {
            let requester = crate::requester::Requester {
                device_id: format!("D{i}"),
                ..crate::requester::Requester::node_acting_for(user)
            };
            let mut sent = Vec::new();
            for n in 0..EACH {
                let id = crate::room_writes::send_message_async(
                    &server,
                    &requester,
                    &room,
                    "m.room.message".into(),
                    json!({"msgtype": "m.text", "body": format!("{i}/{n}")}),
                    &format!("t{n}"),
                    None,
                )
                .await
                .expect("send");
                sent.push(id);
                tokio::task::yield_now().await;
            }
            sent
        });
    }
    let mut sent = std::collections::HashSet::new();
    while let Some(ids) = tasks.join_next().await {
        sent.extend(ids.expect("task"));
    }
    assert_eq!(sent.len(), CLIENTS * EACH, "every message stored once");

    // Each message has one prev event, the base or another message, and no event is
    // the prev of two: one line from the base.
    let mut child_of = std::collections::HashMap::new();
    for id in &sent {
        let prev = prev_of(&server, id);
        assert_eq!(prev.len(), 1, "{id}: {prev:?}");
        assert!(
            sent.contains(&prev[0]) || prev[0] == before[0].0,
            "{id} on an unknown event {}",
            prev[0]
        );
        if let Some(other) = child_of.insert(prev[0].clone(), id.clone()) {
            panic!("{} is the prev of both {other} and {id}", prev[0]);
        }
    }
    let extremities = server
        .db
        .read(|c| storage::forward_extremities(c, &room))
        .expect("extremities");
    assert_eq!(extremities.len(), 1, "{extremities:?}");
    assert!(sent.contains(&extremities[0].0));
}

/// A push plan made before a member changed their push rules is evaluated again by the
/// write, though the event built with it is still current (account data moves no
/// extremity).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plan_made_before_a_push_rules_change_is_evaluated_again() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    let msg = message(&alice, "muted by now");
    let prepared = prepare(&server, &room, &msg);
    let master = crate::push::RuleAddress {
        scope: "global",
        kind: "override",
        rule_id: ".m.rule.master",
    };
    crate::push::set_rule_enabled(&server, &bob, master, true).expect("bob mutes everything");
    let appended = write_prepared(&server, &room, msg, prepared);
    let rows = server
        .db
        .read(|c| storage::notifications(c, &bob, i64::MAX, 10, false))
        .expect("rows");
    assert!(
        rows.iter().all(|r| r.event_id != appended.event_id),
        "bob's new rules apply: {rows:?}"
    );
}
