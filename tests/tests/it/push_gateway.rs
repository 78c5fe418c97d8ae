//! Push gateways: http pushers get `POST /_matrix/push/v1/notify` from a fake gateway
//! (an axum server in the test): the full format and `event_id_only`, a mention notifies
//! and a muted room does not, a `rejected` pushkey removes its pusher, and delivery
//! resumes after the gateway was down (backoff) and across a restart of the node.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use parking_lot::Mutex;
use serde_json::{Value, json};
use warren_tests::{
    RawUser, WAIT, path_segment, shutdown_node, start_node, start_node_with, test_config,
    wait_until,
};

/// What the fake gateway saw and how it answers.
#[derive(Default)]
struct Gateway {
    /// Every notify body taken (answered 200).
    received: Mutex<Vec<Value>>,
    /// Every request, taken or not.
    attempts: AtomicUsize,
    /// Answer 503 while set.
    down: AtomicBool,
    /// Pushkeys answered in `rejected`.
    reject: Mutex<Vec<String>>,
}

impl Gateway {
    fn received(&self) -> Vec<Value> {
        self.received.lock().clone()
    }
}

async fn notify(
    State(gw): State<Arc<Gateway>>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    gw.attempts.fetch_add(1, Ordering::SeqCst);
    if gw.down.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({})));
    }
    let reject = gw.reject.lock().clone();
    let rejected: Vec<Value> = body["notification"]["devices"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d["pushkey"].as_str())
        .filter(|k| reject.iter().any(|r| r == k))
        .map(|k| json!(k))
        .collect();
    gw.received.lock().push(body);
    (StatusCode::OK, Json(json!({ "rejected": rejected })))
}

