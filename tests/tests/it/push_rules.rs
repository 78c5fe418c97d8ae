//! Push rules against a real node: unread counts in `/sync` follow the (server-default
//! and user-changed) push rules, read receipts reset them, `GET /notifications` lists
//! them; the `/pushrules` API and pushers over raw HTTP.
//!
//! Each test starts its own node on its own temporary directory.

use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::events::Mentions;
use matrix_sdk::ruma::events::receipt::ReceiptThread;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use matrix_sdk::sync::SyncResponse;
use matrix_sdk::{Client, Room};
use reqwest::StatusCode;
use serde_json::{Value, json};
use warren_tests::{
    WAIT, http_client, matrix_error, path_segment, register_client, register_raw, shutdown_node,
    start_node, sync_until,
};

/// Alice and Bob joined to a room Alice created (three members when `carol` is set, so
/// the one-to-one rules do not apply).
struct Room2 {
    alice: Client,
    bob: Client,
    alice_room: Room,
    bob_room: Room,
    room_id: OwnedRoomId,
}

async fn alice_and_bob(url: &str) -> Room2 {
    let alice = register_client(url, "alice", "pw alice")
        .await
        .expect("alice");
    let bob = register_client(url, "bob", "pw bob").await.expect("bob");
    let bob_id = bob.user_id().expect("bob id").to_owned();
    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob_id];
    let alice_room = alice.create_room(create).await.expect("create room");
    let room_id = alice_room.room_id().to_owned();
    let bob_room = bob.join_room_by_id(&room_id).await.expect("bob joins");
    sync_until(&bob, WAIT, "bob's sync shows the room", |r| {
        Ok(r.rooms.joined.contains_key(&room_id))
    })
    .await
    .expect("bob syncs the room");
    Room2 {
        alice,
        bob,
        alice_room,
        bob_room,
        room_id,
    }
}

fn counts(response: &SyncResponse, room_id: &RoomId) -> Option<(u64, u64)> {
    response.rooms.joined.get(room_id).map(|r| {
        (
            r.unread_notifications.notification_count,
            r.unread_notifications.highlight_count,
        )
    })
}

/// Syncs `client` until the room's (notification, highlight) counts are `want`.
async fn counts_become(client: &Client, room_id: &RoomId, want: (u64, u64), what: &str) {
    sync_until(client, WAIT, what, |r| Ok(counts(r, room_id) == Some(want)))
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
}

async fn send(room: &Room, content: RoomMessageEventContent) -> OwnedEventId {
    room.send(content).await.expect("send").response.event_id
}

