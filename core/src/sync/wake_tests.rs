//! Selective wake-up of waiting `/sync` calls and the incremental build that skips quiet
//! rooms, on a real node's database: a commit wakes only the long-polls it concerns, and
//! an incremental sync still shows every kind of change in the rooms it skips otherwise.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use serde_json::{Value, json};

use super::{Filter, SyncParams};
use crate::Node;
use crate::requester::Requester;
use crate::rooms::{CreateRoom, append_event, create_room};
use crate::server::Server;
use crate::storage::{self, PresenceRow, Receipt, next_stream_position, now_ms};
use crate::streams::{SyncToken, Waiter};
use crate::test_support::{ev, node, send};

/// `/sync`, as the JSON value a client would read.
async fn sync(
    server: Arc<Server>,
    caller: Requester,
    params: SyncParams,
) -> Result<Value, crate::error::Error> {
    Ok(super::sync(server, caller, params).await?.to_value()?)
}

fn join(server: &Server, room: &str, user: &str) {
    let e = ev(
        user,
        "m.room.member",
        Some(user),
        json!({"membership": "join"}),
    );
    server
        .write(|tx| append_event(tx, server, room, e, None))
        .expect("join");
}

fn public_room(server: &Server, creator: &str) -> String {
    server
        .write(|tx| {
            create_room(
                tx,
                server,
                creator,
                CreateRoom {
                    preset: Some("public_chat".into()),
                    ..Default::default()
                },
            )
        })
        .expect("room")
}

/// alice and bob share `shared`; carol is alone in `other`.
struct World {
    server: Arc<Server>,
    alice: String,
    bob: Requester,
    carol: String,
    shared: String,
    other: String,
}

fn world(node: &Node) -> World {
    let server = node.server().clone();
    let [alice, bob, carol] = ["alice", "bob", "carol"].map(|n| server.user_id(n));
    server
        .write(|c| {
            for u in [&alice, &bob, &carol] {
                storage::create_user(c, u, None, false, u)?;
                storage::start_session(c, u, "DEV", None, &format!("{u}-token"))?;
            }
            Ok(())
        })
        .expect("users");
    let shared = public_room(&server, &alice);
    join(&server, &shared, &bob);
    let other = public_room(&server, &carol);
    World {
        server,
        alice,
        bob: Requester::user(bob, "DEV"),
        carol,
        shared,
        other,
    }
}

