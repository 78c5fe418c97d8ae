//! Presence: `PUT`/`GET /presence/{userId}/status`, `set_presence` on `/sync`,
//! `presence.events` in `/sync` for users sharing a room, the idle sweep, and the
//! `m.presence` EDU between two nodes over real libp2p.
//!
//! Receivers are real matrix-sdk clients syncing; settings and exact wire checks are raw
//! HTTP. Every wait is a sync until a condition holds.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use matrix_sdk::Client;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::{OwnedServerName, RoomId};
use matrix_sdk::sync::SyncResponse;
use serde_json::{Value, json};
use warren_tests::*;

/// The content of `user_id`'s presence event in a sync response, if there is one.
fn presence_of(r: &SyncResponse, user_id: &str) -> anyhow::Result<Option<Value>> {
    for raw in &r.presence {
        let ev = raw_json(raw)?;
        if ev["type"] == "m.presence" && ev["sender"] == user_id {
            return Ok(Some(ev["content"].clone()));
        }
    }
    Ok(None)
}

async fn put_presence(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    user_id: &str,
    body: Value,
) -> anyhow::Result<(u16, Value)> {
    let response = http
        .put(format!(
            "{url}/_matrix/client/v3/presence/{}/status",
            path_segment(user_id)
        ))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

async fn get_presence(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    user_id: &str,
) -> anyhow::Result<(u16, Value)> {
    let response = http
        .get(format!(
            "{url}/_matrix/client/v3/presence/{}/status",
            path_segment(user_id)
        ))
        .bearer_auth(token)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await?))
}

fn token(client: &Client) -> anyhow::Result<String> {
    client.access_token().context("no access token")
}

