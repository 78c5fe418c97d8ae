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

    let auth = format!("Bearer {}", fx.alice.access_token);
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let response = raw_upload(
            addr,
            "POST",
            "/_matrix/client/v3/createRoom",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/json"),
            ],
            &body,
            framing,
        )
        .await
        .unwrap_or_else(|e| panic!("10 MiB createRoom ({framing:?}): {e:#}"));
        let err = parse_matrix_error(
            response.status,
            response.header("content-type"),
            &response.body,
        )
        .unwrap_or_else(|e| panic!("10 MiB createRoom ({framing:?}): {e:#}"));
        assert_eq!(
            (err.status, err.errcode.as_str()),
            (413, "M_TOO_LARGE"),
            "10 MiB createRoom ({framing:?}): {}",
            err.body
        );
    }

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
