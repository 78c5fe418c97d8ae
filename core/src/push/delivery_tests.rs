//! The push queue and the local notification hook on a real node: rows are queued in
//! the event's transaction, a failing gateway's queue is kept to its bound (oldest
//! dropped), aged rows go, and the hook the mobile bindings and the CLI subscribe to
//! gets each notification with its details after the commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::events::NewEvent;
use crate::rooms::{CreateRoom, append_event, create_room};
use crate::server::Server;
use crate::storage::{self, PusherKey};
use crate::{Config, Node};

struct Fixture {
    node: Node,
    server: Arc<Server>,
    room: String,
    alice: String,
    bob: String,
}

async fn fixture(dir: &std::path::Path, queue_rows: usize) -> Fixture {
    let mut config = Config::new(dir);
    config.client_addr = "127.0.0.1:0".parse().expect("addr");
    config.push.queue_rows = queue_rows;
    config.push.backoff_cap = Duration::from_millis(50);
    let node = Node::start(config).await.expect("start");
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    server
        .write(|tx| {
            for u in [&alice, &bob] {
                storage::create_user(tx, u, None, false, "")?;
            }
            Ok(())
        })
        .expect("users");
    let room = server
        .write(|tx| {
            let req = CreateRoom {
                preset: Some("public_chat".into()),
                name: Some("Lounge".into()),
                ..Default::default()
            };
            create_room(tx, &server, &alice, req)
        })
        .expect("create");
    let join = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(bob.clone()),
        content: json!({"membership": "join", "displayname": "Bob"}),
        sender: bob.clone(),
        redacts: None,
    };
    server
        .write(|tx| append_event(tx, &server, &room, join, None))
        .expect("join");
    Fixture {
        node,
        server,
        room,
        alice,
        bob,
    }
}

impl Fixture {
    fn say(&self, body: &str) -> String {
        let ev = NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            sender: self.alice.clone(),
            redacts: None,
        };
        self.server
            .write(|tx| append_event(tx, &self.server, &self.room, ev, None))
            .expect("send")
            .event_id
    }
}

/// A gateway nobody answers at: the queue stays within `queue_rows`, the newest kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_gateways_queue_keeps_its_bound() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), 5).await;
    // Port 1 on loopback: connection refused at once.
    let pusher = json!({"kind": "http", "app_id": "a", "pushkey": "k",
        "data": {"url": "http://127.0.0.1:1/_matrix/push/v1/notify"}});
    f.server
        .write(|tx| storage::set_pusher(tx, &f.bob, "DEV", "a", "k", &pusher.to_string(), 0))
        .expect("pusher");
    let key = PusherKey {
        user_id: f.bob.clone(),
        app_id: "a".into(),
        pushkey: "k".into(),
    };
    let mut last = String::new();
    for i in 0..30 {
        last = f.say(&format!("message {i}"));
    }
    let depth = || {
        f.server
            .db
            .read(|c| storage::push_queue_depth(c, &key))
            .expect("depth")
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while depth() > 5 {
        assert!(Instant::now() < deadline, "queue still at {}", depth());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Trimming is what brought it down: the newest is still queued.
    let newest: i64 = f
        .server
        .db
        .read(|c| {
            Ok(c.query_row(
                "SELECT COUNT(*) FROM push_queue WHERE event_id = ?1",
                [&last],
                |r| r.get(0),
            )?)
        })
        .expect("newest");
    assert_eq!(newest, 1, "the newest notification was dropped");
    // Aged rows go whatever the count.
    let dropped = f
        .server
        .db
        .write(|c| storage::trim_push_queue(c, &key, 100, i64::MAX))
        .expect("trim");
    assert!(dropped >= 1);
    assert_eq!(depth(), 0);
    // Deleting the pusher takes its queue with it.
    f.say("after");
    f.server
        .write(|tx| storage::delete_pusher(tx, &f.bob, "a", "k"))
        .expect("delete");
    assert_eq!(depth(), 0);
    f.node.shutdown().await.expect("shutdown");
}

/// The hook the mobile listener and `--on-notify` use: one notification per event that
/// notifies a local user, with its details, after the commit; none for the sender.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_notifications_carry_the_details() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = fixture(dir.path(), 100).await;
    let mut rx = f.server.local_notifications.subscribe();
    let first = f.say("hello");
    let second = f.say("Bob: are you there?");
    let n1 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("first");
    assert_eq!(n1.user_id, f.bob);
    assert_eq!(n1.room_id, f.room);
    assert_eq!(n1.event_id, first);
    assert_eq!(n1.sender, f.alice);
    assert_eq!(n1.event_type, "m.room.message");
    assert_eq!(n1.room_name.as_deref(), Some("Lounge"));
    assert_eq!(n1.body.as_deref(), Some("hello"));
    assert!(!n1.highlight);
    assert_eq!((n1.notification_count, n1.highlight_count), (1, 0));
    let n2 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("second");
    assert_eq!(n2.event_id, second);
    assert!(n2.highlight, "bob's display name highlights");
    assert_eq!((n2.notification_count, n2.highlight_count), (2, 1));
    // Nothing else: alice is never notified of her own messages.
    assert!(rx.try_recv().is_err());
    // A failed write publishes nothing.
    let failed: Result<(), crate::Error> = f.server.write(|tx| {
        let ev = NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": "rolled back"}),
            sender: f.alice.clone(),
            redacts: None,
        };
        append_event(tx, &f.server, &f.room, ev, None)?;
        Err(crate::Error::InvalidParam("abort".into()))
    });
    assert!(failed.is_err());
    f.say("after the failure");
    let n3 = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("in time")
        .expect("third");
    assert_eq!(n3.body.as_deref(), Some("after the failure"));
    f.node.shutdown().await.expect("shutdown");
}
