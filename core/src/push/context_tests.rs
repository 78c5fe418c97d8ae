//! A room's push context is kept ([`super::context`]) and used only while nothing it
//! was read from has changed: a member joining, a display name, its redaction, anyone's
//! push rules. Each test sends through the planned path (`room_writes::send_message_async`,
//! evaluated on a reader) and checks who was notified, with what.

use std::sync::Arc;

use serde_json::{Value, json};

use super::context::{MAX_BYTES, MAX_ROOMS, kept, room_context};
use super::{RuleAddress, set_rule_enabled};
use crate::requester::Requester;
use crate::room_writes::{redact, send_message_async};
use crate::rooms::append_event;
use crate::server::Server;
use crate::storage;
use crate::test_support::{ev, node, public_room};

/// Send `body` from `sender` as a client does; its event id.
async fn send(server: &Arc<Server>, room: &str, sender: &str, body: &str, txn: &str) -> String {
    send_message_async(
        server,
        &Requester::user(sender.to_owned(), "D"),
        room,
        "m.room.message".into(),
        json!({"msgtype": "m.text", "body": body}),
        txn,
        None,
    )
    .await
    .expect("send")
}

/// `user`'s notification for `event_id`: (notified, highlighted).
fn notified(server: &Server, user: &str, event_id: &str) -> (bool, bool) {
    let rows = server
        .db
        .read(|c| storage::notifications(c, user, i64::MAX, 100, false))
        .expect("rows");
    rows.iter()
        .find(|r| r.event_id == event_id)
        .map_or((false, false), |r| (true, highlights(&r.actions)))
}

/// Whether stored actions (JSON) set the highlight tweak.
fn highlights(actions: &str) -> bool {
    let actions: Vec<Value> = serde_json::from_str(actions).expect("actions");
    actions
        .iter()
        .any(|a| a["set_tweak"] == "highlight" && a.get("value") != Some(&json!(false)))
}

/// The same context object as the last lookup, read in a new snapshot.
fn same_context(server: &Server, room: &str, before: &Arc<super::context::RoomContext>) -> bool {
    let now = server.db.read(|c| room_context(c, room)).expect("context");
    Arc::ptr_eq(&now, before)
}

fn context(server: &Server, room: &str) -> Arc<super::context::RoomContext> {
    server.db.read(|c| room_context(c, room)).expect("context")
}

fn set_display_name(server: &Server, room: &str, user: &str, name: &str) -> String {
    server
        .write(|c| {
            let member = ev(
                user,
                "m.room.member",
                Some(user),
                json!({"membership": "join", "displayname": name}),
            );
            append_event(c, server, room, member, None)
        })
        .expect("display name")
        .event_id
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_context_is_used_until_a_member_joins_or_a_rule_changes() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    server
        .write(|c| storage::create_user(c, &carol, None, false, &carol))
        .expect("carol");
    let first = send(&server, &room, &alice, "one", "t1").await;
    assert!(notified(&server, &bob, &first).0);
    let kept_context = context(&server, &room);
    send(&server, &room, &alice, "two", "t2").await;
    assert!(
        same_context(&server, &room, &kept_context),
        "a message changes nothing the context was read from"
    );

    server
        .write(|c| {
            let join = ev(
                &carol,
                "m.room.member",
                Some(&carol),
                json!({"membership": "join"}),
            );
            append_event(c, &server, &room, join, None)
        })
        .expect("carol joins");
    assert!(!same_context(&server, &room, &kept_context));
    let third = send(&server, &room, &alice, "three", "t3").await;
    assert!(
        notified(&server, &carol, &third).0,
        "a new member is evaluated"
    );

    let kept_context = context(&server, &room);
    let master = RuleAddress {
        scope: "global",
        kind: "override",
        rule_id: ".m.rule.master",
    };
    set_rule_enabled(&server, &carol, master, true).expect("carol mutes everything");
    assert!(!same_context(&server, &room, &kept_context));
    let fourth = send(&server, &room, &alice, "four", "t4").await;
    assert!(
        !notified(&server, &carol, &fourth).0,
        "carol's new rules are used"
    );
    assert!(notified(&server, &bob, &fourth).0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_display_name_counts_from_its_event_until_that_is_redacted() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.user_id(u));
    // Three members: a message is no one-to-one notification, so only a mention of
    // the display name highlights.
    let room = public_room(&server, &alice, &[&bob, &carol]);
    let named = set_display_name(&server, &room, &bob, "Bobby");
    let mention = send(&server, &room, &alice, "hello Bobby", "t1").await;
    assert_eq!(notified(&server, &bob, &mention), (true, true));

    let kept_context = context(&server, &room);
    // Alice (the room's creator, with the power to) redacts Bob's member event: the
    // state group stays, what it says of Bob's name does not.
    redact(
        &server,
        &Requester::user(alice.clone(), "D"),
        &room,
        named,
        None,
        "r1",
    )
    .expect("redact");
    assert!(!same_context(&server, &room, &kept_context));
    let again = send(&server, &room, &alice, "hello Bobby", "t2").await;
    assert_eq!(
        notified(&server, &bob, &again),
        (true, false),
        "the redacted name is no longer Bob's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn contexts_are_kept_for_a_bounded_number_of_rooms() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    let first = public_room(&server, &alice, &[&bob]);
    let rooms: Vec<String> = server
        .write(|c| {
            (0..MAX_ROOMS + 8)
                .map(|_| {
                    crate::rooms::create_room(
                        c,
                        &server,
                        &alice,
                        crate::rooms::CreateRoom::default(),
                    )
                })
                .collect()
        })
        .expect("rooms");
    for room in std::iter::once(&first).chain(&rooms) {
        context(&server, room);
        assert!(kept() <= MAX_ROOMS, "{} kept", kept());
    }
    let last = context(&server, rooms.last().expect("rooms"));
    assert!(same_context(&server, rooms.last().expect("rooms"), &last));
    assert_eq!(kept(), MAX_ROOMS, "full, not emptied");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_context_read_inside_a_write_is_not_kept() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    // The writer sees its own uncommitted rows; a rolled-back write hands its state
    // group id out again, so nothing it read may be kept under that id.
    let in_write = server
        .write(|c| room_context(c, &room))
        .expect("context in a write");
    assert!(!same_context(&server, &room, &in_write));
    let kept_context = context(&server, &room);
    assert!(
        same_context(&server, &room, &kept_context),
        "a reader's is kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_whose_members_outweigh_the_byte_bound_is_read_each_time() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    // Display names of 60,000 bytes (an event stays under 64 KiB): enough members of
    // them outweigh the whole bound.
    let name = "n".repeat(60_000);
    let members: Vec<String> = (0..MAX_BYTES / name.len() + 1)
        .map(|i| server.user_id(&format!("m{i}")))
        .collect();
    let refs: Vec<&str> = members.iter().map(String::as_str).collect();
    let room = public_room(&server, &alice, &refs);
    for m in &members {
        set_display_name(&server, &room, m, &name);
    }
    let first = context(&server, &room);
    assert_eq!(first.members.len(), members.len() + 1);
    assert!(!same_context(&server, &room, &first), "too large to keep");
    // A small room is still kept beside it.
    let small = server
        .write(|c| {
            crate::rooms::create_room(c, &server, &alice, crate::rooms::CreateRoom::default())
        })
        .expect("small room");
    let kept_small = context(&server, &small);
    assert!(same_context(&server, &small, &kept_small));
}
