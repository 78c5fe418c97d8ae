//! End-to-end encryption across two nodes connected over real libp2p (loopback).
//!
//! Real clients (matrix-sdk 0.18 with its crypto store): alice on node A and bob on node
//! B share an encrypted room. Each decrypts what the other sends, which needs remote
//! `/keys/query` (answered from B's device list, cached on A), remote `/keys/claim` and
//! to-device messages across nodes. Then bob logs in a second device: A learns of it
//! from an `m.device_list_update` EDU, alice's client re-queries, and alice's next
//! message decrypts on the new device too. Bob's cross-signing keys reach A in an
//! `m.signing_key_update`, and A answers for bob from its cache once B is gone.
//!
//! Every wait is a sync or a poll until a condition holds, with a deadline.

use std::time::Duration;

use anyhow::Context as _;
use matrix_sdk::config::SyncSettings;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::events::InitialStateEvent;
use matrix_sdk::ruma::events::room::encryption::RoomEncryptionEventContent;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{DeviceId, EventId, OwnedEventId, RoomId, UserId};
use matrix_sdk::{Client, Room};
use serde_json::{Value, json};
use warren_tests::*;

/// One short long-poll: answers at once when there is news.
const SHORT_POLL: Duration = Duration::from_millis(500);

async fn sync_once(client: &Client) -> anyhow::Result<()> {
    client
        .sync_once(SyncSettings::default().timeout(SHORT_POLL))
        .await
        .context("sync_once")?;
    Ok(())
}

/// Syncs `client` until its crypto store knows `user_id`'s device `device_id`.
async fn wait_for_device(
    client: &Client,
    user_id: &UserId,
    device_id: &DeviceId,
) -> anyhow::Result<()> {
    wait_until(
        WAIT,
        &format!("the client knows {user_id}'s device {device_id}"),
        async || {
            sync_once(client).await?;
            Ok(client
                .encryption()
                .get_device(user_id, device_id)
                .await?
                .is_some())
        },
    )
    .await
}

/// The body of `event_id` as `room`'s client decrypts it, or `None` while it cannot (or
/// while the event has not reached this client's node yet).
async fn decrypted_body(room: &Room, event_id: &EventId) -> anyhow::Result<Option<String>> {
    let Ok(event) = room.event(event_id, None).await else {
        return Ok(None);
    };
    if event.encryption_info().is_none() {
        return Ok(None);
    }
    Ok(message_body(&raw_json(event.raw())?).map(str::to_owned))
}

/// Syncs `client` (to receive room keys over to-device) until it decrypts `event_id`.
async fn wait_decrypts(
    client: &Client,
    room_id: &RoomId,
    event_id: &EventId,
    body: &str,
) -> anyhow::Result<()> {
    let who = client
        .device_id()
        .map(|d| d.to_string())
        .unwrap_or_default();
    wait_until(
        WAIT,
        &format!("device {who} decrypts {event_id} as {body:?}"),
        async || {
            sync_once(client).await?;
            let Some(room) = client.get_room(room_id) else {
                return Ok(false);
            };
            Ok(decrypted_body(&room, event_id).await?.as_deref() == Some(body))
        },
    )
    .await
}

