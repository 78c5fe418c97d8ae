//! Application services: a bridge written with mautrix-python's appservice framework
//! (from PyPI) against a node, plus the refusals that need no appservice running.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use warren_tests::{
    FederatedNode, connect_nodes, http_client, register_raw, shutdown_node, start_node_with,
    test_config, test_p2p_config,
};

const BRIDGE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/appservice/bridge.py");
/// The mautrix version the bridge script is written against.
const MAUTRIX: &str = "mautrix==0.21.1";

fn registration(id: &str, url: Option<&str>, as_token: &str, hs_token: &str) -> String {
    let url = url.map_or("null".to_owned(), |u| format!("'{u}'"));
    format!(
        "id: {id}\nurl: {url}\nas_token: {as_token}\nhs_token: {hs_token}\n\
         sender_localpart: bridgebot\nrate_limited: false\n\
         de.sorunome.msc2409.push_ephemeral: true\n\
         namespaces:\n  users:\n  - exclusive: true\n    regex: '@bridge_.*'\n\
         \x20 aliases:\n  - exclusive: true\n    regex: '#bridge_.*'\n  rooms: []\n"
    )
}

/// Where mautrix is installed for the tests: into the target directory with pip on
/// first use (the machines have python3 and pip; PyPI is reachable). Fails loudly,
/// never skips, when it cannot be installed.
fn python_path() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("appservice-python");
    let importable = |dir: &Path| {
        Command::new("python3")
            .args(["-c", "import mautrix.appservice, aiohttp"])
            .env("PYTHONPATH", dir)
            .status()
            .is_ok_and(|s| s.success())
    };
    if !importable(&dir) {
        let out = Command::new("python3")
            .args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
            ])
            .arg("--target")
            .arg(&dir)
            .arg(MAUTRIX)
            .output()
            .expect("python3 -m pip must run (python3 with pip is needed for this test)");
        assert!(
            out.status.success() && importable(&dir),
            "cannot install {MAUTRIX} with pip: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    dir
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn start_federated(config: warren_core::Config) -> anyhow::Result<FederatedNode> {
    let node = start_node_with(config).await?;
    let p2p = warren_p2p::P2p::attach(&node, test_p2p_config()).await?;
    p2p.wait_listening(Duration::from_secs(30)).await?;
    Ok(FederatedNode { node, p2p })
}

/// The scenario, with a real appservice framework: a puppet registers, creates
/// and joins a room, messages go both ways (also with a user of another node), typing
/// and receipts arrive, the appservice is down for a while and then gets everything it
/// missed in order, once; ordinary users cannot take its exclusive namespaces; unknown
/// users and aliases in its namespaces are asked of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mautrix_bridge_relays_both_ways_and_catches_up_after_an_outage() -> anyhow::Result<()> {
    let pythonpath = python_path();
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let port = free_port();
    let reg = dir_a.path().join("bridge.yaml");
    std::fs::write(
        &reg,
        registration(
            "testbridge",
            Some(&format!("http://127.0.0.1:{port}")),
            "as-secret-token",
            "hs-secret-token",
        ),
    )?;
    let mut config_a = test_config(dir_a.path());
    config_a.app_service_config_files = vec![reg];
    let a = start_federated(config_a).await?;
    let b = start_federated(test_config(dir_b.path())).await?;
    connect_nodes(&a, &b).await?;

    let log = dir_a.path().join("bridge.log");
    let mut child = Command::new("python3")
        .arg(BRIDGE)
        .current_dir(dir_a.path())
        .env("PYTHONPATH", &pythonpath)
        .env("HS_A", a.node.client_url())
        .env("DOMAIN_A", a.name())
        .env("HS_B", b.node.client_url())
        .env("DOMAIN_B", b.name())
        .env("AS_PORT", port.to_string())
        .env("AS_TOKEN", "as-secret-token")
        .env("HS_TOKEN", "hs-secret-token")
        .env("AS_ID", "testbridge")
        .stdout(Stdio::from(std::fs::File::create(&log)?))
        .stderr(Stdio::from(std::fs::File::create(
            dir_a.path().join("bridge.err"),
        )?))
        .spawn()
        .context("python3 must run")?;
    let deadline = Instant::now() + Duration::from_secs(300);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait()?;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let out = std::fs::read_to_string(&log).unwrap_or_default();
    let err = std::fs::read_to_string(dir_a.path().join("bridge.err")).unwrap_or_default();
    let tail: String = err
        .lines()
        .rev()
        .take(60)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n");
    ensure!(
        status.success() && out.contains("ALL OK"),
        "the bridge failed ({status})\n--- its steps\n{out}\n--- stderr (end)\n{tail}"
    );
    println!("{out}");
    b.stop().await?;
    a.stop().await?;
    Ok(())
}

