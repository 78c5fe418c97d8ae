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
    let call =
        async |method: reqwest::Method, path: &str, body: Value| -> anyhow::Result<(u16, Value)> {
            let r = http
                .request(method, format!("{base}/_matrix/client{path}"))
                .bearer_auth("as-tok")
                .json(&body)
                .send()
                .await?;
            Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
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
