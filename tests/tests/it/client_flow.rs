//! A real Matrix client (matrix-sdk 0.18, in-memory stores) against one in-process node:
//! registration, a private room with an invite, messages both ways, typing, receipts,
//! back-pagination, redaction, room name and topic, and everything surviving a restart of
//! the node on the same data directory.
//!
//! Each test starts its own node on its own temporary directory. Every wait is a `/sync`
//! (or poll) until a condition holds, with a deadline.

use std::collections::BTreeSet;

use matrix_sdk::ruma::api::client::receipt::create_receipt::v3::ReceiptType;
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::state::get_state_events;
use matrix_sdk::ruma::events::receipt::ReceiptThread;
use matrix_sdk::ruma::events::room::message::RoomMessageEventContent;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, OwnedUserId, RoomId};
use matrix_sdk::{Client, Room, RoomState};
use serde_json::Value;
use warren_tests::{
    WAIT, ephemeral_json, history_backwards, login_client, message_body, raw_json, register_client,
    shutdown_node, start_node, sync_until, timeline_json,
};

const ALICE_PASSWORD: &str = "alice: correct horse battery staple";
const BOB_PASSWORD: &str = "bob: Tr0ub4dor&3";

/// Alice and Bob, both joined to a private-chat room that Alice created and invited Bob to.
struct Pair {
    alice: Client,
    bob: Client,
    alice_id: OwnedUserId,
    bob_id: OwnedUserId,
    room_id: OwnedRoomId,
    alice_room: Room,
    bob_room: Room,
}

/// The event with `event_id` in the room's timeline of a sync response, if present.
fn find_in_timeline(
    response: &matrix_sdk::sync::SyncResponse,
    room_id: &RoomId,
    event_id: &str,
) -> anyhow::Result<Option<Value>> {
    Ok(timeline_json(response, room_id)?
        .into_iter()
        .find(|ev| ev["event_id"] == event_id))
}

async fn send_text(room: &Room, body: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap_or_else(|err| panic!("sending {body:?} failed: {err}"))
        .response
        .event_id
}

