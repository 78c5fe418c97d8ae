//! A node whose client API binds no socket (`Node::start_unbound`), driven in-process
//! (`warren_tests::InProcessApi`).

use anyhow::{Context as _, ensure};
use http::Method;
use serde_json::{Value, json};
use warren_core::error::StartError;
use warren_core::{Node, admin};
use warren_tests::*;

/// The node binds nothing: it starts on a client address another socket holds (where
/// `Node::start` fails), records no admin URL, and still serves register, login,
/// createRoom, send and sync in-process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unbound_node_binds_nothing_and_serves_in_process() -> anyhow::Result<()> {
    let held = std::net::TcpListener::bind("127.0.0.1:0").context("binding a port to hold")?;
    let held_addr = held.local_addr()?;

    // A listening node cannot start on that address...
    let other = tempfile::tempdir()?;
    let mut config = test_config(other.path());
    config.client_addr = held_addr;
    match Node::start(config).await {
        Err(StartError::AddrInUse(_)) => {}
        Err(e) => anyhow::bail!("expected AddrInUse, got {e}"),
        Ok(node) => {
            shutdown_node(node).await?;
            anyhow::bail!("a listening node started on an address already held");
        }
    }

    // ...an unbound one can, since it binds nothing.
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.client_addr = held_addr;
    let node = start_unbound_node_with(config).await?;
    ensure!(
        !dir.path().join(admin::URL_FILE).exists(),
        "an unbound node recorded an admin URL"
    );

    let api = InProcessApi::new(&node);
    let (status, versions) = api
        .call(Method::GET, "/_matrix/client/versions", None, &Value::Null)
        .await?;
    ensure!(status == 200, "/versions: {status} {versions}");

    let alice = api.register("alice").await?;
    let (status, login) = api
        .call(
            Method::POST,
            "/_matrix/client/v3/login",
            None,
            &json!({
                "type": "m.login.password",
                "identifier": { "type": "m.id.user", "user": "alice" },
                "password": "secret-password",
            }),
        )
        .await?;
    ensure!(status == 200, "/login: {status} {login}");
    ensure!(login["user_id"] == alice.id(), "/login answered {login}");
    let token = login["access_token"]
        .as_str()
        .context("an access token")?
        .to_owned();
    // The new device's token works as the registration's does.
    let (status, whoami) = api
        .call(
            Method::GET,
            "/_matrix/client/v3/account/whoami",
            Some(&token),
            &Value::Null,
        )
        .await?;
    ensure!(
        status == 200 && whoami["user_id"] == alice.id(),
        "/whoami: {status} {whoami}"
    );

    let room = alice.create_room(json!({ "name": "in-process" })).await?;
    let path = format!("/rooms/{}/send/m.room.message/t1", path_segment(&room));
    let sent = alice
        .ok(
            Method::PUT,
            &path,
            json!({ "msgtype": "m.text", "body": "no sockets" }),
        )
        .await?;
    let event_id = sent["event_id"].as_str().context("an event id")?;
    let sync = alice.ok(Method::GET, "/sync", Value::Null).await?;
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"]
        .as_array()
        .with_context(|| format!("no timeline of {room} in {sync}"))?;
    ensure!(
        timeline
            .iter()
            .any(|e| e["event_id"] == event_id && e["content"]["body"] == "no sockets"),
        "the message is not in the synced timeline: {timeline:?}"
    );

    // The held socket is still the only one on its address, and nothing connected to it.
    held.set_nonblocking(true)?;
    ensure!(
        held.accept()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the held address"
    );
    shutdown_node(node).await
}
