//! A mesh of real nodes over libp2p: catch-up after a partition, multi-hop delivery by
//! anti-entropy (A–B–C with no A–C link), to-device messages across servers, and
//! device-list updates with proxied key queries.
//!
//! Clients speak raw HTTP; every wait is on a condition over a `/sync`.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use tempfile::TempDir;
use warren_core::federation::client::encode;
use warren_tests::*;

const WAIT: Duration = Duration::from_secs(60);

/// Anti-entropy period in these tests (the default is a minute).
const ANTI_ENTROPY: Duration = Duration::from_millis(500);

/// A raw-HTTP user ([`RawUser`]) with the calls these tests make on top.
pub(crate) struct User(RawUser);

impl std::ops::Deref for User {
    type Target = RawUser;
    fn deref(&self) -> &RawUser {
        &self.0
    }
}

impl User {
    pub(crate) async fn register(node: &FederatedNode, localpart: &str) -> anyhow::Result<User> {
        Ok(User(
            RawUser::register(node.node.client_url(), localpart).await?,
        ))
    }

    /// The same account on a restarted node.
    pub(crate) fn on(&self, node: &FederatedNode) -> User {
        User(RawUser {
            base: node.node.client_url(),
            session: self.session.clone(),
        })
    }

    pub(crate) async fn device_id(&self) -> anyhow::Result<String> {
        let (status, me) = self
            .call(reqwest::Method::GET, "/account/whoami", json!({}))
            .await?;
        ensure!(status == 200, "whoami: {status} {me}");
        Ok(me["device_id"].as_str().context("device_id")?.to_owned())
    }

    pub(crate) async fn join_via(&self, room: &str, via: &FederatedNode) -> anyhow::Result<()> {
        self.post(
            &format!("/join/{}?server_name={}", path_segment(room), via.name()),
            json!({}),
        )
        .await?;
        Ok(())
    }

    /// A sync without waiting; initial (timeline up to 50 events per room) or since a
    /// token.
    pub(crate) async fn sync(&self, since: Option<&str>) -> anyhow::Result<Value> {
        let filter = encode(r#"{"room":{"timeline":{"limit":50}}}"#);
        let mut url = format!(
            "{}/_matrix/client/v3/sync?timeout=0&filter={filter}",
            self.base
        );
        if let Some(since) = since {
            url.push_str(&format!("&since={}", encode(since)));
        }
        let response = http_client()?
            .get(url)
            .bearer_auth(&self.session.access_token)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "/sync: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Initial syncs until `cond` holds; returns that body.
    pub(crate) async fn sync_until(
        &self,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let label = format!("{} sees {what}", self.id());
        wait_until(WAIT, &label, async || {
            last = self.sync(None).await?;
            Ok(cond(&last))
        })
        .await?;
        Ok(last)
    }
}

pub(crate) fn room_events<'a>(sync: &'a Value, room: &str) -> Vec<&'a Value> {
    let r = &sync["rooms"]["join"][room];
    r["state"]["events"]
        .as_array()
        .into_iter()
        .chain(r["timeline"]["events"].as_array())
        .flatten()
        .collect()
}

pub(crate) fn has_message(sync: &Value, room: &str, body: &str) -> bool {
    room_events(sync, room)
        .iter()
        .any(|e| e["type"] == "m.room.message" && e["content"]["body"] == body)
}

pub(crate) fn is_joined(sync: &Value, room: &str, user: &str) -> bool {
    room_events(sync, room)
        .iter()
        .rfind(|e| e["type"] == "m.room.member" && e["state_key"] == user)
        .is_some_and(|e| e["content"]["membership"] == "join")
}

/// `alice` says `there` in `room` and waits until `carol` sees it; `carol` answers
/// `back` and waits until `alice` sees that.
pub(crate) async fn talk_both_ways(
    alice: &User,
    carol: &User,
    room: &str,
    there: &str,
    back: &str,
) -> anyhow::Result<()> {
    alice.say(room, there).await?;
    carol
        .sync_until(&format!("{} saying {there:?}", alice.id()), |s| {
            has_message(s, room, there)
        })
        .await?;
    carol.say(room, back).await?;
    alice
        .sync_until(&format!("{} saying {back:?}", carol.id()), |s| {
            has_message(s, room, back)
        })
        .await?;
    Ok(())
}

