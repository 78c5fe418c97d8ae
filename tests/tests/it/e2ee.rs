//! End-to-end encryption against one node.
//!
//! Real clients (matrix-sdk 0.18, in-memory stores): two users in an encrypted room, one
//! decrypts what the other sends, a second device of the receiver decrypts later messages;
//! cross-signing bootstrap and reset (UIAA with the password); key backup.
//!
//! Raw HTTP: bad key uploads and to-device floods get clean 400s, one-time and fallback
//! keys are claimed as the spec says, to-device messages are delivered once and are gone
//! after the acknowledging sync, key backup versions and the replacement rule.
//!
//! Every wait is a sync or a poll until a condition holds, with a deadline.

use std::time::Duration;

use anyhow::Context as _;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::encryption::CrossSigningResetAuthType;
use matrix_sdk::ruma::api::client::backup::get_latest_backup_info;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{DeviceId, EventId, OwnedEventId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use reqwest::{Method as M, StatusCode};
use serde_json::{Value, json};
use warren_tests::{
    Session, WAIT, http_client, login_client, matrix_error, message_body, path_segment, raw_json,
    register_client, register_raw, shutdown_node, start_node, sync_until, wait_until,
};

const ALICE_PASSWORD: &str = "alice: correct horse battery staple";
const BOB_PASSWORD: &str = "bob: Tr0ub4dor&3";

/// One short long-poll: answers at once when there is news, so waiting on a condition
/// with it is quick, and idles at most this long otherwise.
const SHORT_POLL: Duration = Duration::from_millis(500);

async fn sync_once(client: &Client) -> anyhow::Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(SHORT_POLL))
        .await
        .context("sync_once")?;
    Ok(())
}

