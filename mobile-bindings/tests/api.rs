//! The API as an app sees it, from Rust: start/stop/restart, bad configurations, two
//! nodes in one process, the listener.
//!
//! The tests drive the async API from a plain current-thread tokio runtime, the way a
//! foreign executor drives it: every `Node` method hands its work to the node's own
//! runtime and only awaits the result.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;
use warren_mobile::{Node, NodeConfig, NodeListener, NodeState, Notification, WarrenError};

const WAIT: Duration = Duration::from_secs(20);

fn config(data_dir: &std::path::Path) -> NodeConfig {
    NodeConfig {
        data_dir: data_dir.display().to_string(),
        client_port: 0,
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0".into()],
        bootstrap_peers: Vec::new(),
        mdns: false,
        log_level: "warn".into(),
    }
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("no temp dir: {e}"),
    }
}

async fn start(config: NodeConfig) -> Arc<Node> {
    match Node::start(config).await {
        Ok(node) => node,
        Err(e) => panic!("start failed: {e:?}"),
    }
}

async fn stop(node: &Node) {
    if let Err(e) = node.stop().await {
        panic!("stop failed: {e:?}");
    }
}

/// What a listener heard.
#[derive(Default)]
struct Recorder {
    connected: Mutex<Vec<String>>,
    disconnected: Mutex<Vec<String>>,
    states: Mutex<Vec<NodeState>>,
    notifications: Mutex<Vec<Notification>>,
}

impl NodeListener for Recorder {
    fn on_peer_connected(&self, server_name: String) {
        self.connected.lock().push(server_name);
    }
    fn on_peer_disconnected(&self, server_name: String) {
        self.disconnected.lock().push(server_name);
    }
    fn on_state_changed(&self, state: NodeState) {
        self.states.lock().push(state);
    }
    fn on_notification(&self, notification: Notification) {
        self.notifications.lock().push(notification);
    }
}

/// Poll `check` until it holds or [`WAIT`] passes.
async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn start_stop_restart_on_the_same_directory() {
    let dir = tempdir();
    let node = start(config(dir.path())).await;
    let name = node.server_name();
    assert_eq!(node.state(), NodeState::Running);
    assert!(node.client_url().starts_with("http://127.0.0.1:"));
    assert!(node.peer_id().starts_with("12D3KooW"), "{}", node.peer_id());
    let addrs = match node.listen_addrs().await {
        Ok(addrs) => addrs,
        Err(e) => panic!("listen_addrs: {e:?}"),
    };
    assert!(
        !addrs.is_empty() && addrs.iter().all(|a| a.starts_with("/ip4/127.0.0.1/tcp/")),
        "{addrs:?}"
    );
    let creds = match node.ensure_owner_account("owner".into(), "pw".into()).await {
        Ok(creds) => creds,
        Err(e) => panic!("ensure_owner_account: {e:?}"),
    };
    assert_eq!(creds.user_id, format!("@owner:{name}"));
    assert!(node.kick_backoff().is_ok());

    stop(&node).await;
    stop(&node).await; // a second stop is a no-op
    assert_eq!(node.state(), NodeState::Stopped);
    assert!(matches!(node.peers().await, Err(WarrenError::Stopped)));
    assert!(matches!(node.kick_backoff(), Err(WarrenError::Stopped)));
    assert!(matches!(
        node.ensure_owner_account("owner".into(), "pw".into()).await,
        Err(WarrenError::Stopped)
    ));

    // Same directory, same identity, same account.
    let again = start(config(dir.path())).await;
    assert_eq!(again.server_name(), name);
    let second = match again
        .ensure_owner_account("owner".into(), "pw".into())
        .await
    {
        Ok(creds) => creds,
        Err(e) => panic!("ensure_owner_account after restart: {e:?}"),
    };
    assert_eq!(second.user_id, creds.user_id);
    assert_ne!(second.device_id, creds.device_id, "a new device each time");
    assert!(matches!(
        again
            .ensure_owner_account("owner".into(), "not the password".into())
            .await,
        Err(WarrenError::Auth { .. })
    ));
    assert!(matches!(
        again
            .ensure_owner_account("Not Valid".into(), "pw".into())
            .await,
        Err(WarrenError::InvalidArgument { .. })
    ));
    stop(&again).await;
}

