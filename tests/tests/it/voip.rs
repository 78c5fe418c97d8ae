//! Calls: TURN credentials that verify against the shared secret, `.well-known` with a
//! MatrixRTC focus, OpenID tokens checked by another node, and legacy 1:1 call events
//! between users on two nodes.

use std::time::Duration;

use anyhow::{Context, ensure};
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use warren_core::federation::client::request;
use warren_tests::*;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turn_credentials_verify_against_the_shared_secret() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.voip.turn_uris = vec!["turn:turn.example.org:3478?transport=udp".into()];
    config.voip.turn_shared_secret = Some("coturn-secret".into());
    config.voip.livekit_service_url = Some("https://lk-jwt.example.org".into());
    let node = start_node_with(config).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;

    let turn = alice
        .ok(reqwest::Method::GET, "/voip/turnServer", Value::Null)
        .await?;
    let username = turn["username"].as_str().context("username")?;
    let (expiry, user) = username.split_once(':').context("expiry:user")?;
    ensure!(user == alice.id(), "{turn}");
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
    let expiry: u64 = expiry.parse()?;
    ensure!(
        expiry > now.as_secs() && expiry <= now.as_secs() + 86_400 + 5,
        "expiry {expiry}"
    );
    ensure!(turn["ttl"] == 86_400, "{turn}");
    // What coturn computes with `static-auth-secret`.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(b"coturn-secret")?;
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    ensure!(turn["password"] == expected.as_str(), "{turn}");
    ensure!(
        turn["uris"] == json!(["turn:turn.example.org:3478?transport=udp"]),
        "{turn}"
    );

    // The well-known file names this node and the focus.
    let known: Value = http_client()?
        .get(format!("{}/.well-known/matrix/client", node.client_url()))
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        known["m.homeserver"]["base_url"] == node.client_url().trim_end_matches('/'),
        "{known}"
    );
    ensure!(
        known["org.matrix.msc4143.rtc_foci"]
            == json!([{"type": "livekit", "livekit_service_url": "https://lk-jwt.example.org"}]),
        "{known}"
    );
    shutdown_node(node).await?;

    // Nothing configured: an empty answer, which clients accept.
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let bob = RawUser::register(node.client_url(), "bob").await?;
    let turn = bob
        .ok(reqwest::Method::GET, "/voip/turnServer", Value::Null)
        .await?;
    ensure!(turn == json!({}), "{turn}");
    shutdown_node(node).await
}

/// An OpenID token from A is checked by B through A's `openid/userinfo`; tokens are
/// per user, expire, and are bounded per user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openid_tokens_are_checked_by_another_node_and_bounded() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let alice = RawUser::register(a.node.client_url(), "alice").await?;
    let bob = RawUser::register(a.node.client_url(), "bob").await?;
    let path = format!("/user/{}/openid/request_token", path_segment(alice.id()));
    let token = alice.post(&path, json!({})).await?;
    ensure!(
        token["token_type"] == "Bearer"
            && token["matrix_server_name"] == a.name().as_str()
            && token["expires_in"] == 3600,
        "{token}"
    );
    let access = token["access_token"].as_str().context("access_token")?;
    let (status, _) = bob.call(reqwest::Method::POST, &path, json!({})).await?;
    ensure!(status == 403, "a token for someone else: {status}");

    let ask = |t: String| {
        let server = b.node.server().clone();
        let dest = a.name();
        async move {
            let r = request(
                &server,
                &dest,
                http::Method::GET,
                &format!("/_matrix/federation/v1/openid/userinfo?access_token={t}"),
                None,
            )
            .await?;
            let body: Value = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
            anyhow::Ok((r.status().as_u16(), body))
        }
    };
    let (status, who) = ask(access.to_owned()).await?;
    ensure!(
        status == 200 && who == json!({"sub": alice.id()}),
        "{status} {who}"
    );
    let (status, err) = ask("nonsense".into()).await?;
    ensure!(
        status == 401 && err["errcode"] == "M_UNKNOWN_TOKEN",
        "{status} {err}"
    );

    // Past the bound, the oldest of the user's tokens go.
    for _ in 0..warren_core::openid::MAX_TOKENS_PER_USER + 4 {
        alice.post(&path, json!({})).await?;
    }
    let count = a
        .node
        .server()
        .db
        .read(warren_core::storage::openid_token_count)?;
    ensure!(
        count == warren_core::openid::MAX_TOKENS_PER_USER as i64,
        "{count} tokens kept"
    );
    let (status, _) = ask(access.to_owned()).await?;
    ensure!(status == 401, "the first token survived the bound");
    a.stop().await?;
    b.stop().await
}

/// Legacy 1:1 calls: the `m.call.*` events of a call between users on two nodes reach
/// each other (signalling only; media goes peer to peer or through TURN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_signalling_crosses_nodes() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let alice = RawUser::register(a.node.client_url(), "alice").await?;
    let bob = RawUser::register(b.node.client_url(), "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "is_direct": true}))
        .await?;
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await?;
    let send = async |user: &RawUser, kind: &str, txn: &str, content: Value| {
        user.ok(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/{kind}/{txn}", path_segment(&room)),
            content,
        )
        .await
    };
    let seen = async |user: &RawUser, kind: &str| -> anyhow::Result<Value> {
        let mut found = Value::Null;
        wait_until(WAIT, &format!("{} sees {kind}", user.id()), async || {
            let page = user
                .ok(
                    reqwest::Method::GET,
                    &format!("/rooms/{}/messages?dir=b&limit=50", path_segment(&room)),
                    Value::Null,
                )
                .await?;
            found = page["chunk"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|e| e["type"] == kind)
                .cloned()
                .unwrap_or(Value::Null);
            Ok(!found.is_null())
        })
        .await?;
        Ok(found)
    };
    let offer = json!({"call_id": "c1", "party_id": "pa", "version": "1", "lifetime": 60000,
                       "offer": {"type": "offer", "sdp": "v=0\r\n"}});
    send(&alice, "m.call.invite", "i1", offer).await?;
    let invite = seen(&bob, "m.call.invite").await?;
    ensure!(invite["content"]["call_id"] == "c1", "{invite}");
    let answer = json!({"call_id": "c1", "party_id": "pb", "version": "1",
                        "answer": {"type": "answer", "sdp": "v=0\r\n"}});
    send(&bob, "m.call.answer", "a1", answer).await?;
    let answered = seen(&alice, "m.call.answer").await?;
    ensure!(answered["content"]["party_id"] == "pb", "{answered}");
    send(
        &alice,
        "m.call.hangup",
        "h1",
        json!({"call_id": "c1", "party_id": "pa", "version": "1"}),
    )
    .await?;
    seen(&bob, "m.call.hangup").await?;
    a.stop().await?;
    b.stop().await
}
