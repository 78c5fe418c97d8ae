//! Room versions (issue 15, item 3): every version from 1 to 12 can be created and used
//! locally (messages, state, power levels with the version's rules, redaction, a second
//! member), `/capabilities` lists them, `default_room_version` is honoured, unknown
//! versions are refused with `M_UNSUPPORTED_ROOM_VERSION`, and rooms of older versions
//! (v1 and v2's `$random:server` ids and `[id, hash]` references, v3's standard-base64
//! event ids, invites) are joined across two nodes and upgraded; a v1 room resolves a
//! partition with the original state resolution.
//!
//! Each test starts its own node(s) on temporary directories; every wait is on a
//! condition, with a deadline.

use std::time::Duration;

use anyhow::{Context, ensure};
use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{
    RawUser, connect_nodes, path_segment, shutdown_node, start_federated_node, start_node,
    start_node_with, test_config, wait_until,
};

use crate::federation_mesh::{
    User as MeshUser, bob_and_carol_join, current_state, mesh_pair, restart_and_reconnect,
    split_once_agreed, state_content,
};

const WAIT: Duration = Duration::from_secs(30);

const VERSIONS: [&str; 12] = [
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// Versions 1 and 2: event ids `$random:server`, not hashes.
fn has_server_event_ids(v: &str) -> bool {
    v == "1" || v == "2"
}

fn room_path(room: &str, rest: &str) -> String {
    format!("/rooms/{}{rest}", path_segment(room))
}

async fn send_text(user: &RawUser, room: &str, txn: &str, body: &str) -> anyhow::Result<String> {
    let answer = user
        .ok(
            Method::PUT,
            &room_path(room, &format!("/send/m.room.message/{txn}")),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await?;
    Ok(answer["event_id"].as_str().context("event_id")?.to_owned())
}

/// The content of the room's state event `(ty, "")`, as `user` sees it.
async fn room_state(user: &RawUser, room: &str, ty: &str) -> anyhow::Result<Value> {
    user.ok(
        Method::GET,
        &room_path(room, &format!("/state/{ty}/")),
        Value::Null,
    )
    .await
}

/// The bodies of the room's last messages (newest first), redacted ones as `null`.
async fn recent_messages(user: &RawUser, room: &str) -> anyhow::Result<Vec<(String, Value)>> {
    let page = user
        .ok(
            Method::GET,
            &room_path(room, "/messages?dir=b&limit=50"),
            Value::Null,
        )
        .await?;
    Ok(page["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| {
            (
                e["event_id"].as_str().unwrap_or_default().to_owned(),
                e["content"]["body"].clone(),
            )
        })
        .collect())
}

#[tokio::test]
async fn every_supported_room_version_is_created_and_used() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;
    let bob = RawUser::register(node.client_url(), "bob").await?;

    let caps = alice.ok(Method::GET, "/capabilities", Value::Null).await?;
    let versions = &caps["capabilities"]["m.room_versions"];
    ensure!(versions["default"] == "12", "{versions}");
    for v in VERSIONS {
        ensure!(versions["available"][v] == "stable", "{v}: {versions}");
    }

    for v in VERSIONS {
        let room = alice
            .create_room(
                json!({"preset": "private_chat", "room_version": v, "name": format!("v{v}")}),
            )
            .await
            .with_context(|| format!("create a v{v} room"))?;
        // Room ids carry the server name before v12, and are the create event's hash from it.
        ensure!(room.contains(':') == (v != "12"), "v{v} room id {room}");
        let create = room_state(&alice, &room, "m.room.create").await?;
        ensure!(create["room_version"] == v, "v{v}: {create}");
        // `creator` is in the content until v11, which takes the sender instead.
        let old = v.parse::<u32>()? < 11;
        ensure!(
            (create["creator"] == alice.id()) == old,
            "v{v} creator: {create}"
        );

        let first = send_text(&alice, &room, &format!("a{v}"), "hello").await?;
        ensure!(
            first.starts_with('$') && first.contains(':') == has_server_event_ids(v),
            "v{v} event id {first}"
        );
        // The fetched event answers under its id (v3 ids may hold '/' and '+').
        let fetched = alice
            .ok(
                Method::GET,
                &room_path(&room, &format!("/event/{}", path_segment(&first))),
                Value::Null,
            )
            .await?;
        ensure!(fetched["event_id"] == first.as_str(), "v{v}: {fetched}");

        // State: a topic and a power level change.
        alice
            .ok(
                Method::PUT,
                &room_path(&room, "/state/m.room.topic/"),
                json!({"topic": format!("topic of v{v}")}),
            )
            .await
            .with_context(|| format!("v{v} topic"))?;
        let mut power = room_state(&alice, &room, "m.room.power_levels").await?;
        power["events"]["m.room.topic"] = json!(75);
        alice
            .ok(
                Method::PUT,
                &room_path(&room, "/state/m.room.power_levels/"),
                power,
            )
            .await
            .with_context(|| format!("v{v} power levels"))?;

        // Bob is invited, joins and writes; he cannot change the topic (75 > 0).
        alice
            .post(&room_path(&room, "/invite"), json!({"user_id": bob.id()}))
            .await?;
        bob.post(&format!("/join/{}", path_segment(&room)), json!({}))
            .await
            .with_context(|| format!("bob joins v{v}"))?;
        send_text(&bob, &room, &format!("b{v}"), "hi alice").await?;
        let (status, denied) = bob
            .call(
                Method::PUT,
                &room_path(&room, "/state/m.room.topic/"),
                json!({"topic": "bob's"}),
            )
            .await?;
        ensure!(status == 403, "v{v} bob's topic: {status} {denied}");

        // Alice redacts her message; the room version's algorithm empties its content.
        alice
            .ok(
                Method::PUT,
                &room_path(&room, &format!("/redact/{}/r{v}", path_segment(&first))),
                json!({"reason": "test"}),
            )
            .await
            .with_context(|| format!("v{v} redaction"))?;
        let messages = recent_messages(&bob, &room).await?;
        ensure!(
            messages
                .iter()
                .any(|(id, body)| id == &first && body.is_null()),
            "v{v} redacted message: {messages:?}"
        );
        ensure!(
            messages.iter().any(|(_, body)| body == "hi alice"),
            "v{v} bob's message: {messages:?}"
        );
        let topic = room_state(&bob, &room, "m.room.topic").await?;
        ensure!(topic["topic"] == format!("topic of v{v}"), "v{v}: {topic}");
    }

    // Unknown versions are refused with the spec's error code.
    for v in ["13", "99", "org.example.nope"] {
        let (status, answer) = alice
            .call(Method::POST, "/createRoom", json!({"room_version": v}))
            .await?;
        ensure!(
            status == 400 && answer["errcode"] == "M_UNSUPPORTED_ROOM_VERSION",
            "v{v}: {status} {answer}"
        );
    }
    shutdown_node(node).await?;
    Ok(())
}