/// Syncs `client` until its crypto store knows `user_id`'s device `device_id` (its keys
/// were fetched with `/keys/query` after a device-list change).
async fn wait_for_device(client: &Client, user_id: &UserId, device_id: &DeviceId) {
    wait_until(
        WAIT,
        &format!("the client knows {user_id}'s device {device_id}"),
        async || {
            sync_once(client).await?;
            Ok(client
                .encryption()
                .get_device(user_id, device_id)
                .await?
                .is_some())
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

/// The body of `event_id` as `room`'s client decrypts it, or `None` while it cannot.
async fn decrypted_body(room: &Room, event_id: &EventId) -> anyhow::Result<Option<String>> {
    let event = room.event(event_id, None).await.context("GET /event")?;
    if event.encryption_info().is_none() {
        return Ok(None);
    }
    Ok(message_body(&raw_json(event.raw())?).map(str::to_owned))
}

/// Syncs `client` (to receive room keys over to-device) until it decrypts `event_id`.
async fn wait_decrypts(client: &Client, room_id: &RoomId, event_id: &EventId, body: &str) {
    let who = client
        .device_id()
        .map(|d| d.to_string())
        .unwrap_or_default();
    wait_until(
        WAIT,
        &format!("device {who} decrypts {event_id} as {body:?}"),
        async || {
            sync_once(client).await?;
            let room = client.get_room(room_id).context("room unknown")?;
            Ok(decrypted_body(&room, event_id).await?.as_deref() == Some(body))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
}

async fn send_text(room: &Room, body: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap_or_else(|err| panic!("sending {body:?} failed: {err}"))
        .response
        .event_id
}

fn password_auth(localpart: &str, password: &str, session: Option<String>) -> uiaa::AuthData {
    let mut auth = uiaa::Password::new(
        uiaa::UserIdentifier::Matrix(uiaa::MatrixUserIdentifier::new(localpart.to_owned())),
        password.to_owned(),
    );
    auth.session = session;
    uiaa::AuthData::Password(auth)
}

#[tokio::test(flavor = "multi_thread")]
async fn encrypted_room_messages_decrypt_on_every_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = register_client(&url, "alice", ALICE_PASSWORD)
        .await
        .expect("register alice");
    let bob = register_client(&url, "bob", BOB_PASSWORD)
        .await
        .expect("register bob");
    let bob_id = bob.user_id().expect("bob logged in").to_owned();
    let bob_device = bob.device_id().expect("bob's device").to_owned();
    // First syncs upload each device's keys.
    sync_once(&alice).await.expect("alice's first sync");
    sync_once(&bob).await.expect("bob's first sync");

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob_id.clone()];
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let alice_room = alice
        .create_room(create)
        .await
        .expect("alice creates an encrypted room");
    let room_id = alice_room.room_id().to_owned();
    sync_until(&bob, WAIT, "bob sees the invite", |r| {
        Ok(r.rooms.invited.contains_key(&room_id))
    })
    .await
    .expect("invite");
    bob.join_room_by_id(&room_id).await.expect("bob joins");

    // Bob's join puts him in alice's device_lists.changed; her client fetches his keys.
    wait_for_device(&alice, &bob_id, &bob_device).await;
    let first = send_text(&alice_room, "the eagle lands at dawn").await;

    // What the server stored is ciphertext.
    let stored = raw_json(
        &alice
            .send(
                matrix_sdk::ruma::api::client::room::get_room_event::v3::Request::new(
                    room_id.clone(),
                    first.clone(),
                ),
            )
            .await
            .expect("GET /event")
            .event,
    )
    .expect("event JSON");
    assert_eq!(stored["type"], "m.room.encrypted", "{stored}");
    assert!(
        !stored.to_string().contains("eagle"),
        "plaintext on the server: {stored}"
    );

    wait_decrypts(&bob, &room_id, &first, "the eagle lands at dawn").await;

    // A second device of bob: alice learns of it from a device-list change, and shares
    // the room key with it when she next sends.
    let bob2 = login_client(&url, "bob", BOB_PASSWORD)
        .await
        .expect("bob logs in again");
    let bob2_device = bob2.device_id().expect("second device").to_owned();
    assert_ne!(bob2_device, bob_device);
    sync_once(&bob2).await.expect("bob2's first sync");
    wait_for_device(&alice, &bob_id, &bob2_device).await;
    let second = send_text(&alice_room, "the owl flies at midnight").await;
    wait_decrypts(&bob2, &room_id, &second, "the owl flies at midnight").await;
    wait_decrypts(&bob, &room_id, &second, "the owl flies at midnight").await;

    drop((alice_room, alice, bob, bob2));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn cross_signing_bootstrap_reset_and_key_backup() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = register_client(&url, "alice", ALICE_PASSWORD)
        .await
        .expect("register alice");
    let alice_id = alice.user_id().expect("logged in").to_owned();
    sync_once(&alice).await.expect("first sync");

    // First upload: no UIAA needed (spec v1.11).
    alice
        .encryption()
        .bootstrap_cross_signing(None)
        .await
        .expect("first cross-signing upload");
    let status = alice
        .encryption()
        .cross_signing_status()
        .await
        .expect("status");
    assert!(status.is_complete(), "{status:?}");
    // The self-signing key's signature on the device went up with
    // /keys/signatures/upload; /keys/query serves it merged into the device keys.
    wait_until(
        WAIT,
        "alice's device comes back from /keys/query cross-signed",
        async || {
            sync_once(&alice).await?;
            let identity = alice.encryption().get_user_identity(&alice_id).await?;
            let device = alice.encryption().get_own_device().await?;
            Ok(identity.is_some() && device.is_some_and(|d| d.is_cross_signed_by_owner()))
        },
    )
    .await
    .expect("cross-signed device");

    // Replacing the keys needs the password.
    let handle = alice
        .encryption()
        .reset_cross_signing()
        .await
        .expect("reset request")
        .expect("the server asks for authentication");
    let CrossSigningResetAuthType::Uiaa(info) = handle.auth_type() else {
        panic!("expected UIAA");
    };
    assert!(
        info.flows
            .iter()
            .any(|f| f.stages == vec![uiaa::AuthType::Password]),
        "password flow offered"
    );
    let session = info.session.clone();
    handle
        .auth(Some(password_auth("alice", ALICE_PASSWORD, session)))
        .await
        .expect("reset with the password");

    // Key backup: create a version; the server answers it as the current one.
    let backups = alice.encryption().backups();
    backups.create().await.expect("create a backup");
    let latest = alice
        .send(get_latest_backup_info::v3::Request::new())
        .await
        .expect("GET /room_keys/version");
    assert_eq!(latest.count, 0u32.into());
    assert!(
        backups.fetch_exists_on_server().await.expect("exists"),
        "backup exists"
    );

    // A room key alice makes is uploaded to the backup (PUT /room_keys/keys).
    let mut create = CreateRoomRequest::new();
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let room = alice.create_room(create).await.expect("encrypted room");
    sync_once(&alice).await.expect("sync");
    send_text(&room, "backed up").await;
    tokio::time::timeout(
        WAIT,
        backups
            .wait_for_steady_state()
            .with_delay(Duration::from_millis(10)),
    )
    .await
    .expect("backup upload finishes in time")
    .expect("backup upload succeeds");
    let latest = alice
        .send(get_latest_backup_info::v3::Request::new())
        .await
        .expect("GET /room_keys/version");
    assert!(
        latest.count >= 1u32.into(),
        "keys in the backup: {}",
        latest.count
    );

    drop((backups, room, alice));
    shutdown_node(node).await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self
            .http
            .request(
                method.clone(),
                format!("{}/_matrix/client/v3{path}", self.base),
            )
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// A call that must succeed; returns the JSON body.
    async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> Value {
        let response = self.call(method.clone(), path, token, body).await;
        let status = response.status();
        let json: Value = response.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::OK, "{method} {path}: {json}");
        json
    }

    /// A call that must fail with `status` and `errcode`.
    async fn err(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
        status: u16,
        errcode: &str,
    ) -> Value {
        let response = self.call(method.clone(), path, token, body).await;
        let err = matrix_error(response)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e:#}"));
        assert_eq!(
            (err.status, err.errcode.as_str()),
            (status, errcode),
            "{method} {path}: {}",
            err.body
        );
        err.body
    }

    async fn device_id(&self, s: &Session) -> String {
        let me = self
            .ok(
                reqwest::Method::GET,
                "/account/whoami",
                &s.access_token,
                None,
            )
            .await;
        me["device_id"].as_str().expect("device_id").to_owned()
    }

    async fn sync(&self, s: &Session, since: Option<&str>) -> Value {
        let path = match since {
            Some(t) => format!("/sync?timeout=0&since={}", path_segment(t)),
            None => "/sync?timeout=0".to_owned(),
        };
        self.ok(reqwest::Method::GET, &path, &s.access_token, None)
            .await
    }
}

async fn raw_fixture() -> (tempfile::TempDir, warren_core::Node, Raw, Session, Session) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let raw = Raw {
        http: http_client().expect("http"),
        base: node.client_url(),
    };
    let alice = register_raw(&raw.http, &raw.base, "alice", ALICE_PASSWORD)
        .await
        .expect("alice");
    let bob = register_raw(&raw.http, &raw.base, "bob", BOB_PASSWORD)
        .await
        .expect("bob");
    (dir, node, raw, alice, bob)
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_key_uploads_are_rejected() {
    let (_dir, node, raw, alice, bob) = raw_fixture().await;
    let device = raw.device_id(&alice).await;
    let t = &alice.access_token;
    let keys = |user: &str, device: &str| {
        json!({"device_keys": {
            "user_id": user, "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": {format!("ed25519:{device}"): "x", format!("curve25519:{device}"): "y"},
            "signatures": {},
        }})
    };
    raw.err(
        M::POST,
        "/keys/upload",
        t,
        Some(keys(&bob.user_id, &device)),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    raw.err(
        M::POST,
        "/keys/upload",
        t,
        Some(keys(&alice.user_id, "OTHER")),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    // Right owner, but not signed by its own key.
    raw.err(
        M::POST,
        "/keys/upload",
        t,
        Some(keys(&alice.user_id, &device)),
        400,
        "M_INVALID_SIGNATURE",
    )
    .await;

    for (what, otks) in [
        ("a list", json!(["signed_curve25519:AAA"])),
        ("no algorithm", json!({"AAAA": {"key": "k"}})),
        ("a number", json!({"signed_curve25519:AAA": 5})),
        (
            "no key",
            json!({"signed_curve25519:AAA": {"signatures": {}}}),
        ),
        (
            "bad signatures",
            json!({"signed_curve25519:AAA": {"key": "k", "signatures": {"@a:x": 1}}}),
        ),
    ] {
        let body = raw
            .err(
                M::POST,
                "/keys/upload",
                t,
                Some(json!({"one_time_keys": otks})),
                400,
                "M_BAD_JSON",
            )
            .await;
        assert!(body["error"].is_string(), "{what}: {body}");
    }
    // The same key id with other content is refused; the same key again is harmless.
    let otk = json!({"one_time_keys": {"signed_curve25519:AAA": {"key": "k1"}}});
    raw.ok(M::POST, "/keys/upload", t, Some(otk.clone())).await;
    let again = raw.ok(M::POST, "/keys/upload", t, Some(otk)).await;
    assert_eq!(again["one_time_key_counts"]["signed_curve25519"], 1);
    raw.err(
        M::POST,
        "/keys/upload",
        t,
        Some(json!({"one_time_keys": {"signed_curve25519:AAA": {"key": "k2"}}})),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    // Cross-signing keys of someone else, or without a master key.
    let ssk = json!({"self_signing_key": {"user_id": alice.user_id, "usage": ["self_signing"],
        "keys": {"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}});
    raw.err(
        M::POST,
        "/keys/device_signing/upload",
        t,
        Some(ssk),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    let master = json!({"master_key": {"user_id": bob.user_id, "usage": ["master"],
        "keys": {"ed25519:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}}});
    raw.err(
        M::POST,
        "/keys/device_signing/upload",
        t,
        Some(master),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    // Signatures on keys that do not exist are reported per key, not as a request error.
    let sigs = json!({alice.user_id.clone(): {"NOPE": {"user_id": alice.user_id, "signatures": {}}},
                      "@carol:elsewhere": {"X": {"user_id": "@carol:elsewhere"}}});
    let answer = raw
        .ok(M::POST, "/keys/signatures/upload", t, Some(sigs))
        .await;
    assert_eq!(
        answer["failures"][&alice.user_id]["NOPE"]["errcode"], "M_INVALID_SIGNATURE",
        "{answer}"
    );
    assert_eq!(
        answer["failures"]["@carol:elsewhere"]["X"]["errcode"], "M_INVALID_SIGNATURE",
        "{answer}"
    );
    let not_object = json!({alice.user_id.clone(): {"NOPE": "text"}});
    raw.err(
        M::POST,
        "/keys/signatures/upload",
        t,
        Some(not_object),
        400,
        "M_BAD_JSON",
    )
    .await;
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_time_keys_are_claimed_once_then_the_fallback_key() {
    let (_dir, node, raw, alice, bob) = raw_fixture().await;
    let device = raw.device_id(&alice).await;
    let upload = json!({
        "one_time_keys": {"signed_curve25519:AAAA": {"key": "one"}},
        "fallback_keys": {"signed_curve25519:FFFF": {"key": "fallback", "fallback": true}},
    });
    let counts = raw
        .ok(M::POST, "/keys/upload", &alice.access_token, Some(upload))
        .await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], 1);
    let synced = raw.sync(&alice, None).await;
    assert_eq!(synced["device_one_time_keys_count"]["signed_curve25519"], 1);
    assert_eq!(
        synced["device_unused_fallback_key_types"],
        json!(["signed_curve25519"])
    );

    let claim =
        json!({"one_time_keys": {alice.user_id.clone(): {device.clone(): "signed_curve25519"}}});
    let first = raw
        .ok(
            M::POST,
            "/keys/claim",
            &bob.access_token,
            Some(claim.clone()),
        )
        .await;
    assert_eq!(
        first["one_time_keys"][&alice.user_id][&device]["signed_curve25519:AAAA"]["key"], "one",
        "{first}"
    );
    for _ in 0..2 {
        let next = raw
            .ok(
                M::POST,
                "/keys/claim",
                &bob.access_token,
                Some(claim.clone()),
            )
            .await;
        assert_eq!(
            next["one_time_keys"][&alice.user_id][&device]["signed_curve25519:FFFF"]["key"],
            "fallback",
            "{next}"
        );
    }
    let synced = raw.sync(&alice, None).await;
    assert_eq!(
        synced["device_one_time_keys_count"],
        json!({"signed_curve25519": 0})
    );
    assert_eq!(synced["device_unused_fallback_key_types"], json!([]));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn to_device_messages_are_delivered_once_and_floods_refused() {
    let (_dir, node, raw, alice, bob) = raw_fixture().await;
    let bob_device = raw.device_id(&bob).await;
    let first = raw.sync(&bob, None).await;
    let since = first["next_batch"].as_str().expect("next_batch").to_owned();

    let message = json!({"messages": {bob.user_id.clone(): {bob_device.clone(): {"secret": 1}}}});
    raw.ok(
        M::PUT,
        "/sendToDevice/m.test/txn1",
        &alice.access_token,
        Some(message.clone()),
    )
    .await;
    // A retry of the same transaction is not delivered twice.
    raw.ok(
        M::PUT,
        "/sendToDevice/m.test/txn1",
        &alice.access_token,
        Some(message),
    )
    .await;
    let star = json!({"messages": {bob.user_id.clone(): {"*": {"secret": 2}}}});
    raw.ok(
        M::PUT,
        "/sendToDevice/m.test/txn2",
        &alice.access_token,
        Some(star),
    )
    .await;

    let delivered = raw.sync(&bob, Some(&since)).await;
    let events = delivered["to_device"]["events"].as_array().expect("events");
    assert_eq!(
        events,
        &vec![
            json!({"sender": alice.user_id, "type": "m.test", "content": {"secret": 1}}),
            json!({"sender": alice.user_id, "type": "m.test", "content": {"secret": 2}}),
        ],
        "in order, once: {delivered}"
    );
    // Until acknowledged, a retried sync gets them again...
    let retried = raw.sync(&bob, Some(&since)).await;
    assert_eq!(
        retried["to_device"]["events"],
        delivered["to_device"]["events"]
    );
    // ...and once the next sync acknowledges them they are gone, even for old tokens.
    let next = delivered["next_batch"].as_str().expect("next_batch");
    let after = raw.sync(&bob, Some(next)).await;
    assert_eq!(after["to_device"]["events"], json!([]));
    let stale = raw.sync(&bob, Some(&since)).await;
    assert_eq!(stale["to_device"]["events"], json!([]));

    // Floods and garbage get clean 400s.
    let flood: serde_json::Map<String, Value> = (0..1001)
        .map(|i| (format!("DEVICE{i}"), json!({"n": i})))
        .collect();
    let flood = json!({"messages": {bob.user_id.clone(): flood}});
    raw.err(
        M::PUT,
        "/sendToDevice/m.test/flood",
        &alice.access_token,
        Some(flood),
        400,
        "M_INVALID_PARAM",
    )
    .await;
    let not_object = json!({"messages": {bob.user_id.clone(): {bob_device.clone(): "text"}}});
    raw.err(
        M::PUT,
        "/sendToDevice/m.test/bad",
        &alice.access_token,
        Some(not_object),
        400,
        "M_BAD_JSON",
    )
    .await;
    raw.err(
        M::PUT,
        "/sendToDevice/m.test/none",
        &alice.access_token,
        Some(json!({})),
        400,
        "M_MISSING_PARAM",
    )
    .await;
    let nothing = raw.sync(&bob, Some(next)).await;
    assert_eq!(nothing["to_device"]["events"], json!([]));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn to_device_delivery_is_capped_per_sync() {
    let (_dir, node, raw, alice, bob) = raw_fixture().await;
    let bob_device = raw.device_id(&bob).await;
    for batch in 0..3 {
        let messages: serde_json::Map<String, Value> = [(
            bob.user_id.clone(),
            json!({bob_device.clone(): {"batch": batch}}),
        )]
        .into_iter()
        .collect();
        // 3 requests × 50 messages: one message each to the same device, repeated.
        for i in 0..50 {
            raw.ok(
                M::PUT,
                &format!("/sendToDevice/m.test/b{batch}-{i}"),
                &alice.access_token,
                Some(json!({"messages": messages})),
            )
            .await;
        }
    }
    let mut since: Option<String> = None;
    let mut received = 0;
    let mut rounds = 0;
    while received < 150 {
        rounds += 1;
        assert!(rounds <= 3, "150 messages take two syncs, not {rounds}");
        let r = raw.sync(&bob, since.as_deref()).await;
        let n = r["to_device"]["events"].as_array().map_or(0, Vec::len);
        assert!(n <= 100, "at most 100 per sync, got {n}");
        received += n;
        since = r["next_batch"].as_str().map(str::to_owned);
    }
    assert_eq!(received, 150, "every message arrives exactly once");
    let r = raw.sync(&bob, since.as_deref()).await;
    assert_eq!(r["to_device"]["events"], json!([]));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn key_backup_versions_and_replacement() {
    let (_dir, node, raw, alice, _bob) = raw_fixture().await;
    let t = &alice.access_token;
    raw.err(M::GET, "/room_keys/version", t, None, 404, "M_NOT_FOUND")
        .await;
    let alg = "m.megolm_backup.v1.curve25519-aes-sha2";
    let v1 = raw
        .ok(
            M::POST,
            "/room_keys/version",
            t,
            Some(json!({"algorithm": alg, "auth_data": {"public_key": "a"}})),
        )
        .await;
    let v1 = v1["version"].as_str().expect("version").to_owned();
    let v2 = raw
        .ok(
            M::POST,
            "/room_keys/version",
            t,
            Some(json!({"algorithm": alg, "auth_data": {"public_key": "b"}})),
        )
        .await;
    let v2 = v2["version"].as_str().expect("version").to_owned();
    let current = raw.ok(M::GET, "/room_keys/version", t, None).await;
    assert_eq!(current["version"], v2.as_str());
    assert_eq!(current["auth_data"], json!({"public_key": "b"}));

    let key = |fmi: u32, fwd: u32, verified: bool, tag: &str| {
        json!({"first_message_index": fmi, "forwarded_count": fwd, "is_verified": verified,
               "session_data": {"tag": tag}})
    };
    let room = path_segment("!room:example");
    let path = |v: &str| format!("/room_keys/keys/{room}/sess1?version={v}");
    let wrong = raw
        .err(
            M::PUT,
            &path(&v1),
            t,
            Some(key(0, 0, false, "x")),
            403,
            "M_WRONG_ROOM_KEYS_VERSION",
        )
        .await;
    assert_eq!(wrong["current_version"], v2.as_str());
    raw.err(
        M::PUT,
        &path("99"),
        t,
        Some(key(0, 0, false, "x")),
        404,
        "M_NOT_FOUND",
    )
    .await;
    raw.err(
        M::PUT,
        &path(&v2),
        t,
        Some(json!({"first_message_index": -1})),
        400,
        "M_BAD_JSON",
    )
    .await;

    let put = raw
        .ok(M::PUT, &path(&v2), t, Some(key(5, 1, false, "first")))
        .await;
    assert_eq!(put["count"], 1);
    let etag = put["etag"].clone();
    // A worse key does not replace it (and the etag stays); a verified one does.
    let worse = raw
        .ok(M::PUT, &path(&v2), t, Some(key(9, 0, false, "worse")))
        .await;
    assert_eq!(worse["etag"], etag);
    raw.ok(M::PUT, &path(&v2), t, Some(key(9, 0, true, "verified")))
        .await;
    let got = raw.ok(M::GET, &path(&v2), t, None).await;
    assert_eq!(got["session_data"]["tag"], "verified");
    let all = raw
        .ok(M::GET, &format!("/room_keys/keys?version={v2}"), t, None)
        .await;
    assert_eq!(
        all["rooms"]["!room:example"]["sessions"]["sess1"]["is_verified"],
        true
    );
    let info = raw
        .ok(M::GET, &format!("/room_keys/version/{v2}"), t, None)
        .await;
    assert_eq!(info["count"], 1);
    assert_ne!(info["etag"], etag);

    raw.err(M::GET, "/room_keys/keys", t, None, 400, "M_MISSING_PARAM")
        .await;
    let deleted = raw
        .ok(M::DELETE, &format!("/room_keys/keys?version={v2}"), t, None)
        .await;
    assert_eq!(deleted["count"], 0);
    raw.ok(M::DELETE, &format!("/room_keys/version/{v2}"), t, None)
        .await;
    raw.err(
        M::GET,
        &format!("/room_keys/version/{v2}"),
        t,
        None,
        404,
        "M_NOT_FOUND",
    )
    .await;
    // v1 is current again.
    let current = raw.ok(M::GET, "/room_keys/version", t, None).await;
    assert_eq!(current["version"], v1.as_str());
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn device_list_changes_follow_shared_rooms() {
    let (_dir, node, raw, alice, bob) = raw_fixture().await;
    let start = raw.sync(&alice, None).await["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let room = raw
        .ok(
            M::POST,
            "/createRoom",
            &alice.access_token,
            Some(json!({"preset": "private_chat", "invite": [bob.user_id]})),
        )
        .await["room_id"]
        .as_str()
        .expect("room_id")
        .to_owned();
    let room_path = path_segment(&room);
    raw.ok(
        M::POST,
        &format!("/rooms/{room_path}/join"),
        &bob.access_token,
        Some(json!({})),
    )
    .await;
    // Bob newly shares a room with alice: he is in `changed`.
    let joined = raw.sync(&alice, Some(&start)).await;
    assert_eq!(
        joined["device_lists"]["changed"],
        json!([bob.user_id]),
        "{joined}"
    );
    let t1 = joined["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    // A new device of bob that goes away again is a device-list change.
    let login = raw
        .http
        .post(format!("{}/_matrix/client/v3/login", raw.base))
        .json(&json!({"type": "m.login.password", "user": "bob", "password": BOB_PASSWORD}))
        .send()
        .await
        .expect("login");
    let login: Value = login.json().await.expect("login JSON");
    let token = login["access_token"].as_str().expect("token");
    raw.ok(M::POST, "/logout", token, Some(json!({}))).await;
    let changed = raw.sync(&alice, Some(&t1)).await;
    assert_eq!(
        changed["device_lists"]["changed"],
        json!([bob.user_id]),
        "{changed}"
    );
    let t2 = changed["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();
    let keys_changes = raw
        .ok(
            M::GET,
            &format!(
                "/keys/changes?from={}&to={}",
                path_segment(&t1),
                path_segment(&t2)
            ),
            &alice.access_token,
            None,
        )
        .await;
    assert_eq!(keys_changes, json!({"changed": [bob.user_id], "left": []}));
    let quiet = raw
        .ok(
            M::GET,
            &format!(
                "/keys/changes?from={}&to={}",
                path_segment(&t2),
                path_segment(&t2)
            ),
            &alice.access_token,
            None,
        )
        .await;
    assert_eq!(quiet, json!({"changed": [], "left": []}));

    // Bob leaves the only shared room: he is in `left`.
    raw.ok(
        M::POST,
        &format!("/rooms/{room_path}/leave"),
        &bob.access_token,
        Some(json!({})),
    )
    .await;
    let left = raw.sync(&alice, Some(&t2)).await;
    assert_eq!(left["device_lists"]["left"], json!([bob.user_id]), "{left}");
    assert_eq!(left["device_lists"]["changed"], json!([]), "{left}");
    raw.err(
        M::GET,
        "/keys/changes?from=nonsense&to=s1",
        &alice.access_token,
        None,
        400,
        "M_INVALID_PARAM",
    )
    .await;
    shutdown_node(node).await.expect("shutdown");
}
