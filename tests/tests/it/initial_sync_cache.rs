//! Repeated initial `/sync` from the same device is answered from the cache of initial
//! sync answers, and never with a stale one: after each kind of change an answer can
//! depend on (a message, state, unread counts and a receipt, typing, to-device messages,
//! account data, one-time keys claimed and uploaded, presence, a new device's key
//! upload), the next initial sync reflects it. Logout drops the device's answers.

use reqwest::Method as M;
use serde_json::{Value, json};
use warren_tests::{RawUser, path_segment, shutdown_node, start_node};

/// `GET /sync` without `since`.
async fn initial(user: &RawUser) -> Value {
    user.ok(M::GET, "/sync?timeout=0", Value::Null)
        .await
        .expect("initial sync")
}

/// Two initial syncs with nothing in between: the same answer, the second from the cache.
async fn twice(user: &RawUser, server: &warren_core::server::Server) -> Value {
    let first = initial(user).await;
    let again = initial(user).await;
    assert_eq!(first, again, "nothing changed in between");
    assert!(
        server.sync.initial.usage().0 >= 1,
        "the answer is kept: {:?}",
        server.sync.initial.usage()
    );
    again
}

fn room<'a>(sync: &'a Value, room_id: &str) -> &'a Value {
    &sync["rooms"]["join"][room_id]
}

fn timeline_has(sync: &Value, room_id: &str, pred: impl Fn(&Value) -> bool) -> bool {
    room(sync, room_id)["timeline"]["events"]
        .as_array()
        .is_some_and(|evs| evs.iter().any(pred))
}

#[tokio::test(flavor = "multi_thread")]
async fn repeated_initial_sync_is_cached_and_never_stale() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start");
    let server = node.server().clone();
    let alice = RawUser::register(node.client_url(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(node.client_url(), "bob")
        .await
        .expect("bob");
    let whoami = bob
        .ok(M::GET, "/account/whoami", Value::Null)
        .await
        .expect("whoami");
    let bob_device = whoami["device_id"].as_str().expect("device_id").to_owned();
    let room_id = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.id()]}))
        .await
        .expect("room");
    let r = path_segment(&room_id);
    bob.post(&format!("/join/{r}"), json!({}))
        .await
        .expect("join");

    // A message: in the timeline, and counted unread.
    twice(&bob, &server).await;
    let sent = alice
        .ok(
            M::PUT,
            &format!("/rooms/{r}/send/m.room.message/t1"),
            json!({"msgtype": "m.text", "body": "hello bob"}),
        )
        .await
        .expect("send");
    let event_id = sent["event_id"].as_str().expect("event_id").to_owned();
    let s = twice(&bob, &server).await;
    assert!(
        timeline_has(&s, &room_id, |e| e["event_id"] == event_id.as_str()),
        "the new message: {s}"
    );
    assert_eq!(
        room(&s, &room_id)["unread_notifications"]["notification_count"],
        1,
        "{s}"
    );

    // A read receipt: the count drops, the receipt shows.
    bob.post(
        &format!("/rooms/{r}/receipt/m.read/{}", path_segment(&event_id)),
        json!({}),
    )
    .await
    .expect("receipt");
    let s = twice(&bob, &server).await;
    assert_eq!(
        room(&s, &room_id)["unread_notifications"]["notification_count"],
        0,
        "{s}"
    );
    assert!(
        s.to_string().contains("m.read"),
        "the receipt is in the answer: {s}"
    );

    // State: a room name.
    alice
        .ok(
            M::PUT,
            &format!("/rooms/{r}/state/m.room.name/"),
            json!({"name": "renamed"}),
        )
        .await
        .expect("name");
    let s = twice(&bob, &server).await;
    assert!(s.to_string().contains("renamed"), "the new name: {s}");

    // Typing (not persisted: rides on the typing serial).
    alice
        .ok(
            M::PUT,
            &format!("/rooms/{r}/typing/{}", path_segment(alice.id())),
            json!({"typing": true, "timeout": 30000}),
        )
        .await
        .expect("typing");
    let s = twice(&bob, &server).await;
    let ephemeral = room(&s, &room_id)["ephemeral"]["events"].to_string();
    assert!(ephemeral.contains(alice.id()), "alice types: {s}");
    alice
        .ok(
            M::PUT,
            &format!("/rooms/{r}/typing/{}", path_segment(alice.id())),
            json!({"typing": false}),
        )
        .await
        .expect("typing stops");
    let s = twice(&bob, &server).await;
    let ephemeral = room(&s, &room_id)["ephemeral"]["events"].to_string();
    assert!(!ephemeral.contains(alice.id()), "alice stopped: {s}");

    // A to-device message for bob's device.
    alice
        .ok(
            M::PUT,
            "/sendToDevice/m.test/td1",
            json!({"messages": {bob.id(): {bob_device.clone(): {"secret": 42}}}}),
        )
        .await
        .expect("to-device");
    let s = twice(&bob, &server).await;
    assert!(
        s["to_device"]["events"].to_string().contains("42"),
        "the to-device message: {s}"
    );

    // Global account data.
    bob.ok(
        M::PUT,
        &format!(
            "/user/{}/account_data/org.example.test",
            path_segment(bob.id())
        ),
        json!({"v": "fresh"}),
    )
    .await
    .expect("account data");
    let s = twice(&bob, &server).await;
    assert!(
        s["account_data"]["events"].to_string().contains("fresh"),
        "the account data: {s}"
    );

    // One-time keys: uploaded, then claimed by alice (a write without a new position).
    bob.post(
        "/keys/upload",
        json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k1", "signatures": {}}}}),
    )
    .await
    .expect("upload");
    let s = twice(&bob, &server).await;
    assert_eq!(
        s["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{s}"
    );
    alice
        .post(
            "/keys/claim",
            json!({"one_time_keys": {bob.id(): {bob_device.clone(): "signed_curve25519"}}}),
        )
        .await
        .expect("claim");
    let s = twice(&bob, &server).await;
    assert_ne!(
        s["device_one_time_keys_count"]["signed_curve25519"], 1,
        "{s}"
    );

    // Presence of someone bob shares a room with.
    alice
        .ok(
            M::PUT,
            &format!("/presence/{}/status", path_segment(alice.id())),
            json!({"presence": "unavailable", "status_msg": "lunch"}),
        )
        .await
        .expect("presence");
    let s = twice(&bob, &server).await;
    assert!(
        s["presence"]["events"].to_string().contains("lunch"),
        "alice's status: {s}"
    );

    // Another filter is another answer; both kept.
    let filtered = bob
        .ok(
            M::GET,
            &format!(
                "/sync?timeout=0&filter={}",
                path_segment(r#"{"room":{"timeline":{"limit":1}}}"#)
            ),
            Value::Null,
        )
        .await
        .expect("filtered sync");
    assert_eq!(
        room(&filtered, &room_id)["timeline"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "{filtered}"
    );
    assert_eq!(server.sync.initial.usage().0, 2);

    // Logout drops the device's answers.
    bob.post("/logout", json!({})).await.expect("logout");
    assert_eq!(server.sync.initial.usage().0, 0);
    drop(server);
    shutdown_node(node).await.expect("shutdown");
}
