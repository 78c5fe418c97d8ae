//! Federation between nodes over real libp2p on loopback: request authentication and
//! the client-side entry points that already reach other servers.

use anyhow::Context as _;
use bytes::Bytes;
use serde_json::{Value, json};
use warren_core::federation::client;
use warren_core::federation::client::sign_request;
use warren_tests::*;

/// Alice on A sets a display name; Bob on B reads her profile through federation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_profiles_are_fetched_over_p2p() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let http = http_client()?;
    let alice = register_raw(&http, &a.node.client_url(), "alice", "secret-password").await?;
    let bob = register_raw(&http, &b.node.client_url(), "bob", "secret-password").await?;
    let set = http
        .put(format!(
            "{}/_matrix/client/v3/profile/{}/displayname",
            a.node.client_url(),
            path_segment(&alice.user_id)
        ))
        .bearer_auth(&alice.access_token)
        .json(&json!({ "displayname": "Alice of A" }))
        .send()
        .await?;
    assert_eq!(set.status(), 200);

    let got: Value = http
        .get(format!(
            "{}/_matrix/client/v3/profile/{}",
            b.node.client_url(),
            path_segment(&alice.user_id)
        ))
        .bearer_auth(&bob.access_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(got["displayname"], "Alice of A", "{got}");

    // A user the remote server does not have: its 404 comes back as a 404.
    let missing = http
        .get(format!(
            "{}/_matrix/client/v3/profile/{}/displayname",
            b.node.client_url(),
            path_segment(&format!("@nobody:{}", a.name()))
        ))
        .send()
        .await?;
    assert_eq!(missing.status(), 404);
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Requests without a valid `X-Matrix` signature, or signed in another server's name,
/// are refused; a properly signed one is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_requests_must_be_signed_by_the_connected_peer() -> anyhow::Result<()> {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = start_federated_node(dirs[0].path()).await?;
    let b = start_federated_node(dirs[1].path()).await?;
    let c = start_federated_node(dirs[2].path()).await?;
    connect_nodes(&a, &b).await?;
    let http = http_client()?;
    let bob = register_raw(&http, &b.node.client_url(), "bob", "secret-password").await?;
    let path = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        client::encode(&bob.user_id)
    );
    let status_and_code = |resp: http::Response<Bytes>| {
        let v: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
        (
            resp.status().as_u16(),
            v["errcode"].as_str().unwrap_or("").to_owned(),
        )
    };

    // No signature at all.
    let req = http::Request::get(&path).body(Bytes::new())?;
    let resp = a.p2p.send(&b.name(), req).await?;
    assert_eq!(status_and_code(resp), (401, "M_UNAUTHORIZED".to_owned()));

    // Signed by C, but carried over A's connection: the signature is valid, the
    // transport origin is not C.
    let mut req = http::Request::get(&path).body(Bytes::new())?;
    let auth = sign_request(c.node.server(), &b.name(), &req)?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    let resp = a.p2p.send(&b.name(), req).await?;
    assert_eq!(status_and_code(resp), (403, "M_FORBIDDEN".to_owned()));

    // Signed by A for a different request target.
    let other =
        http::Request::get("/_matrix/federation/v1/query/profile?user_id=x").body(Bytes::new())?;
    let auth = sign_request(a.node.server(), &b.name(), &other)?;
    let mut req = http::Request::get(&path).body(Bytes::new())?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    let resp = a.p2p.send(&b.name(), req).await?;
    assert_eq!(status_and_code(resp), (401, "M_UNAUTHORIZED".to_owned()));

    // Signed for another destination.
    let mut req = http::Request::get(&path).body(Bytes::new())?;
    let auth = sign_request(a.node.server(), &c.name(), &req)?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    let resp = a.p2p.send(&b.name(), req).await?;
    assert_eq!(status_and_code(resp).0, 401);

    // Properly signed by A: answered.
    let v: Value =
        client::request_json(a.node.server(), &b.name(), http::Method::GET, &path, None).await?;
    assert!(v.is_object(), "{v}");

    for n in [a, b, c] {
        n.stop().await?;
    }
    Ok(())
}

/// A peer past its federation budget gets `429 M_LIMIT_EXCEEDED` with `retry_after_ms`,
/// charged only once its signature is proven; other peers are not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_peer_is_rate_limited_and_others_are_not() -> anyhow::Result<()> {
    let dirs = [
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    ];
    let a = start_federated_node(dirs[0].path()).await?;
    let mut config = test_config(dirs[1].path());
    config.rate_limits.set(
        warren_core::ratelimit::Action::Federation,
        Some(warren_core::config::Rate::new(0.01, 5.0)),
    );
    let node = start_node_with(config).await?;
    let p2p = warren_p2p::P2p::attach(&node, test_p2p_config()).await?;
    p2p.wait_listening(WAIT).await?;
    let b = FederatedNode { node, p2p };
    let c = start_federated_node(dirs[2].path()).await?;
    connect_nodes(&a, &b).await?;
    connect_nodes(&c, &b).await?;
    let bob = register_raw(&http_client()?, &b.node.client_url(), "bob", "pw").await?;
    let profile = format!(
        "/_matrix/federation/v1/query/profile?user_id={}",
        client::encode(&bob.user_id)
    );
    // The burst of 5 (less whatever A spent on its own when it connected), then 429.
    let mut limited = None;
    for _ in 0..6 {
        let (status, body) = signed_get(&a, &b, &profile).await?;
        match status {
            200 => {}
            429 => {
                limited = Some(body);
                break;
            }
            other => anyhow::bail!("unexpected {other}: {body}"),
        }
    }
    let body = limited.context("no 429 after 6 requests with a burst of 5")?;
    assert_eq!(body["errcode"], "M_LIMIT_EXCEEDED", "{body}");
    assert!(
        body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{body}"
    );
    // Another peer has its own budget.
    let (status, body) = signed_get(&c, &b, &profile).await?;
    assert_eq!(status, 200, "{body}");
    for n in [a, b, c] {
        n.stop().await?;
    }
    Ok(())
}

/// A `GET` of `path` from `from` to `to`, signed by `from`: status and JSON body.
async fn signed_get(
    from: &FederatedNode,
    to: &FederatedNode,
    path: &str,
) -> anyhow::Result<(u16, Value)> {
    let mut req = http::Request::get(path).body(Bytes::new())?;
    let auth = sign_request(from.node.server(), &to.name(), &req)?;
    req.headers_mut().insert(http::header::AUTHORIZATION, auth);
    let resp = from.p2p.send(&to.name(), req).await?;
    let body: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
    Ok((resp.status().as_u16(), body))
}