#[tokio::test]
async fn an_old_room_upgrades_with_its_string_power_levels() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;
    let bob = RawUser::register(node.client_url(), "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_version": "5"}))
        .await?;
    bob.post(&format!("/join/{}", path_segment(&room)), json!({}))
        .await?;
    // Room versions before 10 accept levels written as strings.
    let mut power = room_state(&alice, &room, "m.room.power_levels").await?;
    power["users"][bob.id()] = json!("60");
    power["events"]["m.room.name"] = json!("55");
    alice
        .ok(
            Method::PUT,
            &room_path(&room, "/state/m.room.power_levels/"),
            power,
        )
        .await?;
    // Bob's string level counts: 60 ≥ 55.
    bob.ok(
        Method::PUT,
        &room_path(&room, "/state/m.room.name/"),
        json!({"name": "bob's"}),
    )
    .await
    .context("bob names the room with a string level")?;

    let upgraded = alice
        .post(&room_path(&room, "/upgrade"), json!({"new_version": "11"}))
        .await?;
    let new_room = upgraded["replacement_room"]
        .as_str()
        .context("replacement_room")?
        .to_owned();
    let power = room_state(&alice, &new_room, "m.room.power_levels").await?;
    ensure!(power["users"][bob.id()] == 60, "{power}");
    ensure!(power["events"]["m.room.name"] == 55, "{power}");
    shutdown_node(node).await?;
    Ok(())
}

#[tokio::test]
async fn default_room_version_comes_from_the_config() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.default_room_version = "9".into();
    let node = start_node_with(config).await?;
    let alice = RawUser::register(node.client_url(), "alice").await?;
    let caps = alice.ok(Method::GET, "/capabilities", Value::Null).await?;
    ensure!(
        caps["capabilities"]["m.room_versions"]["default"] == "9",
        "{caps}"
    );
    let room = alice.create_room(json!({})).await?;
    let create = room_state(&alice, &room, "m.room.create").await?;
    ensure!(create["room_version"] == "9", "{create}");
    shutdown_node(node).await?;

    // A version this build refuses stops the node from starting, with a clear message.
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.default_room_version = "99".into();
    let err = start_node_with(config)
        .await
        .err()
        .context("a node with default room version 99 started")?;
    ensure!(format!("{err}").contains("room version"), "{err}");
    Ok(())
}

