//! Initial syncs served partly from [`super::room_cache`]: a new device sees exactly what
//! a rebuild would show, transaction ids reach only the device that sent them, and every
//! change to a room (a message, a redaction, a new member in the summary) shows at once.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Filter, SyncParams, room_cache};
use crate::requester::Requester;
use crate::rooms::{CreateRoom, append_event, create_room};
use crate::server::Server;
use crate::storage;
use crate::test_support::{ev, node};

async fn initial(server: &Arc<Server>, user: &str, device: &str) -> Value {
    let params = SyncParams {
        since: None,
        timeout: Duration::ZERO,
        filter: Filter::default(),
        full_state: false,
    };
    super::sync(
        server.clone(),
        Requester::user(user.to_owned(), device),
        params,
    )
    .await
    .expect("sync")
    .to_value()
    .expect("json")
}

fn timeline<'a>(answer: &'a Value, room: &str) -> &'a Vec<Value> {
    answer["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .expect("timeline")
}

fn event<'a>(answer: &'a Value, room: &str, id: &str) -> &'a Value {
    timeline(answer, room)
        .iter()
        .find(|e| e["event_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in {answer}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_devices_initial_sync_shows_the_room_as_a_rebuild_would() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = server
        .write(|c| {
            storage::create_user(c, &alice, None, false, "alice")?;
            create_room(
                c,
                &server,
                &alice,
                CreateRoom {
                    preset: Some("public_chat".into()),
                    ..Default::default()
                },
            )
        })
        .expect("room");
    let say = |body: &str, txn: Option<(&str, &str)>| {
        let e = ev(
            &alice,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
        );
        server
            .write(|c| append_event(c, &server, &room, e, txn))
            .expect("send")
            .event_id
    };
    let first = say("first", Some(("A", "t1")));

    // Device A sent it: its transaction id is echoed to A.
    let a = initial(&server, &alice, "A").await;
    assert_eq!(event(&a, &room, &first)["unsigned"]["transaction_id"], "t1");
    // Not to B, whose build is kept for every device that sent nothing in the room.
    let b = initial(&server, &alice, "B").await;
    assert!(event(&b, &room, &first)["unsigned"]["transaction_id"].is_null());
    let key = room_cache::Key {
        user_id: alice.clone(),
        room_id: room.clone(),
        filters: serde_json::to_string(&(
            &Filter::default().room.timeline,
            &Filter::default().room.state,
        ))
        .expect("filters"),
    };
    let span = server
        .db
        .read(|c| storage::room_span(c, &room, i64::MAX))
        .map(|(newest, oldest)| room_cache::Span { newest, oldest })
        .expect("span");
    assert!(server.sync.rooms.get(&key, span, "C").is_some(), "kept");
    let c = initial(&server, &alice, "C").await;
    assert_eq!(timeline(&c, &room), timeline(&b, &room));
    assert_eq!(
        c["rooms"]["join"][&room]["state"],
        b["rooms"]["join"][&room]["state"]
    );
    assert_eq!(
        c["rooms"]["join"][&room]["summary"]["m.joined_member_count"],
        1
    );
    // A still gets its transaction id.
    let a = initial(&server, &alice, "A").await;
    assert_eq!(event(&a, &room, &first)["unsigned"]["transaction_id"], "t1");

    // A new message shows at once.
    let second = say("second", None);
    let d = initial(&server, &alice, "D").await;
    assert_eq!(event(&d, &room, &second)["content"]["body"], "second");

    // So does a redaction, which also rewrites the event it redacts.
    let redaction = redaction_of(&alice, &first);
    server
        .write(|c| append_event(c, &server, &room, redaction, None))
        .expect("redact");
    let e = initial(&server, &alice, "E").await;
    assert_eq!(event(&e, &room, &first)["content"], json!({}));
    assert!(server.sync.rooms.usage().0 >= 1);

    // A new member changes the summary (member counts, heroes) at once.
    let bob = server.user_id("bob");
    let join = ev(
        &bob,
        "m.room.member",
        Some(&bob),
        json!({"membership": "join"}),
    );
    server
        .write(|c| {
            storage::create_user(c, &bob, None, false, "bob")?;
            append_event(c, &server, &room, join, None)
        })
        .expect("join");
    let f = initial(&server, &alice, "F").await;
    let summary = &f["rooms"]["join"][&room]["summary"];
    assert_eq!(summary["m.joined_member_count"], 2);
    assert_eq!(summary["m.heroes"], json!([bob]));
}

/// A redaction of `target` by `sender`.
fn redaction_of(sender: &str, target: &str) -> crate::events::NewEvent {
    crate::events::NewEvent {
        kind: "m.room.redaction".into(),
        state_key: None,
        content: json!({"redacts": target}),
        sender: sender.into(),
        redacts: Some(target.into()),
    }
}