/// Each registration problem stops the node with one line naming the file and the key.
#[tokio::test]
async fn a_bad_registration_stops_the_node_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, registration("one", None, "t1", "h1"))?;
    let cases = [
        (registration("one", None, "t2", "h2"), "id"),
        (registration("two", None, "t1", "h2"), "as_token"),
        (
            registration("two", None, "t2", "h2").replace("'@bridge_.*'", "'@bridge_(.*'"),
            "namespaces.users[0].regex",
        ),
    ];
    for (text, key) in cases {
        let bad = dir.path().join("bad.yaml");
        std::fs::write(&bad, text)?;
        let mut config = test_config(dir.path());
        config.app_service_config_files = vec![good.clone(), bad];
        let err = match start_node_with(config).await {
            Ok(node) => {
                shutdown_node(node).await?;
                bail!("the node started with a bad {key}");
            }
            Err(e) => e.to_string(),
        };
        ensure!(
            err.contains("bad.yaml") && err.contains(&format!(": {key}:")) && !err.contains('\n'),
            "{key}: {err}"
        );
    }
    Ok(())
}

/// What an appservice may and may not do, with raw HTTP and no appservice running.
#[tokio::test]
async fn appservice_tokens_act_only_within_their_namespaces() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("r.yaml");
    std::fs::write(&reg, registration("quiet", None, "as-tok", "hs-tok"))?;
    let mut config = test_config(dir.path());
    config.app_service_config_files = vec![reg];
    let node = start_node_with(config).await?;
    let base = node.client_url();
    let server = node.server_name().to_owned();
    let http = http_client()?;
    let call = async |method: reqwest::Method, path: &str, body: Value| {
        as_call(&base, method, path, None, body).await
    };
    // Its own user exists from the start.
    let (s, who) = call(reqwest::Method::GET, "/v3/account/whoami", Value::Null).await?;
    ensure!(
        s == 200 && who["user_id"] == format!("@bridgebot:{server}"),
        "{s} {who}"
    );
    // A user outside its namespace: M_EXCLUSIVE; one inside but not registered: 403.
    let bob = register_raw(&http, &base, "bob", "pw-bob-123").await?;
    let (s, e) = call(
        reqwest::Method::GET,
        &format!(
            "/v3/account/whoami?user_id={}",
            bob.user_id.replace('@', "%40").replace(':', "%3A")
        ),
        Value::Null,
    )
    .await?;
    ensure!(s == 400 && e["errcode"] == "M_EXCLUSIVE", "{s} {e}");
    let (s, e) = call(
        reqwest::Method::GET,
        &format!("/v3/account/whoami?user_id=%40bridge_nobody%3A{server}"),
        Value::Null,
    )
    .await?;
    ensure!(s == 403 && e["errcode"] == "M_FORBIDDEN", "{s} {e}");
    // Registration of a puppet, then acting as it with a bridged timestamp.
    let (s, r) = call(
        reqwest::Method::POST,
        "/v3/register",
        json!({"type": "m.login.application_service", "username": "bridge_ann", "inhibit_login": true}),
    )
    .await?;
    ensure!(s == 200 && r.get("access_token").is_none(), "{s} {r}");
    let (s, r) = call(
        reqwest::Method::POST,
        "/v3/register",
        json!({"type": "m.login.application_service", "username": "outsider"}),
    )
    .await?;
    ensure!(s == 400 && r["errcode"] == "M_EXCLUSIVE", "{s} {r}");
    let ann = format!("%40bridge_ann%3A{server}");
    let (s, room) = call(
        reqwest::Method::POST,
        &format!("/v3/createRoom?user_id={ann}"),
        json!({}),
    )
    .await?;
    ensure!(s == 200, "{s} {room}");
    let room_id = room["room_id"].as_str().context("room_id")?.to_owned();
    let (s, sent) = call(
        reqwest::Method::PUT,
        &format!("/v3/rooms/{room_id}/send/m.room.message/t1?user_id={ann}&ts=1234567890"),
        json!({"msgtype": "m.text", "body": "from long ago"}),
    )
    .await?;
    ensure!(s == 200, "{s} {sent}");
    let event_id = sent["event_id"].as_str().context("event_id")?;
    let (s, ev) = call(
        reqwest::Method::GET,
        &format!("/v3/rooms/{room_id}/event/{event_id}?user_id={ann}"),
        Value::Null,
    )
    .await?;
    ensure!(
        s == 200
            && ev["origin_server_ts"] == 1234567890
            && ev["sender"] == format!("@bridge_ann:{server}"),
        "{s} {ev}"
    );
    // Keys need a device: acting without `device_id=` there is none.
    let (s, e) = call(
        reqwest::Method::POST,
        &format!("/v3/keys/upload?user_id={ann}"),
        json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}}}),
    )
    .await?;
    ensure!(s == 400 && e["errcode"] == "M_MISSING_PARAM", "{s} {e}");
    // Login as the puppet.
    let (s, l) = call(
        reqwest::Method::POST,
        "/v3/login",
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": "bridge_ann"}}),
    )
    .await?;
    ensure!(s == 200 && l["access_token"].is_string(), "{s} {l}");
    // Ping: no URL, and another appservice's id.
    let (s, p) = call(
        reqwest::Method::POST,
        "/v1/appservice/quiet/ping",
        json!({}),
    )
    .await?;
    ensure!(s == 400 && p["errcode"] == "M_URL_NOT_SET", "{s} {p}");
    let (s, p) = call(
        reqwest::Method::POST,
        "/v1/appservice/other/ping",
        json!({}),
    )
    .await?;
    ensure!(s == 403 && p["errcode"] == "M_FORBIDDEN", "{s} {p}");
    // `/register/available` reports the exclusive namespace.
    let r = http
        .get(format!(
            "{base}/_matrix/client/v3/register/available?username=bridge_x"
        ))
        .send()
        .await?;
    let (s, body): (u16, Value) = (r.status().as_u16(), r.json().await?);
    ensure!(s == 400 && body["errcode"] == "M_EXCLUSIVE", "{s} {body}");
    shutdown_node(node).await
}