/// Whether the waiter was woken since it last looked (takes the wake-up), once every
/// wake-up of the writes so far has been delivered (they run as tasks of their own).
async fn woken(s: &Server, w: &Waiter) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while s.notifier.wakes_pending() > 0 {
        assert!(std::time::Instant::now() < deadline, "wake-ups never ran");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    w.notified().now_or_never().is_some()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_only_the_long_polls_it_concerns() {
    let (_dir, node) = node().await;
    let w = world(&node);
    let s = &w.server;
    let bob = &w.bob.user_id;
    let waiter = s.notifier.waiter(bob);
    // Before it is narrowed to bob's rooms, anything wakes it.
    send(s, &w.other, &w.carol, "before");
    assert!(woken(s, &waiter).await);
    waiter.narrow(vec![w.shared.clone()]);

    send(s, &w.other, &w.carol, "in a room bob is not in");
    assert!(
        !woken(s, &waiter).await,
        "a message elsewhere does not wake bob"
    );
    send(s, &w.shared, &w.alice, "in bob's room");
    assert!(woken(s, &waiter).await, "a message in bob's room does");

    // Typing: in bob's room only.
    s.notifier
        .set_typing(&w.other, &w.carol, Some(Duration::from_secs(30)));
    assert!(!woken(s, &waiter).await);
    s.notifier
        .set_typing(&w.shared, &w.alice, Some(Duration::from_secs(30)));
    assert!(woken(s, &waiter).await);

    // Receipts: in bob's room only.
    let receipt = |user: &str, event_id: String| Receipt {
        receipt_type: "m.read".into(),
        user_id: user.to_owned(),
        thread_id: String::new(),
        event_id,
        ts: now_ms(),
    };
    let there = send(s, &w.other, &w.carol, "to read");
    assert!(!woken(s, &waiter).await);
    let r = receipt(&w.carol, there);
    s.write(|c| storage::set_receipt(c, &w.other, &r, next_stream_position(c)?))
        .expect("receipt");
    assert!(!woken(s, &waiter).await);
    let here = send(s, &w.shared, &w.alice, "to read");
    assert!(woken(s, &waiter).await);
    let r = receipt(&w.alice, here);
    s.write(|c| storage::set_receipt(c, &w.shared, &r, next_stream_position(c)?))
        .expect("receipt");
    assert!(woken(s, &waiter).await);

    // Account data and to-device messages: bob's own, not carol's.
    for user in [&w.carol, bob] {
        s.write(|c| {
            storage::set_account_data(c, user, "", "org.example", "{}", next_stream_position(c)?)
        })
        .expect("account data");
        assert_eq!(
            woken(s, &waiter).await,
            user == bob,
            "account data of {user}"
        );
        s.write(|c| {
            let pos = next_stream_position(c)?;
            storage::insert_to_device(c, pos, user, "DEV", &w.alice, "m.test", "{}")
        })
        .expect("to-device");
        assert_eq!(woken(s, &waiter).await, user == bob, "to-device for {user}");
    }

    // Presence: of someone sharing a room with bob, not of a stranger.
    for user in [&w.carol, &w.alice] {
        s.write(|c| {
            let row = PresenceRow {
                user_id: user.to_string(),
                state: "online".into(),
                status_msg: None,
                last_active_ts: now_ms(),
                currently_active: true,
                stream_ordering: next_stream_position(c)?,
            };
            storage::set_presence(c, &row)
        })
        .expect("presence");
        assert_eq!(
            woken(s, &waiter).await,
            user == &w.alice,
            "presence of {user}"
        );
    }

    // Joining a room bob was not in names bob.
    join(s, &w.other, bob);
    assert!(woken(s, &waiter).await, "bob's own membership wakes him");
    assert_eq!(s.notifier.waiting(), 1);
    drop(waiter);
    assert_eq!(s.notifier.waiting(), 0, "a finished long-poll is forgotten");
}

fn params(since: Option<SyncToken>, timeout: Duration) -> SyncParams {
    SyncParams {
        since,
        timeout,
        filter: Filter::default(),
        full_state: false,
    }
}

fn token(body: &Value) -> SyncToken {
    SyncToken::parse(body["next_batch"].as_str().expect("next_batch")).expect("token")
}

/// A long-poll is not answered for messages in rooms the user is not in, and is answered
/// at once for one in theirs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_sync_sleeps_through_other_rooms_and_wakes_for_its_own() {
    let (_dir, node) = node().await;
    let w = world(&node);
    let s = w.server.clone();
    let first = sync(s.clone(), w.bob.clone(), params(None, Duration::ZERO))
        .await
        .expect("initial");
    let since = token(&first);
    let poll = tokio::spawn(sync(
        s.clone(),
        w.bob.clone(),
        params(Some(since), Duration::from_secs(30)),
    ));
    // Wait until the long-poll waits, narrowed to bob's rooms.
    let narrowed = async {
        while s.notifier.waiting() == 0 || s.notifier.waiting_for_anything() > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), narrowed)
        .await
        .expect("the long-poll waits, narrowed to bob's rooms");
    let wakeups = s.notifier.wakeups();
    for i in 0..20 {
        send(&s, &w.other, &w.carol, &format!("elsewhere {i}"));
    }
    // Each write wakes whom it concerns before it returns: nobody here.
    assert_eq!(
        s.notifier.wakeups(),
        wakeups,
        "woken by a room bob is not in"
    );
    assert!(!poll.is_finished());
    let id = send(&s, &w.shared, &w.alice, "for bob");
    let body = tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("answered")
        .expect("task")
        .expect("sync");
    let rooms = body["rooms"]["join"].as_object().expect("join");
    assert_eq!(rooms.len(), 1, "{body}");
    let timeline = &rooms[&w.shared]["timeline"]["events"];
    assert_eq!(timeline[0]["event_id"], json!(id), "{body}");
}

/// An incremental sync skips the rooms nothing happened in, and still shows each kind of
/// change in the room it happened in: a message, a receipt, typing, room account data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_sync_shows_every_kind_of_room_change() {
    let (_dir, node) = node().await;
    let w = world(&node);
    let s = w.server.clone();
    let bob = w.bob.user_id.clone();
    join(&s, &w.other, &bob);
    let mut since = token(
        &sync(s.clone(), w.bob.clone(), params(None, Duration::ZERO))
            .await
            .expect("initial"),
    );
    let event_id = send(&s, &w.shared, &w.alice, "hello");
    type Change<'a> = (&'static str, Box<dyn Fn() + 'a>);
    let changes: Vec<Change<'_>> = vec![
        ("a message", Box::new(|| {})),
        (
            "a receipt",
            Box::new(|| {
                let r = Receipt {
                    receipt_type: "m.read".into(),
                    user_id: w.alice.clone(),
                    thread_id: String::new(),
                    event_id: event_id.clone(),
                    ts: now_ms(),
                };
                s.write(|c| storage::set_receipt(c, &w.shared, &r, next_stream_position(c)?))
                    .expect("receipt");
            }),
        ),
        (
            "typing",
            Box::new(|| {
                s.notifier
                    .set_typing(&w.shared, &w.alice, Some(Duration::from_secs(30)))
            }),
        ),
        (
            "room account data",
            Box::new(|| {
                s.write(|c| {
                    let pos = next_stream_position(c)?;
                    storage::set_account_data(c, &bob, &w.shared, "m.tag", r#"{"tags":{}}"#, pos)
                })
                .expect("account data");
            }),
        ),
    ];
    for (what, change) in changes {
        change();
        let body = sync(
            s.clone(),
            w.bob.clone(),
            params(Some(since), Duration::ZERO),
        )
        .await
        .expect("sync");
        let rooms = body["rooms"]["join"].as_object().expect("join");
        assert!(rooms.contains_key(&w.shared), "{what}: {body}");
        assert!(
            !rooms.contains_key(&w.other),
            "{what}: the quiet room is skipped: {body}"
        );
        since = token(&body);
    }
}
