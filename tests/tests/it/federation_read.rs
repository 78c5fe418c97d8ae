//! The read-only server-server endpoints between two real nodes over libp2p: B sends
//! signed requests to A about A's rooms, users and directory.
//!
//! Rooms do not span nodes yet, so B's server is "in" a room of A only where the test
//! puts it there: by a world-readable room (which any server may read), or by appending
//! a join for `@bob:<B>` on A directly (a stand-in for a federated join).

use bytes::Bytes;
use http::Method;
use serde_json::{Value, json};
use warren_core::events::NewEvent;
use warren_core::federation::client::{self, encode};
use warren_tests::*;

use crate::federation_mesh::signed_device_keys;

/// A signed federation request from `from` to `to`: the status and the JSON body.
async fn fed(
    from: &FederatedNode,
    to: &FederatedNode,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<(u16, Value)> {
    let resp: http::Response<Bytes> =
        client::request(from.node.server(), &to.name(), method, path, body.as_ref()).await?;
    let status = resp.status().as_u16();
    Ok((
        status,
        serde_json::from_slice(resp.body()).unwrap_or(Value::Null),
    ))
}

/// A signed federation request that must succeed.
async fn fed_ok(
    from: &FederatedNode,
    to: &FederatedNode,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    Ok(client::request_json(from.node.server(), &to.name(), method, path, body.as_ref()).await?)
}

/// A client API call that must answer 200.
async fn api(
    http: &reqwest::Client,
    node: &FederatedNode,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = format!("{}/_matrix/client/v3{path}", node.node.client_url());
    let mut req = http.request(method.clone(), &url).bearer_auth(token);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req.send().await?;
    let status = resp.status();
    let v: Value = resp.json().await?;
    anyhow::ensure!(status == 200, "{method} {path}: {status} {v}");
    Ok(v)
}

async fn send_text(
    http: &reqwest::Client,
    node: &FederatedNode,
    token: &str,
    room: &str,
    body: &str,
) -> anyhow::Result<String> {
    let v = api(
        http,
        node,
        token,
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/{body}", encode(room)),
        Some(json!({"msgtype": "m.text", "body": body})),
    )
    .await?;
    Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
}

fn pdu_ids(v: &Value, field: &str) -> Vec<String> {
    v[field]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn bodies(pdus: &Value) -> Vec<String> {
    pdus.as_array()
        .map(|a| {
            a.iter()
                .map(|p| {
                    p["content"]["body"]
                        .as_str()
                        .unwrap_or(p["type"].as_str().unwrap_or(""))
                        .to_owned()
                })
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_reads_are_authorised_and_shaped() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let http = http_client()?;
    let alice = register_raw(&http, &a.node.client_url(), "alice", "secret-password").await?;
    let t = &alice.access_token;
    let post = reqwest::Method::POST;

    // A public room with shared history: B has nobody in it.
    let shared = api(
        &http,
        &a,
        t,
        post.clone(),
        "/createRoom",
        Some(json!({"preset": "public_chat"})),
    )
    .await?["room_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let secret = send_text(&http, &a, t, &shared, "secret").await?;
    let r = encode(&shared);
    let forbidden = [
        (
            Method::GET,
            format!("/_matrix/federation/v1/event/{}", encode(&secret)),
            None,
        ),
        (
            Method::GET,
            format!(
                "/_matrix/federation/v1/state_ids/{r}?event_id={}",
                encode(&secret)
            ),
            None,
        ),
        (
            Method::GET,
            format!(
                "/_matrix/federation/v1/state/{r}?event_id={}",
                encode(&secret)
            ),
            None,
        ),
        (
            Method::GET,
            format!("/_matrix/federation/v1/event_auth/{r}/{}", encode(&secret)),
            None,
        ),
        (
            Method::GET,
            format!(
                "/_matrix/federation/v1/backfill/{r}?v={}&limit=10",
                encode(&secret)
            ),
            None,
        ),
        (
            Method::POST,
            format!("/_matrix/federation/v1/get_missing_events/{r}"),
            Some(json!({"earliest_events": [], "latest_events": [secret], "limit": 10})),
        ),
    ];
    for (method, path, body) in &forbidden {
        let (status, v) = fed(&b, &a, method.clone(), path, body.clone()).await?;
        assert_eq!(
            (status, v["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{path}: {v}"
        );
    }

    // Bad input.
    let bad = [
        (
            "/_matrix/federation/v1/event/not-an-event-id".to_owned(),
            400,
            "M_INVALID_PARAM",
        ),
        (
            "/_matrix/federation/v1/event/%24unknown".to_owned(),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!(
                "/_matrix/federation/v1/state_ids/{}?event_id={}",
                encode(&format!("!nowhere:{}", a.name())),
                encode(&secret)
            ),
            404,
            "M_NOT_FOUND",
        ),
        (
            format!("/_matrix/federation/v1/state_ids/{r}"),
            400,
            "M_MISSING_PARAM",
        ),
        (
            format!(
                "/_matrix/federation/v1/state_ids/not-a-room?event_id={}",
                encode(&secret)
            ),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!("/_matrix/federation/v1/backfill/{r}?limit=5"),
            400,
            "M_MISSING_PARAM",
        ),
        (
            format!(
                "/_matrix/federation/v1/backfill/{r}?v={}&limit=many",
                encode(&secret)
            ),
            400,
            "M_INVALID_PARAM",
        ),
        (
            format!(
                "/_matrix/federation/v1/backfill/{r}?v={}&limit=-1",
                encode(&secret)
            ),
            400,
            "M_INVALID_PARAM",
        ),
    ];
    for (path, status, errcode) in &bad {
        let (got, v) = fed(&b, &a, Method::GET, path, None).await?;
        assert_eq!(
            (got, v["errcode"].as_str()),
            (*status, Some(*errcode)),
            "{path}: {v}"
        );
    }
    let (status, v) = fed(
        &b,
        &a,
        Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{r}"),
        Some(json!({"latest_events": "nope"})),
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );

    // A world-readable room: any server may read it.
    let open = api(
        &http,
        &a,
        t,
        post.clone(),
        "/createRoom",
        Some(json!({
            "preset": "public_chat",
            "name": "Open",
            "initial_state": [{"type": "m.room.history_visibility", "content": {"history_visibility": "world_readable"}}],
        })),
    )
    .await?["room_id"]
    .as_str()
    .unwrap_or_default()
    .to_owned();
    let o = encode(&open);
    let mut m = Vec::new();
    for i in 1..=4 {
        m.push(send_text(&http, &a, t, &open, &format!("m{i}")).await?);
    }

    let got = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/event/{}", encode(&m[3])),
        None,
    )
    .await?;
    assert_eq!(got["origin"], a.name());
    assert!(got["origin_server_ts"].as_i64().is_some_and(|ts| ts > 0));
    assert_eq!(got["pdus"].as_array().map(Vec::len), Some(1), "{got}");
    let pdu = &got["pdus"][0];
    assert_eq!(pdu["content"]["body"], "m4");
    assert_eq!(pdu["room_id"], open);
    assert!(
        pdu["signatures"][a.name()]["ed25519:p2p"].is_string(),
        "signed PDU: {pdu}"
    );
    assert!(pdu["hashes"]["sha256"].is_string() && pdu["prev_events"].is_array());

    // State before m4: everything set up at creation, but not m4 itself.
    let ids = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/state_ids/{o}?event_id={}",
            encode(&m[3])
        ),
        None,
    )
    .await?;
    let state_ids = pdu_ids(&ids, "pdu_ids");
    let chain_ids = pdu_ids(&ids, "auth_chain_ids");
    let full = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/state/{o}?event_id={}",
            encode(&m[3])
        ),
        None,
    )
    .await?;
    let state = full["pdus"].as_array().cloned().unwrap_or_default();
    let types: Vec<&str> = state.iter().filter_map(|p| p["type"].as_str()).collect();
    for ty in [
        "m.room.create",
        "m.room.member",
        "m.room.power_levels",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.name",
    ] {
        assert!(types.contains(&ty), "{ty} missing from {types:?}");
    }
    assert_eq!(state.len(), state_ids.len());
    assert!(!state_ids.contains(&m[3]));
    assert_eq!(
        full["auth_chain"].as_array().map(Vec::len),
        Some(chain_ids.len())
    );
    // Auth chain: the creator's join and the power levels authorise the rest (v12: the
    // create event is implied by the room id and is not an auth event).
    let state_id_of = |ty: &str| {
        state
            .iter()
            .position(|p| p["type"] == ty)
            .map(|i| state_ids[i].clone())
            .unwrap_or_default()
    };
    assert!(
        chain_ids.contains(&state_id_of("m.room.member")),
        "{chain_ids:?}"
    );
    assert!(chain_ids.contains(&state_id_of("m.room.power_levels")));

    let auth = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/event_auth/{o}/{}", encode(&m[3])),
        None,
    )
    .await?;
    let auth_types: Vec<&str> = auth["auth_chain"]
        .as_array()
        .map(|a| a.iter().filter_map(|p| p["type"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        auth_types.contains(&"m.room.power_levels") && auth_types.contains(&"m.room.member"),
        "{auth_types:?}"
    );
    assert!(!auth_types.contains(&"m.room.message"));

    // Backfill: the given event first, then its ancestors, deepest first, within limit.
    let back = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/backfill/{o}?v={}&limit=3",
            encode(&m[3])
        ),
        None,
    )
    .await?;
    assert_eq!(bodies(&back["pdus"]), vec!["m4", "m3", "m2"]);
    assert_eq!(back["origin"], a.name());
    let all = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/backfill/{o}?v={}&limit=1000000",
            encode(&m[3])
        ),
        None,
    )
    .await?;
    let all = all["pdus"].as_array().cloned().unwrap_or_default();
    assert!(all.len() > 4 && all.len() <= 100, "{}", all.len());
    assert!(
        all.windows(2)
            .all(|w| w[0]["depth"].as_i64() > w[1]["depth"].as_i64())
    );
    assert_eq!(
        all.last().map(|p| p["type"].clone()),
        Some(json!("m.room.create"))
    );
    let (status, v) = fed(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/backfill/{o}?v=%24unknown&limit=5"),
        None,
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );

    // get_missing_events between m1 and m4: m2 and m3, oldest first.
    let missing = fed_ok(
        &b,
        &a,
        Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{o}"),
        Some(json!({"earliest_events": [m[0]], "latest_events": [m[3]], "limit": 10, "min_depth": 0})),
    )
    .await?;
    assert_eq!(bodies(&missing["events"]), vec!["m2", "m3"]);
    let capped = fed_ok(
        &b,
        &a,
        Method::POST,
        &format!("/_matrix/federation/v1/get_missing_events/{o}"),
        Some(json!({"earliest_events": [], "latest_events": [m[3]], "limit": 5000})),
    )
    .await?;
    let n = capped["events"].as_array().map_or(0, Vec::len);
    assert!(n > 3 && n <= 20, "{n}");

    // Put B's server in the shared room (a join for @bob:B, appended on A): now B may
    // read it, in full.
    let server = a.node.server();
    let bob = format!("@bob:{}", b.name());
    server.write(|tx| {
        warren_core::rooms::append_event(
            tx,
            server,
            &shared,
            NewEvent {
                kind: "m.room.member".into(),
                state_key: Some(bob.clone()),
                content: json!({"membership": "join"}),
                sender: bob.clone(),
                redacts: None,
            },
            None,
        )
    })?;
    let got = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/event/{}", encode(&secret)),
        None,
    )
    .await?;
    assert_eq!(got["pdus"][0]["content"]["body"], "secret");

    // The server ACL wins over membership.
    api(
        &http,
        &a,
        t,
        reqwest::Method::PUT,
        &format!("/rooms/{r}/state/m.room.server_acl/"),
        Some(json!({"allow": ["*"], "deny": [b.name()]})),
    )
    .await?;
    let (status, v) = fed(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/event/{}", encode(&secret)),
        None,
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_devices_keys_public_rooms_and_hierarchy() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let http = http_client()?;
    let alice = register_raw(&http, &a.node.client_url(), "alice", "secret-password").await?;
    let t = &alice.access_token;
    let (get, post, put) = (
        reqwest::Method::GET,
        reqwest::Method::POST,
        reqwest::Method::PUT,
    );
    let room_of = |v: Value| v["room_id"].as_str().unwrap_or_default().to_owned();

    // A published room with an alias.
    let lobby = room_of(
        api(
            &http,
            &a,
            t,
            post.clone(),
            "/createRoom",
            Some(json!({"visibility": "public", "room_alias_name": "lobby", "name": "The Lobby", "topic": "say hi"})),
        )
        .await?,
    );
    let alias = format!("#lobby:{}", a.name());
    let dir = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            encode(&alias)
        ),
        None,
    )
    .await?;
    assert_eq!(dir, json!({"room_id": lobby, "servers": [a.name()]}));
    for (alias, status, errcode) in [
        (format!("#nothing:{}", a.name()), 404, "M_NOT_FOUND"),
        (format!("#lobby:{}", b.name()), 404, "M_NOT_FOUND"),
        ("lobby".to_owned(), 400, "M_INVALID_PARAM"),
    ] {
        let path = format!(
            "/_matrix/federation/v1/query/directory?room_alias={}",
            encode(&alias)
        );
        let (got, v) = fed(&b, &a, Method::GET, &path, None).await?;
        assert_eq!(
            (got, v["errcode"].as_str()),
            (status, Some(errcode)),
            "{alias}: {v}"
        );
    }

    // Devices and keys of a user who uploaded keys.
    let device = api(&http, &a, t, get.clone(), "/account/whoami", None).await?["device_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api(
        &http,
        &a,
        t,
        put.clone(),
        &format!("/devices/{}", encode(&device)),
        Some(json!({"display_name": "Alice's phone"})),
    )
    .await?;
    let device_keys = signed_device_keys(&alice.user_id, &device);
    api(
        &http,
        &a,
        t,
        post.clone(),
        "/keys/upload",
        Some(json!({
            "device_keys": device_keys,
            "one_time_keys": {"signed_curve25519:AAAA": {"key": "one-time"}},
        })),
    )
    .await?;
    let devices = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/user/devices/{}",
            encode(&alice.user_id)
        ),
        None,
    )
    .await?;
    assert_eq!(devices["user_id"], alice.user_id);
    assert!(
        devices["stream_id"].as_i64().is_some_and(|s| s > 0),
        "{devices}"
    );
    assert_eq!(
        devices["devices"].as_array().map(Vec::len),
        Some(1),
        "{devices}"
    );
    let d = &devices["devices"][0];
    assert_eq!(d["device_id"], device);
    assert_eq!(d["device_display_name"], "Alice's phone");
    assert_eq!(d["keys"]["keys"], device_keys["keys"]);
    assert_eq!(d["keys"]["signatures"], device_keys["signatures"]);
    assert!(
        devices.get("master_key").is_none(),
        "no cross-signing uploaded"
    );
    for (user, status, errcode) in [
        (format!("@nobody:{}", a.name()), 404, "M_NOT_FOUND"),
        (format!("@bob:{}", b.name()), 400, "M_INVALID_PARAM"),
        ("bob".to_owned(), 400, "M_INVALID_PARAM"),
    ] {
        let path = format!("/_matrix/federation/v1/user/devices/{}", encode(&user));
        let (got, v) = fed(&b, &a, Method::GET, &path, None).await?;
        assert_eq!(
            (got, v["errcode"].as_str()),
            (status, Some(errcode)),
            "{user}: {v}"
        );
    }

    let queried = fed_ok(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/user/keys/query",
        Some(json!({"device_keys": {alice.user_id.clone(): [], format!("@x:{}", b.name()): []}})),
    )
    .await?;
    assert_eq!(
        queried["device_keys"][&alice.user_id][&device]["keys"], device_keys["keys"],
        "{queried}"
    );
    assert!(queried.get("user_signing_keys").is_none());
    assert!(
        queried["device_keys"]
            .get(format!("@x:{}", b.name()))
            .is_none()
    );
    let claim =
        json!({"one_time_keys": {alice.user_id.clone(): {device.clone(): "signed_curve25519"}}});
    let claimed = fed_ok(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/user/keys/claim",
        Some(claim.clone()),
    )
    .await?;
    assert_eq!(
        claimed["one_time_keys"][&alice.user_id][&device]["signed_curve25519:AAAA"]["key"],
        "one-time",
        "{claimed}"
    );
    let again = fed_ok(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/user/keys/claim",
        Some(claim),
    )
    .await?;
    assert_eq!(
        again["one_time_keys"],
        json!({}),
        "a one-time key is claimed once"
    );
    let (status, v) = fed(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/user/keys/query",
        Some(json!({"device_keys": 5})),
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );

    // Public rooms: the published ones, filtered, paginated.
    let second = room_of(
        api(
            &http,
            &a,
            t,
            post.clone(),
            "/createRoom",
            Some(json!({"visibility": "public", "name": "Second"})),
        )
        .await?,
    );
    let private = room_of(
        api(
            &http,
            &a,
            t,
            post.clone(),
            "/createRoom",
            Some(json!({"name": "Hidden"})),
        )
        .await?,
    );
    let listed = fed_ok(
        &b,
        &a,
        Method::GET,
        "/_matrix/federation/v1/publicRooms",
        None,
    )
    .await?;
    let chunk = listed["chunk"].as_array().cloned().unwrap_or_default();
    let listed_ids: Vec<&str> = chunk.iter().filter_map(|r| r["room_id"].as_str()).collect();
    assert_eq!(listed_ids.len(), 2, "{listed}");
    assert!(listed_ids.contains(&lobby.as_str()) && listed_ids.contains(&second.as_str()));
    assert!(!listed_ids.contains(&private.as_str()));
    let entry = chunk
        .iter()
        .find(|r| r["room_id"] == lobby)
        .cloned()
        .unwrap_or_default();
    assert_eq!(entry["name"], "The Lobby");
    assert_eq!(entry["topic"], "say hi");
    assert_eq!(entry["canonical_alias"], alias);
    assert_eq!(entry["num_joined_members"], 1);
    assert_eq!(entry["join_rule"], "public");
    assert_eq!(entry["world_readable"], false);
    assert_eq!(entry["guest_can_join"], false);
    let page = fed_ok(
        &b,
        &a,
        Method::GET,
        "/_matrix/federation/v1/publicRooms?limit=1",
        None,
    )
    .await?;
    assert_eq!(page["chunk"].as_array().map(Vec::len), Some(1));
    let next = page["next_batch"].as_str().unwrap_or_default().to_owned();
    let page2 = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/publicRooms?limit=1&since={next}"),
        None,
    )
    .await?;
    assert_eq!(page2["chunk"].as_array().map(Vec::len), Some(1));
    assert_ne!(page2["chunk"][0]["room_id"], page["chunk"][0]["room_id"]);
    assert!(page2.get("next_batch").is_none());
    let searched = fed_ok(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/publicRooms",
        Some(json!({"filter": {"generic_search_term": "LOBBY"}, "limit": 1000})),
    )
    .await?;
    assert_eq!(
        searched["chunk"].as_array().map(Vec::len),
        Some(1),
        "{searched}"
    );
    assert_eq!(searched["chunk"][0]["room_id"], lobby);
    let none = fed_ok(
        &b,
        &a,
        Method::POST,
        "/_matrix/federation/v1/publicRooms",
        Some(json!({"filter": {"generic_search_term": "zzz"}})),
    )
    .await?;
    assert_eq!(none["chunk"], json!([]));
    let (status, v) = fed(
        &b,
        &a,
        Method::GET,
        "/_matrix/federation/v1/publicRooms?limit=lots",
        None,
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = fed(
        &b,
        &a,
        Method::GET,
        "/_matrix/federation/v1/publicRooms?since=xyz",
        None,
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );

    // A public space with three children: a public room, a private one, an unknown one.
    let space = room_of(
        api(
            &http,
            &a,
            t,
            post.clone(),
            "/createRoom",
            Some(json!({"preset": "public_chat", "name": "Space", "creation_content": {"type": "m.space"}})),
        )
        .await?,
    );
    let unknown = format!("!unknown:{}", a.name());
    for (child, suggested) in [(&lobby, true), (&private, false), (&unknown, false)] {
        api(
            &http,
            &a,
            t,
            put.clone(),
            &format!(
                "/rooms/{}/state/m.space.child/{}",
                encode(&space),
                encode(child)
            ),
            Some(json!({"via": [a.name()], "suggested": suggested})),
        )
        .await?;
    }
    let tree = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/hierarchy/{}", encode(&space)),
        None,
    )
    .await?;
    assert_eq!(tree["room"]["room_id"], space);
    assert_eq!(tree["room"]["room_type"], "m.space");
    assert_eq!(
        tree["room"]["children_state"].as_array().map(Vec::len),
        Some(3),
        "{tree}"
    );
    assert!(tree["room"]["children_state"][0]["origin_server_ts"].is_i64());
    let children: Vec<&str> = tree["children"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["room_id"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(children, vec![lobby.as_str()], "{tree}");
    assert_eq!(tree["inaccessible_children"], json!([private]));
    let suggested = fed_ok(
        &b,
        &a,
        Method::GET,
        &format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only=true",
            encode(&space)
        ),
        None,
    )
    .await?;
    assert_eq!(
        suggested["room"]["children_state"].as_array().map(Vec::len),
        Some(1)
    );
    // A private room is not accessible to B: 404, as the spec says.
    let (status, v) = fed(
        &b,
        &a,
        Method::GET,
        &format!("/_matrix/federation/v1/hierarchy/{}", encode(&private)),
        None,
    )
    .await?;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );

    a.stop().await?;
    b.stop().await?;
    Ok(())
}
