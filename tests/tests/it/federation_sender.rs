//! The durable federation sender, against a recording destination over real libp2p:
//! batching, retries, restart survival and backoff reset on reconnection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::routing::put;
use parking_lot::Mutex;
use serde_json::{Value, json};
use warren_core::storage;
use warren_p2p::P2p;
use warren_tests::*;

/// What the fake destination saw, and whether it accepts transactions.
#[derive(Default)]
struct Recorder {
    accepted: Vec<(String, Value)>,
    refused: usize,
    refuse: bool,
    attempts: Vec<Instant>,
}

type Shared = Arc<Mutex<Recorder>>;

async fn record_send(
    State(rec): State<Shared>,
    Path(txn): Path<String>,
    body: axum::body::Bytes,
) -> (http::StatusCode, String) {
    let mut r = rec.lock();
    r.attempts.push(Instant::now());
    if r.refuse {
        r.refused += 1;
        return (http::StatusCode::INTERNAL_SERVER_ERROR, "{}".into());
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    r.accepted.push((txn, body));
    (http::StatusCode::OK, json!({ "pdus": {} }).to_string())
}

/// A destination node whose federation API only records `/send` transactions.
async fn start_recorder(node: &warren_core::Node, rec: Shared) -> anyhow::Result<P2p> {
    let router = Router::new()
        .route("/_matrix/federation/v1/send/{txn}", put(record_send))
        .with_state(rec);
    let p2p = P2p::start(test_p2p_config(), node.server().clone(), router).await?;
    p2p.wait_listening(Duration::from_secs(10)).await?;
    Ok(p2p)
}

/// Alice sends `n` messages in a fresh room on `a`; returns their event ids in order.
async fn messages(a: &warren_core::Node, n: usize) -> anyhow::Result<Vec<String>> {
    let http = http_client()?;
    let base = a.client_url();
    let alice = register_raw(
        &http,
        &base,
        &format!("alice{}", rand_suffix()),
        "secret-password",
    )
    .await?;
    let room: Value = http
        .post(format!("{base}/_matrix/client/v3/createRoom"))
        .bearer_auth(&alice.access_token)
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    let room_id = room["room_id"].as_str().unwrap_or_default().to_owned();
    let mut ids = Vec::new();
    for i in 0..n {
        let sent: Value = http
            .put(format!(
                "{base}/_matrix/client/v3/rooms/{}/send/m.room.message/t{i}",
                path_segment(&room_id)
            ))
            .bearer_auth(&alice.access_token)
            .json(&json!({ "msgtype": "m.text", "body": format!("message {i}") }))
            .send()
            .await?
            .json()
            .await?;
        ids.push(sent["event_id"].as_str().unwrap_or_default().to_owned());
    }
    Ok(ids)
}

fn rand_suffix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 % 1_000_000)
        .unwrap_or(0)
}

/// Queue `ids` for `destination` in A's outbox (as the room engine does for rooms with
/// members there).
fn enqueue(a: &warren_core::Node, destination: &str, ids: &[String]) -> anyhow::Result<()> {
    let server = a.server().clone();
    server.write(|c| {
        for id in ids {
            storage::enqueue_pdu(c, &[destination.to_owned()], id)?;
        }
        Ok(())
    })?;
    Ok(())
}

