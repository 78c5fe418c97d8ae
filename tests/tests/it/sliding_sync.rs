//! Simplified sliding sync (MSC4186): matrix-sdk-ui's `RoomListService` (the room list of
//! Element X) against a node, and raw HTTP for the wire details: ranges and counts,
//! recency order, filters, `required_state` with `$LAZY`/`$ME`/`*`, the to-device and
//! E2EE extensions, long-polling, and `M_UNKNOWN_POS`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use matrix_sdk::Client;
use matrix_sdk::latest_events::LatestEventValue;
use matrix_sdk::ruma::RoomId;
use matrix_sdk_ui::RoomListService;
use matrix_sdk_ui::eyeball_im::Vector;
use matrix_sdk_ui::room_list_service::RoomListItem;
use matrix_sdk_ui::room_list_service::filters::new_filter_non_left;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use warren_tests::{
    Session, WAIT, http_client, matrix_error, path_segment, register_client, register_raw,
    start_node, wait_until,
};

const PASSWORD: &str = "correct horse battery staple";
const SS_PATH: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

/// Transaction ids, unique within the test binary.
static TXN: AtomicU64 = AtomicU64::new(0);

struct Raw {
    http: reqwest::Client,
    base: String,
}

impl Raw {
    async fn call(&self, method: Method, path: &str, token: &str, body: Option<Value>) -> Value {
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
        let response = req
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status();
        let json: Value = response.json().await.expect("JSON body");
        assert_eq!(status, StatusCode::OK, "{method} {path}: {json}");
        json
    }

    async fn create_room(&self, s: &Session, body: Value) -> String {
        let r = self
            .call(Method::POST, "/createRoom", &s.access_token, Some(body))
            .await;
        r["room_id"].as_str().expect("room_id").to_owned()
    }

    async fn send(&self, s: &Session, room: &str, body: &str) -> String {
        let txn = format!("t{}", TXN.fetch_add(1, Ordering::Relaxed));
        let r = self
            .call(
                Method::PUT,
                &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
                &s.access_token,
                Some(json!({"msgtype": "m.text", "body": body})),
            )
            .await;
        r["event_id"].as_str().expect("event_id").to_owned()
    }

    async fn invite_and_join(&self, inviter: &Session, room: &str, who: &Session) {
        self.call(
            Method::POST,
            &format!("/rooms/{}/invite", path_segment(room)),
            &inviter.access_token,
            Some(json!({"user_id": who.user_id})),
        )
        .await;
        self.call(
            Method::POST,
            &format!("/rooms/{}/join", path_segment(room)),
            &who.access_token,
            Some(json!({})),
        )
        .await;
    }

    /// One sliding sync request: status and body.
    async fn ss_status(
        &self,
        s: &Session,
        pos: Option<&str>,
        timeout_ms: u64,
        body: &Value,
    ) -> (StatusCode, Value) {
        let mut url = format!("{}{SS_PATH}?timeout={timeout_ms}", self.base);
        if let Some(p) = pos {
            url.push_str(&format!("&pos={}", path_segment(p)));
        }
        let response = self
            .http
            .post(url)
            .bearer_auth(&s.access_token)
            .timeout(Duration::from_secs(60))
            .json(body)
            .send()
            .await
            .expect("sliding sync request");
        let status = response.status();
        (status, response.json().await.expect("JSON body"))
    }

    /// A sliding sync request that must succeed.
    async fn ss(&self, s: &Session, pos: Option<&str>, timeout_ms: u64, body: &Value) -> Value {
        let (status, json) = self.ss_status(s, pos, timeout_ms, body).await;
        assert_eq!(status, StatusCode::OK, "sliding sync: {json}");
        assert!(json["pos"].is_string(), "no pos: {json}");
        json
    }
}

async fn fixture(users: &[&str]) -> (tempfile::TempDir, warren_core::Node, Raw, Vec<Session>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let raw = Raw {
        http: http_client().expect("http"),
        base: node.client_url(),
    };
    let mut sessions = Vec::new();
    for u in users {
        sessions.push(
            register_raw(&raw.http, &raw.base, u, PASSWORD)
                .await
                .expect("register"),
        );
    }
    (dir, node, raw, sessions)
}

