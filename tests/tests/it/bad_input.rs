//! Bad input over raw HTTP gets the right Matrix error: status, `errcode`, and a JSON body
//! with string `errcode` and `error` (checked by `parse_matrix_error` for every case).
//! Plus CORS preflight, and the node still serving normally after all of it.
//!
//! Each test starts its own node on its own temporary directory.

use reqwest::{Client as Http, Method, StatusCode};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_core::Node;
use warren_tests::{
    Framing, MatrixError, Session, client_socket_addr, http_client, matrix_error,
    parse_matrix_error, path_segment, pseudo_random_bytes, raw_upload, register_raw, shutdown_node,
    start_node,
};

struct Fixture {
    _dir: TempDir,
    node: Node,
    http: Http,
    base: String,
    alice: Session,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let http = http_client().expect("http client");
    let base = node.client_url();
    let alice = register_raw(&http, &base, "alice", "alice's password")
        .await
        .expect("register alice");
    Fixture {
        _dir: dir,
        node,
        http,
        base,
        alice,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn finish(self) {
        // The node still answers normally after the bad input.
        let versions = self
            .http
            .get(self.url("/_matrix/client/versions"))
            .send()
            .await
            .expect("GET /versions after the bad input");
        assert_eq!(versions.status(), StatusCode::OK);
        shutdown_node(self.node).await.expect("shutdown");
    }
}

/// Asserts status and errcode of a Matrix error response (and, via `matrix_error`, that it
/// is JSON with string `errcode` and `error`).
async fn expect_error(
    what: &str,
    response: reqwest::Response,
    status: u16,
    errcode: &str,
) -> MatrixError {
    let err = matrix_error(response)
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
    assert_eq!(
        (err.status, err.errcode.as_str()),
        (status, errcode),
        "{what}: got {} {}",
        err.status,
        err.body
    );
    err
}

async fn create_room(fx: &Fixture, token: &str, body: Value) -> String {
    let response = fx
        .http
        .post(fx.url("/_matrix/client/v3/createRoom"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .expect("POST /createRoom");
    let status = response.status();
    let body: Value = response.json().await.expect("createRoom answers JSON");
    assert_eq!(status, StatusCode::OK, "createRoom: {body}");
    body["room_id"]
        .as_str()
        .expect("room_id in createRoom response")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_endpoints_are_unrecognized() {
    let fx = fixture().await;
    for path in [
        "/_matrix/client/v3/definitely_not_an_endpoint",
        "/_matrix/client/v3/rooms/%21x%3Ay/not_a_room_endpoint",
        "/_matrix/client/v99/sync",
    ] {
        let response = fx
            .http
            .get(fx.url(path))
            .bearer_auth(&fx.alice.access_token)
            .send()
            .await
            .expect("request");
        expect_error(&format!("GET {path}"), response, 404, "M_UNRECOGNIZED").await;
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_methods_are_unrecognized() {
    let fx = fixture().await;
    let cases = [
        (Method::DELETE, "/_matrix/client/versions"),
        (Method::GET, "/_matrix/client/v3/createRoom"),
        (Method::PUT, "/_matrix/client/v3/login"),
    ];
    for (method, path) in cases {
        let response = fx
            .http
            .request(method.clone(), fx.url(path))
            .bearer_auth(&fx.alice.access_token)
            .send()
            .await
            .expect("request");
        expect_error(&format!("{method} {path}"), response, 405, "M_UNRECOGNIZED").await;
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_json_is_not_json() {
    let fx = fixture().await;
    let garbage = pseudo_random_bytes(0x5EED_CAFE, 512);
    assert!(
        serde_json::from_slice::<Value>(&garbage).is_err(),
        "the garbage is not JSON"
    );
    let bodies: [(&str, Vec<u8>); 3] = [
        ("512 pseudo-random bytes", garbage),
        ("truncated JSON", br#"{"preset": "public_chat""#.to_vec()),
        ("trailing junk", br#"{"preset": "public_chat"} x"#.to_vec()),
    ];
    for (what, body) in bodies {
        let response = fx
            .http
            .post(fx.url("/_matrix/client/v3/createRoom"))
            .bearer_auth(&fx.alice.access_token)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .expect("request");
        expect_error(
            &format!("createRoom with {what}"),
            response,
            400,
            "M_NOT_JSON",
        )
        .await;
    }

    // Before authentication too.
    let response = fx
        .http
        .post(fx.url("/_matrix/client/v3/login"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(pseudo_random_bytes(7, 300))
        .send()
        .await
        .expect("request");
    expect_error("login with garbage", response, 400, "M_NOT_JSON").await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn json_of_the_wrong_shape_is_bad_json() {
    let fx = fixture().await;
    let cases = [
        ("visibility is a number", json!({ "visibility": 5 })),
        (
            "preset is not a preset",
            json!({ "preset": ["private_chat"] }),
        ),
        (
            "invite is not a list of user ids",
            json!({ "invite": "bob" }),
        ),
        ("an array, not an object", json!([1, 2, 3])),
    ];
    for (what, body) in cases {
        let response = fx
            .http
            .post(fx.url("/_matrix/client/v3/createRoom"))
            .bearer_auth(&fx.alice.access_token)
            .json(&body)
            .send()
            .await
            .expect("request");
        expect_error(&format!("createRoom, {what}"), response, 400, "M_BAD_JSON").await;
    }
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_are_too_large() {
    let fx = fixture().await;
    let addr = client_socket_addr(&fx.node).expect("node address");
    // Valid JSON, so that only its size is wrong: {"name": "aaaa…"} of 10 MiB.
    let mut body = Vec::with_capacity(10 * 1024 * 1024);
    body.extend_from_slice(br#"{"name": ""#);
    body.resize(10 * 1024 * 1024 - 2, b'a');
    body.extend_from_slice(br#""}"#);
    assert!(serde_json::from_slice::<Value>(&body).is_ok());

    assert_too_large(
        addr,
        "/_matrix/client/v3/createRoom",
        &fx.alice.access_token,
        &body,
    )
    .await;

    // The rejected uploads left nothing behind: a normal request works.
    create_room(
        &fx,
        &fx.alice.access_token,
        json!({ "name": "small enough" }),
    )
    .await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn missing_and_unknown_tokens() {
    let fx = fixture().await;
    let create = fx.url("/_matrix/client/v3/createRoom");

    let response = fx
        .http
        .post(&create)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    expect_error(
        "createRoom without a token",
        response,
        401,
        "M_MISSING_TOKEN",
    )
    .await;

    let response = fx
        .http
        .get(fx.url("/_matrix/client/v3/sync"))
        .send()
        .await
        .expect("request");
    expect_error("sync without a token", response, 401, "M_MISSING_TOKEN").await;

    let response = fx
        .http
        .post(&create)
        .bearer_auth("syt_not_a_real_token")
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    expect_error(
        "createRoom with an unknown token",
        response,
        401,
        "M_UNKNOWN_TOKEN",
    )
    .await;

    // A token that differs from a real one in its last character is just as unknown.
    let mut near_miss = fx.alice.access_token.clone();
    let last = near_miss.pop().expect("non-empty token");
    near_miss.push(if last == 'x' { 'y' } else { 'x' });
    let response = fx
        .http
        .post(&create)
        .bearer_auth(&near_miss)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    expect_error(
        "createRoom with a near-miss token",
        response,
        401,
        "M_UNKNOWN_TOKEN",
    )
    .await;

    // The real token works.
    create_room(&fx, &fx.alice.access_token, json!({})).await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sending_to_an_unknown_room_is_forbidden() {
    let fx = fixture().await;
    let room = format!("!nope:{}", fx.node.server_name());
    let path = format!(
        "/_matrix/client/v3/rooms/{}/send/m.room.message/txn-unknown-room",
        path_segment(&room)
    );
    let response = fx
        .http
        .put(fx.url(&path))
        .bearer_auth(&fx.alice.access_token)
        .json(&json!({ "msgtype": "m.text", "body": "anyone there?" }))
        .send()
        .await
        .expect("request");
    expect_error("send to an unknown room", response, 403, "M_FORBIDDEN").await;
    fx.finish().await;
}

impl Fixture {
    /// One request as alice.
    async fn alice(&self, method: Method, path: &str, body: Value) -> reqwest::Response {
        self.http
            .request(method.clone(), self.url(path))
            .bearer_auth(&self.alice.access_token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }
}

/// What peers would drop is refused locally, so a room never diverges between nodes and
/// no profile field can make member events unsignable.
#[tokio::test(flavor = "multi_thread")]
async fn what_peers_would_refuse_is_refused_here() {
    let fx = fixture().await;
    let room = create_room(&fx, &fx.alice.access_token, json!({})).await;
    let r = path_segment(&room);
    let long = "x".repeat(256);

    // Event types and state keys over 255 bytes; events over 65,536 bytes.
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{r}/send/{long}/t1"),
            json!({}),
        )
        .await;
    expect_error("a 256-byte event type", response, 400, "M_INVALID_PARAM").await;
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{r}/state/org.example.state/{long}"),
            json!({}),
        )
        .await;
    expect_error("a 256-byte state key", response, 400, "M_INVALID_PARAM").await;
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/rooms/{r}/send/m.room.message/t2"),
            json!({"msgtype": "m.text", "body": "y".repeat(65_000)}),
        )
        .await;
    expect_error("a 65 kB message", response, 413, "M_TOO_LARGE").await;

    // Invites of user ids that are not valid.
    let server = fx.node.server_name();
    for bad in [
        format!("@:{server}"),
        format!("@\u{1F600}:{server}"),
        "alice".into(),
    ] {
        let response = fx
            .alice(
                Method::POST,
                &format!("/_matrix/client/v3/rooms/{r}/invite"),
                json!({"user_id": bad}),
            )
            .await;
        expect_error(
            &format!("inviting {bad:?}"),
            response,
            400,
            "M_INVALID_PARAM",
        )
        .await;
    }

    // Profile fields over Synapse's limits; member events stay signable.
    let me = path_segment(&fx.alice.user_id);
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            json!({"displayname": "d".repeat(64 * 1024)}),
        )
        .await;
    expect_error("a 64 KiB display name", response, 400, "M_INVALID_PARAM").await;
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{me}/avatar_url"),
            json!({"avatar_url": format!("mxc://{server}/{}", "a".repeat(2000))}),
        )
        .await;
    expect_error("a 2 kB avatar URL", response, 400, "M_INVALID_PARAM").await;
    let response = fx
        .alice(
            Method::PUT,
            &format!("/_matrix/client/v3/profile/{me}/displayname"),
            json!({"displayname": "Alice ".repeat(40)}),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "a 240-character name");
    create_room(&fx, &fx.alice.access_token, json!({"name": "after"})).await;

    // Names that are not P2P server names are the request's fault, not a peer's.
    for path in [
        "/_matrix/client/v3/profile/@bob:example.org",
        "/_matrix/client/v3/directory/room/%23lobby:example.org",
    ] {
        let response = fx.alice(Method::GET, path, Value::Null).await;
        expect_error(path, response, 400, "M_INVALID_PARAM").await;
    }
    let response = fx
        .alice(
            Method::POST,
            "/_matrix/client/v3/join/%23lobby:example.org",
            json!({}),
        )
        .await;
    expect_error(
        "joining #lobby:example.org",
        response,
        400,
        "M_INVALID_PARAM",
    )
    .await;

    // Server-controlled account data: 405 M_BAD_JSON, as the spec says.
    for path in [
        format!("/_matrix/client/v3/user/{me}/account_data/m.fully_read"),
        format!("/_matrix/client/v3/user/{me}/rooms/{r}/account_data/m.fully_read"),
        format!("/_matrix/client/v3/user/{me}/account_data/m.push_rules"),
    ] {
        let response = fx
            .alice(Method::PUT, &path, json!({"event_id": "$x"}))
            .await;
        expect_error(&path, response, 405, "M_BAD_JSON").await;
    }
    fx.finish().await;
}

/// Filters whose room lists are not room ids, or sender lists not user ids, are
/// refused when saved and inline; user-interactive auth as another user is 403.
#[tokio::test(flavor = "multi_thread")]
async fn bad_filters_and_uia_for_another_user_are_refused() {
    let fx = fixture().await;
    let me = path_segment(&fx.alice.user_id);
    for bad in [
        json!({"room": {"rooms": "!x:y"}}),
        json!({"room": {"rooms": ["not-a-room"]}}),
        json!({"room": {"not_rooms": ["#alias:y"]}}),
        json!({"room": {"timeline": {"senders": ["bob"]}}}),
    ] {
        let response = fx
            .alice(
                Method::POST,
                &format!("/_matrix/client/v3/user/{me}/filter"),
                bad.clone(),
            )
            .await;
        expect_error(&format!("saving {bad}"), response, 400, "M_BAD_JSON").await;
        let inline = path_segment(&bad.to_string());
        let response = fx
            .alice(
                Method::GET,
                &format!("/_matrix/client/v3/sync?filter={inline}"),
                Value::Null,
            )
            .await;
        expect_error(&format!("syncing with {bad}"), response, 400, "M_BAD_JSON").await;
    }
    let good = json!({"room": {"rooms": ["!a:b"], "timeline": {"senders": ["@bob:b"]}}});
    let response = fx
        .alice(
            Method::POST,
            &format!("/_matrix/client/v3/user/{me}/filter"),
            good,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);

    register_raw(&fx.http, &fx.base, "bob", "bob's password")
        .await
        .expect("bob");
    let bob = format!("@bob:{}", fx.node.server_name());
    let response = fx
        .alice(
            Method::POST,
            "/_matrix/client/v3/account/password",
            json!({"new_password": "x", "auth": {"type": "m.login.password",
                   "identifier": {"type": "m.id.user", "user": bob},
                   "password": "bob's password"}}),
        )
        .await;
    expect_error("UIA as another user", response, 403, "M_FORBIDDEN").await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn members_without_power_cannot_change_state() {
    let fx = fixture().await;
    let bob = register_raw(&fx.http, &fx.base, "bob", "bob's password")
        .await
        .expect("register bob");
    let room_id = create_room(
        &fx,
        &fx.alice.access_token,
        json!({ "preset": "public_chat" }),
    )
    .await;
    let room = path_segment(&room_id);

    let response = fx
        .http
        .post(fx.url(&format!("/_matrix/client/v3/join/{room}")))
        .bearer_auth(&bob.access_token)
        .json(&json!({}))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "bob joins the public room: {body}");

    // Control: bob is a member and may talk.
    let response = fx
        .http
        .put(fx.url(&format!(
            "/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-bob-1"
        )))
        .bearer_auth(&bob.access_token)
        .json(&json!({ "msgtype": "m.text", "body": "hello from bob" }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "bob may send a message: {body}");

    // But with power 0 he may not set the name (needs 50)...
    let name_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.name");
    let response = fx
        .http
        .put(fx.url(&name_path))
        .bearer_auth(&bob.access_token)
        .json(&json!({ "name": "bob's room now" }))
        .send()
        .await
        .expect("request");
    expect_error("bob sets m.room.name", response, 403, "M_FORBIDDEN").await;

    // ...nor give himself power (the empty state key, with its trailing slash).
    let power_path = format!("/_matrix/client/v3/rooms/{room}/state/m.room.power_levels/");
    let response = fx
        .http
        .get(fx.url(&power_path))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("request");
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "bob may read the power levels"
    );
    let mut power: Value = response.json().await.expect("power levels are JSON");
    // (Room version 12 leaves creators out of `users`: they outrank everyone anyway.)
    assert!(
        power["users"][&bob.user_id].is_null() || power["users"][&bob.user_id] == 0,
        "bob starts without power: {power}"
    );
    power["users"][&bob.user_id] = json!(100);
    let response = fx
        .http
        .put(fx.url(&power_path))
        .bearer_auth(&bob.access_token)
        .json(&power)
        .send()
        .await
        .expect("request");
    expect_error("bob raises his own power", response, 403, "M_FORBIDDEN").await;

    // Control: alice may set the name; the state shows hers, and bob has no power.
    let response = fx
        .http
        .put(fx.url(&name_path))
        .bearer_auth(&fx.alice.access_token)
        .json(&json!({ "name": "alice's room" }))
        .send()
        .await
        .expect("request");
    let status = response.status();
    let body = response.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::OK, "alice sets the name: {body}");

    let name: Value = fx
        .http
        .get(fx.url(&name_path))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("name is JSON");
    assert_eq!(name, json!({ "name": "alice's room" }));
    let power: Value = fx
        .http
        .get(fx.url(&power_path))
        .bearer_auth(&bob.access_token)
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("power levels are JSON");
    assert!(
        power["users"][&bob.user_id].is_null() || power["users"][&bob.user_id] == 0,
        "bob's rejected change left no trace: {power}"
    );
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn registration_is_user_interactive() {
    let fx = fixture().await;
    let response = fx
        .http
        .post(fx.url("/_matrix/client/v3/register"))
        .json(&json!({ "username": "carol", "password": "carol's password" }))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    let body: Value = response.json().await.expect("UIAA body is JSON");
    let flows = body["flows"].as_array().expect("flows");
    assert!(
        flows
            .iter()
            .any(|flow| flow["stages"] == json!(["m.login.dummy"])),
        "a [m.login.dummy] flow: {body}"
    );
    assert!(body["session"].is_string(), "a session id: {body}");

    // The same user name cannot be taken twice. A server may say so at once or only after
    // the (dummy) stage; either way the answer is 400 M_USER_IN_USE.
    let again = json!({ "username": "alice", "password": "another password" });
    let response = fx
        .http
        .post(fx.url("/_matrix/client/v3/register"))
        .json(&again)
        .send()
        .await
        .expect("request");
    let response = if response.status() == StatusCode::UNAUTHORIZED {
        let uiaa: Value = response.json().await.expect("UIAA body is JSON");
        let mut again = again.clone();
        again["auth"] = json!({ "type": "m.login.dummy", "session": uiaa["session"] });
        fx.http
            .post(fx.url("/_matrix/client/v3/register"))
            .json(&again)
            .send()
            .await
            .expect("request")
    } else {
        response
    };
    expect_error("registering alice again", response, 400, "M_USER_IN_USE").await;
    fx.finish().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflight_and_simple_requests() {
    let fx = fixture().await;
    let origin = "https://app.example.org";
    let response = fx
        .http
        .request(Method::OPTIONS, fx.url("/_matrix/client/v3/login"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization, content-type",
        )
        .send()
        .await
        .expect("preflight");
    assert!(
        response.status().is_success(),
        "preflight status {}",
        response.status()
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let allow_origin = header("access-control-allow-origin");
    assert!(
        allow_origin == "*" || allow_origin == origin,
        "allow-origin {allow_origin:?}"
    );
    let allow_methods = header("access-control-allow-methods").to_ascii_uppercase();
    assert!(
        allow_methods == "*" || allow_methods.contains("POST"),
        "allow-methods {allow_methods:?}"
    );
    // A `*` here would not cover Authorization (Fetch spec), so it must be named.
    let allow_headers = header("access-control-allow-headers").to_ascii_lowercase();
    assert!(
        allow_headers.contains("authorization"),
        "allow-headers {allow_headers:?}"
    );
    assert!(
        allow_headers.contains("content-type"),
        "allow-headers {allow_headers:?}"
    );

    // An ordinary cross-origin request is allowed too.
    let response = fx
        .http
        .get(fx.url("/_matrix/client/versions"))
        .header("Origin", origin)
        .send()
        .await
        .expect("GET /versions");
    assert_eq!(response.status(), StatusCode::OK);
    let allow_origin = response
        .headers()
        .get("access-control-allow-origin")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        allow_origin == "*" || allow_origin == origin,
        "allow-origin {allow_origin:?}"
    );
    fx.finish().await;
}

/// POSTs `body` to `path` with both framings and expects `413 M_TOO_LARGE` each time.
async fn assert_too_large(addr: std::net::SocketAddr, path: &str, token: &str, body: &[u8]) {
    let auth = format!("Bearer {token}");
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let what = format!("{} bytes to {path} ({framing:?})", body.len());
        let response = raw_upload(
            addr,
            "POST",
            path,
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            body,
            framing,
        )
        .await
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let err = parse_matrix_error(
            response.status,
            response.header("content-type"),
            &response.body,
        )
        .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert_eq!(
            (err.status, err.errcode.as_str()),
            (413, "M_TOO_LARGE"),
            "{what}: {}",
            err.body
        );
    }
}

// ---------------------------------------------------------------------------------------
// Bounds: what a hostile client or a flood meets (rate limits, connection limits, body
// limits). Each asserts the limit is reached and answered the way the spec says.
// ---------------------------------------------------------------------------------------

mod bounds {
    use std::time::{Duration, Instant};

    use reqwest::StatusCode;
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use warren_core::Node;
    use warren_core::config::{Rate, RateLimits};
    use warren_tests::{
        Session, client_socket_addr, http_client, register_raw, shutdown_node, start_node_with,
        test_config,
    };

    async fn node_with(dir: &tempfile::TempDir, f: impl FnOnce(&mut warren_core::Config)) -> Node {
        let mut config = test_config(dir.path());
        f(&mut config);
        start_node_with(config).await.expect("start node")
    }

    async fn login(http: &reqwest::Client, base: &str, user: &str, password: &str) -> (u16, Value) {
        let r = http
            .post(format!("{base}/_matrix/client/v3/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            }))
            .send()
            .await
            .expect("POST /login");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    fn assert_limited(status: u16, body: &Value) {
        assert_eq!(status, 429, "expected 429, got {status}: {body}");
        assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
        assert!(
            body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
            "no retry_after_ms in {body}"
        );
    }

    /// Password guessing stops after the failed-attempt burst: 403 for the first wrong
    /// guesses, then 429 with `retry_after_ms` (before any hashing) even for the right
    /// password, while another account is unaffected.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn password_guessing_is_throttled_per_account() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(&dir, |_| {}).await;
        let (http, base) = (http_client().expect("http"), node.client_url());
        register_raw(&http, &base, "alice", "right")
            .await
            .expect("alice");
        register_raw(&http, &base, "bob", "right")
            .await
            .expect("bob");
        let burst = RateLimits::default()
            .rate(warren_core::ratelimit::Action::LoginFailed)
            .expect("a limit")
            .burst as usize;
        for _ in 0..burst {
            let (status, body) = login(&http, &base, "alice", "wrong").await;
            assert_eq!(status, 403, "{body}");
        }
        let (status, body) = login(&http, &base, "alice", "wrong").await;
        assert_limited(status, &body);
        let (status, body) = login(&http, &base, "alice", "right").await;
        assert_limited(status, &body);
        let (status, body) = login(&http, &base, "bob", "right").await;
        assert_eq!(status, 200, "{body}");
        shutdown_node(node).await.expect("shutdown");
    }

    /// 64 wrong-password logins at once (no account needed): every one is answered, with
    /// 403 or 429 and never a server error, and the node serves normally afterwards.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_login_storm_is_answered_and_refused_past_the_limits() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(&dir, |_| {}).await;
        let (http, base) = (http_client().expect("http"), node.client_url());
        register_raw(&http, &base, "alice", "right")
            .await
            .expect("alice");
        let storm: Vec<_> = (0..64)
            .map(|i| {
                let (http, base) = (http.clone(), base.clone());
                tokio::spawn(async move {
                    // Half guess alice's password (each a hash), half try unknown accounts.
                    let user = if i % 2 == 0 {
                        "alice".to_owned()
                    } else {
                        format!("user{i}")
                    };
                    login(&http, &base, &user, "guess").await
                })
            })
            .collect();
        let (mut refused, mut limited) = (0, 0);
        for t in storm {
            let (status, body) = t.await.expect("task");
            match status {
                403 => refused += 1,
                429 => {
                    assert_limited(status, &body);
                    limited += 1;
                }
                other => panic!("login storm answered {other}: {body}"),
            }
        }
        assert!(
            limited > 0,
            "no login of 64 was refused ({refused} got 403)"
        );
        let versions = http
            .get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
            .expect("GET /versions");
        assert_eq!(versions.status(), StatusCode::OK);
        shutdown_node(node).await.expect("shutdown");
    }

    async fn send(
        http: &reqwest::Client,
        base: &str,
        s: &Session,
        room: &str,
        txn: &str,
    ) -> (u16, Value) {
        let r = http
            .put(format!(
                "{base}/_matrix/client/v3/rooms/{room}/send/m.room.message/{txn}"
            ))
            .bearer_auth(&s.access_token)
            .json(&json!({"msgtype": "m.text", "body": txn}))
            .send()
            .await
            .expect("PUT send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// Sends past the burst get 429 with `retry_after_ms` and a `Retry-After` header; a
    /// retried transaction still gets its event back; after the wait, sending works.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn messages_past_the_rate_get_429_and_retries_keep_working() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(&dir, |c| {
            c.rate_limits.set(
                warren_core::ratelimit::Action::Message,
                Some(Rate::new(5.0, 3.0)),
            );
        })
        .await;
        let (http, base) = (http_client().expect("http"), node.client_url());
        let alice = register_raw(&http, &base, "alice", "pw")
            .await
            .expect("alice");
        let room: Value = http
            .post(format!("{base}/_matrix/client/v3/createRoom"))
            .bearer_auth(&alice.access_token)
            .json(&json!({}))
            .send()
            .await
            .expect("createRoom")
            .json()
            .await
            .expect("createRoom JSON");
        let room = warren_tests::path_segment(room["room_id"].as_str().expect("room_id"));
        // createRoom's own events do not count; room creation has its own limit.
        let mut first = None;
        let mut sent = 0;
        let limited = loop {
            let (status, body) = send(&http, &base, &alice, &room, &format!("t{sent}")).await;
            if status != 200 {
                break (status, body);
            }
            first.get_or_insert(body["event_id"].clone());
            sent += 1;
            assert!(sent <= 3, "more than the burst of 3 was accepted");
        };
        assert_limited(limited.0, &limited.1);
        // The retry of an accepted transaction is answered, not limited.
        let (status, body) = send(&http, &base, &alice, &room, "t0").await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(Some(body["event_id"].clone()), first);
        let wait = limited.1["retry_after_ms"]
            .as_u64()
            .expect("retry_after_ms");
        tokio::time::sleep(Duration::from_millis(wait + 20)).await;
        let (status, body) = send(&http, &base, &alice, &room, "after").await;
        assert_eq!(status, 200, "after waiting retry_after_ms: {body}");
        shutdown_node(node).await.expect("shutdown");
    }

    /// Sliding sync bodies stop at the same limit as every other JSON endpoint.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sliding_sync_bodies_are_limited() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(&dir, |_| {}).await;
        let (http, base) = (http_client().expect("http"), node.client_url());
        let alice = register_raw(&http, &base, "alice", "pw")
            .await
            .expect("alice");
        let big = format!("{{\"lists\": {{}}, \"pad\": \"{}\"}}", "x".repeat(4 << 20));
        let addr = client_socket_addr(&node).expect("addr");
        super::assert_too_large(
            addr,
            "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync",
            &alice.access_token,
            big.as_bytes(),
        )
        .await;
        shutdown_node(node).await.expect("shutdown");
    }

    /// Waits until the server closes `stream` (a read returns 0 or fails).
    async fn closed_by_server(stream: &mut TcpStream, within: Duration) -> bool {
        let mut buf = [0u8; 512];
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, stream.read(&mut buf)).await {
                Ok(Ok(0) | Err(_)) => return true,
                Ok(Ok(_)) => continue,
                Err(_) => return false,
            }
        }
    }

    /// Many idle and half-sent connections past the cap: the longest-idle are closed to
    /// admit new ones, so requests keep being answered; idle and half-sent connections
    /// are closed after their timeouts.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_half_sent_connections_are_shed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = node_with(&dir, |c| {
            c.connections.max_connections = 16;
            c.connections.idle_timeout = Duration::from_millis(600);
            c.connections.header_read_timeout = Duration::from_millis(600);
        })
        .await;
        let addr = client_socket_addr(&node).expect("addr");
        let (http, base) = (http_client().expect("http"), node.client_url());

        // 200 connections: idle ones, and ones that sent half a request.
        let mut held = Vec::new();
        for i in 0..200 {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            if i % 2 == 0 {
                s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n")
                    .await
                    .expect("half a request");
            }
            held.push(s);
        }
        // Requests are still answered, each on a new connection past the cap.
        for _ in 0..20 {
            let r = reqwest::Client::builder()
                .no_proxy()
                .pool_max_idle_per_host(0)
                .timeout(Duration::from_secs(10))
                .build()
                .expect("client")
                .get(format!("{base}/_matrix/client/versions"))
                .send()
                .await
                .expect("GET /versions with 200 connections held");
            assert_eq!(r.status(), StatusCode::OK);
        }
        // Every held connection is closed by the server: shed, or timed out.
        for (i, s) in held.iter_mut().enumerate() {
            assert!(
                closed_by_server(s, Duration::from_secs(10)).await,
                "connection {i} still open"
            );
        }
        // A keep-alive connection that served a request is closed once idle.
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("request");
        assert!(closed_by_server(&mut s, Duration::from_secs(10)).await);
        let r = http
            .get(format!("{base}/_matrix/client/versions"))
            .send()
            .await
            .expect("GET /versions");
        assert_eq!(r.status(), StatusCode::OK);
        shutdown_node(node).await.expect("shutdown");
    }
}