/// A node whose anti-entropy runs every [`ANTI_ENTROPY`], with the given P2P settings.
pub(crate) async fn mesh_node(
    dir: &std::path::Path,
    p2p: warren_p2p::P2pConfig,
) -> anyhow::Result<FederatedNode> {
    mesh_node_with(dir, p2p, |_| {}).await
}

/// [`mesh_node`] with more of the configuration changed by `f`.
pub(crate) async fn mesh_node_with(
    dir: &std::path::Path,
    p2p: warren_p2p::P2pConfig,
    f: impl FnOnce(&mut warren_core::Config),
) -> anyhow::Result<FederatedNode> {
    let mut config = test_config(dir);
    config.anti_entropy_interval = ANTI_ENTROPY;
    f(&mut config);
    let node = start_node_with(config).await?;
    let p2p = warren_p2p::P2p::attach(&node, p2p).await?;
    p2p.wait_listening(WAIT).await?;
    Ok(FederatedNode { node, p2p })
}

/// Two [`mesh_node`]s with the default test P2P settings, `a` connected to `b` (see
/// [`connected_nodes`]).
pub(crate) async fn mesh_pair() -> anyhow::Result<(TempDir, TempDir, FederatedNode, FederatedNode)>
{
    connected_nodes(async |dir: &Path| mesh_node(dir, test_p2p_config()).await).await
}

/// Test P2P settings where no node answers DHT queries or relays, so a node only ever
/// reaches the peers it is connected to explicitly.
pub(crate) fn isolated_p2p() -> warren_p2p::P2pConfig {
    warren_p2p::P2pConfig {
        dht_mode: warren_p2p::DhtMode::Client,
        relay_server: false,
        ..test_p2p_config()
    }
}

/// A public room of Alice's (on `a`) that Bob has joined, once Alice sees his join.
pub(crate) async fn shared_room(
    alice: &User,
    bob: &User,
    a: &FederatedNode,
) -> anyhow::Result<String> {
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&room, a).await?;
    alice
        .sync_until("Bob's join", |s| is_joined(s, &room, bob.id()))
        .await?;
    Ok(room)
}

/// Waits until the rows `a` holds for the server `b_name` satisfy `ok`.
pub(crate) async fn outbox_depth_until(
    a: &FederatedNode,
    b_name: &str,
    what: &str,
    ok: impl Fn(i64) -> bool,
) -> anyhow::Result<()> {
    let a_server = a.node.server().clone();
    wait_until(WAIT, what, || {
        let depth = a_server
            .db
            .read(|c| warren_core::storage::outbox_depth(c, b_name))
            .unwrap_or(-1);
        let done = ok(depth);
        async move { Ok(done) }
    })
    .await
}

