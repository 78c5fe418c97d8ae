//! Rooms spanning nodes over real libp2p: joining by room id, by alias and by invite,
//! messages both ways through the outboxes, leave/kick/ban reaching the other server,
//! a third node joining, hostile make_join/send_join requests, and knocking (a remote
//! knock, invite and join; a refused and a rescinded remote knock; hostile make_knock/send_knock
//! requests), `timestamp_to_event` over federation and a space hierarchy with a child on
//! another node.
//!
//! Clients speak raw HTTP; every wait is on a condition over a fresh initial `/sync`.

use std::time::Duration;

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};
use warren_core::events::{EventReference, NewEvent, build_pdu, rules_for};
use warren_core::federation::client::{encode, request};
use warren_core::storage;
use warren_tests::*;

const WAIT: Duration = Duration::from_secs(30);

/// A raw-HTTP user ([`RawUser`]) with this file's own requests on top.
struct User(RawUser);

impl std::ops::Deref for User {
    type Target = RawUser;
    fn deref(&self) -> &RawUser {
        &self.0
    }
}

impl User {
    async fn register(node: &FederatedNode, localpart: &str) -> anyhow::Result<User> {
        Ok(User(
            RawUser::register(node.node.client_url(), localpart).await?,
        ))
    }

    /// An initial sync (timeline up to 50 events per room).
    async fn sync(&self) -> anyhow::Result<Value> {
        let filter = encode(r#"{"room":{"timeline":{"limit":50},"include_leave":true}}"#);
        let response = http_client()?
            .get(format!(
                "{}/_matrix/client/v3/sync?filter={filter}",
                self.base
            ))
            .bearer_auth(&self.session.access_token)
            .send()
            .await?;
        ensure!(
            response.status().is_success(),
            "/sync: {}",
            response.status()
        );
        Ok(response.json().await?)
    }

    /// Syncs until `cond` holds for the sync body; returns that body.
    async fn sync_until(&self, what: &str, cond: impl Fn(&Value) -> bool) -> anyhow::Result<Value> {
        let mut last = Value::Null;
        let label = format!("{} sees {what}", self.id());
        wait_until(WAIT, &label, async || {
            last = self.sync().await?;
            Ok(cond(&last))
        })
        .await?;
        Ok(last)
    }
}

/// All events of a room section: state then timeline.
fn room_events<'a>(sync: &'a Value, section: &str, room: &str) -> Vec<&'a Value> {
    let r = &sync["rooms"][section][room];
    r["state"]["events"]
        .as_array()
        .into_iter()
        .chain(r["timeline"]["events"].as_array())
        .flatten()
        .collect()
}

fn has_message(sync: &Value, room: &str, body: &str) -> bool {
    room_events(sync, "join", room)
        .iter()
        .any(|e| e["type"] == "m.room.message" && e["content"]["body"] == body)
}

/// The last membership of `user` seen in a section of the sync.
fn membership_in(sync: &Value, section: &str, room: &str, user: &str) -> Option<String> {
    room_events(sync, section, room)
        .iter()
        .filter(|e| e["type"] == "m.room.member" && e["state_key"] == user)
        .filter_map(|e| e["content"]["membership"].as_str())
        .next_back()
        .map(str::to_owned)
}