#[tokio::test]
async fn dropping_without_stop_frees_the_directory() {
    let dir = tempdir();
    let node = start(config(dir.path())).await;
    drop(node);
    // The drop shuts the node down on a thread of its own; the lock goes with it.
    let deadline = Instant::now() + WAIT;
    let node = loop {
        match Node::start(config(dir.path())).await {
            Ok(node) => break node,
            Err(WarrenError::DataDir { message }) if Instant::now() < deadline => {
                assert!(message.contains("in use"), "{message}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("restart after drop: {e:?}"),
        }
    };
    stop(&node).await;
}

#[tokio::test]
async fn bad_configurations_are_errors() {
    let dir = tempdir();

    // A data directory that cannot be created: its parent is a file.
    let file = dir.path().join("a-file");
    if let Err(e) = std::fs::write(&file, b"not a directory") {
        panic!("cannot write {}: {e}", file.display());
    }
    match Node::start(config(&file.join("node"))).await {
        Err(WarrenError::DataDir { message }) => assert!(!message.is_empty()),
        Err(e) => panic!("wrong error for an unwritable directory: {e:?}"),
        Ok(_) => panic!("started in an unwritable directory"),
    }

    // The client port is taken.
    let taken = match std::net::TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => panic!("cannot bind: {e}"),
    };
    let port = match taken.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no local addr: {e}"),
    };
    let node_dir = dir.path().join("node");
    let mut busy = config(&node_dir);
    busy.client_port = port;
    match Node::start(busy).await {
        Err(WarrenError::AddressInUse { message }) => {
            assert!(message.contains(&port.to_string()), "{message}")
        }
        Err(e) => panic!("wrong error for a port in use: {e:?}"),
        Ok(_) => panic!("started on a port in use"),
    }

    // Bad input never gets as far as the node.
    let mut bad = config(&node_dir);
    bad.listen_addrs = vec!["not a multiaddr".into()];
    assert!(matches!(
        Node::start(bad).await,
        Err(WarrenError::InvalidArgument { .. })
    ));
    let mut bad = config(&node_dir);
    bad.bootstrap_peers = vec!["/ip4/127.0.0.1/tcp/1".into()]; // no /p2p/<peer id>
    assert!(matches!(
        Node::start(bad).await,
        Err(WarrenError::InvalidArgument { .. })
    ));
    let mut bad = config(&node_dir);
    bad.data_dir = "  ".into();
    assert!(matches!(
        Node::start(bad).await,
        Err(WarrenError::InvalidArgument { .. })
    ));
    let mut bad = config(&node_dir);
    bad.log_level = "warn,=[".into();
    assert!(matches!(
        Node::start(bad).await,
        Err(WarrenError::InvalidArgument { .. })
    ));

    // The failed starts left the directory usable; a second node on it is refused.
    let node = start(config(&node_dir)).await;
    match Node::start(config(&node_dir)).await {
        Err(WarrenError::DataDir { message }) => assert!(message.contains("in use"), "{message}"),
        Err(e) => panic!("wrong error for a directory in use: {e:?}"),
        Ok(_) => panic!("two nodes on one directory"),
    }
    assert!(matches!(
        node.connect("garbage".into()).await,
        Err(WarrenError::InvalidArgument { .. })
    ));
    assert!(matches!(
        node.set_log_level(String::new()),
        Err(WarrenError::InvalidArgument { .. })
    ));
    assert!(node.set_log_level("warn".into()).is_ok());
    stop(&node).await;
}

