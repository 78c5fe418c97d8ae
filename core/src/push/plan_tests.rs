//! Push rules evaluated before the write ([`super::plan`]) record what an evaluation
//! inside the write records: the same members notified, with the same actions.

use serde_json::{Value, json};

use crate::requester::Requester;
use crate::room_writes::send_message_async;
use crate::rooms::append_event;
use crate::storage;
use crate::test_support::{ev, node, public_room};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_send_notifies_as_an_evaluation_in_the_write_does() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|u| server.user_id(u));
    let room = public_room(&server, &alice, &[&bob, &carol]);
    // Bob's display name is mentioned: a highlight for him, a plain notification for
    // Carol (a room of three is not a one-to-one room).
    server
        .write(|c| {
            let name = ev(
                &bob,
                "m.room.member",
                Some(&bob),
                json!({"membership": "join", "displayname": "Bobby"}),
            );
            append_event(c, &server, &room, name, None)
        })
        .expect("display name");
    let content = json!({"msgtype": "m.text", "body": "hello Bobby"});
    let requester = Requester::user(alice.clone(), "D");
    send_message_async(
        &server,
        &requester,
        &room,
        "m.room.message".into(),
        content.clone(),
        "t1",
        None,
    )
    .await
    .expect("planned send");
    server
        .write(|c| {
            let e = ev(&alice, "m.room.message", None, content.clone());
            append_event(c, &server, &room, e, None)
        })
        .expect("send evaluated in the write");
    for user in [&bob, &carol] {
        let rows = server
            .db
            .read(|c| storage::notifications(c, user, i64::MAX, 10, false))
            .expect("rows");
        assert_eq!(rows.len(), 2, "{user}: {rows:?}");
        let actions: Vec<Value> = rows
            .iter()
            .map(|r| serde_json::from_str(&r.actions).unwrap_or(Value::Null))
            .collect();
        assert_eq!(actions[0], actions[1], "{user}: {actions:?}");
    }
    let (bob_counts, carol_counts) = server
        .db
        .read(|c| {
            Ok((
                storage::unread_counts(c, &room, &bob)?,
                storage::unread_counts(c, &room, &carol)?,
            ))
        })
        .expect("counts");
    assert_eq!(bob_counts, (2, 2), "both highlight Bob");
    assert_eq!(carol_counts, (2, 0));
    // The sender is never notified.
    let own = server
        .db
        .read(|c| storage::notifications(c, &alice, i64::MAX, 10, false))
        .expect("rows");
    assert!(own.is_empty());
}