async fn two_nodes() -> anyhow::Result<(
    tempfile::TempDir,
    tempfile::TempDir,
    FederatedNode,
    FederatedNode,
)> {
    connected_nodes(start_federated_node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_by_room_id_then_messages_flow_both_ways_and_leave_is_seen() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Lobby"}))
        .await?;

    let joined = bob
        .post(
            &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
            json!({}),
        )
        .await?;
    ensure!(joined["room_id"] == room.as_str(), "join answer {joined}");

    // Bob's first sync: the room with its name, Alice and Bob joined.
    let sync = bob
        .sync_until("the joined room", |s| !s["rooms"]["join"][&room].is_null())
        .await?;
    let state = sync["rooms"]["join"][&room]["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Lobby"),
        "no room name in Bob's state: {state:?}"
    );
    ensure!(
        state.iter().any(|e| e["type"] == "m.room.create"),
        "no create event in Bob's state"
    );
    ensure!(membership_in(&sync, "join", &room, alice.id()).as_deref() == Some("join"));
    ensure!(membership_in(&sync, "join", &room, bob.id()).as_deref() == Some("join"));
    let members = bob
        .call(
            reqwest::Method::GET,
            &format!("/rooms/{}/joined_members", path_segment(&room)),
            json!({}),
        )
        .await?;
    ensure!(
        members.1["joined"].get(alice.id()).is_some()
            && members.1["joined"].get(bob.id()).is_some(),
        "joined_members on B: {members:?}"
    );

    // Alice sees Bob's join; messages go both ways.
    alice
        .sync_until("Bob's join", |s| {
            membership_in(s, "join", &room, bob.id()).as_deref() == Some("join")
        })
        .await?;
    alice.say(&room, "hello bob").await?;
    bob.sync_until("Alice's message", |s| has_message(s, &room, "hello bob"))
        .await?;
    bob.say(&room, "hello alice").await?;
    alice
        .sync_until("Bob's reply", |s| has_message(s, &room, "hello alice"))
        .await?;

    // Bob leaves: Alice sees it.
    bob.post(&format!("/rooms/{}/leave", path_segment(&room)), json!({}))
        .await?;
    alice
        .sync_until("Bob's leave", |s| {
            membership_in(s, "join", &room, bob.id()).as_deref() == Some("leave")
        })
        .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_by_alias_and_a_ban_reaches_the_banned_users_server() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "lobby"}))
        .await?;
    let alias = format!("#lobby:{}", a.name());
    let joined = bob
        .post(&format!("/join/{}", path_segment(&alias)), json!({}))
        .await?;
    ensure!(joined["room_id"] == room.as_str(), "join answer {joined}");
    bob.sync_until("the room joined by alias", |s| {
        membership_in(s, "join", &room, bob.id()).as_deref() == Some("join")
    })
    .await?;

    alice
        .post(
            &format!("/rooms/{}/ban", path_segment(&room)),
            json!({"user_id": bob.id(), "reason": "test"}),
        )
        .await?;
    bob.sync_until("the ban", |s| {
        membership_in(s, "leave", &room, bob.id()).as_deref() == Some("ban")
    })
    .await?;
    let stored = b
        .node
        .server()
        .db
        .read(|c| storage::membership(c, &room, bob.id()))?;
    ensure!(
        stored.as_ref().map(|m| m.0.as_str()) == Some("ban"),
        "B's membership for Bob: {stored:?}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invite_of_a_remote_user_then_join_messages_and_kick() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice
        .create_room(json!({"preset": "private_chat", "name": "Secret"}))
        .await?;
    alice
        .post(
            &format!("/rooms/{}/invite", path_segment(&room)),
            json!({"user_id": bob.id()}),
        )
        .await?;

    let sync = bob
        .sync_until("the invite", |s| !s["rooms"]["invite"][&room].is_null())
        .await?;
    let invite_state = sync["rooms"]["invite"][&room]["invite_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        invite_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Secret"),
        "invite state: {invite_state:?}"
    );
    ensure!(
        invite_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.id()
            && e["content"]["membership"] == "invite"),
        "no invite event in {invite_state:?}"
    );

    // No server_name: the invite's sender's server is used.
    bob.post(&format!("/rooms/{}/join", path_segment(&room)), json!({}))
        .await?;
    bob.sync_until("the joined private room", |s| {
        membership_in(s, "join", &room, bob.id()).as_deref() == Some("join")
    })
    .await?;
    alice.say(&room, "welcome").await?;
    bob.sync_until("the welcome", |s| has_message(s, &room, "welcome"))
        .await?;
    bob.say(&room, "thanks").await?;
    alice
        .sync_until("the thanks", |s| has_message(s, &room, "thanks"))
        .await?;

    alice
        .post(
            &format!("/rooms/{}/kick", path_segment(&room)),
            json!({"user_id": bob.id()}),
        )
        .await?;
    bob.sync_until("the kick", |s| {
        membership_in(s, "leave", &room, bob.id()).as_deref() == Some("leave")
    })
    .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_remote_invite_can_be_rejected() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    alice
        .post(
            &format!("/rooms/{}/invite", path_segment(&room)),
            json!({"user_id": bob.id()}),
        )
        .await?;
    bob.sync_until("the invite", |s| !s["rooms"]["invite"][&room].is_null())
        .await?;
    bob.post(&format!("/rooms/{}/leave", path_segment(&room)), json!({}))
        .await?;
    alice
        .sync_until("Bob's rejection", |s| {
            membership_in(s, "join", &room, bob.id()).as_deref() == Some("leave")
        })
        .await?;
    let sync = bob.sync().await?;
    ensure!(
        sync["rooms"]["invite"][&room].is_null(),
        "the invite is still shown: {sync}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_third_node_joins_and_hears_the_second() -> anyhow::Result<()> {
    let (da, db, dc) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    let c = start_federated_node(dc.path()).await?;
    connect_nodes(&a, &b).await?;
    connect_nodes(&a, &c).await?;
    connect_nodes(&b, &c).await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let carol = User::register(&c, "carol").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    let via = format!("?server_name={}", a.name());
    bob.post(&format!("/join/{}{via}", path_segment(&room)), json!({}))
        .await?;
    carol
        .post(&format!("/join/{}{via}", path_segment(&room)), json!({}))
        .await?;
    let sync = carol
        .sync_until("Bob in the room", |s| {
            membership_in(s, "join", &room, bob.id()).as_deref() == Some("join")
        })
        .await?;
    ensure!(membership_in(&sync, "join", &room, alice.id()).as_deref() == Some("join"));
    // B learns of Carol's join from A (send_join forwards it), then B's outbox sends
    // Bob's message to C directly.
    bob.sync_until("Carol's join", |s| {
        membership_in(s, "join", &room, carol.id()).as_deref() == Some("join")
    })
    .await?;
    bob.say(&room, "hi carol").await?;
    carol
        .sync_until("Bob's message", |s| has_message(s, &room, "hi carol"))
        .await?;
    alice
        .sync_until("Bob's message", |s| has_message(s, &room, "hi carol"))
        .await?;
    a.stop().await?;
    b.stop().await?;
    c.stop().await?;
    Ok(())
}

