//! Delayed events (MSC4140): sent when due, also across a restart of the node;
//! cancelled, restarted and sent early; bounded.

use std::time::Duration;

use anyhow::{Context, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{RawUser, shutdown_node, start_node, wait_until};

const PREFIX: &str = "/_matrix/client/unstable/org.matrix.msc4140/delayed_events";

/// A request outside `/_matrix/client/v3` with the user's token.
async fn unstable(
    user: &RawUser,
    method: Method,
    path: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let r = warren_tests::http_client()?
        .request(method, format!("{}{path}", user.base))
        .bearer_auth(&user.session.access_token)
        .json(&body)
        .send()
        .await?;
    Ok((r.status().as_u16(), r.json().await.unwrap_or(Value::Null)))
}

async fn list(user: &RawUser) -> anyhow::Result<Vec<Value>> {
    let (s, body) = unstable(user, Method::GET, PREFIX, Value::Null).await?;
    ensure!(s == 200, "{s} {body}");
    Ok(body["delayed_events"]
        .as_array()
        .cloned()
        .unwrap_or_default())
}

async fn bodies(user: &RawUser, room: &str) -> anyhow::Result<Vec<String>> {
    let page = user
        .ok(
            Method::GET,
            &format!("/rooms/{room}/messages?dir=b&limit=100"),
            Value::Null,
        )
        .await?;
    Ok(page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_event_is_sent_after_its_delay_also_across_a_restart() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;
    let room = alice.create_room(json!({})).await?;
    let (_, versions) =
        unstable(&alice, Method::GET, "/_matrix/client/versions", Value::Null).await?;
    ensure!(
        versions["unstable_features"]["org.matrix.msc4140"] == true,
        "{versions}"
    );

    // Element Call's pattern: a delayed "left the call" state event.
    let state_path = format!("/rooms/{room}/state/org.matrix.msc3401.call.member/_alice_DEV");
    let scheduled = alice
        .ok(
            Method::PUT,
            &format!("{state_path}?org.matrix.msc4140.delay=1500"),
            json!({}),
        )
        .await?;
    let delay_id = scheduled["delay_id"]
        .as_str()
        .context("delay_id")?
        .to_owned();
    let pending = list(&alice).await?;
    ensure!(
        pending.len() == 1
            && pending[0]["delay_id"] == delay_id.as_str()
            && pending[0]["state_key"] == "_alice_DEV"
            && pending[0]["delay"] == 1500,
        "{pending:?}"
    );
    let (s, _) = alice.call(Method::GET, &state_path, Value::Null).await?;
    ensure!(s == 404, "sent before its delay: {s}");

    // The node stops before the delay runs out and starts again: it is still sent.
    shutdown_node(node).await?;
    let node = start_node(dir.path()).await?;
    let alice = RawUser {
        base: node.client_url(),
        session: alice.session,
    };
    wait_until(
        Duration::from_secs(20),
        "the delayed state event",
        async || Ok(alice.call(Method::GET, &state_path, Value::Null).await?.0 == 200),
    )
    .await?;
    ensure!(
        list(&alice).await?.is_empty(),
        "still listed after it was sent"
    );
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_events_are_cancelled_restarted_sent_early_and_bounded() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;
    let bob = RawUser::register(node.client_url(), "bob").await?;
    let room = alice.create_room(json!({})).await?;
    let send = async |txn: &str, body: &str, delay: u64| -> anyhow::Result<(u16, Value)> {
        alice
            .call(
                Method::PUT,
                &format!(
                    "/rooms/{room}/send/m.room.message/{txn}?org.matrix.msc4140.delay={delay}"
                ),
                json!({"msgtype": "m.text", "body": body}),
            )
            .await
    };
    // Cancelled: never sent. A later one (due after it) shows the node got that far.
    let (_, a) = send("c1", "cancelled", 300).await?;
    let cancelled = a["delay_id"].as_str().context("delay_id")?.to_owned();
    let (s, _) = unstable(
        &alice,
        Method::POST,
        &format!("{PREFIX}/{cancelled}"),
        json!({"action": "cancel"}),
    )
    .await?;
    ensure!(s == 200, "cancel: {s}");
    send("m1", "marker", 600).await?;
    wait_until(Duration::from_secs(20), "the marker", async || {
        Ok(bodies(&alice, &room).await?.contains(&"marker".to_owned()))
    })
    .await?;
    ensure!(
        !bodies(&alice, &room)
            .await?
            .contains(&"cancelled".to_owned()),
        "a cancelled event was sent"
    );

    // A retried transaction gets its delay id back.
    let (_, first) = send("t1", "an hour from now", 3_600_000).await?;
    let (_, again) = send("t1", "an hour from now", 3_600_000).await?;
    ensure!(first["delay_id"] == again["delay_id"], "{first} {again}");
    let later = first["delay_id"].as_str().context("delay_id")?.to_owned();
    // Restart: the delay runs from now again.
    let before = list(&alice).await?[0]["running_since"]
        .as_i64()
        .context("running_since")?;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (s, _) = unstable(
        &alice,
        Method::POST,
        &format!("{PREFIX}/{later}/restart"),
        Value::Null,
    )
    .await?;
    ensure!(s == 200, "restart: {s}");
    let after = list(&alice).await?[0]["running_since"]
        .as_i64()
        .context("running_since")?;
    ensure!(
        after > before,
        "restart did not move the start: {before} -> {after}"
    );
    // Other users cannot touch it; an unknown id is 404.
    let (s, _) = unstable(
        &bob,
        Method::POST,
        &format!("{PREFIX}/{later}/send"),
        Value::Null,
    )
    .await?;
    ensure!(s == 404, "another user's delayed event: {s}");
    let (s, e) = unstable(
        &alice,
        Method::POST,
        &format!("{PREFIX}/nosuch"),
        json!({"action": "send"}),
    )
    .await?;
    ensure!(s == 404 && e["errcode"] == "M_NOT_FOUND", "{s} {e}");
    let (s, e) = unstable(
        &alice,
        Method::POST,
        &format!("{PREFIX}/{later}"),
        json!({"action": "explode"}),
    )
    .await?;
    ensure!(s == 400, "{s} {e}");
    // Send now.
    let (s, _) = unstable(
        &alice,
        Method::POST,
        &format!("{PREFIX}/{later}/send"),
        Value::Null,
    )
    .await?;
    ensure!(s == 200, "send: {s}");
    ensure!(
        bodies(&alice, &room)
            .await?
            .contains(&"an hour from now".to_owned()),
        "not sent at once"
    );

    // Bounds: the longest delay, and how many may wait.
    let (s, e) = send("long", "too late", 25 * 3600 * 1000).await?;
    ensure!(s == 400 && e["errcode"] == "M_INVALID_PARAM", "{s} {e}");
    let (s, e) = bob
        .call(
            Method::PUT,
            &format!("/rooms/{room}/send/m.room.message/x?org.matrix.msc4140.delay=1000"),
            json!({"body": "not a member"}),
        )
        .await?;
    ensure!(s == 403, "a room the user is not in: {s} {e}");
    for i in 0..warren_core::delayed_events::MAX_PER_USER {
        let (s, e) = send(&format!("n{i}"), "waiting", 3_600_000).await?;
        ensure!(s == 200, "delayed event {i}: {s} {e}");
    }
    let (s, e) = send("over", "one too many", 3_600_000).await?;
    ensure!(s == 429 && e["errcode"] == "M_LIMIT_EXCEEDED", "{s} {e}");
    shutdown_node(node).await
}