fn token(client: &Client) -> String {
    client.access_token().expect("logged in")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mentions_highlight_messages_notify_and_receipts_reset() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let Room2 {
        alice,
        bob,
        alice_room,
        bob_room,
        room_id,
    } = alice_and_bob(&url).await;
    let bob_id = bob.user_id().expect("bob id").to_owned();

    // A plain message notifies without highlighting.
    send(
        &alice_room,
        RoomMessageEventContent::text_plain("lunch at noon?"),
    )
    .await;
    counts_become(&bob, &room_id, (1, 0), "a plain message counts once").await;

    // A mention (m.mentions, as the spec's `.m.rule.is_user_mention` wants) highlights.
    let mention = RoomMessageEventContent::text_plain("see above, Bob")
        .add_mentions(Mentions::with_user_ids([bob_id.clone()]));
    let mention_id = send(&alice_room, mention).await;
    counts_become(&bob, &room_id, (2, 1), "a mention highlights").await;

    // Alice's own messages never count for her.
    sync_until(&alice, WAIT, "alice sees her messages", |r| {
        Ok(counts(r, &room_id).is_some())
    })
    .await
    .expect("alice syncs");
    let http = http_client().expect("http");
    let alice_sync: Value = http
        .get(format!("{url}/_matrix/client/v3/sync"))
        .bearer_auth(token(&alice))
        .send()
        .await
        .expect("alice /sync")
        .json()
        .await
        .expect("sync JSON");
    assert_eq!(
        alice_sync["rooms"]["join"][room_id.as_str()]["unread_notifications"],
        json!({"notification_count": 0, "highlight_count": 0})
    );

    // GET /notifications lists both, newest first, the mention with a highlight tweak.
    let list: Value = http
        .get(format!("{url}/_matrix/client/v3/notifications"))
        .bearer_auth(token(&bob))
        .send()
        .await
        .expect("GET /notifications")
        .json()
        .await
        .expect("notifications JSON");
    let items = list["notifications"].as_array().expect("array");
    assert_eq!(items.len(), 2, "{list}");
    assert_eq!(items[0]["event"]["event_id"], mention_id.as_str());
    assert_eq!(items[0]["room_id"], room_id.as_str());
    assert_eq!(items[0]["read"], false);
    assert!(
        items[0]["actions"]
            .as_array()
            .is_some_and(|a| a.contains(&json!({"set_tweak": "highlight"}))),
        "{}",
        items[0]["actions"]
    );
    let highlights: Value = http
        .get(format!(
            "{url}/_matrix/client/v3/notifications?only=highlight"
        ))
        .bearer_auth(token(&bob))
        .send()
        .await
        .expect("GET /notifications?only=highlight")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        highlights["notifications"].as_array().map(Vec::len),
        Some(1)
    );

    // A read receipt on the newest event resets both counts.
    bob_room
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, mention_id)
        .await
        .expect("receipt");
    counts_become(&bob, &room_id, (0, 0), "the receipt resets the counts").await;

    // Counting starts again after the receipt.
    send(&alice_room, RoomMessageEventContent::text_plain("one more")).await;
    counts_become(&bob, &room_id, (1, 0), "a new message counts again").await;
    let list: Value = http
        .get(format!("{url}/_matrix/client/v3/notifications?limit=2"))
        .bearer_auth(token(&bob))
        .send()
        .await
        .expect("GET /notifications")
        .json()
        .await
        .expect("JSON");
    assert_eq!(list["notifications"][0]["read"], false, "{list}");
    assert_eq!(list["notifications"][1]["read"], true, "{list}");
    let next = list["next_token"]
        .as_str()
        .expect("a next_token")
        .to_owned();
    let rest: Value = http
        .get(format!("{url}/_matrix/client/v3/notifications?from={next}"))
        .bearer_auth(token(&bob))
        .send()
        .await
        .expect("GET /notifications page 2")
        .json()
        .await
        .expect("JSON");
    assert_eq!(
        rest["notifications"].as_array().map(Vec::len),
        Some(1),
        "{rest}"
    );

    // Without m.mentions, the legacy rule on the user name still highlights (spec v1.11).
    send(
        &alice_room,
        RoomMessageEventContent::text_plain("bob, are you there?"),
    )
    .await;
    counts_become(
        &bob,
        &room_id,
        (2, 1),
        "the user name in the body highlights",
    )
    .await;

    // @room highlights when the sender has the power for it (alice created the room)...
    let room_mention =
        RoomMessageEventContent::text_plain("lunch!").add_mentions(Mentions::with_room_mention());
    send(&alice_room, room_mention).await;
    counts_become(&bob, &room_id, (3, 2), "alice's room mention highlights").await;
    send(
        &alice_room,
        RoomMessageEventContent::text_plain("@room really"),
    )
    .await;
    counts_become(
        &bob,
        &room_id,
        (4, 3),
        "the legacy @room rule highlights too",
    )
    .await;
    // ...and only notifies when the sender lacks it (bob has power 0, @room needs 50).
    send(
        &bob_room,
        RoomMessageEventContent::text_plain("@room me too"),
    )
    .await;
    counts_become(&alice, &room_id, (1, 0), "bob's @room does not highlight").await;
    shutdown_node(node).await.expect("shutdown");
}

/// `GET /notifications` as bob, as JSON.
async fn notifications_page(url: &str, bob: &Client, query: &str) -> Value {
    http_client()
        .expect("http")
        .get(format!("{url}/_matrix/client/v3/notifications{query}"))
        .bearer_auth(token(bob))
        .send()
        .await
        .expect("GET /notifications")
        .json()
        .await
        .expect("notifications JSON")
}