/// A signed federation request from `from` to `to`: status and JSON body.
async fn fed(
    from: &FederatedNode,
    to: &FederatedNode,
    method: http::Method,
    path: &str,
    body: Option<&Value>,
) -> anyhow::Result<(u16, Value)> {
    let response = request(from.node.server(), &to.name(), method, path, body).await?;
    let status = response.status().as_u16();
    let body = serde_json::from_slice(response.body()).unwrap_or(Value::Null);
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_make_join_and_send_join_are_refused() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let public = alice.create_room(json!({"preset": "public_chat"})).await?;
    let private = alice.create_room(json!({"preset": "private_chat"})).await?;
    let vers = "ver=10&ver=11&ver=12";

    // B asks for a template for a user of A.
    let (status, body) = fed(
        &b,
        &a,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?{vers}",
            encode(&public),
            encode(alice.id())
        ),
        None,
    )
    .await?;
    ensure!(
        status == 403,
        "make_join for another server's user: {status} {body}"
    );

    // A version the joining server does not support.
    let (status, body) = fed(
        &b,
        &a,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?ver=10",
            encode(&public),
            encode(bob.id())
        ),
        None,
    )
    .await?;
    ensure!(
        status == 400
            && body["errcode"] == "M_INCOMPATIBLE_ROOM_VERSION"
            && body["room_version"] == "12",
        "make_join with ver=10 only: {status} {body}"
    );

    // A proper template, signed by B, sent under another event id.
    let (status, template) = fed(
        &b,
        &a,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?{vers}",
            encode(&public),
            encode(bob.id())
        ),
        None,
    )
    .await?;
    ensure!(status == 200, "make_join: {status} {template}");
    let join = |room: &str,
                prev: Vec<String>,
                auth: Vec<String>,
                depth: i64|
     -> anyhow::Result<(String, Value)> {
        let (_, rules) = rules_for("12")?;
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(bob.id().to_owned()),
            content: json!({"membership": "join"}),
            sender: bob.id().to_owned(),
            redacts: None,
        };
        let (id, object) = build_pdu(
            &b.node.server().identity,
            &rules,
            Some(room),
            &ev,
            &EventReference::ids(&prev),
            &EventReference::ids(&auth),
            depth,
            1_700_000_000_000,
        )?;
        Ok((id, serde_json::to_value(&object)?))
    };
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let t = &template["event"];
    let (_, pdu) = join(
        &public,
        strings(&t["prev_events"]),
        strings(&t["auth_events"]),
        t["depth"].as_i64().unwrap_or(1),
    )?;
    let wrong_id = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (status, body) = fed(
        &b,
        &a,
        http::Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            encode(&public),
            encode(wrong_id)
        ),
        Some(&pdu),
    )
    .await?;
    ensure!(
        status == 400,
        "send_join under a wrong event id: {status} {body}"
    );

    // A private room: no template, and a hand-made join is refused too.
    let (status, body) = fed(
        &b,
        &a,
        http::Method::GET,
        &format!(
            "/_matrix/federation/v1/make_join/{}/{}?{vers}",
            encode(&private),
            encode(bob.id())
        ),
        None,
    )
    .await?;
    ensure!(
        status == 403,
        "make_join for a private room: {status} {body}"
    );
    let (state, extremities) = a.node.server().db.read(|c| {
        Ok((
            storage::current_state(c, &private)?,
            storage::forward_extremities(c, &private)?,
        ))
    })?;
    let auth: Vec<String> = [("m.room.join_rules", ""), ("m.room.power_levels", "")]
        .iter()
        .filter_map(|(t, k)| state.get(&((*t).to_owned(), (*k).to_owned())).cloned())
        .collect();
    let depth = extremities.iter().map(|(_, d)| *d).max().unwrap_or(0) + 1;
    let prev = extremities.into_iter().map(|(id, _)| id).collect();
    let (id, pdu) = join(&private, prev, auth, depth)?;
    let (status, body) = fed(
        &b,
        &a,
        http::Method::PUT,
        &format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            encode(&private),
            encode(&id)
        ),
        Some(&pdu),
    )
    .await?;
    ensure!(
        status == 403,
        "send_join to a private room: {status} {body}"
    );
    let membership = a
        .node
        .server()
        .db
        .read(|c| storage::membership(c, &private, bob.id()))?;
    if membership.as_ref().is_some_and(|m| m.0 == "join") {
        bail!("Bob is joined to the private room on A");
    }
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Once the room's server ACL denies B, nothing B sends is let into the room on A, and B
/// cannot make a join there any more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_denied_by_the_acl_is_shut_out() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Guarded"}))
        .await?;
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await?;
    bob.say(&room, "before the ACL").await?;
    alice
        .sync_until("bob's message before the ACL", |s| {
            has_message(s, &room, "before the ACL")
        })
        .await?;

    let (status, answer) = alice
        .call(
            reqwest::Method::PUT,
            &format!("/rooms/{}/state/m.room.server_acl/", path_segment(&room)),
            json!({"allow": ["*"], "deny": [b.name()], "allow_ip_literals": true}),
        )
        .await?;
    ensure!(status == 200, "setting the ACL: {status} {answer}");
    bob.sync_until("the ACL", |s| {
        room_events(s, "join", &room)
            .iter()
            .any(|e| e["type"] == "m.room.server_acl")
    })
    .await?;

    bob.say(&room, "after the ACL").await?;
    // B's outbox empties once A has answered the transaction (with a per-PDU error).
    let b_server = b.node.server().clone();
    let a_name = a.name();
    wait_until(WAIT, "B's transaction answered by A", || {
        let depth = b_server
            .db
            .read(|c| storage::outbox_depth(c, &a_name))
            .unwrap_or(-1);
        async move { Ok(depth == 0) }
    })
    .await?;
    let sync = alice.sync().await?;
    ensure!(
        !has_message(&sync, &room, "after the ACL"),
        "a message from a denied server got into the room"
    );
    alice.say(&room, "still usable").await?;
    alice
        .sync_until("the room still works", |s| {
            has_message(s, &room, "still usable")
        })
        .await?;

    let path = format!(
        "/_matrix/federation/v1/make_join/{}/{}?ver=12",
        encode(&room),
        encode(&format!("@carol:{}", b.name()))
    );
    let answer = request(b.node.server(), &a.name(), http::Method::GET, &path, None).await?;
    ensure!(
        answer.status() == 403,
        "make_join from a denied server: {}",
        answer.status()
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_knock_across_nodes_is_seen_then_invited_and_joined() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice
        .create_room(json!({
            "preset": "private_chat",
            "name": "Knockers",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                               "content": {"join_rule": "knock"}}],
        }))
        .await?;

    let answer = bob
        .post(
            &format!("/knock/{}?via={}", path_segment(&room), a.name()),
            json!({"reason": "let me in"}),
        )
        .await?;
    ensure!(answer["room_id"] == room.as_str(), "knock answer {answer}");

    // Bob's node shows the stripped state A sent back, and his knock.
    let sync = bob
        .sync_until("the knock", |s| !s["rooms"]["knock"][&room].is_null())
        .await?;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    ensure!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Knockers"),
        "knock_state: {knock_state:?}"
    );
    ensure!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
        "knock_state: {knock_state:?}"
    );
    ensure!(
        knock_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.id()
            && e["content"]["membership"] == "knock"),
        "knock_state: {knock_state:?}"
    );

    // Alice sees the knock in her room, with the reason, and lets Bob in.
    alice
        .sync_until("bob's knock", |s| {
            room_events(s, "join", &room).iter().any(|e| {
                e["type"] == "m.room.member"
                    && e["state_key"] == bob.id()
                    && e["content"]["membership"] == "knock"
                    && e["content"]["reason"] == "let me in"
            })
        })
        .await?;
    // Carol (also of B) knocks too and is turned away: B is not in the room, so the
    // kick reaches it as an out-of-band membership change and her knock becomes a leave.
    let carol = User::register(&b, "carol").await?;
    carol
        .post(
            &format!("/knock/{}?via={}", path_segment(&room), a.name()),
            json!({}),
        )
        .await?;
    carol
        .sync_until("carol's knock", |s| !s["rooms"]["knock"][&room].is_null())
        .await?;
    alice
        .sync_until("carol's knock", |s| {
            membership_in(s, "join", &room, carol.id()).as_deref() == Some("knock")
        })
        .await?;
    alice
        .post(
            &format!("/rooms/{}/kick", path_segment(&room)),
            json!({"user_id": carol.id(), "reason": "not today"}),
        )
        .await?;
    carol
        .sync_until("the refusal", |s| {
            s["rooms"]["knock"][&room].is_null() && !s["rooms"]["leave"][&room].is_null()
        })
        .await?;

    // Dave (of B) knocks and takes it back: /leave goes through the server knocked via.
    let dave = User::register(&b, "dave").await?;
    dave.post(
        &format!("/knock/{}?via={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await?;
    dave.post(&format!("/rooms/{}/leave", path_segment(&room)), json!({}))
        .await?;
    alice
        .sync_until("dave's rescinded knock", |s| {
            membership_in(s, "join", &room, dave.id()).as_deref() == Some("leave")
        })
        .await?;
    dave.sync_until("dave's knock gone", |s| {
        s["rooms"]["knock"][&room].is_null()
    })
    .await?;

    alice
        .post(
            &format!("/rooms/{}/invite", path_segment(&room)),
            json!({"user_id": bob.id()}),
        )
        .await?;
    bob.sync_until("the invite after the knock", |s| {
        !s["rooms"]["invite"][&room].is_null() && s["rooms"]["knock"][&room].is_null()
    })
    .await?;
    bob.post(&format!("/rooms/{}/join", path_segment(&room)), json!({}))
        .await?;
    alice.say(&room, "come in").await?;
    bob.sync_until("alice's welcome", |s| has_message(s, &room, "come in"))
        .await?;
    alice
        .sync_until("bob joined", |s| {
            membership_in(s, "join", &room, bob.id()).as_deref() == Some("join")
        })
        .await?;
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_make_knock_and_send_knock_are_refused() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let knock_room = alice
        .create_room(json!({
            "preset": "private_chat",
            "initial_state": [{"type": "m.room.join_rules", "state_key": "",
                               "content": {"join_rule": "knock"}}],
        }))
        .await?;
    let closed = alice.create_room(json!({"preset": "private_chat"})).await?;
    let vers = "ver=10&ver=11&ver=12";
    let make_knock = |room: &str, user: &str| {
        format!(
            "/_matrix/federation/v1/make_knock/{}/{}?{vers}",
            encode(room),
            encode(user)
        )
    };

    // A template for a user of another server; a room that takes no knocks.
    let (status, body) = fed(
        &b,
        &a,
        http::Method::GET,
        &make_knock(&knock_room, alice.id()),
        None,
    )
    .await?;
    ensure!(status == 403, "make_knock for alice by B: {status} {body}");
    let (status, body) = fed(
        &b,
        &a,
        http::Method::GET,
        &make_knock(&closed, bob.id()),
        None,
    )
    .await?;
    ensure!(
        status == 403,
        "make_knock on an invite-only room: {status} {body}"
    );

    // A proper template, turned into events B should not be able to pass off as knocks.
    let (status, template) = fed(
        &b,
        &a,
        http::Method::GET,
        &make_knock(&knock_room, bob.id()),
        None,
    )
    .await?;
    ensure!(
        status == 200 && template["event"]["content"]["membership"] == "knock",
        "make_knock: {status} {template}"
    );
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let t = &template["event"];
    let build = |sender: &str, membership: &str| -> anyhow::Result<(String, Value)> {
        let (_, rules) = rules_for("12")?;
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(sender.to_owned()),
            content: json!({"membership": membership}),
            sender: sender.to_owned(),
            redacts: None,
        };
        let (id, object) = build_pdu(
            &b.node.server().identity,
            &rules,
            Some(&knock_room),
            &ev,
            &EventReference::ids(&strings(&t["prev_events"])),
            &EventReference::ids(&strings(&t["auth_events"])),
            t["depth"].as_i64().unwrap_or(1),
            1_700_000_000_000,
        )?;
        Ok((id, serde_json::to_value(&object)?))
    };
    let send_knock = |id: &str| {
        format!(
            "/_matrix/federation/v1/send_knock/{}/{}",
            encode(&knock_room),
            encode(id)
        )
    };
    // A join sent as a knock.
    let (id, join) = build(bob.id(), "join")?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_knock(&id), Some(&join)).await?;
    ensure!(status == 400, "a join through send_knock: {status} {body}");
    // A knock under another event id.
    let (_, knock) = build(bob.id(), "knock")?;
    let wrong = "$aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_knock(wrong), Some(&knock)).await?;
    ensure!(
        status == 400,
        "send_knock under a wrong id: {status} {body}"
    );
    // A knock for alice (a user of A), signed by B.
    let (id, forged) = build(alice.id(), "knock")?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_knock(&id), Some(&forged)).await?;
    ensure!(status == 403, "a knock for A's user: {status} {body}");
    // A knock altered after signing, under the id of the altered event: the signature
    // no longer verifies. (Altering only the content would not do: a content-hash
    // mismatch redacts the event, and a redacted knock is still a valid knock.)
    let (_, mut tampered) = build(bob.id(), "knock")?;
    tampered["origin_server_ts"] = json!(1_700_000_000_001_i64);
    let id = warren_core::rooms::event_id_of(&tampered, "12")?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_knock(&id), Some(&tampered)).await?;
    ensure!(
        (400..500).contains(&status),
        "a tampered knock: {status} {body}"
    );
    // None of these left a knock in the room.
    let (status, member) = alice
        .call(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(&knock_room),
                path_segment(bob.id())
            ),
            json!({}),
        )
        .await?;
    ensure!(
        status == 404,
        "bob's membership after the forgeries: {status} {member}"
    );

    // The genuine knock is accepted and answered with stripped state.
    let (id, knock) = build(bob.id(), "knock")?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_knock(&id), Some(&knock)).await?;
    ensure!(
        status == 200
            && body["knock_room_state"]
                .as_array()
                .is_some_and(|s| s.iter().any(|e| e["type"] == "m.room.join_rules")),
        "send_knock: {status} {body}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_to_event_over_federation_needs_a_member() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    alice.say(&room, "hello").await?;
    let path = |ts: i64, dir: &str| {
        format!(
            "/_matrix/federation/v1/timestamp_to_event/{}?ts={ts}&dir={dir}",
            encode(&room)
        )
    };
    // B has nobody in the room (history is shared, not world-readable).
    let (status, body) = fed(&b, &a, http::Method::GET, &path(0, "f"), None).await?;
    ensure!(status == 403, "before joining: {status} {body}");

    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await?;
    let (status, first) = fed(&b, &a, http::Method::GET, &path(0, "f"), None).await?;
    ensure!(status == 200, "dir=f: {status} {first}");
    let id = first["event_id"].as_str().context("event_id")?;
    let (status, event) = alice
        .call(
            reqwest::Method::GET,
            &format!("/rooms/{}/event/{}", path_segment(&room), path_segment(id)),
            json!({}),
        )
        .await?;
    ensure!(
        status == 200 && event["type"] == "m.room.create",
        "the first event is not the create event: {status} {event}"
    );
    let now = i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis(),
    )?;
    let (status, last) = fed(&b, &a, http::Method::GET, &path(now + 60_000, "b"), None).await?;
    ensure!(
        status == 200 && last["origin_server_ts"].as_i64() <= Some(now + 60_000),
        "dir=b: {status} {last}"
    );
    let (status, body) = fed(&b, &a, http::Method::GET, &path(now, "sideways"), None).await?;
    ensure!(status == 400, "bad dir: {status} {body}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_hierarchy_includes_children_on_another_node() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let space = alice
        .create_room(json!({"preset": "public_chat", "name": "Space",
                            "creation_content": {"type": "m.space"}}))
        .await?;
    let open = bob
        .create_room(json!({"preset": "public_chat", "name": "Over there"}))
        .await?;
    let closed = bob
        .create_room(json!({"preset": "private_chat", "name": "Secret"}))
        .await?;
    for (child, order) in [(&open, "a"), (&closed, "b")] {
        let (status, body) = alice
            .call(
                reqwest::Method::PUT,
                &format!(
                    "/rooms/{}/state/m.space.child/{}",
                    path_segment(&space),
                    path_segment(child)
                ),
                json!({"via": [b.name()], "order": order}),
            )
            .await?;
        ensure!(status == 200, "space child: {status} {body}");
    }
    let response = http_client()?
        .get(format!(
            "{}/_matrix/client/v1/rooms/{}/hierarchy",
            alice.base,
            path_segment(&space)
        ))
        .bearer_auth(&alice.session.access_token)
        .send()
        .await?;
    ensure!(response.status() == 200, "hierarchy: {}", response.status());
    let body: Value = response.json().await?;
    let rooms = body["rooms"].as_array().context("rooms")?;
    let ids: Vec<&str> = rooms.iter().filter_map(|r| r["room_id"].as_str()).collect();
    ensure!(ids == [space.as_str(), open.as_str()], "rooms: {body}");
    ensure!(
        rooms[1]["name"] == "Over there" && rooms[1]["join_rule"] == "public",
        "the remote room's summary: {}",
        rooms[1]
    );
    ensure!(
        rooms[0]["children_state"].as_array().map(Vec::len) == Some(2),
        "the space lists both children: {}",
        rooms[0]
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// The event id of `user`'s current member event, as `GET /state` on the user's node
/// shows it.
async fn member_event_id(user: &User, room: &str, target: &str) -> anyhow::Result<String> {
    let state = user
        .ok(
            reqwest::Method::GET,
            &format!("/rooms/{}/state", path_segment(room)),
            Value::Null,
        )
        .await?;
    state
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == target)
        .and_then(|e| e["event_id"].as_str())
        .map(str::to_owned)
        .with_context(|| format!("no member event of {target} in {state}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_joins_of_a_remote_room_all_succeed_and_repeated_joins_are_no_ops()
-> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let mut users = Vec::new();
    for i in 0..4 {
        users.push(User::register(&b, &format!("user{i}")).await?);
    }
    let mut last_room = String::new();
    for round in 0..10 {
        let room = alice
            .create_room(json!({"preset": "public_chat", "name": format!("round {round}")}))
            .await?;
        let path = format!("/join/{}?server_name={}", path_segment(&room), a.name());
        let joins = users.iter().map(|u| {
            let path = path.clone();
            async move { u.call(reqwest::Method::POST, &path, json!({})).await }
        });
        for (u, answer) in users.iter().zip(futures::future::join_all(joins).await) {
            let (status, body) = answer?;
            ensure!(
                status == 200 && body["room_id"] == room.as_str(),
                "round {round}: {} joining: {status} {body}",
                u.id()
            );
        }
        // Every join reaches the room's own node.
        alice
            .sync_until(&format!("four joins in round {round}"), |s| {
                users
                    .iter()
                    .all(|u| membership_in(s, "join", &room, u.id()).as_deref() == Some("join"))
            })
            .await?;
        last_room = room;
    }

    // A repeated join, by a remote and a local user, changes nothing.
    let bob = &users[0];
    let before = member_event_id(bob, &last_room, bob.id()).await?;
    bob.post(
        &format!("/rooms/{}/join", path_segment(&last_room)),
        json!({}),
    )
    .await?;
    ensure!(
        member_event_id(bob, &last_room, bob.id()).await? == before,
        "a repeated remote-room join made a new member event"
    );
    let alice_before = member_event_id(&alice, &last_room, alice.id()).await?;
    alice
        .post(
            &format!("/rooms/{}/join", path_segment(&last_room)),
            json!({}),
        )
        .await?;
    ensure!(
        member_event_id(&alice, &last_room, alice.id()).await? == alice_before,
        "a repeated local join made a new member event"
    );
    // A join with new content (a reason, a custom key) is a new event, as in Synapse,
    // and the custom key is kept; `membership` cannot be overridden.
    bob.post(
        &format!("/rooms/{}/join", path_segment(&last_room)),
        json!({"reason": "back again", "org.example.flag": true, "membership": "ban"}),
    )
    .await?;
    let after = member_event_id(bob, &last_room, bob.id()).await?;
    ensure!(after != before, "a join with a new reason made no event");
    let event = bob
        .ok(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/event/{}",
                path_segment(&last_room),
                path_segment(&after)
            ),
            Value::Null,
        )
        .await?;
    ensure!(
        event["content"]["reason"] == "back again"
            && event["content"]["org.example.flag"] == true
            && event["content"]["membership"] == "join",
        "the join's content: {event}"
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_room_directory_of_a_peer_and_of_the_whole_mesh() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let on_a = alice
        .create_room(
            json!({"preset": "public_chat", "name": "Garden on A", "visibility": "public"}),
        )
        .await?;
    let on_b = bob
        .create_room(
            json!({"preset": "public_chat", "name": "Kitchen on B", "visibility": "public"}),
        )
        .await?;
    let ids = |page: &Value| -> Vec<String> {
        page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["room_id"].as_str().map(str::to_owned))
            .collect()
    };

    // One peer's directory, GET and POST (with a search term).
    let got = bob
        .ok(
            reqwest::Method::GET,
            &format!("/publicRooms?server={}", a.name()),
            Value::Null,
        )
        .await?;
    ensure!(
        ids(&got) == vec![on_a.clone()],
        "A's directory from B: {got}"
    );
    ensure!(got["chunk"][0]["name"] == "Garden on A", "{got}");
    let searched = bob
        .post(
            &format!("/publicRooms?server={}", a.name()),
            json!({"filter": {"generic_search_term": "garden"}}),
        )
        .await?;
    ensure!(ids(&searched) == vec![on_a.clone()], "{searched}");
    let none = bob
        .post(
            &format!("/publicRooms?server={}", a.name()),
            json!({"filter": {"generic_search_term": "kitchen"}}),
        )
        .await?;
    ensure!(ids(&none).is_empty(), "{none}");

    // Without a network, only this node's rooms.
    let local = bob.post("/publicRooms", json!({})).await?;
    ensure!(ids(&local) == vec![on_b.clone()], "{local}");

    // The mesh network, as the protocols list offers it: this node's and every
    // connected peer's rooms, paginated.
    let protocols = bob
        .ok(reqwest::Method::GET, "/thirdparty/protocols", Value::Null)
        .await?;
    let instance = protocols["mesh"]["instances"][0]["instance_id"]
        .as_str()
        .context("no mesh instance")?
        .to_owned();
    let mesh = bob
        .post("/publicRooms", json!({"third_party_instance_id": instance}))
        .await?;
    let mut all = ids(&mesh);
    all.sort();
    let mut want = vec![on_a.clone(), on_b.clone()];
    want.sort();
    ensure!(all == want, "the mesh directory: {mesh}");
    let first = bob
        .post(
            "/publicRooms",
            json!({"include_all_networks": true, "limit": 1}),
        )
        .await?;
    let next = first["next_batch"].as_str().context("no next_batch")?;
    let second = bob
        .post(
            "/publicRooms",
            json!({"include_all_networks": true, "limit": 1, "since": next}),
        )
        .await?;
    let mut paged = [ids(&first), ids(&second)].concat();
    paged.sort();
    ensure!(paged == want, "paged mesh directory: {first} then {second}");
    ensure!(second.get("next_batch").is_none(), "{second}");
    let search = bob
        .post(
            "/publicRooms",
            json!({"third_party_instance_id": instance, "filter": {"generic_search_term": "garden"}}),
        )
        .await?;
    ensure!(ids(&search) == vec![on_a.clone()], "{search}");
    // A network nobody publishes under is empty.
    let other = bob
        .post(
            "/publicRooms",
            json!({"third_party_instance_id": "irc.example"}),
        )
        .await?;
    ensure!(ids(&other).is_empty(), "{other}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Backfill: history from before a join over federation
// ---------------------------------------------------------------------------------------

/// `GET /messages` backwards from `from` in pages of `limit` until a page has no `end`;
/// returns the events oldest first and the pages' `end` tokens. Fails if a token repeats
/// or an event comes twice.
async fn page_back(
    user: &User,
    room: &str,
    from: Option<&str>,
    limit: usize,
) -> anyhow::Result<(Vec<Value>, Vec<String>)> {
    let mut from = from.map(str::to_owned);
    let mut newest_first = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut ends = Vec::new();
    for _ in 0..100 {
        let mut path = format!("/rooms/{}/messages?dir=b&limit={limit}", path_segment(room));
        if let Some(f) = &from {
            path.push_str(&format!("&from={}", encode(f)));
        }
        let page = user.ok(reqwest::Method::GET, &path, Value::Null).await?;
        for ev in page["chunk"].as_array().context("chunk")? {
            let id = ev["event_id"].as_str().context("event_id")?.to_owned();
            ensure!(seen.insert(id.clone()), "{id} returned twice");
            newest_first.push(ev.clone());
        }
        match page["end"].as_str() {
            Some(end) => {
                ensure!(from.as_deref() != Some(end), "end {end} did not advance");
                ends.push(end.to_owned());
                from = Some(end.to_owned());
            }
            None => {
                newest_first.reverse();
                return Ok((newest_first, ends));
            }
        }
    }
    bail!("history did not end after 100 pages")
}

fn bodies_with(events: &[Value], prefix: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .filter(|b| b.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

/// A matrix-sdk user on B who joins late pages back through all 120 messages sent on A
/// before the join, in order, to the room's creation; the join's `/sync` is `limited`
/// with a `prev_batch` that leads there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_joiner_pages_back_through_history_from_before_the_join() -> anyhow::Result<()> {
    use matrix_sdk::ruma::{OwnedRoomId, OwnedServerName, RoomOrAliasId};

    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "History"}))
        .await?;
    for i in 0..120 {
        alice.say(&room, &format!("early {i:03}")).await?;
    }

    let bob = register_client(&b.node.client_url(), "bob", "bob-password").await?;
    let room_id: OwnedRoomId = room.as_str().try_into()?;
    let via: OwnedServerName = a.name().try_into()?;
    let target: &RoomOrAliasId = (&*room_id).into();
    let bob_room = bob.join_room_by_id_or_alias(target, &[via]).await?;
    let joined = sync_until(&bob, WAIT, "bob's sync has the room", |r| {
        Ok(r.rooms.joined.contains_key(&room_id))
    })
    .await?;
    let timeline = &joined.rooms.joined[&room_id].timeline;
    ensure!(timeline.limited, "the join's timeline is not limited");
    ensure!(timeline.prev_batch.is_some(), "no prev_batch");

    // Pages of 25 (the last one partial), through the backfill, to the creation.
    let history = history_backwards(&bob_room, 25).await?;
    let early = history
        .iter()
        .filter_map(message_body)
        .filter(|b| b.starts_with("early "))
        .map(str::to_owned)
        .collect::<Vec<_>>();
    let want: Vec<String> = (0..120).map(|i| format!("early {i:03}")).collect();
    ensure!(
        early == want,
        "history out of order or incomplete: {early:?}"
    );
    ensure!(
        history
            .first()
            .is_some_and(|e| e["type"] == "m.room.create"),
        "history does not start at the creation: {:?}",
        history.first()
    );
    ensure!(
        history.last().is_some_and(|e| e["type"] == "m.room.member"
            && e["state_key"]
                == bob
                    .user_id()
                    .map(|u| u.to_string())
                    .unwrap_or_default()
                    .as_str()),
        "history does not end with bob's join"
    );
    // All of it in one page now that it is here: the page ends at the creation (no `end`).
    let mut options = matrix_sdk::room::MessagesOptions::backward();
    options.limit = matrix_sdk::ruma::UInt::from(1000u32);
    let page = bob_room.messages(options).await?;
    ensure!(
        page.end.is_none(),
        "a page reaching the creation has an end token"
    );
    ensure!(
        page.chunk.len() == history.len(),
        "{} events in one page, {} paged",
        page.chunk.len(),
        history.len()
    );
    drop((bob_room, bob));
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Raw HTTP: the join's `prev_batch` leads into backfilled history; `/event` and
/// `/context` work on a backfilled event; a later incremental `/sync` does not repeat
/// backfilled events; a room whose history is visible to joined members only shows none
/// of the messages from before the join, though paging still reaches the creation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfilled_history_is_served_once_and_respects_history_visibility() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let shared = alice
        .create_room(json!({"preset": "public_chat", "name": "Shared"}))
        .await?;
    let joined_only = alice
        .create_room(json!({"preset": "public_chat", "name": "Members only",
            "initial_state": [{"type": "m.room.history_visibility", "state_key": "",
                               "content": {"history_visibility": "joined"}}]}))
        .await?;
    let unreachable = alice
        .create_room(json!({"preset": "public_chat", "name": "Soon unreachable"}))
        .await?;
    for i in 0..30 {
        alice.say(&shared, &format!("old {i:02}")).await?;
        alice.say(&joined_only, &format!("secret {i:02}")).await?;
    }
    alice.say(&unreachable, "only on A").await?;
    // An edit and a reaction from before the join, on A.
    let on_a = alice
        .ok(
            reqwest::Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=100", path_segment(&shared)),
            Value::Null,
        )
        .await?;
    let id_on_a = |body: &str| -> anyhow::Result<String> {
        on_a["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["body"] == body)
            .and_then(|e| e["event_id"].as_str().map(str::to_owned))
            .with_context(|| format!("{body} on A"))
    };
    let (edited, reacted) = (id_on_a("old 16")?, id_on_a("old 15")?);
    for (kind, content) in [
        (
            "m.room.message",
            json!({"msgtype": "m.text", "body": "* old 16 edited",
                   "m.new_content": {"msgtype": "m.text", "body": "old 16 edited"},
                   "m.relates_to": {"rel_type": "m.replace", "event_id": edited}}),
        ),
        (
            "m.reaction",
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": reacted, "key": "+1"}}),
        ),
    ] {
        alice
            .ok(
                reqwest::Method::PUT,
                &format!("/rooms/{}/send/{kind}/rel-{kind}", path_segment(&shared)),
                content,
            )
            .await?;
    }
    for room in [&shared, &joined_only, &unreachable] {
        bob.post(
            &format!("/join/{}?server_name={}", path_segment(room), a.name()),
            json!({}),
        )
        .await?;
    }
    let first = bob
        .sync_until("the three rooms", |s| {
            [&shared, &joined_only, &unreachable]
                .iter()
                .all(|r| s["rooms"]["join"][r.as_str()].is_object())
        })
        .await?;
    let next_batch = first["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();
    let tl = &first["rooms"]["join"][shared.as_str()]["timeline"];
    ensure!(tl["limited"] == true, "join's timeline not limited: {tl}");
    let prev_batch = tl["prev_batch"].as_str().context("prev_batch")?.to_owned();
    // Sliding sync says the same for a room new to the connection.
    let (status, ss) = bob
        .call(
            reqwest::Method::POST,
            "/../unstable/org.matrix.simplified_msc3575/sync?timeout=0",
            json!({"conn_id": "backfill", "lists": {"all": {
                "ranges": [[0, 9]], "timeline_limit": 5, "required_state": []}}}),
        )
        .await?;
    let ss_room = &ss["rooms"][shared.as_str()];
    ensure!(
        status == 200 && ss_room["limited"] == true && ss_room["prev_batch"].is_string(),
        "sliding sync: {status} {ss_room}"
    );

    // From prev_batch: all 30 old messages, in order, down to the creation.
    let (history, ends) = page_back(&bob, &shared, Some(&prev_batch), 10).await?;
    let want: Vec<String> = (0..30).map(|i| format!("old {i:02}")).collect();
    ensure!(
        bodies_with(&history, "old ") == want,
        "{:?}",
        bodies_with(&history, "old ")
    );
    ensure!(
        history
            .first()
            .is_some_and(|e| e["type"] == "m.room.create")
    );
    ensure!(
        ends.iter().any(|t| t.starts_with('t')),
        "no topological token among {ends:?}"
    );

    // A backfilled event: /event and /context.
    let old = history
        .iter()
        .find(|e| e["content"]["body"] == "old 15")
        .context("old 15")?;
    let id = old["event_id"].as_str().context("id")?;
    let ev = bob
        .ok(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/event/{}",
                path_segment(&shared),
                path_segment(id)
            ),
            Value::Null,
        )
        .await?;
    ensure!(ev["content"]["body"] == "old 15", "{ev}");
    let ctx = bob
        .ok(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/context/{}?limit=4",
                path_segment(&shared),
                path_segment(id)
            ),
            Value::Null,
        )
        .await?;
    ensure!(
        ctx["events_before"][0]["content"]["body"] == "old 14",
        "{ctx}"
    );
    ensure!(
        ctx["events_after"][0]["content"]["body"] == "old 16",
        "{ctx}"
    );
    // Relationships from before the join count: the edit is bundled, the reaction listed.
    let old16 = bob
        .ok(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/event/{}",
                path_segment(&shared),
                path_segment(&edited)
            ),
            Value::Null,
        )
        .await?;
    ensure!(
        old16["unsigned"]["m.relations"]["m.replace"].is_object(),
        "no bundled edit: {old16}"
    );
    let (status, reactions) = bob
        .call(
            reqwest::Method::GET,
            &format!(
                "/../v1/rooms/{}/relations/{}/m.annotation", // `/relations` is under v1
                path_segment(&shared),
                path_segment(&reacted)
            ),
            Value::Null,
        )
        .await?;
    ensure!(
        status == 200 && reactions["chunk"].as_array().is_some_and(|c| c.len() == 1),
        "{status} {reactions}"
    );
    // Paging forwards from the context's end goes on through history into the live part.
    let fwd = bob
        .ok(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/messages?dir=f&limit=50&from={}",
                path_segment(&shared),
                encode(ctx["end"].as_str().context("end")?)
            ),
            Value::Null,
        )
        .await?;
    let after: Vec<String> = fwd["chunk"]
        .as_array()
        .context("chunk")?
        .iter()
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect();
    ensure!(
        after.first().map(String::as_str) == Some("old 18") && after.iter().any(|b| b == "old 29"),
        "{after:?}"
    );
    ensure!(
        fwd["chunk"].as_array().is_some_and(|c| c
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id())),
        "forward paging does not reach bob's join"
    );

    // A new message reaches bob incrementally, without any backfilled event.
    alice.say(&shared, "new").await?;
    let filter = encode(r#"{"room":{"timeline":{"limit":50}}}"#);
    let mut since = next_batch;
    let mut got_new = false;
    wait_until(
        WAIT,
        "bob's incremental sync has the new message",
        async || {
            let s = bob
                .ok(
                    reqwest::Method::GET,
                    &format!(
                        "/sync?since={}&timeout=1000&filter={filter}",
                        encode(&since)
                    ),
                    Value::Null,
                )
                .await?;
            since = s["next_batch"].as_str().context("next_batch")?.to_owned();
            for room in [&shared, &joined_only] {
                let events = s["rooms"]["join"][room.as_str()]["timeline"]["events"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for e in &events {
                    let body = e["content"]["body"].as_str().unwrap_or_default();
                    ensure!(
                        !body.starts_with("old ") && !body.starts_with("secret "),
                        "incremental sync repeats a backfilled event: {e}"
                    );
                    got_new |= body == "new";
                }
            }
            Ok(got_new)
        },
    )
    .await?;

    // Backfilled history is searchable, as far as bob may read it.
    let found = bob
        .post(
            "/search",
            json!({"search_categories": {"room_events": {"search_term": "07"}}}),
        )
        .await?;
    let hits: Vec<&str> = found["search_categories"]["room_events"]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["result"]["content"]["body"].as_str())
        .collect();
    ensure!(hits == ["old 07"], "search found {hits:?}");

    // Members-only history: paging reaches the creation, no message from before shows.
    let (hidden, _) = page_back(&bob, &joined_only, None, 10).await?;
    ensure!(
        bodies_with(&hidden, "secret ").is_empty(),
        "pre-join messages revealed: {:?}",
        bodies_with(&hidden, "secret ")
    );
    ensure!(
        hidden.first().is_some_and(|e| e["type"] == "m.room.create"),
        "members-only history does not reach the creation: {:?}",
        hidden.first()
    );

    // With A gone, paging back answers with what is here, within the bounds, and ends.
    a.stop().await?;
    let started = std::time::Instant::now();
    let (local, _) = page_back(&bob, &unreachable, None, 10).await?;
    ensure!(
        started.elapsed() < Duration::from_secs(60),
        "paging with the peer gone took {:?}",
        started.elapsed()
    );
    ensure!(
        local
            .iter()
            .any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.id()),
        "bob's own join is not served: {local:?}"
    );
    ensure!(bodies_with(&local, "only on A").is_empty());
    b.stop().await?;
    Ok(())
}

