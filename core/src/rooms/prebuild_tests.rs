//! Events built ahead of their write ([`super::prebuild`]): taken by the write while the
//! room is as it was, built again when another event came in between.

use serde_json::json;

use super::{Prepared, append_event, append_prepared, load_pdu, prebuild};
use crate::rooms::CreateRoom;
use crate::storage;
use crate::test_support::{ev, message, node, public_room, room_with};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prebuilt_event_is_used_only_while_the_room_is_unchanged() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_with(&server, &alice, &[], CreateRoom::default());
    let ahead = |body: &str| {
        server
            .db
            .read_tx(|c| prebuild(c, &server, &room, &message(&alice, body), None))
            .expect("prebuild")
    };

    // Nothing in between: the write takes the event built ahead, as it was built.
    let early = ahead("first");
    let early_id = early.event_id().to_owned();
    let first = server
        .write(|c| {
            let prepared = Prepared {
                push: None,
                built: Some(early),
            };
            append_prepared(
                c,
                &server,
                &room,
                message(&alice, "first"),
                None,
                None,
                prepared,
            )
        })
        .expect("first");
    assert_eq!(first.event_id, early_id, "the prebuilt event was persisted");

    // Built ahead, then another event arrives first: the write builds it again on top.
    let stale = ahead("third");
    let stale_id = stale.event_id().to_owned();
    let second = server
        .write(|c| append_event(c, &server, &room, message(&alice, "second"), None))
        .expect("second");
    let third = server
        .write(|c| {
            let prepared = Prepared {
                push: None,
                built: Some(stale),
            };
            append_prepared(
                c,
                &server,
                &room,
                message(&alice, "third"),
                None,
                None,
                prepared,
            )
        })
        .expect("third");
    assert_ne!(
        third.event_id, stale_id,
        "a stale prebuilt event is not persisted"
    );
    let pdu = server
        .db
        .read(|c| load_pdu(c, &third.event_id))
        .expect("read")
        .expect("stored");
    let prev: Vec<String> = pdu.prev_events.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        prev,
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
    let ahead = server
        .db
        .read_tx(|c| {
            Ok(Prepared {
                push: crate::push::plan(c, &room, &msg)?,
                built: Some(prebuild(c, &server, &room, &msg, None)?),
            })
        })
        .expect("ahead");
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
    server
        .write(|c| append_prepared(c, &server, &room, msg, None, None, ahead))
        .expect("send");
    let rows = server
        .db
        .read(|c| storage::notifications(c, &bob, i64::MAX, 10, false))
        .expect("rows");
    assert!(rows.is_empty(), "notified after leaving: {rows:?}");
}