#[tokio::test]
async fn two_nodes_connect_and_see_each_other() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = start(config(dir_a.path())).await;
    let b = start(config(dir_b.path())).await;
    let heard_by_a = Arc::new(Recorder::default());
    a.set_listener(Some(heard_by_a.clone()));

    let addr = match a.listen_addrs().await {
        Ok(addrs) => match addrs.into_iter().next() {
            Some(addr) => addr,
            None => panic!("a listens nowhere"),
        },
        Err(e) => panic!("listen_addrs: {e:?}"),
    };
    match b.connect(addr).await {
        Ok(peer) => assert_eq!(peer, a.peer_id()),
        Err(e) => panic!("connect: {e:?}"),
    }

    for (node, other) in [(&a, &b), (&b, &a)] {
        let want = other.server_name();
        wait_until("each node to list the other", async || {
            node.peers().await.is_ok_and(|peers| {
                peers.iter().any(|p| {
                    p.server_name.as_deref() == Some(want.as_str())
                        && p.peer_id == other.peer_id()
                        && p.connection == warren_mobile::ConnectionKind::Direct
                        && !p.addresses.is_empty()
                })
            })
        })
        .await;
    }
    let b_name = b.server_name();
    wait_until("a's listener to hear about b", async || {
        heard_by_a.connected.lock().contains(&b_name)
    })
    .await;
    assert!(a.network_changed().await.is_ok());

    stop(&b).await;
    wait_until("a's listener to hear b go", async || {
        heard_by_a.disconnected.lock().contains(&b_name)
    })
    .await;
    stop(&a).await;
    wait_until("a's listener to hear a stop", async || {
        heard_by_a.states.lock().last() == Some(&NodeState::Stopped)
    })
    .await;
    assert_eq!(
        heard_by_a.states.lock().as_slice(),
        [NodeState::Running, NodeState::Stopping, NodeState::Stopped]
    );
}