fn pos(r: &Value) -> String {
    r["pos"].as_str().expect("pos").to_owned()
}

fn rooms(r: &Value) -> Vec<String> {
    r["rooms"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default()
}

fn bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

/// `(type, state_key)` of a room's `required_state`, sorted.
fn state_keys(room: &Value) -> Vec<(String, String)> {
    let mut keys: Vec<(String, String)> = room["required_state"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    keys.sort();
    keys
}

#[tokio::test(flavor = "multi_thread")]
async fn versions_advertise_simplified_sliding_sync() {
    let (_dir, _node, raw, _) = fixture(&[]).await;
    let v: Value = raw
        .http
        .get(format!("{}/_matrix/client/versions", raw.base))
        .send()
        .await
        .expect("versions")
        .json()
        .await
        .expect("json");
    assert_eq!(
        v["unstable_features"]["org.matrix.simplified_msc3575"], true,
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn lists_have_counts_ranges_recency_order_and_filters() {
    let (_dir, _node, raw, s) = fixture(&["alice", "bob"]).await;
    let (alice, bob) = (&s[0], &s[1]);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            raw.create_room(alice, json!({"name": format!("R{i}")}))
                .await,
        );
    }
    // A message moves R1 above the rooms created after it.
    raw.send(alice, &ids[1], "bump R1").await;
    // Profile-style state does not move a room: a topic in R2.
    raw.call(
        Method::PUT,
        &format!("/rooms/{}/state/m.room.topic/", path_segment(&ids[2])),
        &alice.access_token,
        Some(json!({"topic": "not a bump"})),
    )
    .await;

    let req = json!({
        "conn_id": "list-test",
        "lists": {"all": {
            "ranges": [[0, 2]],
            "timeline_limit": 1,
            "required_state": [["m.room.name", ""]],
        }},
    });
    let r = raw.ss(alice, None, 0, &req).await;
    assert_eq!(r["lists"]["all"]["count"], 5, "{r}");
    let mut got = rooms(&r);
    got.sort();
    let mut want = vec![ids[1].clone(), ids[4].clone(), ids[3].clone()];
    want.sort();
    assert_eq!(got, want, "the three most recent rooms: {r}");
    let stamp = |id: &str| r["rooms"][id]["bump_stamp"].as_i64().expect("bump_stamp");
    assert!(stamp(&ids[1]) > stamp(&ids[4]) && stamp(&ids[4]) > stamp(&ids[3]));
    let r1 = &r["rooms"][&ids[1]];
    assert_eq!(r1["name"], "R1");
    assert_eq!(r1["initial"], true);
    assert_eq!(bodies(r1), vec!["bump R1"]);
    assert_eq!(r1["limited"], true, "R1 has more than one event");
    assert_eq!(r1["joined_count"], 1);
    assert_eq!(
        state_keys(r1),
        vec![("m.room.name".to_owned(), String::new())]
    );
    assert!(r1["prev_batch"].is_string());

    // Nothing new: an immediate answer with the counts and no rooms.
    let p = pos(&r);
    let r = raw.ss(alice, Some(&p), 0, &req).await;
    assert_eq!(r["lists"]["all"]["count"], 5);
    assert!(rooms(&r).is_empty(), "nothing changed: {r}");

    // A long-poll returns as soon as a message lands, with only what is new.
    let p = pos(&r);
    let started = Instant::now();
    let poll = {
        let raw = Raw {
            http: raw.http.clone(),
            base: raw.base.clone(),
        };
        let alice = alice.clone();
        let req = req.clone();
        tokio::spawn(async move { raw.ss(&alice, Some(&p), 30_000, &req).await })
    };
    raw.send(alice, &ids[4], "wake up").await;
    let r = poll.await.expect("poll task");
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "the long-poll was not woken"
    );
    assert_eq!(rooms(&r), vec![ids[4].clone()], "only R4 changed: {r}");
    let r4 = &r["rooms"][&ids[4]];
    assert_eq!(bodies(r4), vec!["wake up"], "{r}");
    assert_eq!(r4["num_live"], 1);
    assert!(r4.get("initial").is_none(), "R4 was sent before: {r}");

    // A message in R0 brings it into the range, new to the connection, and pushes R3
    // out (R3 is not re-sent).
    raw.send(alice, &ids[0], "R0 wakes").await;
    let r = raw.ss(alice, Some(&pos(&r)), 10_000, &req).await;
    assert_eq!(rooms(&r), vec![ids[0].clone()], "{r}");
    let r0 = &r["rooms"][&ids[0]];
    assert_eq!(r0["initial"], true);
    assert_eq!(r0["name"], "R0");
    assert_eq!(bodies(r0), vec!["R0 wakes"]);

    // Filters: an invite, and a direct chat.
    let dm = raw
        .create_room(bob, json!({"invite": [alice.user_id], "is_direct": true}))
        .await;
    raw.call(
        Method::PUT,
        &format!(
            "/user/{}/account_data/m.direct",
            path_segment(&alice.user_id)
        ),
        &alice.access_token,
        Some(json!({ bob.user_id.clone(): [ids[2]] })),
    )
    .await;
    let r = raw
        .ss(
            alice,
            None,
            0,
            &json!({"lists": {
                "invites": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_invite": true}},
                "dms": {"ranges": [[0, 9]], "timeline_limit": 0, "filters": {"is_dm": true}},
                "rooms": {"ranges": [[0, 9]], "timeline_limit": 0,
                          "filters": {"is_invite": false, "is_dm": false, "is_encrypted": false}},
            }}),
        )
        .await;
    assert_eq!(r["lists"]["invites"]["count"], 1, "{r}");
    assert_eq!(r["lists"]["dms"]["count"], 1, "{r}");
    assert_eq!(r["lists"]["rooms"]["count"], 4, "{r}");
    let invite = &r["rooms"][&dm];
    let invite_types: Vec<&str> = invite["invite_state"]
        .as_array()
        .expect("invite_state")
        .iter()
        .filter_map(|e| e["type"].as_str())
        .collect();
    assert!(invite_types.contains(&"m.room.member"), "{invite}");
    assert_eq!(r["rooms"][&ids[2]]["is_dm"], true);
}

#[tokio::test(flavor = "multi_thread")]
async fn required_state_lazy_me_and_wildcards() {
    let (_dir, _node, raw, s) = fixture(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&s[0], &s[1], &s[2]);
    let room = raw.create_room(alice, json!({"name": "Lazy"})).await;
    raw.invite_and_join(alice, &room, bob).await;
    raw.invite_and_join(alice, &room, carol).await;
    raw.send(bob, &room, "from bob").await;

    let member = |u: &Session| ("m.room.member".to_owned(), u.user_id.clone());
    let lazy_req = json!({
        "lists": {"l": {
            "ranges": [[0, 0]],
            "timeline_limit": 1,
            "required_state": [["m.room.member", "$LAZY"], ["m.room.create", ""]],
        }},
    });
    let r = raw.ss(alice, None, 0, &lazy_req).await;
    let keys = state_keys(&r["rooms"][&room]);
    assert!(
        keys.contains(&member(bob)),
        "bob sent the timeline event: {keys:?}"
    );
    assert!(keys.contains(&("m.room.create".to_owned(), String::new())));
    assert!(
        !keys.contains(&member(carol)),
        "carol sent nothing: {keys:?}"
    );

    // Carol speaks: her membership follows, bob's is not sent again.
    raw.send(carol, &room, "from carol").await;
    let r = raw.ss(alice, Some(&pos(&r)), 10_000, &lazy_req).await;
    let keys = state_keys(&r["rooms"][&room]);
    assert_eq!(bodies(&r["rooms"][&room]), vec!["from carol"]);
    assert!(keys.contains(&member(carol)), "{keys:?}");
    assert!(!keys.contains(&member(bob)), "{keys:?}");

    // `$ME` is the user's own membership only.
    let r = raw
        .ss(
            alice,
            None,
            0,
            &json!({"room_subscriptions": {room.clone(): {
                "timeline_limit": 0,
                "required_state": [["m.room.member", "$ME"]],
            }}}),
        )
        .await;
    assert_eq!(state_keys(&r["rooms"][&room]), vec![member(alice)]);

    // `*` state keys: every member; `["*", "*"]`: the whole state.
    let r = raw
        .ss(
            alice,
            None,
            0,
            &json!({"room_subscriptions": {room.clone(): {
                "timeline_limit": 0,
                "required_state": [["m.room.member", "*"]],
            }}}),
        )
        .await;
    let mut all = vec![member(alice), member(bob), member(carol)];
    all.sort();
    assert_eq!(state_keys(&r["rooms"][&room]), all);
    let r = raw
        .ss(
            alice,
            None,
            0,
            &json!({"room_subscriptions": {room.clone(): {
                "timeline_limit": 0,
                "required_state": [["*", "*"]],
            }}}),
        )
        .await;
    let keys = state_keys(&r["rooms"][&room]);
    for want in [
        ("m.room.create".to_owned(), String::new()),
        ("m.room.power_levels".to_owned(), String::new()),
        ("m.room.name".to_owned(), String::new()),
        member(carol),
    ] {
        assert!(keys.contains(&want), "{want:?} missing from {keys:?}");
    }

    // A subscription to a room the user is not in is ignored.
    let other = raw.create_room(bob, json!({})).await;
    let r = raw
        .ss(
            alice,
            None,
            0,
            &json!({"room_subscriptions": {other.clone(): {"timeline_limit": 5}}}),
        )
        .await;
    assert!(rooms(&r).is_empty(), "{r}");
}

#[tokio::test(flavor = "multi_thread")]
async fn to_device_and_e2ee_extensions() {
    let (_dir, _node, raw, s) = fixture(&["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&s[0], &s[1], &s[2]);
    let room = raw.create_room(alice, json!({})).await;
    raw.invite_and_join(alice, &room, bob).await;
    raw.call(
        Method::POST,
        "/keys/upload",
        &alice.access_token,
        Some(json!({"one_time_keys": {
            "signed_curve25519:AAA": {"key": "k1"},
            "signed_curve25519:AAB": {"key": "k2"},
        }})),
    )
    .await;
    let to_alice = |n: u32| json!({"messages": {alice.user_id.clone(): {"*": {"n": n}}}});
    raw.call(
        Method::PUT,
        "/sendToDevice/m.test/txn1",
        &bob.access_token,
        Some(to_alice(1)),
    )
    .await;

    let req = |since: Option<&str>| {
        let mut to_device = json!({"enabled": true});
        if let Some(s) = since {
            to_device["since"] = json!(s);
        }
        json!({"conn_id": "e2ee", "extensions": {"to_device": to_device, "e2ee": {"enabled": true}}})
    };
    let r = raw.ss(alice, None, 0, &req(None)).await;
    let td = &r["extensions"]["to_device"];
    let events = td["events"].as_array().expect("to_device events");
    assert_eq!(events.len(), 1, "{r}");
    assert_eq!(events[0]["type"], "m.test");
    assert_eq!(events[0]["sender"], bob.user_id.as_str());
    assert_eq!(events[0]["content"]["n"], 1);
    let next = td["next_batch"].as_str().expect("next_batch").to_owned();
    let e2ee = &r["extensions"]["e2ee"];
    assert_eq!(
        e2ee["device_one_time_keys_count"]["signed_curve25519"], 2,
        "{r}"
    );
    assert!(e2ee["device_unused_fallback_key_types"].is_array(), "{r}");

    // Not acknowledged yet: the same message again on a retry of the first request.
    let again = raw.ss(alice, None, 0, &req(None)).await;
    assert_eq!(
        again["extensions"]["to_device"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1)
    );

    // Carol joins a room alice is in: her device list is news to alice. A new message
    // arrives too; the acknowledged one does not come again.
    let p = pos(&again);
    raw.invite_and_join(alice, &room, carol).await;
    raw.call(
        Method::PUT,
        "/sendToDevice/m.test/txn2",
        &bob.access_token,
        Some(to_alice(2)),
    )
    .await;
    let r = raw.ss(alice, Some(&p), 10_000, &req(Some(&next))).await;
    let events = r["extensions"]["to_device"]["events"]
        .as_array()
        .expect("events");
    assert_eq!(events.len(), 1, "{r}");
    assert_eq!(events[0]["content"]["n"], 2);
    let changed = r["extensions"]["e2ee"]["device_lists"]["changed"]
        .as_array()
        .expect("changed");
    assert!(changed.iter().any(|u| u == carol.user_id.as_str()), "{r}");
    let next = r["extensions"]["to_device"]["next_batch"]
        .as_str()
        .expect("next_batch")
        .to_owned();

    // Acknowledging the second leaves nothing.
    let r = raw.ss(alice, Some(&pos(&r)), 0, &req(Some(&next))).await;
    assert_eq!(
        r["extensions"]["to_device"]["events"]
            .as_array()
            .map(Vec::len),
        Some(0),
        "{r}"
    );

    // A to-device message wakes a long-poll.
    let p = pos(&r);
    let poll = {
        let raw = Raw {
            http: raw.http.clone(),
            base: raw.base.clone(),
        };
        let alice = alice.clone();
        let body = req(Some(&next));
        tokio::spawn(async move { raw.ss(&alice, Some(&p), 30_000, &body).await })
    };
    raw.call(
        Method::PUT,
        "/sendToDevice/m.test/txn3",
        &bob.access_token,
        Some(to_alice(3)),
    )
    .await;
    let r = poll.await.expect("poll");
    let events = r["extensions"]["to_device"]["events"]
        .as_array()
        .expect("events");
    assert_eq!(events.len(), 1, "{r}");
    assert_eq!(events[0]["content"]["n"], 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_or_superseded_pos_is_m_unknown_pos() {
    let (_dir, _node, raw, s) = fixture(&["alice"]).await;
    let alice = &s[0];
    let req = |conn: &str| json!({"conn_id": conn, "lists": {"a": {"ranges": [[0, 5]], "timeline_limit": 1}}});
    let unknown = async |pos: &str, body: &Value| {
        let (status, json) = raw.ss_status(alice, Some(pos), 0, body).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
        assert_eq!(json["errcode"], "M_UNKNOWN_POS", "{json}");
        assert!(json["error"].is_string());
    };
    unknown("12345", &req("a")).await;
    unknown("not-a-number", &req("a")).await;

    let p1 = pos(&raw.ss(alice, None, 0, &req("a")).await);
    // A pos belongs to its connection.
    unknown(&p1, &req("b")).await;
    // Retrying a request (its response was lost) works, and so does the newer one.
    // However often it is retried.
    let mut answers = Vec::new();
    for _ in 0..5 {
        answers.push(pos(&raw.ss(alice, Some(&p1), 0, &req("a")).await));
    }
    assert!(answers.windows(2).all(|w| w[0] != w[1]), "{answers:?}");
    let p2 = answers.pop().expect("answers");
    let p3 = pos(&raw.ss(alice, Some(&p2), 0, &req("a")).await);
    // Using p2 acknowledged it: p1 is gone.
    unknown(&p1, &req("a")).await;
    raw.ss(alice, Some(&p3), 0, &req("a")).await;
    // Starting the connection again forgets its positions.
    raw.ss(alice, None, 0, &req("a")).await;
    unknown(&p3, &req("a")).await;

    // Bad input is a Matrix error.
    let response = raw
        .http
        .post(format!("{}{SS_PATH}", raw.base))
        .bearer_auth(&alice.access_token)
        .body(r#"{"lists": {"a": {"ranges": [[5, 1]]}}}"#)
        .send()
        .await
        .expect("request");
    let err = matrix_error(response).await.expect("matrix error");
    assert_eq!((err.status, err.errcode.as_str()), (400, "M_INVALID_PARAM"));
    let response = raw
        .http
        .post(format!("{}{SS_PATH}", raw.base))
        .bearer_auth(&alice.access_token)
        .body(r#"{"lists": 5}"#)
        .send()
        .await
        .expect("request");
    let err = matrix_error(response).await.expect("matrix error");
    assert_eq!((err.status, err.errcode.as_str()), (400, "M_BAD_JSON"));
}

// ---------------------------------------------------------------------------------------
// matrix-sdk-ui
// ---------------------------------------------------------------------------------------

/// The body of the room's latest event as the client computed it.
fn latest_body(client: &Client, room_id: &RoomId) -> Option<String> {
    let room = client.get_room(room_id)?;
    match room.latest_event() {
        LatestEventValue::Remote(ev) => {
            let json: Value = serde_json::from_str(ev.raw().json().get()).ok()?;
            json["content"]["body"].as_str().map(str::to_owned)
        }
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn room_list_service_lists_rooms_with_latest_messages() {
    let (_dir, node, raw, s) = fixture(&["bob"]).await;
    let bob = &s[0];
    let alice = register_client(&node.client_url(), "alice", PASSWORD)
        .await
        .expect("alice");
    let alice_session = Session {
        user_id: alice.user_id().expect("user id").to_string(),
        access_token: alice.access_token().expect("token"),
    };
    let older = raw
        .create_room(&alice_session, json!({"name": "Older"}))
        .await;
    let newer = raw
        .create_room(&alice_session, json!({"name": "Newer"}))
        .await;
    raw.invite_and_join(&alice_session, &older, bob).await;
    raw.invite_and_join(&alice_session, &newer, bob).await;
    raw.send(bob, &older, "hello in older").await;
    raw.send(bob, &newer, "hello in newer").await;

    let service = Arc::new(RoomListService::new(alice.clone()).await.expect("service"));
    let sync = {
        let service = service.clone();
        tokio::spawn(async move {
            let stream = service.sync();
            futures::pin_mut!(stream);
            while let Some(result) = stream.next().await {
                if let Err(e) = result {
                    return Err(format!("room list sync failed: {e}"));
                }
            }
            Ok(())
        })
    };

    let older_id = RoomId::parse(&older).expect("room id");
    let newer_id = RoomId::parse(&newer).expect("room id");
    wait_until(
        WAIT,
        "both rooms are listed with their latest message",
        async || {
            Ok(
                latest_body(&alice, &older_id).as_deref() == Some("hello in older")
                    && latest_body(&alice, &newer_id).as_deref() == Some("hello in newer"),
            )
        },
    )
    .await
    .expect("rooms listed");
    let name = |id: &RoomId| {
        alice
            .get_room(id)
            .and_then(|r| r.cached_display_name())
            .map(|n| n.to_string())
    };
    assert_eq!(name(&older_id).as_deref(), Some("Older"));
    assert_eq!(name(&newer_id).as_deref(), Some("Newer"));

    // The room list, as Element X shows it: most recent first.
    let all_rooms = service.all_rooms().await.expect("all rooms");
    let (entries, controller) = all_rooms.entries_with_dynamic_adapters(10);
    controller.set_filter(Box::new(new_filter_non_left()));
    futures::pin_mut!(entries);
    let mut list: Vector<RoomListItem> = Vector::new();
    let mut order = async |list: &mut Vector<RoomListItem>, want: &[&RoomId]| {
        wait_until(WAIT, "the room list is in recency order", async || {
            if let Ok(Some(diffs)) =
                tokio::time::timeout(Duration::from_millis(200), entries.next()).await
            {
                for d in diffs {
                    d.apply(list);
                }
            }
            let ids: Vec<String> = list
                .iter()
                .map(|r| r.clone().into_inner().room_id().to_string())
                .collect();
            Ok(ids == want.iter().map(|r| r.to_string()).collect::<Vec<_>>())
        })
        .await
    };
    order(&mut list, &[&newer_id, &older_id])
        .await
        .expect("newer room first");

    // A new message from bob in the older room: its latest event changes, it moves up.
    raw.send(bob, &older, "older is newest now").await;
    wait_until(
        WAIT,
        "the new message is the older room's latest event",
        async || Ok(latest_body(&alice, &older_id).as_deref() == Some("older is newest now")),
    )
    .await
    .expect("new message seen");
    order(&mut list, &[&older_id, &newer_id])
        .await
        .expect("older room moved to the top");

    service.stop_sync().expect("stop sync");
    let _ = tokio::time::timeout(WAIT, sync).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn receipts_typing_account_data_and_leaving() {
    let (_dir, _node, raw, s) = fixture(&["alice", "bob"]).await;
    let (alice, bob) = (&s[0], &s[1]);
    let room = raw.create_room(alice, json!({"name": "Ext"})).await;
    raw.invite_and_join(alice, &room, bob).await;
    let m1 = raw.send(bob, &room, "read me").await;
    let req = json!({
        "lists": {"all": {"ranges": [[0, 5]], "timeline_limit": 1}},
        "extensions": {
            "account_data": {"enabled": true},
            "receipts": {"enabled": true},
            "typing": {"enabled": true},
        },
    });
    let r = raw.ss(alice, None, 0, &req).await;
    let global = r["extensions"]["account_data"]["global"]
        .as_array()
        .expect("global account data");
    assert!(
        global.iter().any(|e| e["type"] == "m.push_rules"),
        "the push rules come with the first response: {r}"
    );

    raw.call(
        Method::POST,
        &format!(
            "/rooms/{}/receipt/m.read/{}",
            path_segment(&room),
            path_segment(&m1)
        ),
        &bob.access_token,
        Some(json!({})),
    )
    .await;
    raw.call(
        Method::PUT,
        &format!(
            "/rooms/{}/typing/{}",
            path_segment(&room),
            path_segment(&bob.user_id)
        ),
        &bob.access_token,
        Some(json!({"typing": true, "timeout": 30000})),
    )
    .await;
    raw.call(
        Method::PUT,
        &format!(
            "/user/{}/rooms/{}/account_data/org.example.room",
            path_segment(&alice.user_id),
            path_segment(&room)
        ),
        &alice.access_token,
        Some(json!({"n": 1})),
    )
    .await;
    raw.call(
        Method::PUT,
        &format!(
            "/user/{}/account_data/org.example.global",
            path_segment(&alice.user_id)
        ),
        &alice.access_token,
        Some(json!({"n": 2})),
    )
    .await;

    // Each long-poll returns with what arrived so far; keep going until all four were seen.
    let mut p = pos(&r);
    let (mut receipt, mut typing, mut room_data, mut global_data) = (false, false, false, false);
    wait_until(
        WAIT,
        "receipt, typing and account data arrive",
        async || {
            let r = raw.ss(alice, Some(&p), 5_000, &req).await;
            p = pos(&r);
            let ext = &r["extensions"];
            receipt |=
                ext["receipts"]["rooms"][&room]["content"][&m1]["m.read"][&bob.user_id]["ts"]
                    .is_i64();
            typing |= ext["typing"]["rooms"][&room]["content"]["user_ids"] == json!([bob.user_id]);
            room_data |= ext["account_data"]["rooms"][&room]
                .as_array()
                .is_some_and(|a| {
                    a.iter()
                        .any(|e| e["type"] == "org.example.room" && e["content"]["n"] == 1)
                });
            global_data |= ext["account_data"]["global"]
                .as_array()
                .is_some_and(|a| a.iter().any(|e| e["type"] == "org.example.global"));
            Ok(receipt && typing && room_data && global_data)
        },
    )
    .await
    .expect("extensions");

    // Leaving: the room comes once more, with the leave, then is gone from the list.
    raw.call(
        Method::POST,
        &format!("/rooms/{}/leave", path_segment(&room)),
        &alice.access_token,
        Some(json!({})),
    )
    .await;
    let r = raw.ss(alice, Some(&p), 10_000, &req).await;
    assert_eq!(r["lists"]["all"]["count"], 0, "{r}");
    let left = &r["rooms"][&room];
    let leave = left["timeline"]
        .as_array()
        .expect("timeline")
        .iter()
        .chain(left["required_state"].as_array().expect("required_state"))
        .any(|e| {
            e["type"] == "m.room.member"
                && e["state_key"] == alice.user_id.as_str()
                && e["content"]["membership"] == "leave"
        });
    assert!(leave, "the leave is sent: {r}");
    let r = raw.ss(alice, Some(&pos(&r)), 0, &req).await;
    assert!(rooms(&r).is_empty(), "{r}");
}

/// Element X's whole sync: `SyncService` runs the room list and, on its own connection,
/// the encryption sync (to-device and E2EE extensions). Bob uses only that; alice uses
/// `/sync` v3. Bob sees the invite, joins, and decrypts what alice sends: the room key
/// reached him over the to-device extension, his keys went up and his device list
/// reached alice.
#[tokio::test(flavor = "multi_thread")]
async fn sync_service_receives_invites_and_decrypts_messages() {
    use matrix_sdk::RoomState;
    use matrix_sdk::config::SyncSettings;
    use matrix_sdk::ruma::api::client::room::create_room::v3::{
        Request as CreateRoomRequest, RoomPreset,
    };
    use matrix_sdk::ruma::events::InitialStateEvent;
    use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
    use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
    use matrix_sdk_ui::sync_service::SyncService;

    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = register_client(&url, "alice", PASSWORD)
        .await
        .expect("alice");
    let bob = register_client(&url, "bob", PASSWORD).await.expect("bob");
    let bob_id = bob.user_id().expect("bob").to_owned();
    let bob_device = bob.device_id().expect("bob's device").to_owned();
    let short = SyncSettings::default().timeout(Duration::from_millis(500));
    alice
        .sync_once(short.clone())
        .await
        .expect("alice's first sync");

    let sync_service = SyncService::builder(bob.clone())
        .build()
        .await
        .expect("sync service");
    sync_service.start().await;

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob_id.clone()];
    create.name = Some("Secret".to_owned());
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let alice_room = alice.create_room(create).await.expect("create room");
    let room_id = alice_room.room_id().to_owned();

    wait_until(WAIT, "bob's room list has the invite", async || {
        Ok(bob
            .get_room(&room_id)
            .is_some_and(|r| r.state() == RoomState::Invited))
    })
    .await
    .expect("invite");
    bob.join_room_by_id(&room_id).await.expect("bob joins");
    wait_until(WAIT, "bob's room list has the room as joined", async || {
        Ok(bob
            .get_room(&room_id)
            .is_some_and(|r| r.state() == RoomState::Joined))
    })
    .await
    .expect("joined");

    // Bob's keys were uploaded by the encryption sync; alice fetches them.
    wait_until(WAIT, "alice knows bob's device", async || {
        alice.sync_once(short.clone()).await?;
        Ok(alice
            .encryption()
            .get_device(&bob_id, &bob_device)
            .await?
            .is_some())
    })
    .await
    .expect("bob's device");
    let event_id = alice_room
        .send(RoomMessageEventContent::text_plain("meet at the old mill"))
        .await
        .expect("send")
        .response
        .event_id;

    let room_id_ref: &RoomId = &room_id;
    wait_until(WAIT, "bob decrypts alice's message", async || {
        let room = bob.get_room(room_id_ref).expect("room");
        let event = room.event(&event_id, None).await?;
        if event.encryption_info().is_none() {
            return Ok(false);
        }
        let json: Value = serde_json::from_str(event.raw().json().get())?;
        Ok(json["content"]["body"] == "meet at the old mill")
    })
    .await
    .expect("decrypted");

    sync_service.stop().await;
    drop(node);
}
