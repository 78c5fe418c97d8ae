//! A sliding sync connection's first response served partly from
//! [`super::CachedRoom`]s: a new connection sees what a rebuild would show, transaction
//! ids reach only the device that sent them, a change to the room shows at once, and
//! unread counts are always fresh.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Params, Request};
use crate::requester::Requester;
use crate::rooms::{CreateRoom, append_event, append_event_at};
use crate::server::Server;
use crate::test_support::{ev, message, node, room_with};

/// The first response of a new connection of `user`'s `device`, for the one room.
async fn first_response(server: &Arc<Server>, user: &str, device: &str, room: &str) -> Value {
    let req: Request = serde_json::from_value(json!({
        "lists": {"all": {
            "ranges": [[0, 9]],
            "timeline_limit": 5,
            "required_state": [["m.room.name", ""], ["m.room.member", "$LAZY"]],
        }}
    }))
    .expect("request");
    let params = Params {
        pos: None,
        timeout: Duration::ZERO,
    };
    let answer = super::sync(
        server.clone(),
        Requester::user(user.to_owned(), device),
        params,
        req,
    )
    .await
    .expect("sliding sync");
    answer["rooms"][room].clone()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn txn_ids(room: &Value) -> Vec<Value> {
    room["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["unsigned"]["transaction_id"].clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_sees_the_room_as_a_rebuild_would() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    let options = CreateRoom {
        preset: Some("public_chat".into()),
        name: Some("the room".into()),
        ..Default::default()
    };
    let room = room_with(&server, &alice, &[&bob], options);
    server
        .write(|c| {
            let join = ev(
                &bob,
                "m.room.member",
                Some(&bob),
                json!({"membership": "join"}),
            );
            append_event(c, &server, &room, join, None)?;
            append_event_at(
                c,
                &server,
                &room,
                message(&alice, "from A"),
                Some(("A", "t1")),
                None,
            )?;
            append_event(c, &server, &room, message(&bob, "hello alice"), None)
        })
        .expect("messages");

    // Device B builds the room and keeps it; device C is shown the same.
    let b = first_response(&server, &alice, "B", &room).await;
    assert_eq!(server.sync.sliding_rooms.usage().0, 1, "kept");
    let c = first_response(&server, &alice, "C", &room).await;
    assert_eq!(c, b, "served from the cache as built");
    assert_eq!(bodies(&c), ["from A", "hello alice"]);
    assert_eq!(c["name"], "the room");
    assert_eq!(c["initial"], true);
    assert_eq!(c["notification_count"], 1);
    assert!(txn_ids(&c).iter().all(Value::is_null), "no echo for C: {c}");

    // Device A sent one of the events: its transaction id is echoed to it alone.
    let a = first_response(&server, &alice, "A", &room).await;
    assert_eq!(txn_ids(&a)[0], "t1");
    let d = first_response(&server, &alice, "D", &room).await;
    assert!(txn_ids(&d).iter().all(Value::is_null), "no echo for D: {d}");

    // A new message shows at once, with a fresh unread count.
    server
        .write(|c| append_event(c, &server, &room, message(&bob, "again"), None))
        .expect("again");
    let e = first_response(&server, &alice, "E", &room).await;
    assert_eq!(bodies(&e).last().map(String::as_str), Some("again"));
    assert_eq!(e["notification_count"], 2);

    // A redaction rewrites its target and shows at once.
    let target = server
        .write(|c| append_event(c, &server, &room, message(&bob, "oops"), None))
        .expect("oops")
        .event_id;
    first_response(&server, &alice, "F", &room).await;
    let mut redaction = ev(&bob, "m.room.redaction", None, json!({}));
    redaction.redacts = Some(target);
    server
        .write(|c| append_event(c, &server, &room, redaction, None))
        .expect("redaction");
    let g = first_response(&server, &alice, "G", &room).await;
    assert!(
        !bodies(&g).iter().any(|b| b == "oops"),
        "redacted text served: {g}"
    );
}