/// Whether `a` has a connection to `b`.
async fn connected(a: &FederatedNode, b: &FederatedNode) -> anyhow::Result<bool> {
    let name = b.name();
    Ok(a.p2p
        .peers()
        .await?
        .iter()
        .any(|p| p.server_name.as_deref() == Some(name.as_str())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_node_catches_up_on_what_it_missed() -> anyhow::Result<()> {
    let (_da, db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = shared_room(&alice, &bob, &a).await?;

    // B goes away; Alice talks meanwhile.
    b.stop().await?;
    for i in 0..5 {
        alice.say(&room, &format!("missed {i}")).await?;
    }

    // B comes back on the same data directory (new addresses) and dials A.
    let b = restarted(db.path(), &a).await?;
    let bob = bob.on(&b);
    bob.sync_until("the 5 missed messages", |s| {
        (0..5).all(|i| has_message(s, &room, &format!("missed {i}")))
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// The outbox keeps only so much for a peer that does not answer: what it drops is not
/// lost, anti-entropy brings it to the peer when it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_outbox_drops_for_an_absent_peer_arrives_by_anti_entropy() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = mesh_node_with(da.path(), test_p2p_config(), |c| c.outbox.max_rows = 2).await?;
    let b = mesh_node(db.path(), test_p2p_config()).await?;
    connect_nodes(&a, &b).await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = shared_room(&alice, &bob, &a).await?;

    let b_name = b.name();
    b.stop().await?;
    // Eight: an initial /sync timeline shows the last ten events.
    for i in 0..8 {
        alice.say(&room, &format!("dropped {i}")).await?;
    }
    // A fails to deliver and trims B's queue to its bound.
    outbox_depth_until(&a, &b_name, "A's outbox for B trimmed to 2 rows", |d| {
        (0..=2).contains(&d)
    })
    .await?;

    let b = restarted(db.path(), &a).await?;
    let bob = bob.on(&b);
    bob.sync_until("all 8 messages", |s| {
        (0..8).all(|i| has_message(s, &room, &format!("dropped {i}")))
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_a_node_between_two_that_never_meet() -> anyhow::Result<()> {
    let (da, db, dc) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let a = mesh_node(da.path(), isolated_p2p()).await?;
    let b = mesh_node(db.path(), isolated_p2p()).await?;
    let c = mesh_node(dc.path(), isolated_p2p()).await?;
    // A–B and B–C only.
    connect_nodes(&a, &b).await?;
    connect_nodes(&c, &b).await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let carol = User::register(&c, "carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&room, &a).await?;
    carol.join_via(&room, &b).await?;
    // A hears of Carol's join from B (B's outbox forwards the join it accepted).
    alice
        .sync_until("Carol's join", |s| is_joined(s, &room, carol.id()))
        .await?;

    // Both ways through B.
    talk_both_ways(&alice, &carol, &room, "over the hill", "and back").await?;

    // The two ends never had a connection: delivery was multi-hop.
    ensure!(!connected(&a, &c).await?, "A and C got connected");
    ensure!(!connected(&c, &a).await?, "C and A got connected");

    // C goes away; Alice says more than one `get_missing_events` call carries. C comes
    // back, still knowing only B, and catches up on all of it through B.
    c.stop().await?;
    for i in 0..45 {
        alice.say(&room, &format!("while away {i}")).await?;
    }
    let bob_sees = |s: &Value| has_message(s, &room, "while away 44");
    bob.sync_until("Alice's last message", bob_sees).await?;
    let c = mesh_node(dc.path(), isolated_p2p()).await?;
    let carol = carol.on(&c);
    connect_nodes(&c, &b).await?;
    carol
        .sync_until("all 45 messages, through B", |s| {
            (0..45).all(|i| has_message(s, &room, &format!("while away {i}")))
        })
        .await?;
    ensure!(!connected(&c, &a).await?, "C and A got connected");
    a.stop().await?;
    b.stop().await?;
    c.stop().await?;
    Ok(())
}

/// Waits until `a` has nothing queued for `b` (every transaction taken).
async fn outbox_drained(a: &FederatedNode, b: &FederatedNode) -> anyhow::Result<()> {
    outbox_depth_until(a, &b.name(), "A's outbox for B drained", |d| d == 0).await
}

/// The to-device events of one `/sync` since `since`.
async fn to_device_since(user: &User, since: &str) -> anyhow::Result<Vec<Value>> {
    let after = user.sync(Some(since)).await?;
    Ok(after["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// A peer cannot fill the to-device inbox of a user who shares no room with any of its
/// users: the transaction is accepted (and acknowledged), the messages are dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn to_device_for_strangers_is_dropped() -> anyhow::Result<()> {
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let carol = User::register(&b, "carol").await?;
    let carol_device = carol.device_id().await?;
    let start = carol.sync(None).await?;
    let since = start["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();
    let body = json!({"messages": {carol.id(): {&carol_device: {"spam": true}}}});
    alice.put("/sendToDevice/m.test.spam/txn1", body).await?;
    outbox_drained(&a, &b).await?;
    let got = to_device_since(&carol, &since).await?;
    ensure!(
        got.is_empty(),
        "a stranger's device message was delivered: {got:?}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_to_device_message_reaches_a_remote_device_once() -> anyhow::Result<()> {
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let bob_device = bob.device_id().await?;
    // A node takes device messages from another only for users who share a room with
    // one of its users (see `to_device_for_strangers_is_dropped` below).
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&room, &a).await?;
    let start = bob.sync(None).await?;
    let since = start["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();

    let body = json!({"messages": {bob.id(): {&bob_device: {"secret": "s3cr3t"}}}});
    alice
        .put("/sendToDevice/m.test.secret/txn1", body.clone())
        .await?;
    // A retried request is not sent again.
    alice.put("/sendToDevice/m.test.secret/txn1", body).await?;

    let mut got = Value::Null;
    wait_until(WAIT, "Bob's to-device message", async || {
        got = bob.sync(Some(&since)).await?;
        Ok(got["to_device"]["events"]
            .as_array()
            .is_some_and(|e| !e.is_empty()))
    })
    .await?;
    let events = got["to_device"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(events.len() == 1, "to-device events: {events:?}");
    ensure!(events[0]["sender"] == alice.id(), "{events:?}");
    ensure!(events[0]["type"] == "m.test.secret", "{events:?}");
    ensure!(events[0]["content"]["secret"] == "s3cr3t", "{events:?}");

    // Nothing more arrives: acknowledge, wait until A has nothing left queued for B
    // (the retried send went out, or was never queued), sync again.
    let next = got["next_batch"].as_str().context("next_batch")?.to_owned();
    outbox_drained(&a, &b).await?;
    let more = to_device_since(&bob, &next).await?;
    ensure!(more.is_empty(), "delivered again: {more:?}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Canonical JSON of a device's keys, signed by its ed25519 key (hand-built: the
/// object is small and its keys are written in sorted order).
pub(crate) fn signed_device_keys(user_id: &str, device_id: &str) -> Value {
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};
    let b64 = base64::engine::general_purpose::STANDARD_NO_PAD;
    let key = SigningKey::from_bytes(&[42; 32]);
    let ed = b64.encode(key.verifying_key().to_bytes());
    let curve = b64.encode([7u8; 32]);
    let canonical = format!(
        r#"{{"algorithms":["m.olm.v1.curve25519-aes-sha2","m.megolm.v1.aes-sha2"],"device_id":"{device_id}","keys":{{"curve25519:{device_id}":"{curve}","ed25519:{device_id}":"{ed}"}},"user_id":"{user_id}"}}"#
    );
    let sig = b64.encode(key.sign(canonical.as_bytes()).to_bytes());
    let mut v: Value = serde_json::from_str(&canonical).unwrap_or_default();
    v["signatures"] = json!({ user_id: { format!("ed25519:{device_id}"): sig } });
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_device_key_changes_are_seen_and_queried() -> anyhow::Result<()> {
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&room, &a).await?;
    let joined = alice
        .sync_until("Bob's join", |s| is_joined(s, &room, bob.id()))
        .await?;
    let since = joined["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();

    let bob_device = bob.device_id().await?;
    bob.post(
        "/keys/upload",
        json!({"device_keys": signed_device_keys(bob.id(), &bob_device)}),
    )
    .await?;

    let mut got = Value::Null;
    wait_until(WAIT, "Bob in Alice's device_lists.changed", async || {
        got = alice.sync(Some(&since)).await?;
        Ok(got["device_lists"]["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == bob.id())))
    })
    .await?;
    let (status, changes) = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/keys/changes?from={}&to={}",
                encode(&since),
                encode(got["next_batch"].as_str().context("next_batch")?)
            ),
            json!({}),
        )
        .await?;
    ensure!(status == 200, "/keys/changes: {status} {changes}");
    ensure!(
        changes["changed"]
            .as_array()
            .is_some_and(|c| c.iter().any(|u| u == bob.id())),
        "/keys/changes: {changes}"
    );

    let answer = alice
        .post("/keys/query", json!({"device_keys": {bob.id(): []}}))
        .await?;
    let device = &answer["device_keys"][bob.id()][&bob_device];
    ensure!(
        device["keys"][format!("ed25519:{bob_device}")].is_string(),
        "Bob's device from A: {answer}"
    );
    ensure!(
        answer["failures"].as_object().is_some_and(|f| f.is_empty()),
        "failures: {answer}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extremities_are_served_to_room_members_only() -> anyhow::Result<()> {
    use warren_core::federation::client::request;
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let path = format!(
        "/_matrix/federation/unstable/org.warren.extremities/{}",
        encode(&room)
    );
    let ask = async || -> anyhow::Result<(u16, Value)> {
        let r = request(b.node.server(), &a.name(), http::Method::GET, &path, None).await?;
        let status = r.status().as_u16();
        Ok((
            status,
            serde_json::from_slice(r.body()).unwrap_or(Value::Null),
        ))
    };
    let (status, body) = ask().await?;
    ensure!(status == 403, "non-member got {status} {body}");

    bob.join_via(&room, &a).await?;
    alice
        .sync_until("Bob's join", |s| is_joined(s, &room, bob.id()))
        .await?;
    let (status, body) = ask().await?;
    ensure!(status == 200, "member got {status} {body}");
    let ids = body["extremities"].as_array().cloned().unwrap_or_default();
    ensure!(ids.len() == 1, "extremities: {body}");
    let stored = a
        .node
        .server()
        .db
        .read(|c| warren_core::storage::forward_extremities(c, &room))?;
    ensure!(ids[0] == stored[0].0.as_str(), "{body} vs {stored:?}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// `GET /rooms/{id}/state` as `(type, state_key, event_id)`, sorted.
pub(crate) async fn current_state(
    user: &User,
    room: &str,
) -> anyhow::Result<Vec<(String, String, String)>> {
    let (status, body) = user
        .call(
            reqwest::Method::GET,
            &format!("/rooms/{}/state", path_segment(room)),
            Value::Null,
        )
        .await?;
    ensure!(status == 200, "GET state: {status} {body}");
    let mut out: Vec<(String, String, String)> = body
        .as_array()
        .context("state is a list")?
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap_or_default().to_owned(),
                e["state_key"].as_str().unwrap_or_default().to_owned(),
                e["event_id"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    Ok(out)
}

/// A node's forward extremities of a room, sorted, from its admin API
/// (`GET /_warren/admin/v1/rooms`, authorised by the token in the data directory).
async fn extremities(node: &FederatedNode, room: &str) -> anyhow::Result<Vec<String>> {
    let token = std::fs::read_to_string(
        node.node
            .server()
            .config
            .data_dir
            .join(warren_core::admin::TOKEN_FILE),
    )?;
    let response = http_client()?
        .get(format!("{}/_warren/admin/v1/rooms", node.node.client_url()))
        .bearer_auth(token.trim())
        .send()
        .await?;
    ensure!(
        response.status().is_success(),
        "admin rooms: {}",
        response.status()
    );
    let body: Value = response.json().await?;
    let mut ids: Vec<String> = body["rooms"]
        .as_array()
        .context("rooms")?
        .iter()
        .find(|r| r["room_id"] == room)
        .and_then(|r| r["forward_extremities"].as_array())
        .context("the room's forward_extremities")?
        .iter()
        .filter_map(|id| id.as_str().map(str::to_owned))
        .collect();
    ids.sort();
    Ok(ids)
}

/// The content of the current state event `(type, state_key)`, as `user` sees it.
pub(crate) async fn state_content(
    user: &User,
    room: &str,
    ty: &str,
    key: &str,
) -> anyhow::Result<Value> {
    let (status, body) = user
        .call(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/state/{ty}/{}",
                path_segment(room),
                path_segment(key)
            ),
            Value::Null,
        )
        .await?;
    ensure!(status == 200, "GET state {ty}: {status} {body}");
    Ok(body)
}

/// Waits until `alice`'s and `bob`'s nodes report the same current state of `room`, then
/// splits them: `b`'s transport goes away; its node and users go on.
pub(crate) async fn split_once_agreed(
    alice: &User,
    bob: &User,
    room: &str,
    b: &FederatedNode,
) -> anyhow::Result<()> {
    let before = current_state(alice, room).await?;
    wait_until(WAIT, "both nodes agree before the split", async || {
        Ok(current_state(bob, room).await? == before)
    })
    .await?;
    b.p2p.shutdown().await;
    Ok(())
}

/// Heals a split made by [`split_once_agreed`]: `b`'s node restarts on `b_dir` (the same
/// data, its outbox still holding what it said while split) and dials `a`.
pub(crate) async fn restart_and_reconnect(
    b: FederatedNode,
    b_dir: &Path,
    a: &FederatedNode,
) -> anyhow::Result<FederatedNode> {
    shutdown_node(b.node).await?;
    restarted(b_dir, a).await
}

/// A stopped node started again on its data directory `dir` (new addresses), dialling
/// `a`.
pub(crate) async fn restarted(dir: &Path, a: &FederatedNode) -> anyhow::Result<FederatedNode> {
    let b = mesh_node(dir, test_p2p_config()).await?;
    connect_nodes(&b, a).await?;
    Ok(b)
}

/// Bob and Carol join Alice's `room` through `a`; once Alice sees both, she gives Bob
/// power level 100, so that he may change the room's state too.
pub(crate) async fn bob_and_carol_join(
    alice: &User,
    bob: &User,
    carol: &User,
    room: &str,
    a: &FederatedNode,
) -> anyhow::Result<()> {
    bob.join_via(room, a).await?;
    carol.join_via(room, a).await?;
    alice
        .sync_until("Bob's and Carol's joins", |s| {
            is_joined(s, room, bob.id()) && is_joined(s, room, carol.id())
        })
        .await?;
    let mut levels = state_content(alice, room, "m.room.power_levels", "").await?;
    levels["users"][bob.id()] = json!(100);
    alice
        .put(
            &format!("/rooms/{}/state/m.room.power_levels/", path_segment(room)),
            levels,
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_heals_to_the_same_state_and_extremities() -> anyhow::Result<()> {
    let (_da, db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let carol = User::register(&b, "carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    // Bob may change state on his side too.
    bob_and_carol_join(&alice, &bob, &carol, &room, &a).await?;
    bob.sync_until("his new power", |s| {
        room_events(s, &room)
            .iter()
            .any(|e| e["type"] == "m.room.power_levels" && e["content"]["users"][bob.id()] == 100)
    })
    .await?;
    // The split: B's transport goes away; B's node and users go on.
    split_once_agreed(&alice, &bob, &room, &b).await?;

    // Each side changes state meanwhile: the name on both sides, a ban on A, the power
    // levels on B.
    alice
        .put(
            &format!("/rooms/{}/state/m.room.name/", path_segment(&room)),
            json!({"name": "Named on A"}),
        )
        .await?;
    alice
        .post(
            &format!("/rooms/{}/ban", path_segment(&room)),
            json!({"user_id": carol.id(), "reason": "partition test"}),
        )
        .await?;
    bob.put(
        &format!("/rooms/{}/state/m.room.name/", path_segment(&room)),
        json!({"name": "Named on B"}),
    )
    .await?;
    // Carol, banned on A meanwhile, still changes her member event on B: the two
    // member events conflict, and the ban must win on both sides.
    carol
        .put(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(&room),
                path_segment(carol.id())
            ),
            json!({"membership": "join", "displayname": "Carol while split"}),
        )
        .await?;
    // More than one get_missing_events call's worth of messages on each side.
    for i in 0..25 {
        alice.say(&room, &format!("A while split {i}")).await?;
        bob.say(&room, &format!("B while split {i}")).await?;
    }
    let mut levels = state_content(&bob, &room, "m.room.power_levels", "").await?;
    levels["events"]["m.room.topic"] = json!(75);
    bob.put(
        &format!("/rooms/{}/state/m.room.power_levels/", path_segment(&room)),
        levels,
    )
    .await?;
    ensure!(
        current_state(&alice, &room).await? != current_state(&bob, &room).await?,
        "the two sides did not diverge"
    );

    // Heal: B comes back (its node restarted on the same data, its outbox still holding
    // what it said while split) and dials A; the outboxes and anti-entropy exchange the
    // two branches.
    let b = restart_and_reconnect(b, db.path(), &a).await?;
    let bob = bob.on(&b);

    let mut last = (Vec::new(), Vec::new());
    let converged = wait_until(
        WAIT,
        "both nodes report the same state and extremities",
        async || {
            let (sa, sb) = (
                current_state(&alice, &room).await?,
                current_state(&bob, &room).await?,
            );
            let (ea, eb) = (extremities(&a, &room).await?, extremities(&b, &room).await?);
            let same = sa == sb && ea == eb;
            last = (
                vec![format!("{sa:?}"), format!("{ea:?}")],
                vec![format!("{sb:?}"), format!("{eb:?}")],
            );
            Ok(same)
        },
    )
    .await;
    if let Err(e) = converged {
        anyhow::bail!("{e:#}\nA: {:?}\nB: {:?}", last.0, last.1);
    }

    // Both branches are in the merged state: carol's ban from A, the power levels from
    // B, and one of the two names, the same on both nodes.
    for user in [&alice, &bob] {
        let member = state_content(user, &room, "m.room.member", carol.id()).await?;
        ensure!(member["membership"] == "ban", "{member}");
        let levels = state_content(user, &room, "m.room.power_levels", "").await?;
        ensure!(levels["events"]["m.room.topic"] == 75, "{levels}");
    }
    // And the other side's messages from the split (the last ones; an initial sync
    // shows the newest 50 events).
    alice
        .sync_until("bob's last message from the split", |s| {
            has_message(s, &room, "B while split 24")
        })
        .await?;
    bob.sync_until("alice's last message from the split", |s| {
        has_message(s, &room, "A while split 24")
    })
    .await?;
    let name_a = state_content(&alice, &room, "m.room.name", "").await?;
    let name_b = state_content(&bob, &room, "m.room.name", "").await?;
    ensure!(name_a == name_b, "{name_a} vs {name_b}");
    ensure!(
        name_a["name"] == "Named on A" || name_a["name"] == "Named on B",
        "{name_a}"
    );

    // A new event on either side merges the branches: one extremity, the same on both.
    alice.say(&room, "healed").await?;
    wait_until(WAIT, "one shared extremity after a new event", async || {
        let (ea, eb) = (extremities(&a, &room).await?, extremities(&b, &room).await?);
        Ok(ea.len() == 1 && ea == eb)
    })
    .await?;

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// How many inbound transactions `to` remembers from `from` that carried `event_id`.
fn carried(to: &FederatedNode, from: &FederatedNode, event_id: &str) -> anyhow::Result<i64> {
    let from = from.name();
    Ok(to
        .node
        .server()
        .db
        .read(|c| warren_core::storage::inbound_txns_carrying(c, &from, event_id))?)
}

/// Push across hops: on an A–B–C line (A and C never connect) with anti-entropy
/// effectively off, B forwards what it accepts from one end to the other at once, once
/// per destination, and not back; a copy it already holds is not forwarded again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_in_the_middle_forwards_new_events_at_once_and_once() -> anyhow::Result<()> {
    let (da, db, dc) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    // Only forwarding can carry anything across B.
    let no_anti_entropy =
        |c: &mut warren_core::Config| c.anti_entropy_interval = Duration::from_secs(24 * 3600);
    let a = mesh_node_with(da.path(), isolated_p2p(), no_anti_entropy).await?;
    let b = mesh_node_with(db.path(), isolated_p2p(), no_anti_entropy).await?;
    let c = mesh_node_with(dc.path(), isolated_p2p(), no_anti_entropy).await?;
    connect_nodes(&a, &b).await?;
    connect_nodes(&c, &b).await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let carol = User::register(&c, "carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&room, &a).await?;
    carol.join_via(&room, &b).await?;
    alice
        .sync_until("Carol's join", |s| is_joined(s, &room, carol.id()))
        .await?;

    // A → B → C, well inside the anti-entropy period (here a day; by default a minute).
    let txn = "hop-1";
    let sent = alice
        .put(
            &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(&room)),
            json!({"msgtype": "m.text", "body": "over the hill"}),
        )
        .await?;
    let event_id = sent["event_id"].as_str().context("event_id")?.to_owned();
    let started = std::time::Instant::now();
    carol
        .sync_until("Alice's message, forwarded by B", |s| {
            has_message(s, &room, "over the hill")
        })
        .await?;
    let took = started.elapsed();
    ensure!(
        took < Duration::from_secs(10),
        "A→B→C took {took:?}; forwarding should be immediate"
    );
    // C → B → A.
    let started = std::time::Instant::now();
    carol.say(&room, "and back").await?;
    alice
        .sync_until("Carol's message, forwarded by B", |s| {
            has_message(s, &room, "and back")
        })
        .await?;
    let took = started.elapsed();
    ensure!(took < Duration::from_secs(10), "C→B→A took {took:?}");
    ensure!(!connected(&a, &c).await?, "A and C got connected");

    // Once per destination: B got the event from A once and handed it to C once; C,
    // which got it from B and cannot tell whether A has it, sent it nowhere (A is its
    // origin, B its sender).
    ensure!(
        carried(&b, &a, &event_id)? == 1,
        "B got it from A more than once"
    );
    ensure!(
        carried(&c, &b, &event_id)? == 1,
        "C got it from B more than once"
    );
    ensure!(carried(&b, &c, &event_id)? == 0, "C forwarded it back to B");

    // A copy B already holds (A sends the same event again in a new transaction) is
    // not forwarded again: nothing is queued for C.
    let pdu: Value = {
        let stored = a
            .node
            .server()
            .db
            .read(|c| warren_core::storage::get_event(c, &event_id))?
            .context("the event on A")?;
        serde_json::from_str(&stored.json)?
    };
    let body = json!({
        "origin": a.name(),
        "origin_server_ts": 0,
        "pdus": [pdu],
    });
    let _: Value = warren_core::federation::client::request_json(
        a.node.server(),
        &b.name(),
        http::Method::PUT,
        "/_matrix/federation/v1/send/again-1",
        Some(&body),
    )
    .await?;
    let c_name = c.name();
    ensure!(
        !b.node
            .server()
            .db
            .read(|conn| warren_core::storage::outbox_has_pdu(conn, &c_name, &event_id))?,
        "B queued a known event for C again"
    );
    ensure!(
        carried(&b, &a, &event_id)? == 2,
        "the repeat did not reach B"
    );

    a.stop().await?;
    b.stop().await?;
    c.stop().await?;
    Ok(())
}

/// Any neighbour connects you: A and C each reach only B, which runs with the default
/// P2P settings (so it relays) and whose node has no user in the room, or any user at
/// all. A and C listen on nothing (a direct dial between them cannot succeed) and know
/// only B's address, found as mDNS or `warren connect` would find it: no bootstrap
/// peers, no flags. C joins Alice's room on A and messages flow both ways, over a
/// circuit through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_member_neighbour_relays_a_join_and_messages() -> anyhow::Result<()> {
    let (da, db, dc) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let b = mesh_node(db.path(), test_p2p_config()).await?;
    let b_addr = b
        .p2p
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .context("B's address")?;
    // Only a relayed address; a DHT client, as `DhtMode::Auto` keeps such a node.
    let behind_b = || warren_p2p::P2pConfig {
        listen: vec![],
        dht_mode: warren_p2p::DhtMode::Auto,
        ..test_p2p_config()
    };
    let mut ends = Vec::new();
    for dir in [&da, &dc] {
        let mut config = test_config(dir.path());
        config.anti_entropy_interval = ANTI_ENTROPY;
        let node = start_node_with(config).await?;
        let p2p = warren_p2p::P2p::attach(&node, behind_b()).await?;
        p2p.dial(b_addr.clone()).await?;
        // Returns once B accepted a reservation: the node's only listen address.
        let addrs = p2p.wait_listening(WAIT).await?;
        ensure!(
            addrs.iter().all(|a| a.to_string().contains("p2p-circuit")),
            "{addrs:?}"
        );
        ends.push(FederatedNode { node, p2p });
    }
    let c = ends.pop().context("C")?;
    let a = ends.pop().context("A")?;

    let alice = User::register(&a, "alice").await?;
    let carol = User::register(&c, "carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    carol.join_via(&room, &a).await?;
    alice
        .sync_until("Carol's join", |s| is_joined(s, &room, carol.id()))
        .await?;
    talk_both_ways(&alice, &carol, &room, "through a stranger", "and back").await?;

    // A and C talk over a circuit; B has no account, so no member of the room.
    for (me, other) in [(&a, &c), (&c, &a)] {
        let name = other.name();
        let link = me
            .p2p
            .peers()
            .await?
            .into_iter()
            .find(|p| p.server_name.as_deref() == Some(name.as_str()))
            .context("the other end is not connected")?;
        ensure!(
            link.connection == warren_p2p::ConnectionKind::Relayed,
            "{link:?}"
        );
    }
    let room_on_b = b
        .node
        .server()
        .db
        .read(|conn| warren_core::storage::room_info(conn, &room))?;
    ensure!(room_on_b.is_none(), "B knows the room");
    a.stop().await?;
    c.stop().await?;
    b.stop().await?;
    Ok(())
}
