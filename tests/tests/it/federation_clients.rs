//! Real Matrix clients (matrix-sdk 0.18) on two nodes connected over real libp2p: a user
//! on node B joins a room on node A, and messages, typing and read receipts cross in
//! both directions. Every wait is a `/sync` until a condition holds.

use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::events::receipt::ReceiptThread;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedServerName, RoomId};
use serde_json::Value;
use warren_tests::*;

fn has_message(
    response: &matrix_sdk::sync::SyncResponse,
    room: &RoomId,
    body: &str,
) -> anyhow::Result<bool> {
    Ok(timeline_json(response, room)?
        .iter()
        .any(|ev| message_body(ev) == Some(body)))
}

fn typing_users(
    response: &matrix_sdk::sync::SyncResponse,
    room: &RoomId,
) -> anyhow::Result<Option<Vec<String>>> {
    Ok(ephemeral_json(response, room)?
        .into_iter()
        .find(|ev| ev["type"] == "m.typing")
        .map(|ev| {
            ev["content"]["user_ids"]
                .as_array()
                .map(|ids| {
                    ids.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default()
        }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_two_nodes_chat_type_and_read_across_federation() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;

    let alice = register_client(&a.node.client_url(), "alice", "alice-password").await?;
    let bob = register_client(&b.node.client_url(), "bob", "bob-password").await?;
    let alice_id = alice.user_id().map(ToString::to_string).unwrap_or_default();
    let bob_id = bob.user_id().map(ToString::to_string).unwrap_or_default();

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PublicChat);
    create.name = Some("Across the mesh".into());
    let alice_room = alice.create_room(create).await?;
    let room_id = alice_room.room_id().to_owned();

    // Bob joins through A's server name.
    let via: OwnedServerName = a.name().try_into()?;
    let target: &matrix_sdk::ruma::RoomOrAliasId = (&*room_id).into();
    let bob_room = bob.join_room_by_id_or_alias(target, &[via]).await?;
    sync_until(&alice, WAIT, "alice sees bob join", |r| {
        Ok(timeline_json(r, &room_id)?.iter().any(|ev| {
            ev["type"] == "m.room.member"
                && ev["state_key"] == bob_id.as_str()
                && ev["content"]["membership"] == "join"
        }))
    })
    .await?;

    // Messages both ways.
    alice_room
        .send(RoomMessageEventContent::text_plain("hello from A"))
        .await?;
    sync_until(&bob, WAIT, "bob receives alice's message", |r| {
        has_message(r, &room_id, "hello from A")
    })
    .await?;
    let reply = bob_room
        .send(RoomMessageEventContent::text_plain("hello from B"))
        .await?
        .response
        .event_id;
    sync_until(&alice, WAIT, "alice receives bob's reply", |r| {
        has_message(r, &room_id, "hello from B")
    })
    .await?;

    // Typing crosses as an EDU.
    bob_room.typing_notice(true).await?;
    sync_until(&alice, WAIT, "alice sees bob typing", |r| {
        Ok(typing_users(r, &room_id)?.is_some_and(|u| u.contains(&bob_id)))
    })
    .await?;
    bob_room.typing_notice(false).await?;
    sync_until(&alice, WAIT, "alice sees bob stop typing", |r| {
        Ok(typing_users(r, &room_id)?.is_some_and(|u| !u.contains(&bob_id)))
    })
    .await?;

    // Alice's read receipt on bob's reply reaches bob.
    alice_room
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, reply.clone())
        .await?;
    sync_until(&bob, WAIT, "bob sees alice's read receipt", |r| {
        Ok(ephemeral_json(r, &room_id)?.iter().any(|ev| {
            ev["type"] == "m.receipt"
                && ev["content"][reply.as_str()]["m.read"][alice_id.as_str()].is_object()
        }))
    })
    .await?;

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Alice on A invites Bob on B; they take turns for 50 messages; both nodes then show the
/// same conversation in the same order, and Bob sees Alice's display name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invited_remote_user_and_fifty_messages_in_the_same_order() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&b, &a).await?;
    let alice = register_client(&a.node.client_url(), "alice", "alice-password").await?;
    let bob = register_client(&b.node.client_url(), "bob", "bob-password").await?;
    alice.account().set_display_name(Some("Alice of A")).await?;
    let bob_id = bob
        .user_id()
        .map(ToOwned::to_owned)
        .ok_or_else(|| anyhow::anyhow!("bob has no id"))?;

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    create.invite = vec![bob_id.clone()];
    let alice_room = alice.create_room(create).await?;
    let room_id = alice_room.room_id().to_owned();
    sync_until(&bob, WAIT, "bob sees the invite", |r| {
        Ok(r.rooms.invited.contains_key(&room_id))
    })
    .await?;
    let bob_room = bob
        .get_room(&room_id)
        .ok_or_else(|| anyhow::anyhow!("bob has no invited room"))?;
    bob_room.join().await?;

    for i in 0..25 {
        let from_a = format!("a{i}");
        alice_room
            .send(RoomMessageEventContent::text_plain(&from_a))
            .await?;
        sync_until(&bob, WAIT, "bob receives alice's turn", |r| {
            has_message(r, &room_id, &from_a)
        })
        .await?;
        let from_b = format!("b{i}");
        bob_room
            .send(RoomMessageEventContent::text_plain(&from_b))
            .await?;
        sync_until(&alice, WAIT, "alice receives bob's turn", |r| {
            has_message(r, &room_id, &from_b)
        })
        .await?;
    }

    // The same 50 messages, in the same order, on both nodes.
    let order = |events: Vec<Value>| -> Vec<String> {
        events
            .iter()
            .filter_map(|e| message_body(e).map(str::to_owned))
            .collect()
    };
    let on_a = order(history_backwards(&alice_room, 30).await?);
    let on_b = order(history_backwards(&bob_room, 30).await?);
    let expected: Vec<String> = (0..25)
        .flat_map(|i| [format!("a{i}"), format!("b{i}")])
        .collect();
    // `history_backwards` pages back and returns the history oldest first.
    assert_eq!(on_a, expected, "node A's order");
    assert_eq!(on_b, expected, "node B's order");

    // Bob sees Alice's display name.
    let member = bob_room
        .get_member(
            alice
                .user_id()
                .ok_or_else(|| anyhow::anyhow!("alice has no id"))?,
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("alice is not a member in bob's view"))?;
    assert_eq!(member.display_name(), Some("Alice of A"));
    a.stop().await?;
    b.stop().await?;
    Ok(())
}