/// Start the fake gateway; its notify URL.
async fn gateway() -> (Arc<Gateway>, String) {
    let gw = Arc::new(Gateway::default());
    let app = axum::Router::new()
        .route("/_matrix/push/v1/notify", post(notify))
        .with_state(gw.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind gateway");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (gw, format!("http://{addr}/_matrix/push/v1/notify"))
}

fn pusher(pushkey: &str, url: &str, data: Value) -> Value {
    let mut data = data;
    data["url"] = json!(url);
    json!({
        "app_id": "org.example.app",
        "pushkey": pushkey,
        "kind": "http",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": data,
    })
}

/// Alice creates a room named `name` and Bob joins it.
async fn shared_room(alice: &RawUser, bob: &RawUser, name: &str) -> String {
    let room = alice
        .create_room(json!({"name": name, "preset": "private_chat", "invite": [bob.id()]}))
        .await
        .expect("create room");
    bob.post(&format!("/join/{}", path_segment(&room)), json!({}))
        .await
        .expect("bob joins");
    room
}

async fn say(alice: &RawUser, room: &str, content: Value) -> String {
    let txn = format!(
        "t{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("time")
            .as_nanos()
    );
    let answer = alice
        .ok(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
            content,
        )
        .await
        .expect("send");
    answer["event_id"].as_str().expect("event_id").to_owned()
}

async fn pushkeys(bob: &RawUser) -> Vec<String> {
    let list = bob
        .ok(reqwest::Method::GET, "/pushers", Value::Null)
        .await
        .expect("GET /pushers");
    list["pushers"]
        .as_array()
        .expect("pushers")
        .iter()
        .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_gets_the_mention_not_the_muted_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let (gw, url) = gateway().await;
    let base = node.client_url();
    let alice = RawUser::register(base.clone(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(base, "bob").await.expect("bob");
    let lounge = shared_room(&alice, &bob, "Lounge").await;
    let muted = shared_room(&alice, &bob, "Noisy").await;
    // Bob mutes one room: a room rule that does nothing.
    bob.ok(
        reqwest::Method::PUT,
        &format!("/pushrules/global/room/{}", path_segment(&muted)),
        json!({"actions": []}),
    )
    .await
    .expect("mute");
    bob.post(
        "/pushers/set",
        pusher("full-key", &url, json!({"custom": "kept"})),
    )
    .await
    .expect("full pusher");
    bob.post(
        "/pushers/set",
        pusher("id-key", &url, json!({"format": "event_id_only"})),
    )
    .await
    .expect("event_id_only pusher");

    // The muted room first: were it pushed, it would arrive before the mention (each
    // pusher's queue is sent in order).
    let quiet = say(
        &alice,
        &muted,
        json!({"msgtype": "m.text", "body": "nobody hears this"}),
    )
    .await;
    let mention = say(
        &alice,
        &lounge,
        json!({"msgtype": "m.text", "body": "hey bob", "m.mentions": {"user_ids": [bob.id()]}}),
    )
    .await;
    wait_until(WAIT, "both pushers got the mention", async || {
        Ok(gw.received().len() >= 2)
    })
    .await
    .expect("pushed");
    let received = gw.received();
    assert_eq!(received.len(), 2, "{received:#?}");
    assert!(
        !received
            .iter()
            .any(|b| b["notification"]["event_id"] == json!(quiet)),
        "the muted room was pushed"
    );
    let by_key = |key: &str| {
        received
            .iter()
            .find(|b| b["notification"]["devices"][0]["pushkey"] == json!(key))
            .unwrap_or_else(|| panic!("nothing for {key}: {received:#?}"))
            .clone()
    };
    let full = by_key("full-key");
    let n = &full["notification"];
    assert_eq!(n["event_id"], json!(mention));
    assert_eq!(n["room_id"], json!(lounge));
    assert_eq!(n["type"], "m.room.message");
    assert_eq!(n["sender"], json!(alice.id()));
    assert_eq!(n["room_name"], "Lounge");
    assert_eq!(n["content"]["body"], "hey bob");
    assert_eq!(n["prio"], "high");
    assert_eq!(n["counts"]["unread"], 1, "{full}");
    let device = &n["devices"][0];
    assert_eq!(device["app_id"], "org.example.app");
    assert_eq!(device["data"], json!({"custom": "kept"}), "url left out");
    assert!(
        device["pushkey_ts"]
            .as_i64()
            .is_some_and(|t| t > 1_600_000_000)
    );
    assert_eq!(device["tweaks"]["highlight"], true, "{full}");
    assert!(device["tweaks"].get("sound").is_some(), "{full}");

    let id_only = by_key("id-key");
    let n = &id_only["notification"];
    assert_eq!(n["event_id"], json!(mention));
    assert_eq!(n["room_id"], json!(lounge));
    assert_eq!(n["counts"]["unread"], 1);
    assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));
    for absent in ["content", "sender", "room_name", "type"] {
        assert!(n.get(absent).is_none(), "{absent} in {id_only}");
    }
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_pushkey_removes_the_pusher() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let (gw, url) = gateway().await;
    gw.reject.lock().push("stale-key".into());
    let base = node.client_url();
    let alice = RawUser::register(base.clone(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(base, "bob").await.expect("bob");
    let room = shared_room(&alice, &bob, "Lounge").await;
    for key in ["stale-key", "good-key"] {
        bob.post("/pushers/set", pusher(key, &url, json!({})))
            .await
            .expect("pusher");
    }
    assert_eq!(pushkeys(&bob).await, ["stale-key", "good-key"]);
    say(&alice, &room, json!({"msgtype": "m.text", "body": "one"})).await;
    wait_until(WAIT, "the stale pusher is gone", async || {
        Ok(pushkeys(&bob).await == ["good-key"])
    })
    .await
    .expect("removed");
    // The good one keeps getting pushes; the stale one gets no more.
    gw.received.lock().clear();
    say(&alice, &room, json!({"msgtype": "m.text", "body": "two"})).await;
    wait_until(WAIT, "the good pusher got the second", async || {
        Ok(gw
            .received()
            .iter()
            .any(|b| b["notification"]["content"]["body"] == "two"))
    })
    .await
    .expect("second pushed");
    assert!(
        gw.received()
            .iter()
            .all(|b| b["notification"]["devices"][0]["pushkey"] == "good-key"),
        "{:#?}",
        gw.received()
    );
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_after_the_gateway_was_down() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let (gw, url) = gateway().await;
    gw.down.store(true, Ordering::SeqCst);
    let base = node.client_url();
    let alice = RawUser::register(base.clone(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(base, "bob").await.expect("bob");
    let room = shared_room(&alice, &bob, "Lounge").await;
    bob.post("/pushers/set", pusher("key", &url, json!({})))
        .await
        .expect("pusher");
    let first = say(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "while down"}),
    )
    .await;
    // Retried (with backoff) while the gateway fails.
    wait_until(WAIT, "the gateway was tried twice", async || {
        Ok(gw.attempts.load(Ordering::SeqCst) >= 2)
    })
    .await
    .expect("retried");
    assert!(gw.received().is_empty());
    gw.down.store(false, Ordering::SeqCst);
    wait_until(
        WAIT,
        "the push arrives once the gateway is back",
        async || {
            Ok(gw
                .received()
                .iter()
                .any(|b| b["notification"]["event_id"] == json!(first)))
        },
    )
    .await
    .expect("delivered after the outage");

    // Across a restart: queued while down, the node stops, the gateway comes back, the
    // restarted node delivers what was queued.
    gw.down.store(true, Ordering::SeqCst);
    let attempts = gw.attempts.load(Ordering::SeqCst);
    let second = say(
        &alice,
        &room,
        json!({"msgtype": "m.text", "body": "before restart"}),
    )
    .await;
    wait_until(WAIT, "the gateway was tried again", async || {
        Ok(gw.attempts.load(Ordering::SeqCst) > attempts)
    })
    .await
    .expect("tried");
    shutdown_node(node).await.expect("shutdown");
    gw.down.store(false, Ordering::SeqCst);
    let node = start_node_with(test_config(dir.path()))
        .await
        .expect("restart");
    wait_until(
        WAIT,
        "the queued push arrives after the restart",
        async || {
            Ok(gw
                .received()
                .iter()
                .any(|b| b["notification"]["event_id"] == json!(second)))
        },
    )
    .await
    .expect("delivered after the restart");
    shutdown_node(node).await.expect("shutdown");
}