/// A node that joined over federation has the state from before its join only as
/// outliers; its `/state` and `/state_ids` still give the whole state (the create event,
/// the power levels, the members who were there) and the auth chain. Without them (as
/// before) a
/// third node asking it for the state before an event (gap filling across hops, or
/// backfill) would get a state without the create event and reject the event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_joined_node_serves_the_state_from_before_its_join() -> anyhow::Result<()> {
    let (_da, _db, a, b) = two_nodes().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await?;
    let sent = bob
        .call(
            reqwest::Method::PUT,
            &format!("/rooms/{}/send/m.room.message/s1", path_segment(&room)),
            json!({"msgtype": "m.text", "body": "after the join"}),
        )
        .await?;
    let event_id = sent.1["event_id"].as_str().context("event_id")?.to_owned();
    let path = format!(
        "/_matrix/federation/v1/state/{}?event_id={}",
        path_segment(&room),
        path_segment(&event_id)
    );
    let answer: Value = warren_core::federation::client::request_json(
        a.node.server(),
        &b.name(),
        http::Method::GET,
        &path,
        None,
    )
    .await?;
    let types: Vec<(&str, &str)> = answer["pdus"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| Some((e["type"].as_str()?, e["state_key"].as_str()?)))
        .collect();
    for wanted in [
        ("m.room.create", ""),
        ("m.room.power_levels", ""),
        ("m.room.join_rules", ""),
        ("m.room.member", alice.id()),
        ("m.room.member", bob.id()),
    ] {
        ensure!(
            types.contains(&wanted),
            "{wanted:?} missing from B's /state: {types:?}"
        );
    }
    // (From room version 12 the create event is named by the room id, not listed.)
    ensure!(
        answer["auth_chain"]
            .as_array()
            .is_some_and(|c| c.iter().any(|e| e["type"] == "m.room.power_levels")),
        "no power levels in the auth chain"
    );
    b.stop().await?;
    a.stop().await
}