fn delivered_ids(rec: &Shared) -> Vec<String> {
    rec.lock()
        .accepted
        .iter()
        .flat_map(|(_, body)| body["pdus"].as_array().cloned().unwrap_or_default())
        // PDUs carry no event id (room v3+); the test messages are told apart by body.
        .filter_map(|pdu| pdu["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

fn outbox_depth(a: &warren_core::Node, destination: &str) -> i64 {
    a.server()
        .db
        .read(|c| storage::outbox_depth(c, destination))
        .unwrap_or(-1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_pdus_arrive_in_order_in_batches_of_at_most_fifty() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b_node = start_node(db.path()).await?;
    let rec: Shared = Shared::default();
    let b = start_recorder(&b_node, rec.clone()).await?;
    let b_name = b_node.server_name().to_owned();
    a.p2p.dial(b.listen_addrs().await?[0].clone()).await?;

    let ids = messages(&a.node, 120).await?;
    enqueue(&a.node, &b_name, &ids)?;
    wait_until(WAIT, "all 120 PDUs delivered", || async {
        Ok(delivered_ids(&rec).len() >= 120 && outbox_depth(&a.node, &b_name) == 0)
    })
    .await?;
    let bodies: Vec<String> = (0..120).map(|i| format!("message {i}")).collect();
    assert_eq!(delivered_ids(&rec), bodies, "every PDU once, in order");
    let accepted = rec.lock().accepted.clone();
    assert!(accepted.len() >= 3);
    for (txn, body) in &accepted {
        let n = body["pdus"].as_array().map_or(0, Vec::len);
        assert!(n <= 50, "transaction {txn} carried {n} PDUs");
        assert_eq!(body["origin"], a.name());
    }
    b.shutdown().await;
    a.stop().await?;
    shutdown_node(b_node).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_queue_survives_failures_and_a_restart_without_loss_or_duplicates() -> anyhow::Result<()>
{
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b_node = start_node(db.path()).await?;
    let rec: Shared = Shared::default();
    rec.lock().refuse = true;
    let b = start_recorder(&b_node, rec.clone()).await?;
    let b_name = b_node.server_name().to_owned();
    let b_addr = b.listen_addrs().await?[0].clone();
    a.p2p.dial(b_addr.clone()).await?;

    let ids = messages(&a.node, 10).await?;
    enqueue(&a.node, &b_name, &ids)?;
    wait_until(WAIT, "two refused attempts", || async {
        Ok(rec.lock().refused >= 2)
    })
    .await?;
    assert_eq!(
        outbox_depth(&a.node, &b_name),
        10,
        "refused rows stay queued"
    );

    // Restart A with the rows still queued.
    a.stop().await?;
    rec.lock().refuse = false;
    let a = start_federated_node(da.path()).await?;
    a.p2p.dial(b_addr).await?;
    wait_until(WAIT, "delivery after restart", || async {
        Ok(outbox_depth(&a.node, &b_name) == 0)
    })
    .await?;
    let bodies: Vec<String> = (0..10).map(|i| format!("message {i}")).collect();
    assert_eq!(delivered_ids(&rec), bodies, "delivered once each, in order");
    b.shutdown().await;
    a.stop().await?;
    shutdown_node(b_node).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_peer_ends_the_backoff_at_once() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b_node = start_node(db.path()).await?;
    let rec: Shared = Shared::default();
    rec.lock().refuse = true;
    let b = start_recorder(&b_node, rec.clone()).await?;
    let b_name = b_node.server_name().to_owned();
    a.p2p.dial(b.listen_addrs().await?[0].clone()).await?;

    let ids = messages(&a.node, 3).await?;
    enqueue(&a.node, &b_name, &ids)?;
    // Five failures: the next delay is drawn from up to 8 s.
    wait_until(Duration::from_secs(30), "five refused attempts", || async {
        Ok(rec.lock().refused >= 5)
    })
    .await?;
    // B goes away and comes back (a new swarm with the same identity dials A).
    b.shutdown().await;
    rec.lock().refuse = false;
    let b = start_recorder(&b_node, rec.clone()).await?;
    let back = Instant::now();
    b.dial(a.p2p.listen_addrs().await?[0].clone()).await?;
    wait_until(WAIT, "delivery after reconnection", || async {
        Ok(outbox_depth(&a.node, &b_name) == 0)
    })
    .await?;
    assert!(
        back.elapsed() < Duration::from_secs(3),
        "the reconnection must end the backoff at once, took {:?}",
        back.elapsed()
    );
    b.shutdown().await;
    a.stop().await?;
    shutdown_node(b_node).await?;
    Ok(())
}