/// A read receipt keeps the notifications it covers (marked read; only the room's cap
/// drops them): `/sync` counts stay those after the receipt, and `GET /notifications`
/// pages what is kept, newest first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_mark_notifications_read_and_counts_stay_right() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let Room2 {
        bob,
        alice_room,
        bob_room,
        room_id,
        ..
    } = alice_and_bob(&url).await;
    let bob_id = bob.user_id().expect("bob id").to_owned();
    let mention = RoomMessageEventContent::text_plain("a word for Bob")
        .add_mentions(Mentions::with_user_ids([bob_id]));
    let mention_id = send(&alice_room, mention).await;
    let mut plain = Vec::new();
    for i in 0..24 {
        plain.push(
            send(
                &alice_room,
                RoomMessageEventContent::text_plain(format!("note {i}")),
            )
            .await,
        );
    }
    counts_become(&bob, &room_id, (25, 1), "every message counts").await;

    // Bob reads up to the 20th plain message: four remain unread.
    bob_room
        .send_single_receipt(
            ReceiptType::Read,
            ReceiptThread::Unthreaded,
            plain[19].clone(),
        )
        .await
        .expect("receipt");
    counts_become(&bob, &room_id, (4, 0), "the receipt leaves four").await;

    // Kept: the four unread, the twenty read ones, and the mention.
    let first = notifications_page(&url, &bob, "?limit=10").await;
    let items = first["notifications"].as_array().expect("array");
    assert_eq!(items.len(), 10, "{first}");
    assert_eq!(items[0]["event"]["event_id"], plain[23].as_str());
    assert_eq!(items[3]["read"], false, "{first}");
    assert_eq!(items[4]["read"], true, "{first}");
    let next = first["next_token"].as_str().expect("a next_token");
    let rest = notifications_page(&url, &bob, &format!("?from={next}")).await;
    let rest = rest["notifications"].as_array().expect("array");
    assert_eq!(rest.len(), 15, "{rest:?}");
    assert_eq!(rest[13]["event"]["event_id"], plain[0].as_str());
    assert_eq!(rest[14]["event"]["event_id"], mention_id.as_str());
    let highlights = notifications_page(&url, &bob, "?only=highlight").await;
    assert_eq!(highlights["notifications"][0]["read"], true, "{highlights}");
    assert_eq!(
        highlights["notifications"].as_array().map(Vec::len),
        Some(1),
        "{highlights}"
    );

    // Reading everything clears the counts; new messages count from there.
    bob_room
        .send_single_receipt(
            ReceiptType::Read,
            ReceiptThread::Unthreaded,
            plain[23].clone(),
        )
        .await
        .expect("receipt");
    counts_become(&bob, &room_id, (0, 0), "all read").await;
    send(&alice_room, RoomMessageEventContent::text_plain("later")).await;
    counts_become(&bob, &room_id, (1, 0), "a new message counts").await;
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_rules_change_what_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let Room2 {
        bob,
        alice_room,
        room_id,
        ..
    } = alice_and_bob(&url).await;
    let bob_id = bob.user_id().expect("bob id").to_owned();
    let http = http_client().expect("http");

    // Bob mutes the room with a room rule without actions...
    let rule = format!(
        "{url}/_matrix/client/v3/pushrules/global/room/{}",
        path_segment(room_id.as_str())
    );
    let response = http
        .put(&rule)
        .bearer_auth(token(&bob))
        .json(&json!({"actions": []}))
        .send()
        .await
        .expect("PUT room rule");
    assert_eq!(response.status(), StatusCode::OK);

    // ...so a plain message no longer counts, but a mention (an override rule) still does.
    send(
        &alice_room,
        RoomMessageEventContent::text_plain("muted chatter"),
    )
    .await;
    let mention = RoomMessageEventContent::text_plain("but you, Bob")
        .add_mentions(Mentions::with_user_ids([bob_id]));
    send(&alice_room, mention).await;
    counts_become(
        &bob,
        &room_id,
        (1, 1),
        "only the mention counts in a muted room",
    )
    .await;

    // The change is account data bob's client sees.
    let rules = bob
        .account()
        .account_data::<matrix_sdk::ruma::events::push_rules::PushRulesEventContent>()
        .await
        .expect("account data")
        .expect("m.push_rules present")
        .deserialize()
        .expect("valid push rules");
    assert!(
        rules.global.room.iter().any(|r| r.rule_id == room_id),
        "the room rule is in bob's m.push_rules"
    );
    shutdown_node(node).await.expect("shutdown");
}

async fn expect_error(response: reqwest::Response, status: u16, errcode: &str) {
    let err = matrix_error(response).await.expect("a Matrix error");
    assert_eq!(
        (err.status, err.errcode.as_str()),
        (status, errcode),
        "{}",
        err.body
    );
}