async fn send_text(room: &Room, body: &str) -> anyhow::Result<OwnedEventId> {
    Ok(room
        .send(RoomMessageEventContent::text_plain(body))
        .await
        .with_context(|| format!("sending {body:?}"))?
        .response
        .event_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_messages_decrypt_across_nodes_and_on_a_new_remote_device() -> anyhow::Result<()>
{
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let (url_a, url_b) = (a.node.client_url(), b.node.client_url());

    let alice = register_client(&url_a, "alice", "alice-password").await?;
    let bob = register_client(&url_b, "bob", "bob-password").await?;
    let alice_id = alice.user_id().context("alice")?.to_owned();
    let alice_device = alice.device_id().context("alice's device")?.to_owned();
    let bob_id = bob.user_id().context("bob")?.to_owned();
    let bob_device = bob.device_id().context("bob's device")?.to_owned();
    // First syncs upload each device's keys.
    sync_once(&alice).await?;
    sync_once(&bob).await?;

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob_id.clone()];
    create.initial_state = vec![
        InitialStateEvent::with_empty_state_key(
            RoomEncryptionEventContent::with_recommended_defaults(),
        )
        .to_raw_any(),
    ];
    let alice_room = alice.create_room(create).await?;
    let room_id = alice_room.room_id().to_owned();
    sync_until(&bob, WAIT, "bob sees the invite", |r| {
        Ok(r.rooms.invited.contains_key(&room_id))
    })
    .await?;
    bob.join_room_by_id(&room_id).await?;
    sync_until(&alice, WAIT, "alice sees bob join", |r| {
        Ok(timeline_json(r, &room_id)?.iter().any(|ev| {
            ev["type"] == "m.room.member"
                && ev["state_key"] == bob_id.as_str()
                && ev["content"]["membership"] == "join"
        }))
    })
    .await?;

    // Each client learns the other's device through /keys/query across the federation.
    wait_for_device(&alice, &bob_id, &bob_device).await?;
    wait_for_device(&bob, &alice_id, &alice_device).await?;

    let first = send_text(&alice_room, "the eagle lands at dawn").await?;
    wait_decrypts(&bob, &room_id, &first, "the eagle lands at dawn").await?;
    let bob_room = bob.get_room(&room_id).context("bob's room")?;
    let reply = send_text(&bob_room, "the fox is in the henhouse").await?;
    wait_decrypts(&alice, &room_id, &reply, "the fox is in the henhouse").await?;

    // What node A stores for bob's message is ciphertext.
    let http = http_client()?;
    let alice_token = alice.access_token().context("alice's token")?;
    let stored: Value = http
        .get(format!(
            "{url_a}/_matrix/client/v3/rooms/{}/event/{}",
            path_segment(room_id.as_str()),
            path_segment(reply.as_str())
        ))
        .bearer_auth(&alice_token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(stored["type"], "m.room.encrypted", "{stored}");
    assert!(!stored.to_string().contains("henhouse"), "{stored}");

    // A second device of bob: node A hears of it from an m.device_list_update EDU.
    let bob2 = login_client(&url_b, "bob", "bob-password").await?;
    let bob2_device = bob2.device_id().context("second device")?.to_owned();
    assert_ne!(bob2_device, bob_device);
    sync_once(&bob2).await?;
    wait_for_device(&alice, &bob_id, &bob2_device).await?;
    let second = send_text(&alice_room, "the owl flies at midnight").await?;
    wait_decrypts(&bob2, &room_id, &second, "the owl flies at midnight").await?;
    wait_decrypts(&bob, &room_id, &second, "the owl flies at midnight").await?;

    // Bob names his new device: the m.device_list_update carries the device's keys and
    // name, and A applies it to its cached list (its prev_id is what A has).
    let renamed = http
        .put(format!(
            "{url_b}/_matrix/client/v3/devices/{}",
            path_segment(bob2_device.as_str())
        ))
        .bearer_auth(bob2.access_token().context("bob2's token")?)
        .json(&json!({"display_name": "bob's laptop"}))
        .send()
        .await?;
    assert_eq!(renamed.status().as_u16(), 200);
    // Applied in place: the cached list has the name and is not stale (no re-fetch).
    let a_server = a.node.server().clone();
    wait_until(WAIT, "A's cache has the new device name", || {
        let cached = a_server.db.read(|c| {
            Ok((
                warren_core::storage::remote_device_list(c, bob_id.as_str())?,
                warren_core::storage::remote_devices(c, bob_id.as_str())?,
            ))
        });
        let done = cached.is_ok_and(|(list, devices)| {
            list.is_some_and(|l| !l.stale)
                && devices.iter().any(|d| {
                    d.device_id == bob2_device.as_str()
                        && d.display_name.as_deref() == Some("bob's laptop")
                })
        });
        async move { Ok(done) }
    })
    .await?;
    wait_until(WAIT, "A serves the new device name", async || {
        let answer: Value = http
            .post(format!("{url_a}/_matrix/client/v3/keys/query"))
            .bearer_auth(&alice_token)
            .json(&json!({"device_keys": {bob_id.as_str(): [bob2_device.as_str()]}}))
            .send()
            .await?
            .json()
            .await?;
        Ok(answer["device_keys"][bob_id.as_str()][bob2_device.as_str()]["unsigned"]
            ["device_display_name"]
            == "bob's laptop")
    })
    .await?;

    // Bob sets up cross-signing: node A hears of it from an m.signing_key_update EDU
    // and alice's client sees bob's identity.
    bob.encryption().bootstrap_cross_signing(None).await?;
    wait_until(
        WAIT,
        "alice's client knows bob's cross-signing identity",
        async || {
            sync_once(&alice).await?;
            Ok(alice
                .encryption()
                .get_user_identity(&bob_id)
                .await?
                .is_some())
        },
    )
    .await?;

    // A device-list update whose keys do not verify (here: not signed at all) is not
    // believed: A marks bob's cached list stale and re-fetches it from B, so the
    // forged device never shows.
    warren_core::federation::edu::receive_edu(
        a.node.server(),
        &b.name(),
        json!({"edu_type": "m.device_list_update", "content": {
            "user_id": bob_id.as_str(),
            "device_id": "FORGED",
            "stream_id": 1_000_000_000i64,
            "prev_id": [],
            "keys": {
                "user_id": bob_id.as_str(),
                "device_id": "FORGED",
                "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
                "keys": {"ed25519:FORGED": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"},
            },
        }}),
    )
    .await;
    let answer: Value = http
        .post(format!("{url_a}/_matrix/client/v3/keys/query"))
        .bearer_auth(&alice_token)
        .json(&json!({"device_keys": {bob_id.as_str(): []}}))
        .send()
        .await?
        .json()
        .await?;
    let devices = answer["device_keys"][bob_id.as_str()]
        .as_object()
        .context("bob's devices")?;
    assert!(!devices.contains_key("FORGED"), "{answer}");
    assert!(devices.contains_key(bob2_device.as_str()), "{answer}");

    // With node B gone, node A still answers a /keys/query for bob: from its cache of
    // bob's device list (both devices, his master and self-signing keys), no failures.
    b.stop().await?;
    let answer: Value = http
        .post(format!("{url_a}/_matrix/client/v3/keys/query"))
        .bearer_auth(&alice_token)
        .json(&json!({"device_keys": {bob_id.as_str(): []}}))
        .send()
        .await?
        .json()
        .await?;
    let devices = answer["device_keys"][bob_id.as_str()]
        .as_object()
        .context("bob's devices")?;
    assert!(devices.contains_key(bob_device.as_str()), "{answer}");
    assert!(devices.contains_key(bob2_device.as_str()), "{answer}");
    assert!(
        answer["master_keys"][bob_id.as_str()].is_object(),
        "{answer}"
    );
    assert!(
        answer["self_signing_keys"][bob_id.as_str()].is_object(),
        "{answer}"
    );
    assert!(
        answer["user_signing_keys"].get(bob_id.as_str()).is_none(),
        "{answer}"
    );
    assert_eq!(answer["failures"], json!({}), "{answer}");

    drop((alice_room, bob_room, alice, bob, bob2));
    a.stop().await?;
    Ok(())
}