#[tokio::test]
async fn a_cancelled_start_neither_panics_nor_keeps_the_directory() {
    let dir = tempdir();
    // Dropped half-way, inside this runtime: the node's runtime must go without blocking.
    let cancelled = tokio::time::timeout(Duration::from_millis(1), Node::start(config(dir.path())));
    if let Ok(Ok(node)) = cancelled.await {
        // Started within the millisecond after all.
        stop(&node).await;
    }
    let deadline = Instant::now() + WAIT;
    let node = loop {
        match Node::start(config(dir.path())).await {
            Ok(node) => break node,
            Err(WarrenError::DataDir { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("start after a cancelled start: {e:?}"),
        }
    };
    stop(&node).await;
}

/// Percent-encode a path segment.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn users_on_two_embedded_nodes_join_a_room_together() {
    let (dir_a, dir_b) = (tempdir(), tempdir());
    let a = start(config(dir_a.path())).await;
    let b = start(config(dir_b.path())).await;
    let addr = match a.listen_addrs().await {
        Ok(addrs) => addrs.into_iter().next().unwrap_or_default(),
        Err(e) => panic!("listen_addrs: {e:?}"),
    };
    if let Err(e) = b.connect(addr).await {
        panic!("connect: {e:?}");
    }
    let alice = match a
        .ensure_owner_account("alice".into(), "alice-password".into())
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("alice: {e:?}"),
    };
    let bob = match b
        .ensure_owner_account("bob".into(), "bob-password".into())
        .await
    {
        Ok(c) => c,
        Err(e) => panic!("bob: {e:?}"),
    };
    let recorder = Arc::new(Recorder::default());
    a.set_listener(Some(recorder.clone()));
    let http = reqwest::Client::new();
    let call =
        async |method: reqwest::Method, url: String, token: &str, body: serde_json::Value| {
            let resp = match http
                .request(method, &url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => panic!("{url}: {e}"),
            };
            let status = resp.status().as_u16();
            (
                status,
                resp.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        };
    let (status, room) = call(
        reqwest::Method::POST,
        format!("{}/_matrix/client/v3/createRoom", a.client_url()),
        &alice.access_token,
        serde_json::json!({"preset": "public_chat"}),
    )
    .await;
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap_or_default().to_owned();
    let (status, joined) = call(
        reqwest::Method::POST,
        format!(
            "{}/_matrix/client/v3/join/{}?server_name={}",
            b.client_url(),
            enc(&room_id),
            a.server_name()
        ),
        &bob.access_token,
        serde_json::json!({}),
    )
    .await;
    assert_eq!(
        status, 200,
        "bob joins alice's room on the other node: {joined}"
    );
    let (status, _) = call(
        reqwest::Method::PUT,
        format!(
            "{}/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
            b.client_url(),
            enc(&room_id)
        ),
        &bob.access_token,
        serde_json::json!({"msgtype": "m.text", "body": "hello from the other phone"}),
    )
    .await;
    assert_eq!(status, 200);
    let messages_url = format!(
        "{}/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20",
        a.client_url(),
        enc(&room_id)
    );
    wait_until("alice's node to have bob's message", async || {
        let (_, page) = call(
            reqwest::Method::GET,
            messages_url.clone(),
            &alice.access_token,
            serde_json::json!({}),
        )
        .await;
        page["chunk"].as_array().is_some_and(|evs| {
            evs.iter()
                .any(|e| e["content"]["body"] == "hello from the other phone")
        })
    })
    .await;
    // Alice's phone shows it without any push service: her node's listener was told.
    wait_until("alice's listener to get the notification", async || {
        !recorder.notifications.lock().is_empty()
    })
    .await;
    let n = recorder.notifications.lock()[0].clone();
    assert_eq!(n.user_id, alice.user_id);
    assert_eq!(n.room_id, room_id);
    assert_eq!(n.sender, bob.user_id);
    assert_eq!(n.body.as_deref(), Some("hello from the other phone"));
    assert_eq!(n.notification_count, 1);
    stop(&b).await;
    stop(&a).await;
}

/// The listener gets a notification for each event the push rules say should notify a
/// user of the node, with the details an app shows; none for the sender.
#[tokio::test]
async fn the_listener_gets_local_notifications() {
    let dir = tempdir();
    let node = start(config(dir.path())).await;
    let recorder = Arc::new(Recorder::default());
    node.set_listener(Some(recorder.clone()));
    let account = async |name: &str| match node.ensure_owner_account(name.into(), "pw".into()).await
    {
        Ok(c) => c,
        Err(e) => panic!("{name}: {e:?}"),
    };
    let alice = account("alice").await;
    let bob = account("bob").await;
    let http = reqwest::Client::new();
    let call =
        async |method: reqwest::Method, path: String, token: &str, body: serde_json::Value| {
            let url = format!("{}/_matrix/client/v3{path}", node.client_url());
            let resp = match http
                .request(method, &url)
                .bearer_auth(token)
                .json(&body)
                .send()
                .await
            {
                Ok(r) => r,
                Err(e) => panic!("{url}: {e}"),
            };
            let status = resp.status().as_u16();
            let body = resp.json::<serde_json::Value>().await.unwrap_or_default();
            assert_eq!(status, 200, "{url}: {body}");
            body
        };
    let room = call(
        reqwest::Method::POST,
        "/createRoom".into(),
        &alice.access_token,
        serde_json::json!({"name": "Lounge", "preset": "private_chat", "invite": [bob.user_id]}),
    )
    .await;
    let room_id = room["room_id"].as_str().unwrap_or_default().to_owned();
    call(
        reqwest::Method::POST,
        format!("/join/{}", enc(&room_id)),
        &bob.access_token,
        serde_json::json!({}),
    )
    .await;
    let sent = call(
        reqwest::Method::PUT,
        format!("/rooms/{}/send/m.room.message/n1", enc(&room_id)),
        &alice.access_token,
        serde_json::json!({"msgtype": "m.text", "body": "hi bob",
                           "m.mentions": {"user_ids": [bob.user_id]}}),
    )
    .await;
    wait_until("the notification", async || {
        !recorder.notifications.lock().is_empty()
    })
    .await;
    let got = recorder.notifications.lock().clone();
    assert_eq!(got.len(), 1, "{got:?}");
    let n = &got[0];
    assert_eq!(n.user_id, bob.user_id);
    assert_eq!(n.room_id, room_id);
    assert_eq!(n.event_id, sent["event_id"].as_str().unwrap_or_default());
    assert_eq!(n.sender, alice.user_id);
    assert_eq!(n.room_name.as_deref(), Some("Lounge"));
    assert_eq!(n.body.as_deref(), Some("hi bob"));
    assert!(n.highlight);
    assert_eq!((n.notification_count, n.highlight_count), (1, 1));
    stop(&node).await;
}
