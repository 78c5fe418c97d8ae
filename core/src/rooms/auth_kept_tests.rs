//! Auth states kept between local events ([`super::KEPT`]): shared while the room's
//! state version is unchanged, read again after a change, never kept from the writer,
//! bounded.

use std::sync::Arc;

use ruma::events::StateEventType;
use serde_json::json;

use super::{ALLOWED_KEPT, AuthState, KEPT_ENTRIES, kept};
use crate::requester::Requester;
use crate::room_writes::send_message_async;
use crate::rooms::append_event;
use crate::server::Server;
use crate::test_support::{ev, node, public_room};

fn keys(sender: &str) -> Vec<(StateEventType, String)> {
    vec![
        (StateEventType::RoomPowerLevels, String::new()),
        (StateEventType::RoomMember, sender.to_owned()),
    ]
}

fn load(server: &Server, room: &str, sender: &str) -> AuthState {
    server
        .db
        .read(|c| AuthState::load(c, room, &keys(sender)))
        .expect("auth state")
}

/// Whether two auth states hold the very same parsed events.
fn shared(a: &AuthState, b: &AuthState) -> bool {
    a.pdus.len() == b.pdus.len() && a.pdus.iter().zip(&b.pdus).all(|(x, y)| Arc::ptr_eq(x, y))
}

async fn send(
    server: &Arc<Server>,
    room: &str,
    sender: &str,
    txn: &str,
) -> Result<String, crate::error::Error> {
    send_message_async(
        server,
        &Requester::user(sender.to_owned(), "D"),
        room,
        "m.room.message".into(),
        json!({"msgtype": "m.text", "body": txn}),
        txn,
        None,
    )
    .await
}

fn events_default(server: &Server, room: &str, alice: &str, level: i64) {
    server
        .write(|c| {
            let pl = ev(
                alice,
                "m.room.power_levels",
                Some(""),
                // Room version 12: the creator's power needs no entry.
                json!({"events_default": level}),
            );
            append_event(c, server, room, pl, None)
        })
        .expect("power levels");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_auth_state_is_shared_until_the_power_levels_change() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    let first = load(&server, &room, &bob);
    assert!(shared(&first, &load(&server, &room, &bob)));
    send(&server, &room, &bob, "t1")
        .await
        .expect("bob may send");

    events_default(&server, &room, &alice, 50);
    let raised = load(&server, &room, &bob);
    assert!(!shared(&first, &raised), "a new state group is read again");
    assert!(
        send(&server, &room, &bob, "t2").await.is_err(),
        "bob's message is judged by the new power levels"
    );
    events_default(&server, &room, &alice, 0);
    send(&server, &room, &bob, "t3")
        .await
        .expect("bob may send again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_state_read_inside_a_write_is_not_kept() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    let in_write = server
        .write(|c| AuthState::load(c, &room, &keys(&bob)))
        .expect("auth state in a write");
    assert!(!shared(&in_write, &load(&server, &room, &bob)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_states_are_kept_for_a_bounded_number_of_keys() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    // Each sender asks for a different member key: a different entry each.
    for i in 0..KEPT_ENTRIES + 16 {
        load(&server, &room, &format!("@user{i}:example.org"));
        assert!(kept() <= KEPT_ENTRIES, "{} kept", kept());
    }
    let last = load(&server, &room, &bob);
    assert!(shared(&last, &load(&server, &room, &bob)));
}

/// A message type a sender was allowed to send on a kept state is allowed again without
/// the rules; each decision is the sender's and the type's own, and a new state decides
/// anew.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_state_remembers_what_each_sender_may_send() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    send(&server, &room, &bob, "t1")
        .await
        .expect("bob may send");
    send(&server, &room, &bob, "t2")
        .await
        .expect("bob may send again");
    let kept_state = load(&server, &room, &bob);
    assert!(kept_state.allowed_before(&bob, "m.room.message"));
    assert!(!kept_state.allowed_before(&bob, "m.room.other"));
    assert!(!kept_state.allowed_before(&alice, "m.room.message"));
    // Carol never joined: refused, whatever bob was allowed.
    assert!(send(&server, &room, &carol, "t3").await.is_err());
    // A new state (messages need power 50) decides again: bob is refused.
    events_default(&server, &room, &alice, 50);
    assert!(send(&server, &room, &bob, "t4").await.is_err());
    assert!(!load(&server, &room, &bob).allowed_before(&bob, "m.room.message"));
    // One read inside a write (of a state no reader has kept yet) keeps no decision.
    events_default(&server, &room, &alice, 0);
    let in_write = server
        .write(|c| AuthState::load(c, &room, &keys(&bob)))
        .expect("auth state in a write");
    in_write.remember_allowed(&bob, "m.room.message");
    assert!(!in_write.allowed_before(&bob, "m.room.message"));
}

/// Types the rules treat apart read the event itself: never allowed from memory. A
/// power levels event sent as a message (no state key) is checked on its content each
/// time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_with_rules_of_their_own_are_always_checked() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    let caller = Requester::user(alice.clone(), "D");
    let send_pl = |txn: &'static str, content: serde_json::Value| {
        send_message_async(
            &server,
            &caller,
            &room,
            "m.room.power_levels".into(),
            content,
            txn,
            None,
        )
    };
    send_pl("p1", json!({}))
        .await
        .expect("a valid one is allowed");
    send_pl("p2", json!({})).await.expect("twice");
    assert!(
        !load(&server, &room, &alice).allowed_before(&alice, "m.room.power_levels"),
        "not remembered"
    );
    assert!(
        send_pl("p3", json!({"ban": "not a number"})).await.is_err(),
        "an invalid one is refused on its content"
    );
}

/// Each kept state remembers at most [`ALLOWED_KEPT`] decisions; past that, types are
/// checked every time (and still allowed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_state_remembers_a_bounded_number_of_decisions() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob] = ["alice", "bob"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob]);
    let caller = Requester::user(bob.clone(), "D");
    let kinds: Vec<String> = (0..ALLOWED_KEPT + 4)
        .map(|i| format!("org.example.t{i}"))
        .collect();
    for (i, kind) in kinds.iter().enumerate() {
        send_message_async(
            &server,
            &caller,
            &room,
            kind.clone(),
            json!({}),
            &format!("k{i}"),
            None,
        )
        .await
        .expect("allowed");
    }
    let state = load(&server, &room, &bob);
    let remembered = kinds
        .iter()
        .filter(|k| state.allowed_before(&bob, k))
        .count();
    assert_eq!(remembered, ALLOWED_KEPT);
    // One past the bound is still allowed, on the rules.
    let last = kinds.last().expect("kinds").clone();
    send_message_async(&server, &caller, &room, last, json!({}), "again", None)
        .await
        .expect("allowed");
}