fn rule_ids(ruleset: &Value, kind: &str) -> Vec<String> {
    ruleset[kind]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["rule_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushrules_api() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let base = node.client_url();
    let http = http_client().expect("http");
    let bob = register_raw(&http, &base, "bob", "pw bob")
        .await
        .expect("bob");
    let url = |path: &str| format!("{base}/_matrix/client/v3/pushrules{path}");
    let get = async |path: &str| {
        http.get(url(path))
            .bearer_auth(&bob.access_token)
            .send()
            .await
            .expect("GET")
    };
    let put = async |path: &str, body: Value| {
        http.put(url(path))
            .bearer_auth(&bob.access_token)
            .json(&body)
            .send()
            .await
            .expect("PUT")
    };

    // The spec's default ruleset.
    let all: Value = get("/").await.json().await.expect("JSON");
    let global = &all["global"];
    let overrides = rule_ids(global, "override");
    for id in [
        ".m.rule.master",
        ".m.rule.suppress_notices",
        ".m.rule.invite_for_me",
        ".m.rule.member_event",
        ".m.rule.is_user_mention",
        ".m.rule.contains_display_name",
        ".m.rule.is_room_mention",
        ".m.rule.roomnotif",
        ".m.rule.tombstone",
        ".m.rule.reaction",
    ] {
        assert!(
            overrides.iter().any(|o| o == id),
            "{id} missing: {overrides:?}"
        );
    }
    assert_eq!(overrides[0], ".m.rule.master");
    assert_eq!(rule_ids(global, "content"), [".m.rule.contains_user_name"]);
    let underrides = rule_ids(global, "underride");
    for id in [
        ".m.rule.call",
        ".m.rule.encrypted_room_one_to_one",
        ".m.rule.room_one_to_one",
        ".m.rule.message",
        ".m.rule.encrypted",
    ] {
        assert!(
            underrides.iter().any(|u| u == id),
            "{id} missing: {underrides:?}"
        );
    }
    let master: Value = get("/global/override/.m.rule.master")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(master["enabled"], false, "{master}");
    let global_only: Value = get("/global/").await.json().await.expect("JSON");
    assert_eq!(&global_only, global);

    // Add two rules, the second placed before the first.
    let rule = json!({
        "conditions": [{"kind": "event_match", "key": "content.body", "pattern": "deploy*"}],
        "actions": ["notify", {"set_tweak": "sound", "value": "default"}],
    });
    assert_eq!(
        put("/global/override/deploys", rule.clone()).await.status(),
        StatusCode::OK
    );
    let response = http
        .put(url("/global/override/first?before=deploys"))
        .bearer_auth(&bob.access_token)
        .json(&json!({"actions": ["notify"]}))
        .send()
        .await
        .expect("PUT before");
    assert_eq!(response.status(), StatusCode::OK);
    let global: Value = get("/global/").await.json().await.expect("JSON");
    let overrides = rule_ids(&global, "override");
    assert_eq!(
        &overrides[..3],
        [".m.rule.master", "first", "deploys"],
        "{overrides:?}"
    );
    let stored: Value = get("/global/override/deploys")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(stored["rule_id"], "deploys");
    assert_eq!(stored["conditions"], rule["conditions"]);
    assert_eq!(stored["actions"], rule["actions"]);
    assert_eq!(stored["default"], false);

    // enabled and actions.
    assert_eq!(
        put(
            "/global/override/deploys/enabled",
            json!({"enabled": false})
        )
        .await
        .status(),
        StatusCode::OK
    );
    let enabled: Value = get("/global/override/deploys/enabled")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(enabled, json!({"enabled": false}));
    assert_eq!(
        put(
            "/global/underride/.m.rule.message/actions",
            json!({"actions": []})
        )
        .await
        .status(),
        StatusCode::OK
    );
    let actions: Value = get("/global/underride/.m.rule.message/actions")
        .await
        .json()
        .await
        .expect("JSON");
    assert_eq!(actions, json!({"actions": []}));

    // The same rules are bob's m.push_rules account data.
    let account_data: Value = http
        .get(format!(
            "{base}/_matrix/client/v3/user/{}/account_data/m.push_rules",
            path_segment(&bob.user_id)
        ))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("GET account data")
        .json()
        .await
        .expect("JSON");
    let all: Value = get("/").await.json().await.expect("JSON");
    assert_eq!(account_data, all);

    // Delete.
    let response = http
        .delete(url("/global/override/deploys"))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(response.status(), StatusCode::OK);
    expect_error(get("/global/override/deploys").await, 404, "M_NOT_FOUND").await;

    // Bad requests.
    let delete_default = http
        .delete(url("/global/underride/.m.rule.message"))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("DELETE default");
    expect_error(delete_default, 400, "M_INVALID_PARAM").await;
    expect_error(
        put("/global/override/.mine", json!({"actions": []})).await,
        400,
        "M_INVALID_PARAM",
    )
    .await;
    expect_error(
        put("/device/override/x", json!({"actions": []})).await,
        400,
        "M_INVALID_PARAM",
    )
    .await;
    expect_error(
        put("/global/sideways/x", json!({"actions": []})).await,
        400,
        "M_INVALID_PARAM",
    )
    .await;
    expect_error(
        put("/global/content/x", json!({"actions": []})).await,
        400,
        "M_MISSING_PARAM",
    )
    .await;
    expect_error(
        put("/global/override/x", json!({})).await,
        400,
        "M_MISSING_PARAM",
    )
    .await;
    expect_error(
        put("/global/override/x", json!({"actions": "notify"})).await,
        400,
        "M_BAD_JSON",
    )
    .await;
    expect_error(
        put("/global/sender/not-a-user", json!({"actions": []})).await,
        400,
        "M_INVALID_PARAM",
    )
    .await;
    let unknown_before = http
        .put(url("/global/override/x?before=nope"))
        .bearer_auth(&bob.access_token)
        .json(&json!({"actions": []}))
        .send()
        .await
        .expect("PUT");
    expect_error(unknown_before, 404, "M_NOT_FOUND").await;
    expect_error(
        get("/global/override/nope/enabled").await,
        404,
        "M_NOT_FOUND",
    )
    .await;
    let direct = http
        .put(format!(
            "{base}/_matrix/client/v3/user/{}/account_data/m.push_rules",
            path_segment(&bob.user_id)
        ))
        .bearer_auth(&bob.access_token)
        .json(&json!({"global": {}}))
        .send()
        .await
        .expect("PUT account data");
    expect_error(direct, 405, "M_BAD_JSON").await;
    expect_error(
        http.get(url("/")).send().await.expect("GET without token"),
        401,
        "M_MISSING_TOKEN",
    )
    .await;
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushers_are_stored() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let base = node.client_url();
    let http = http_client().expect("http");
    let bob = register_raw(&http, &base, "bob", "pw bob")
        .await
        .expect("bob");
    let set = async |body: Value| {
        http.post(format!("{base}/_matrix/client/v3/pushers/set"))
            .bearer_auth(&bob.access_token)
            .json(&body)
            .send()
            .await
            .expect("POST /pushers/set")
    };
    let list = async || -> Value {
        http.get(format!("{base}/_matrix/client/v3/pushers"))
            .bearer_auth(&bob.access_token)
            .send()
            .await
            .expect("GET /pushers")
            .json()
            .await
            .expect("JSON")
    };
    let pusher = json!({
        "app_id": "org.example.app",
        "pushkey": "device-token-1",
        "kind": "http",
        "app_display_name": "Example",
        "device_display_name": "Phone",
        "lang": "en",
        "data": {"url": "https://push.example.org/_matrix/push/v1/notify", "format": "event_id_only"},
    });
    assert_eq!(set(pusher.clone()).await.status(), StatusCode::OK);
    let pushers = list().await;
    assert_eq!(pushers["pushers"], json!([pusher]), "{pushers}");

    let mut bad = pusher.clone();
    bad["data"]["url"] = json!("https://push.example.org/elsewhere");
    expect_error(set(bad).await, 400, "M_INVALID_PARAM").await;
    let mut bad = pusher.clone();
    bad["kind"] = json!("carrier-pigeon");
    expect_error(set(bad).await, 400, "M_INVALID_PARAM").await;
    let mut bad = pusher.clone();
    bad.as_object_mut().expect("object").remove("app_id");
    expect_error(set(bad).await, 400, "M_MISSING_PARAM").await;

    let delete = json!({"app_id": "org.example.app", "pushkey": "device-token-1", "kind": null});
    assert_eq!(set(delete).await.status(), StatusCode::OK);
    assert_eq!(list().await["pushers"], json!([]));
    shutdown_node(node).await.expect("shutdown");
}