/// A fake appservice (an axum server in the test) that records every transaction
/// attempt and answers 503 while `down` is set.
#[derive(Default)]
struct FakeAppservice {
    down: std::sync::atomic::AtomicBool,
    /// Every attempt: transaction id, body, `Authorization` header, taken or not.
    attempts: parking_lot::Mutex<Vec<(String, Value, String, bool)>>,
}

impl FakeAppservice {
    fn taken(&self) -> Vec<(String, Value)> {
        self.attempts
            .lock()
            .iter()
            .filter(|a| a.3)
            .map(|a| (a.0.clone(), a.1.clone()))
            .collect()
    }

    fn taken_events(&self) -> Vec<Value> {
        self.taken()
            .into_iter()
            .flat_map(|(_, b)| b["events"].as_array().cloned().unwrap_or_default())
            .collect()
    }
}

async fn fake_transaction(
    axum::extract::State(fake): axum::extract::State<std::sync::Arc<FakeAppservice>>,
    axum::extract::Path(txn): axum::extract::Path<String>,
    headers: http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> (http::StatusCode, axum::Json<Value>) {
    let down = fake.down.load(std::sync::atomic::Ordering::SeqCst);
    let auth = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    fake.attempts.lock().push((txn, body, auth, !down));
    if down {
        (http::StatusCode::SERVICE_UNAVAILABLE, axum::Json(json!({})))
    } else {
        (http::StatusCode::OK, axum::Json(json!({})))
    }
}

async fn fake_appservice() -> (std::sync::Arc<FakeAppservice>, String) {
    let fake = std::sync::Arc::new(FakeAppservice::default());
    let app = axum::Router::new()
        .route(
            "/_matrix/app/v1/transactions/{txn}",
            axum::routing::put(fake_transaction),
        )
        .route(
            "/_matrix/app/v1/thirdparty/protocol/fakechat",
            axum::routing::get(async || {
                axum::Json(json!({
                    "user_fields": ["nick"], "location_fields": ["channel"], "icon": "mxc://x/y",
                    "field_types": {}, "instances": [{"desc": "Fake", "network_id": "fakenet", "fields": {}}],
                }))
            }),
        )
        .route(
            "/_matrix/app/v1/thirdparty/user/fakechat",
            axum::routing::get(
                async |axum::extract::Query(q): axum::extract::Query<std::collections::BTreeMap<String, String>>| {
                    axum::Json(json!([{
                        "userid": format!("@bridge_{}:x", q.get("nick").cloned().unwrap_or_default()),
                        "protocol": "fakechat", "fields": q,
                    }]))
                },
            ),
        )
        .with_state(fake.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the fake appservice");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (fake, format!("http://{addr}"))
}

/// A raw request with the appservice token, acting as `as_user` when given.
async fn as_call(
    base: &str,
    method: reqwest::Method,
    path: &str,
    as_user: Option<&str>,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let mut url = format!("{base}/_matrix/client{path}");
    if let Some(u) = as_user {
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str(&format!("user_id={}", warren_tests::path_segment(u)));
    }
    let r = http_client()?
        .request(method, url)
        .bearer_auth("as-tok")
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

/// While the appservice is down the node keeps one pending transaction and retries it;
/// the pending transaction survives a restart of the node and is resent with the same id
/// and the same content; then everything follows in order, in transactions of at most
/// 100 events, each event once. The appservice (`rate_limited: false`) sends past the
/// message rate limit that stops an ordinary user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_transaction_queue_survives_restarts_and_delivers_in_bounded_batches()
-> anyhow::Result<()> {
    use warren_core::config::Rate;
    use warren_core::ratelimit::Action;
    let (fake, url) = fake_appservice().await;
    fake.down.store(true, std::sync::atomic::Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("r.yaml");
    std::fs::write(&reg, registration("queue", Some(&url), "as-tok", "hs-tok"))?;
    let config = || {
        let mut c = test_config(dir.path());
        c.app_service_config_files = vec![reg.clone()];
        c.rate_limits
            .set(Action::Message, Some(Rate::new(1.0, 5.0)));
        c
    };
    let node = start_node_with(config()).await?;
    let base = node.client_url();
    let server = node.server_name().to_owned();
    let puppet = format!("@bridge_q:{server}");
    let (s, r) = as_call(
        &base,
        reqwest::Method::POST,
        "/v3/register",
        None,
        json!({"type": "m.login.application_service", "username": "bridge_q"}),
    )
    .await?;
    ensure!(s == 200, "{s} {r}");
    let (s, room) = as_call(
        &base,
        reqwest::Method::POST,
        "/v3/createRoom",
        Some(&puppet),
        json!({}),
    )
    .await?;
    ensure!(s == 200, "{s} {room}");
    let room_id = room["room_id"].as_str().context("room_id")?.to_owned();
    const N: usize = 250;
    for i in 0..N {
        let (s, r) = as_call(
            &base,
            reqwest::Method::PUT,
            &format!("/v3/rooms/{room_id}/send/m.room.message/t{i}"),
            Some(&puppet),
            json!({"msgtype": "m.text", "body": format!("m{i}")}),
        )
        .await?;
        ensure!(s == 200, "send {i} as the appservice: {s} {r}");
    }
    // An ordinary user is held to the limit.
    let bob = warren_tests::RawUser::register(base.clone(), "bob").await?;
    let bob_room = bob.create_room(json!({})).await?;
    let mut limited = false;
    for i in 0..10 {
        let (s, _) = bob
            .call(
                reqwest::Method::PUT,
                &format!("/rooms/{bob_room}/send/m.room.message/b{i}"),
                json!({"msgtype": "m.text", "body": "x"}),
            )
            .await?;
        limited |= s == 429;
    }
    ensure!(limited, "an ordinary user was never rate limited");
    warren_tests::wait_until(Duration::from_secs(30), "a failed attempt", async || {
        Ok(!fake.attempts.lock().is_empty())
    })
    .await?;
    let (first_txn, first_body, auth, _) = fake.attempts.lock()[0].clone();
    ensure!(auth == "Bearer hs-tok", "{auth}");
    shutdown_node(node).await?;

    fake.down.store(false, std::sync::atomic::Ordering::SeqCst);
    let node = start_node_with(config()).await?;
    warren_tests::wait_until(Duration::from_secs(60), "every message", async || {
        let bodies: Vec<String> = fake
            .taken_events()
            .iter()
            .filter(|e| e["room_id"] == room_id.as_str() && e["type"] == "m.room.message")
            .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
            .collect();
        Ok(bodies.len() >= N)
    })
    .await?;
    let taken = fake.taken();
    ensure!(
        taken[0].0 == first_txn && taken[0].1 == first_body,
        "the pending transaction was not resent as it was: {} vs {first_txn}",
        taken[0].0
    );
    let mut last = 0u64;
    let mut ids = std::collections::HashSet::new();
    for (txn, body) in &taken {
        let n: u64 = txn.parse().context("numeric txn id")?;
        ensure!(n > last, "transaction ids not increasing: {n} after {last}");
        last = n;
        let events = body["events"].as_array().context("events")?;
        ensure!(
            events.len() <= 100,
            "{} events in one transaction",
            events.len()
        );
        for e in events {
            ensure!(
                ids.insert(e["event_id"].to_string()),
                "{} sent twice",
                e["event_id"]
            );
        }
    }
    let bodies: Vec<String> = fake
        .taken_events()
        .iter()
        .filter(|e| e["room_id"] == room_id.as_str() && e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    let expected: Vec<String> = (0..N).map(|i| format!("m{i}")).collect();
    ensure!(
        bodies == expected,
        "out of order: {:?}",
        &bodies[..bodies.len().min(10)]
    );
    // Bob's room has no user of the appservice: none of it was sent.
    ensure!(
        !fake
            .taken_events()
            .iter()
            .any(|e| e["room_id"] == bob_room.as_str()),
        "an unrelated room reached the appservice"
    );
    shutdown_node(node).await
}

/// MSC3202: the appservice acts as one of its users' devices, and gets the to-device
/// messages for its users with the device's one-time key counts (MSC4203's field).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_masquerading_and_to_device_reach_the_appservice() -> anyhow::Result<()> {
    let (fake, url) = fake_appservice().await;
    let dir = tempfile::tempdir()?;
    let reg = dir.path().join("r.yaml");
    std::fs::write(
        &reg,
        registration("devices", Some(&url), "as-tok", "hs-tok")
            + "org.matrix.msc3202: true\nprotocols: [fakechat]\n",
    )?;
    let mut config = test_config(dir.path());
    config.app_service_config_files = vec![reg];
    let node = start_node_with(config).await?;
    let base = node.client_url();
    let server = node.server_name().to_owned();
    let puppet = format!("@bridge_d:{server}");
    as_call(
        &base,
        reqwest::Method::POST,
        "/v3/register",
        None,
        json!({"type": "m.login.application_service", "username": "bridge_d", "inhibit_login": true}),
    )
    .await?;
    let (s, login) = as_call(
        &base,
        reqwest::Method::POST,
        "/v3/login",
        None,
        json!({"type": "m.login.application_service", "identifier": {"type": "m.id.user", "user": puppet}, "device_id": "PUPPETDEV"}),
    )
    .await?;
    ensure!(s == 200 && login["device_id"] == "PUPPETDEV", "{s} {login}");
    let (s, who) = as_call(
        &base,
        reqwest::Method::GET,
        "/v3/account/whoami?device_id=PUPPETDEV",
        Some(&puppet),
        Value::Null,
    )
    .await?;
    ensure!(s == 200 && who["device_id"] == "PUPPETDEV", "{s} {who}");
    let (s, e) = as_call(
        &base,
        reqwest::Method::GET,
        "/v3/account/whoami?device_id=NOSUCH",
        Some(&puppet),
        Value::Null,
    )
    .await?;
    ensure!(s == 403, "an unknown device: {s} {e}");
    // The device uploads a one-time key, as the appservice.
    let (s, up) = as_call(
        &base,
        reqwest::Method::POST,
        "/v3/keys/upload?device_id=PUPPETDEV",
        Some(&puppet),
        json!({"one_time_keys": {"signed_curve25519:AAAA": {"key": "k", "signatures": {}}}}),
    )
    .await?;
    ensure!(s == 200, "{s} {up}");
    let bob = warren_tests::RawUser::register(base.clone(), "bob").await?;
    bob.ok(
        reqwest::Method::PUT,
        "/sendToDevice/m.test.hello/td1",
        json!({"messages": {puppet.clone(): {"PUPPETDEV": {"hi": "there"}}}}),
    )
    .await?;
    warren_tests::wait_until(
        Duration::from_secs(30),
        "the to-device message",
        async || {
            Ok(fake
                .taken()
                .iter()
                .any(|(_, b)| b["de.sorunome.msc2409.to_device"].is_array()))
        },
    )
    .await?;
    let body = fake
        .taken()
        .into_iter()
        .map(|(_, b)| b)
        .find(|b| b["de.sorunome.msc2409.to_device"].is_array())
        .context("a transaction with to-device")?;
    let td = &body["de.sorunome.msc2409.to_device"][0];
    ensure!(
        td["type"] == "m.test.hello"
            && td["sender"] == bob.id()
            && td["to_user_id"] == puppet.as_str()
            && td["to_device_id"] == "PUPPETDEV"
            && td["content"]["hi"] == "there",
        "{td}"
    );
    let count = &body["org.matrix.msc3202.device_one_time_keys_count"][&puppet]["PUPPETDEV"];
    ensure!(count["signed_curve25519"] == 1, "{body}");
    // Third-party lookups go to the appservice that declares the protocol.
    let protocols = bob
        .ok(reqwest::Method::GET, "/thirdparty/protocols", Value::Null)
        .await?;
    ensure!(
        protocols["fakechat"]["instances"][0]["instance_id"] == "devices|fakenet"
            && protocols["mesh"].is_object(),
        "{protocols}"
    );
    let users = bob
        .ok(
            reqwest::Method::GET,
            "/thirdparty/user/fakechat?nick=zoe",
            Value::Null,
        )
        .await?;
    ensure!(
        users[0]["userid"] == "@bridge_zoe:x" && users[0]["fields"]["nick"] == "zoe",
        "{users}"
    );
    let (s, _) = bob
        .call(reqwest::Method::GET, "/thirdparty/user/nosuch", Value::Null)
        .await?;
    ensure!(s == 404, "an undeclared protocol: {s}");
    shutdown_node(node).await
}