/// Registers alice and bob, lets alice create a private chat, invite bob, and bob accept
/// the invite he saw in his sync. Checks each step on the way.
async fn alice_and_bob_in_a_private_room(url: &str) -> Pair {
    let alice = register_client(url, "alice", ALICE_PASSWORD)
        .await
        .expect("register alice");
    let bob = register_client(url, "bob", BOB_PASSWORD)
        .await
        .expect("register bob");
    let alice_id = alice.user_id().expect("alice is logged in").to_owned();
    let bob_id = bob.user_id().expect("bob is logged in").to_owned();
    assert_eq!(
        alice_id.server_name(),
        bob_id.server_name(),
        "same node, same server name"
    );

    // First syncs, so that everything after this arrives in incremental syncs.
    sync_until(&alice, WAIT, "alice's initial sync returns", |_| Ok(true))
        .await
        .expect("alice initial sync");
    sync_until(&bob, WAIT, "bob's initial sync returns", |_| Ok(true))
        .await
        .expect("bob initial sync");

    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    let alice_room = alice
        .create_room(create)
        .await
        .expect("alice creates a private chat");
    let room_id = alice_room.room_id().to_owned();

    alice_room
        .invite_user_by_id(&bob_id)
        .await
        .expect("alice invites bob");

    sync_until(&bob, WAIT, "bob's sync shows alice's invite", |response| {
        Ok(response.rooms.invited.contains_key(&room_id))
    })
    .await
    .expect("bob sees the invite");
    assert_eq!(
        bob.get_room(&room_id).map(|room| room.state()),
        Some(RoomState::Invited),
        "bob's client knows the room as invited"
    );

    let bob_room = bob.join_room_by_id(&room_id).await.expect("bob joins");
    assert_eq!(bob_room.state(), RoomState::Joined);

    let bob_str = bob_id.as_str();
    sync_until(&alice, WAIT, "alice's sync shows bob's join", |response| {
        Ok(timeline_json(response, &room_id)?.iter().any(|ev| {
            ev["type"] == "m.room.member"
                && ev["state_key"] == bob_str
                && ev["content"]["membership"] == "join"
        }))
    })
    .await
    .expect("alice sees bob join");

    Pair {
        alice,
        bob,
        alice_id,
        bob_id,
        room_id,
        alice_room,
        bob_room,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn invite_join_chat_typing_and_receipts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();

    let Pair {
        alice,
        bob,
        alice_id,
        bob_id,
        room_id,
        alice_room,
        bob_room,
    } = alice_and_bob_in_a_private_room(&url).await;
    let server_name = node.server_name().to_owned();
    assert_eq!(
        server_name.len(),
        64,
        "server name is 64 hex characters: {server_name}"
    );
    assert!(
        server_name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    );
    assert_eq!(alice_id.as_str(), format!("@alice:{server_name}"));

    // alice -> bob
    let hello = send_text(&alice_room, "hello bob").await;
    let seen = sync_until(&bob, WAIT, "bob's sync shows alice's message", |response| {
        Ok(find_in_timeline(response, &room_id, hello.as_str())?.is_some())
    })
    .await
    .expect("bob receives alice's message");
    let event = find_in_timeline(&seen, &room_id, hello.as_str())
        .expect("timeline is JSON")
        .expect("event present");
    assert_eq!(event["sender"], alice_id.as_str());
    assert_eq!(event["type"], "m.room.message");
    assert_eq!(event["content"]["msgtype"], "m.text");
    assert_eq!(event["content"]["body"], "hello bob");
    assert!(
        event["origin_server_ts"].as_u64().is_some(),
        "origin_server_ts: {event}"
    );

    // bob -> alice
    let reply = send_text(&bob_room, "hi alice").await;
    let seen = sync_until(&alice, WAIT, "alice's sync shows bob's reply", |response| {
        Ok(find_in_timeline(response, &room_id, reply.as_str())?.is_some())
    })
    .await
    .expect("alice receives bob's reply");
    let event = find_in_timeline(&seen, &room_id, reply.as_str())
        .expect("timeline is JSON")
        .expect("event present");
    assert_eq!(event["sender"], bob_id.as_str());
    assert_eq!(event["content"]["body"], "hi alice");

    // Typing: on, then off.
    let alice_str = alice_id.as_str();
    let typing_users =
        |response: &matrix_sdk::sync::SyncResponse| -> anyhow::Result<Option<Vec<String>>> {
            Ok(ephemeral_json(response, &room_id)?
                .iter()
                .rev()
                .find(|ev| ev["type"] == "m.typing")
                .map(|ev| {
                    ev["content"]["user_ids"]
                        .as_array()
                        .map(|ids| {
                            ids.iter()
                                .filter_map(|id| id.as_str().map(str::to_owned))
                                .collect()
                        })
                        .unwrap_or_default()
                }))
        };
    alice_room
        .typing_notice(true)
        .await
        .expect("alice starts typing");
    sync_until(&bob, WAIT, "bob's sync shows alice typing", |response| {
        Ok(typing_users(response)?.is_some_and(|users| users.iter().any(|u| u == alice_str)))
    })
    .await
    .expect("bob sees alice typing");
    alice_room
        .typing_notice(false)
        .await
        .expect("alice stops typing");
    sync_until(
        &bob,
        WAIT,
        "bob's sync shows alice no longer typing",
        |response| {
            Ok(typing_users(response)?.is_some_and(|users| !users.iter().any(|u| u == alice_str)))
        },
    )
    .await
    .expect("bob sees alice stop typing");

    // Bob's read receipt on alice's message reaches alice.
    bob_room
        .send_single_receipt(ReceiptType::Read, ReceiptThread::Unthreaded, hello.clone())
        .await
        .expect("bob sends a read receipt");
    let bob_str = bob_id.as_str();
    let seen = sync_until(
        &alice,
        WAIT,
        "alice's sync shows bob's read receipt",
        |response| {
            Ok(ephemeral_json(response, &room_id)?.iter().any(|ev| {
                ev["type"] == "m.receipt"
                    && ev["content"][hello.as_str()]["m.read"][bob_str].is_object()
            }))
        },
    )
    .await
    .expect("alice sees bob's receipt");
    let receipt = ephemeral_json(&seen, &room_id)
        .expect("ephemeral is JSON")
        .into_iter()
        .find(|ev| ev["type"] == "m.receipt")
        .expect("receipt present");
    assert!(
        receipt["content"][hello.as_str()]["m.read"][bob_str]["ts"]
            .as_u64()
            .is_some(),
        "receipt carries a timestamp: {receipt}"
    );

    drop((alice_room, bob_room, alice, bob));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn back_pagination_and_redaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let Pair {
        alice,
        bob,
        alice_id,
        room_id,
        alice_room,
        bob_room,
        ..
    } = alice_and_bob_in_a_private_room(&url).await;

    const COUNT: usize = 30;
    let mut sent = Vec::with_capacity(COUNT);
    for i in 0..COUNT {
        sent.push(send_text(&alice_room, &format!("page {i:02}")).await);
    }

    // Bob pages backwards, 7 at a time (so the last page is partial), through the whole
    // room: alice's messages come out complete, in order, each once.
    let history = history_backwards(&bob_room, 7)
        .await
        .expect("bob paginates");
    let pages: Vec<(&str, &str)> = history
        .iter()
        .filter(|ev| message_body(ev).is_some_and(|b| b.starts_with("page ")))
        .map(|ev| {
            (
                ev["event_id"].as_str().unwrap_or_default(),
                message_body(ev).unwrap_or_default(),
            )
        })
        .collect();
    let expected: Vec<(String, String)> = sent
        .iter()
        .enumerate()
        .map(|(i, id)| (id.to_string(), format!("page {i:02}")))
        .collect();
    let pages_owned: Vec<(String, String)> = pages
        .iter()
        .map(|(id, body)| ((*id).to_owned(), (*body).to_owned()))
        .collect();
    assert_eq!(
        pages_owned, expected,
        "bob sees all of alice's messages, oldest first"
    );
    // Private chat => history visibility "shared": bob sees the room from its creation.
    assert_eq!(
        history.first().map(|ev| ev["type"].clone()),
        Some("m.room.create".into())
    );
    assert!(
        history.iter().all(|ev| ev["room_id"] == room_id.as_str()),
        "every /messages event carries the room id"
    );

    // Alice redacts one; bob's sync shows the redaction...
    let target = sent[13].clone();
    let redaction = alice_room
        .redact(&target, Some("testing redaction"), None)
        .await
        .expect("alice redacts a message")
        .event_id;
    let seen = sync_until(&bob, WAIT, "bob's sync shows the redaction", |response| {
        Ok(find_in_timeline(response, &room_id, redaction.as_str())?.is_some())
    })
    .await
    .expect("bob sees the redaction");
    let redaction_event = find_in_timeline(&seen, &room_id, redaction.as_str())
        .expect("timeline is JSON")
        .expect("present");
    assert_eq!(redaction_event["type"], "m.room.redaction");
    assert_eq!(redaction_event["sender"], alice_id.as_str());
    // Room versions >= 11 carry `redacts` in the content; older ones at the top level.
    let redacts = redaction_event["content"]["redacts"]
        .as_str()
        .or_else(|| redaction_event["redacts"].as_str());
    assert_eq!(
        redacts,
        Some(target.as_str()),
        "redaction event: {redaction_event}"
    );

    // ...and the history now has the original redacted: no content, and why.
    let history = history_backwards(&bob_room, 10)
        .await
        .expect("bob paginates again");
    let redacted = history
        .iter()
        .find(|ev| ev["event_id"] == target.as_str())
        .expect("the redacted event is still in the history");
    assert_eq!(redacted["type"], "m.room.message");
    assert_eq!(
        redacted["content"],
        serde_json::json!({}),
        "content stripped: {redacted}"
    );
    let because = &redacted["unsigned"]["redacted_because"];
    assert!(
        because.is_object(),
        "unsigned.redacted_because present: {redacted}"
    );
    if let Some(id) = because["event_id"].as_str() {
        assert_eq!(id, redaction.as_str());
    }
    let remaining: Vec<&str> = history
        .iter()
        .filter_map(message_body)
        .filter(|b| b.starts_with("page "))
        .collect();
    let expected: Vec<String> = (0..COUNT)
        .filter(|i| *i != 13)
        .map(|i| format!("page {i:02}"))
        .collect();
    assert_eq!(
        remaining, expected,
        "only the redacted message lost its body"
    );

    drop((alice_room, bob_room, alice, bob));
    shutdown_node(node).await.expect("shutdown");
}

const ROOM_NAME: &str = "The warren";
const ROOM_TOPIC: &str = "Where the rabbits talk, with no server in sight";

fn has_name_and_topic(client: &Client, room_id: &RoomId) -> bool {
    client.get_room(room_id).is_some_and(|room| {
        room.state() == RoomState::Joined
            && room.name().as_deref() == Some(ROOM_NAME)
            && room.topic().as_deref() == Some(ROOM_TOPIC)
    })
}

/// `(user id of every joined member)` according to `GET /rooms/{id}/state`.
async fn joined_members_from_state(client: &Client, room_id: &RoomId) -> BTreeSet<String> {
    let state = client
        .send(get_state_events::v3::Request::new(room_id.to_owned()))
        .await
        .expect("GET /rooms/{roomId}/state")
        .room_state;
    state
        .iter()
        .map(|raw| raw_json(raw).expect("state event is JSON"))
        .filter(|ev| ev["type"] == "m.room.member" && ev["content"]["membership"] == "join")
        .filter_map(|ev| ev["state_key"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn name_topic_members_and_history_survive_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let server_name = node.server_name().to_owned();
    let Pair {
        alice,
        bob,
        alice_id,
        bob_id,
        room_id,
        alice_room,
        bob_room,
    } = alice_and_bob_in_a_private_room(&url).await;

    alice_room
        .set_name(ROOM_NAME.to_owned())
        .await
        .expect("alice sets the name");
    alice_room
        .set_room_topic(ROOM_TOPIC)
        .await
        .expect("alice sets the topic");
    sync_until(
        &bob,
        WAIT,
        "bob's room shows the new name and topic",
        |_| Ok(has_name_and_topic(&bob, &room_id)),
    )
    .await
    .expect("bob sees name and topic");

    // Some history from both sides.
    let mut expected_history = Vec::new();
    for i in 0..12 {
        let (room, who) = if i % 2 == 0 {
            (&alice_room, "alice")
        } else {
            (&bob_room, "bob")
        };
        let body = format!("history {i:02} from {who}");
        send_text(room, &body).await;
        expected_history.push(body);
    }

    drop((alice_room, bob_room, alice, bob));
    shutdown_node(node).await.expect("first shutdown");

    // Same data directory: same identity, same rooms, same history.
    let node = start_node(dir.path())
        .await
        .expect("restart on the same data directory");
    assert_eq!(
        node.server_name(),
        server_name,
        "the node keeps its identity across restarts"
    );
    let url = node.client_url();
    let alice = login_client(&url, "alice", ALICE_PASSWORD)
        .await
        .expect("alice logs in again");
    let bob = login_client(&url, "bob", BOB_PASSWORD)
        .await
        .expect("bob logs in again");
    assert_eq!(alice.user_id(), Some(&*alice_id));
    assert_eq!(bob.user_id(), Some(&*bob_id));

    for (who, client) in [("alice", &alice), ("bob", &bob)] {
        sync_until(
            client,
            WAIT,
            &format!("{who}'s first sync shows the room, named"),
            |_| Ok(has_name_and_topic(client, &room_id)),
        )
        .await
        .unwrap_or_else(|err| panic!("{who} sees the room after restart: {err:#}"));
        let room = client.get_room(&room_id).expect("room known");

        let members = joined_members_from_state(client, &room_id).await;
        let expected: BTreeSet<String> = [alice_id.to_string(), bob_id.to_string()]
            .into_iter()
            .collect();
        assert_eq!(
            members, expected,
            "joined members per /state, as seen by {who}"
        );
        let mut synced_members: Vec<String> = room
            .joined_user_ids()
            .await
            .expect("joined members from the synced state")
            .into_iter()
            .map(|id| id.to_string())
            .collect();
        synced_members.sort();
        assert_eq!(
            synced_members,
            expected.iter().cloned().collect::<Vec<_>>(),
            "{who}'s sync"
        );

        let history = history_backwards(&room, 5)
            .await
            .expect("paginate after restart");
        let bodies: Vec<&str> = history
            .iter()
            .filter_map(message_body)
            .filter(|b| b.starts_with("history "))
            .collect();
        assert_eq!(
            bodies, expected_history,
            "{who} sees the whole history after restart"
        );
    }

    // And the room keeps working: a new message flows after the restart.
    let alice_room = alice.get_room(&room_id).expect("alice's room");
    let after = send_text(&alice_room, "after the restart").await;
    sync_until(
        &bob,
        WAIT,
        "bob's sync shows the post-restart message",
        |response| Ok(find_in_timeline(response, &room_id, after.as_str())?.is_some()),
    )
    .await
    .expect("bob receives a message sent after the restart");

    drop((alice_room, alice, bob));
    shutdown_node(node).await.expect("second shutdown");
}