/// Initial sync of `user` until `cond` holds for the room's timeline and state events.
async fn wait_for_room(
    user: &RawUser,
    room: &str,
    what: &str,
    cond: impl Fn(&[Value]) -> bool,
) -> anyhow::Result<()> {
    let filter = path_segment(r#"{"room":{"timeline":{"limit":50}}}"#);
    wait_until(WAIT, what, async || {
        let sync = user
            .ok(Method::GET, &format!("/sync?filter={filter}"), Value::Null)
            .await?;
        let r = &sync["rooms"]["join"][room];
        let events: Vec<Value> = r["state"]["events"]
            .as_array()
            .into_iter()
            .chain(r["timeline"]["events"].as_array())
            .flatten()
            .cloned()
            .collect();
        Ok(cond(&events))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_of_old_versions_are_joined_across_nodes() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let alice = RawUser::register(a.node.client_url(), "alice").await?;
    let bob = RawUser::register(b.node.client_url(), "bob").await?;
    for v in ["1", "2", "3", "5"] {
        // The v1, v2 and v5 rooms are private: Bob's node takes an invite over federation
        // first (v1 and v2 invites carry their own event ids and [id, hash] references).
        let invited = v != "3";
        let preset = if invited {
            "private_chat"
        } else {
            "public_chat"
        };
        let room = alice
            .create_room(json!({"preset": preset, "room_version": v}))
            .await?;
        if invited {
            alice
                .post(&room_path(&room, "/invite"), json!({"user_id": bob.id()}))
                .await
                .with_context(|| format!("a remote invite into a v{v} room"))?;
        }
        // Enough events that some v3 ids (standard base64) hold '/' or '+'.
        for i in 0..8 {
            send_text(
                &alice,
                &room,
                &format!("pre{v}-{i}"),
                &format!("before {i}"),
            )
            .await?;
        }
        let joined = bob
            .post(
                &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
                json!({}),
            )
            .await
            .with_context(|| format!("bob joins the v{v} room"))?;
        ensure!(joined["room_id"] == room.as_str(), "{joined}");
        let create = room_state(&bob, &room, "m.room.create").await?;
        ensure!(create["room_version"] == v, "{create}");

        alice
            .ok(
                Method::PUT,
                &room_path(&room, "/state/m.room.topic/"),
                json!({"topic": format!("v{v} topic")}),
            )
            .await?;
        send_text(&alice, &room, &format!("hello{v}"), "hello bob").await?;
        wait_for_room(&bob, &room, &format!("bob sees v{v} messages"), |events| {
            events.iter().any(|e| e["content"]["body"] == "hello bob")
                && events.iter().any(|e| {
                    e["type"] == "m.room.topic" && e["content"]["topic"] == format!("v{v} topic")
                })
        })
        .await?;
        send_text(&bob, &room, &format!("reply{v}"), "hello alice").await?;
        wait_for_room(
            &alice,
            &room,
            &format!("alice sees bob's v{v} reply"),
            |events| events.iter().any(|e| e["content"]["body"] == "hello alice"),
        )
        .await?;
        // Bob pages back over federation-received history.
        let messages = recent_messages(&bob, &room).await?;
        ensure!(
            messages.iter().any(|(_, b)| b == "hello bob"),
            "v{v}: {messages:?}"
        );
        if has_server_event_ids(v) {
            // Ids made on either node name it, and each node took the other's as given.
            for (server, body) in [(a.name(), "hello bob"), (b.name(), "hello alice")] {
                ensure!(
                    messages
                        .iter()
                        .any(|(id, b)| b == body && id.ends_with(&format!(":{server}"))),
                    "v{v} {body}: {messages:?}"
                );
            }
            upgrade_across_nodes(&alice, &bob, &a, &room).await?;
        }
        if v == "3" {
            // ~10 ids of 43 standard-base64 characters: all free of '/' and '+' with a
            // chance of about one in a million.
            ensure!(
                messages
                    .iter()
                    .any(|(id, _)| id.contains('/') || id.contains('+')),
                "no v3 id with '/' or '+': {messages:?}"
            );
        }
    }
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Alice upgrades `room` to version 12; Bob, on the other node, sees the tombstone and
/// follows it into the new room.
async fn upgrade_across_nodes(
    alice: &RawUser,
    bob: &RawUser,
    a: &warren_tests::FederatedNode,
    room: &str,
) -> anyhow::Result<()> {
    let upgraded = alice
        .post(&room_path(room, "/upgrade"), json!({"new_version": "12"}))
        .await
        .context("upgrade to 12")?;
    let new_room = upgraded["replacement_room"]
        .as_str()
        .context("replacement_room")?
        .to_owned();
    wait_for_room(bob, room, "bob sees the tombstone", |events| {
        events.iter().any(|e| {
            e["type"] == "m.room.tombstone" && e["content"]["replacement_room"] == new_room.as_str()
        })
    })
    .await?;
    // The old room was invite-only, and so is the new one.
    alice
        .post(
            &room_path(&new_room, "/invite"),
            json!({"user_id": bob.id()}),
        )
        .await?;
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&new_room), a.name()),
        json!({}),
    )
    .await
    .context("bob joins the upgraded room")?;
    let create = room_state(bob, &new_room, "m.room.create").await?;
    ensure!(
        create["room_version"] == "12" && create["predecessor"]["room_id"] == room,
        "{create}"
    );
    send_text(bob, &new_room, &format!("up-{room}"), "upgraded").await?;
    wait_for_room(
        alice,
        &new_room,
        "alice sees bob in the new room",
        |events| events.iter().any(|e| e["content"]["body"] == "upgraded"),
    )
    .await
}

/// Room version 1 resolves state with the original algorithm (`rooms::resolve_v1`):
/// both sides of a partition rename the room, and Carol's member event conflicts with
/// her ban; once healed, both nodes hold the same state, with the ban.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_v1_room_resolves_a_partition_to_the_same_state() -> anyhow::Result<()> {
    let (_da, db, a, b) = mesh_pair().await?;
    let alice = MeshUser::register(&a, "alice").await?;
    let bob = MeshUser::register(&b, "bob").await?;
    let carol = MeshUser::register(&b, "carol").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_version": "1"}))
        .await?;
    // Bob may rename the room too.
    bob_and_carol_join(&alice, &bob, &carol, &room, &a).await?;
    // The split: B's transport goes away; B's node and users go on.
    split_once_agreed(&alice, &bob, &room, &b).await?;
    alice
        .put(
            &room_path(&room, "/state/m.room.name/"),
            json!({"name": "Named on A"}),
        )
        .await?;
    alice
        .put(
            &room_path(&room, "/state/m.room.topic/"),
            json!({"topic": "Topic from A"}),
        )
        .await?;
    alice
        .post(
            &room_path(&room, "/ban"),
            json!({"user_id": carol.id(), "reason": "v1 partition test"}),
        )
        .await?;
    bob.put(
        &room_path(&room, "/state/m.room.name/"),
        json!({"name": "Named on B"}),
    )
    .await?;
    carol
        .put(
            &room_path(
                &room,
                &format!("/state/m.room.member/{}", path_segment(carol.id())),
            ),
            json!({"membership": "join", "displayname": "Carol while split"}),
        )
        .await?;
    for i in 0..3 {
        alice.say(&room, &format!("A while split {i}")).await?;
        bob.say(&room, &format!("B while split {i}")).await?;
    }
    ensure!(
        current_state(&alice, &room).await? != current_state(&bob, &room).await?,
        "the two sides did not diverge"
    );

    // Heal: B's node restarts on the same data and dials A; outboxes and anti-entropy
    // exchange the two branches.
    let b = restart_and_reconnect(b, db.path(), &a).await?;
    let bob = bob.on(&b);
    let mut last = String::new();
    let converged = wait_until(WAIT, "both nodes hold the same state", async || {
        let (sa, sb) = (
            current_state(&alice, &room).await?,
            current_state(&bob, &room).await?,
        );
        last = format!("A: {sa:?}\nB: {sb:?}");
        let topic_in =
            |s: &[(String, String, String)]| s.iter().any(|(t, _, _)| t == "m.room.topic");
        Ok(sa == sb && topic_in(&sa))
    })
    .await;
    if let Err(e) = converged {
        anyhow::bail!("{e:#}\n{last}");
    }
    for user in [&alice, &bob] {
        let member = state_content(user, &room, "m.room.member", carol.id()).await?;
        ensure!(member["membership"] == "ban", "{member}");
        let topic = state_content(user, &room, "m.room.topic", "").await?;
        ensure!(topic["topic"] == "Topic from A", "{topic}");
    }
    let (name_a, name_b) = (
        state_content(&alice, &room, "m.room.name", "").await?,
        state_content(&bob, &room, "m.room.name", "").await?,
    );
    ensure!(name_a == name_b, "{name_a} vs {name_b}");
    ensure!(
        name_a["name"] == "Named on A" || name_a["name"] == "Named on B",
        "{name_a}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}