async fn shared_room(alice: &Client, bob: &Client, via: Option<String>) -> anyhow::Result<String> {
    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PublicChat);
    let room = alice.create_room(create).await?;
    let room_id = room.room_id().to_owned();
    match via {
        Some(server) => {
            let via: OwnedServerName = server.try_into()?;
            let target: &matrix_sdk::ruma::RoomOrAliasId = (&*room_id).into();
            bob.join_room_by_id_or_alias(target, &[via]).await?;
        }
        None => {
            bob.join_room_by_id(&room_id).await?;
        }
    }
    let bob_id = bob.user_id().context("bob")?.to_string();
    let rid: &RoomId = &room_id;
    sync_until(alice, WAIT, "alice sees bob join", |r| {
        Ok(timeline_json(r, rid)?.iter().any(|ev| {
            ev["type"] == "m.room.member"
                && ev["state_key"] == bob_id.as_str()
                && ev["content"]["membership"] == "join"
        }))
    })
    .await?;
    Ok(room_id.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_is_visible_to_room_peers_and_goes_idle() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let url = node.client_url();
    let http = http_client()?;
    let alice = register_client(&url, "alice", "alice-password").await?;
    let bob = register_client(&url, "bob", "bob-password").await?;
    let carol = register_raw(&http, &url, "carol", "carol-password").await?;
    let alice_id = alice.user_id().context("alice")?.to_string();
    let bob_id = bob.user_id().context("bob")?.to_string();
    let room_id = shared_room(&alice, &bob, None).await?;

    // Alice sets a status; bob's sync shows it.
    let (status, _) = put_presence(
        &http,
        &url,
        &token(&alice)?,
        &alice_id,
        json!({"presence": "online", "status_msg": "reading the spec"}),
    )
    .await?;
    assert_eq!(status, 200);
    let mut seen = Value::Null;
    sync_until(&bob, WAIT, "bob sees alice's status", |r| {
        if let Some(c) = presence_of(r, &alice_id)?
            && c["status_msg"] == "reading the spec"
        {
            seen = c;
            return Ok(true);
        }
        Ok(false)
    })
    .await?;
    assert_eq!(seen["presence"], "online", "{seen}");
    assert_eq!(seen["currently_active"], true, "{seen}");
    assert!(
        seen["last_active_ago"].as_i64().is_some_and(|a| a >= 0),
        "{seen}"
    );

    // Dave, who shared no room with alice at his last sync, joins: his next incremental
    // sync carries alice's current presence although it did not change.
    let dave = register_client(&url, "dave", "dave-password").await?;
    let first = dave
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await?;
    assert!(presence_of(&first, &alice_id)?.is_none());
    dave.join_room_by_id(<&RoomId>::try_from(room_id.as_str())?)
        .await?;
    sync_until(
        &dave,
        WAIT,
        "dave sees alice's presence after joining",
        |r| Ok(presence_of(r, &alice_id)?.is_some_and(|c| c["status_msg"] == "reading the spec")),
    )
    .await?;

    // GET: bob (shares a room) sees it; carol (shares none) may not; a user with no
    // presence recorded is offline.
    let (status, got) = get_presence(&http, &url, &token(&bob)?, &alice_id).await?;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["presence"], "online");
    assert_eq!(got["status_msg"], "reading the spec");
    let (status, got) = get_presence(&http, &url, &carol.access_token, &alice_id).await?;
    assert_eq!(status, 403, "{got}");
    assert_eq!(got["errcode"], "M_FORBIDDEN");
    let (status, got) = get_presence(&http, &url, &carol.access_token, &carol.user_id).await?;
    assert_eq!(
        (status, got["presence"].clone()),
        (200, json!("offline")),
        "{got}"
    );

    // Nobody sets another user's presence; bad states are refused.
    let (status, got) = put_presence(
        &http,
        &url,
        &token(&bob)?,
        &alice_id,
        json!({"presence": "offline"}),
    )
    .await?;
    assert_eq!(status, 403, "{got}");
    let (status, got) = put_presence(
        &http,
        &url,
        &token(&alice)?,
        &alice_id,
        json!({"presence": "asleep"}),
    )
    .await?;
    assert_eq!(status, 400, "{got}");

    // A client syncing with set_presence=unavailable marks its user unavailable.
    let response = http
        .get(format!(
            "{url}/_matrix/client/v3/sync?set_presence=unavailable&timeout=0"
        ))
        .bearer_auth(token(&bob)?)
        .send()
        .await?;
    assert_eq!(response.status().as_u16(), 200);
    sync_until(&alice, WAIT, "alice sees bob unavailable", |r| {
        Ok(presence_of(r, &bob_id)?.is_some_and(|c| c["presence"] == "unavailable"))
    })
    .await?;

    // The idle sweep: five minutes after her last activity alice becomes unavailable.
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let later = now + Duration::from_secs(6 * 60).as_millis() as i64;
    let swept = warren_core::presence::sweep_idle(node.server(), later)?;
    assert!(swept >= 1, "nobody was idle");
    sync_until(&bob, WAIT, "bob sees alice go idle", |r| {
        Ok(presence_of(r, &alice_id)?
            .is_some_and(|c| c["presence"] == "unavailable" && c["currently_active"] == false))
    })
    .await?;
    let (_, got) = get_presence(&http, &url, &token(&bob)?, &alice_id).await?;
    assert_eq!(got["presence"], "unavailable", "{got}");
    assert_eq!(got["status_msg"], "reading the spec", "the status survives");

    // An m.presence EDU is only believed for users of its origin who share a room with
    // a local user: another server cannot set alice's presence, nor store a stranger's.
    let other = "f".repeat(64);
    let mallory = format!("@mallory:{other}");
    warren_core::federation::edu::receive_edu(
        node.server(),
        &other,
        json!({"edu_type": "m.presence", "content": {"push": [
            {"user_id": alice_id, "presence": "offline", "last_active_ago": 0},
            {"user_id": mallory, "presence": "online", "last_active_ago": 0},
        ]}}),
    )
    .await;
    let (_, got) = get_presence(&http, &url, &token(&bob)?, &alice_id).await?;
    assert_eq!(got["presence"], "unavailable", "{got}");
    let stored = node
        .server()
        .db
        .read(|c| warren_core::storage::presence(c, &mallory))?;
    assert_eq!(stored, None);

    drop((alice, bob, dave));
    shutdown_node(node).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_between_nodes() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let (url_a, url_b) = (a.node.client_url(), b.node.client_url());
    let http = http_client()?;
    let alice = register_client(&url_a, "alice", "alice-password").await?;
    let bob = register_client(&url_b, "bob", "bob-password").await?;
    let alice_id = alice.user_id().context("alice")?.to_string();
    let bob_id = bob.user_id().context("bob")?.to_string();
    // Set before B shares a room with A: node A sends it when bob's join arrives.
    let (status, _) = put_presence(
        &http,
        &url_a,
        &token(&alice)?,
        &alice_id,
        json!({"presence": "online", "status_msg": "before the join"}),
    )
    .await?;
    assert_eq!(status, 200);
    shared_room(&alice, &bob, Some(a.name())).await?;
    sync_until(
        &bob,
        WAIT,
        "bob sees alice's status set before he joined",
        |r| Ok(presence_of(r, &alice_id)?.is_some_and(|c| c["status_msg"] == "before the join")),
    )
    .await?;

    // A's m.presence EDU reaches B: bob's sync shows alice's status, and B answers GET.
    let (status, _) = put_presence(
        &http,
        &url_a,
        &token(&alice)?,
        &alice_id,
        json!({"presence": "online", "status_msg": "on the mesh"}),
    )
    .await?;
    assert_eq!(status, 200);
    sync_until(&bob, WAIT, "bob sees alice's status from node A", |r| {
        Ok(presence_of(r, &alice_id)?
            .is_some_and(|c| c["presence"] == "online" && c["status_msg"] == "on the mesh"))
    })
    .await?;
    let (status, got) = get_presence(&http, &url_b, &token(&bob)?, &alice_id).await?;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["status_msg"], "on the mesh");

    // And back: bob goes unavailable on B; alice sees it on A.
    let (status, _) = put_presence(
        &http,
        &url_b,
        &token(&bob)?,
        &bob_id,
        json!({"presence": "unavailable", "status_msg": "away from the keyboard"}),
    )
    .await?;
    assert_eq!(status, 200);
    sync_until(
        &alice,
        WAIT,
        "alice sees bob unavailable from node B",
        |r| {
            Ok(presence_of(r, &bob_id)?.is_some_and(|c| {
                c["presence"] == "unavailable" && c["status_msg"] == "away from the keyboard"
            }))
        },
    )
    .await?;

    drop((alice, bob));
    a.stop().await?;
    b.stop().await?;
    Ok(())
}
