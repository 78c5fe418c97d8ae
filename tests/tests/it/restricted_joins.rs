//! Restricted rooms (`join_rule` `restricted` / `knock_restricted` with
//! `m.room_membership` allow conditions): local joins through a space membership, the
//! refusals, and joins across nodes where the resident authorises and countersigns.
//!
//! Clients speak raw HTTP; waits are on conditions.

use std::time::Duration;

use anyhow::{Context, ensure};
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
    async fn register(base: String, localpart: &str) -> anyhow::Result<User> {
        Ok(User(RawUser::register(base, localpart).await?))
    }

    /// `POST /rooms/{room}/join`, optionally through `server`: status and body.
    async fn join(&self, room: &str, server: Option<&str>) -> anyhow::Result<(u16, Value)> {
        let query = server
            .map(|s| format!("?server_name={}", encode(s)))
            .unwrap_or_default();
        self.call(
            reqwest::Method::POST,
            &format!("/rooms/{}/join{query}", path_segment(room)),
            json!({}),
        )
        .await
    }

    /// The content of `user`'s member event in `room`, as this user sees it.
    async fn member_content(&self, room: &str, user: &str) -> anyhow::Result<Value> {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!(
                    "/rooms/{}/state/m.room.member/{}",
                    path_segment(room),
                    path_segment(user)
                ),
                Value::Null,
            )
            .await?;
        ensure!(status == 200, "member state of {user}: {status} {body}");
        Ok(body)
    }
}

async fn space(owner: &User) -> anyhow::Result<String> {
    owner
        .create_room(json!({
            "preset": "public_chat",
            "name": "Space",
            "creation_content": {"type": "m.space"},
        }))
        .await
}

/// A private room whose join rule is `rule` with one `m.room_membership` condition.
async fn restricted_room(owner: &User, rule: &str, allowed: &str) -> anyhow::Result<String> {
    owner
        .create_room(json!({
            "preset": "private_chat",
            "name": "Members only",
            "initial_state": [{
                "type": "m.room.join_rules",
                "state_key": "",
                "content": {
                    "join_rule": rule,
                    "allow": [{"type": "m.room_membership", "room_id": allowed}],
                },
            }],
        }))
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_restricted_join_through_a_space_membership() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let base = node.client_url();
    let alice = User::register(base.clone(), "alice").await?;
    let bob = User::register(base.clone(), "bob").await?;
    let carol = User::register(base, "carol").await?;
    let space = space(&alice).await?;
    let room = restricted_room(&alice, "restricted", &space).await?;
    let knock_room = restricted_room(&alice, "knock_restricted", &space).await?;

    // Carol is in no allowed room: refused, with a message that says why.
    let (status, body) = carol.join(&room, None).await?;
    ensure!(
        status == 403 && body["errcode"] == "M_FORBIDDEN",
        "Carol's join: {status} {body}"
    );
    ensure!(
        body["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a member of any room")),
        "Carol's refusal does not say why: {body}"
    );
    let (status, body) = carol
        .call(
            reqwest::Method::POST,
            &format!("/join/{}", path_segment(&knock_room)),
            json!({}),
        )
        .await?;
    ensure!(
        status == 403 && body["errcode"] == "M_FORBIDDEN",
        "Carol's join of the knock_restricted room: {status} {body}"
    );

    // Bob joins the space, then both rooms: Alice (the only local member able to
    // invite) authorises the joins.
    bob.post(&format!("/join/{}", path_segment(&space)), json!({}))
        .await?;
    let (status, body) = bob.join(&room, None).await?;
    ensure!(status == 200, "Bob's join: {status} {body}");
    let content = bob.member_content(&room, bob.id()).await?;
    ensure!(
        content["membership"] == "join"
            && content["join_authorised_via_users_server"] == alice.id(),
        "Bob's member event: {content}"
    );
    let (status, body) = bob
        .call(
            reqwest::Method::POST,
            &format!("/join/{}", path_segment(&knock_room)),
            json!({}),
        )
        .await?;
    ensure!(
        status == 200,
        "Bob's join of knock_restricted: {status} {body}"
    );
    let content = bob.member_content(&knock_room, bob.id()).await?;
    ensure!(
        content["join_authorised_via_users_server"] == alice.id(),
        "Bob's member event in the knock_restricted room: {content}"
    );

    // Once Carol is in the space she may join too.
    carol
        .post(&format!("/rooms/{}/join", path_segment(&space)), json!({}))
        .await?;
    let (status, body) = carol.join(&room, None).await?;
    ensure!(
        status == 200,
        "Carol's join after the space: {status} {body}"
    );

    // Nobody left who may invite: the join cannot be granted.
    let dave = User::register(node.client_url(), "dave").await?;
    let lonely = restricted_room(&dave, "restricted", &space).await?;
    dave.post(
        &format!("/rooms/{}/leave", path_segment(&lonely)),
        json!({}),
    )
    .await?;
    let (status, body) = bob.join(&lonely, None).await?;
    ensure!(
        status == 400 && body["errcode"] == "M_UNABLE_TO_GRANT_JOIN",
        "join of a restricted room with nobody to authorise it: {status} {body}"
    );
    shutdown_node(node).await
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

/// The stored JSON of `user`'s current member event in `room` on `node`.
fn stored_member_event(node: &FederatedNode, room: &str, user: &str) -> anyhow::Result<Value> {
    let json = node.node.server().db.read(|c| {
        let Some((_, id, _)) = storage::membership(c, room, user)? else {
            return Ok(None);
        };
        Ok(storage::get_event_any(c, &id)?.map(|e| e.json))
    })?;
    let json = json.with_context(|| format!("no member event of {user} in {room}"))?;
    Ok(serde_json::from_str(&json)?)
}

fn signers(event: &Value) -> Vec<String> {
    event["signatures"]
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_restricted_join_is_authorised_and_countersigned_by_the_resident()
-> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let alice = User::register(a.node.client_url(), "alice").await?;
    let bob = User::register(b.node.client_url(), "bob").await?;
    let carol = User::register(b.node.client_url(), "carol").await?;
    let space = space(&alice).await?;
    let room = restricted_room(&alice, "restricted", &space).await?;

    // Carol (on B) is in no allowed room: A refuses, and B passes the refusal on.
    let (status, body) = carol.join(&room, Some(&a.name())).await?;
    ensure!(
        status == 403 && body["errcode"] == "M_FORBIDDEN",
        "Carol's remote join: {status} {body}"
    );

    // Bob joins the space on A (public), then the restricted room.
    let (status, body) = bob.join(&space, Some(&a.name())).await?;
    ensure!(status == 200, "Bob's join of the space: {status} {body}");
    let (status, body) = bob.join(&room, Some(&a.name())).await?;
    ensure!(
        status == 200,
        "Bob's join of the restricted room: {status} {body}"
    );

    // The join names Alice and carries both servers' signatures, on both nodes.
    for (node, label) in [(&b, "B"), (&a, "A")] {
        let event = stored_member_event(node, &room, bob.id())?;
        ensure!(
            event["content"]["membership"] == "join"
                && event["content"]["join_authorised_via_users_server"] == alice.id(),
            "Bob's join on {label}: {event}"
        );
        let signed_by = signers(&event);
        ensure!(
            signed_by.contains(&a.name()) && signed_by.contains(&b.name()),
            "Bob's join on {label} is signed by {signed_by:?}"
        );
    }
    let mut last = Value::Null;
    wait_until(WAIT, "Alice sees Bob's join", async || {
        last = alice.member_content(&room, bob.id()).await?;
        Ok(last["membership"] == "join")
    })
    .await?;

    a.stop().await?;
    b.stop().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_restricted_joins_are_refused() -> anyhow::Result<()> {
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start_federated_node(da.path()).await?;
    let b = start_federated_node(db.path()).await?;
    connect_nodes(&a, &b).await?;
    let alice = User::register(a.node.client_url(), "alice").await?;
    let bob = User::register(b.node.client_url(), "bob").await?;
    let space = space(&alice).await?;
    let room = restricted_room(&alice, "restricted", &space).await?;
    let vers = "ver=10&ver=11&ver=12";
    let make_join = |room: &str| {
        format!(
            "/_matrix/federation/v1/make_join/{}/{}?{vers}",
            encode(room),
            encode(bob.id())
        )
    };

    // A restricted room whose allowed room A is not in: A cannot tell.
    let elsewhere = restricted_room(&alice, "restricted", "!elsewhere:example.org").await?;
    let (status, body) = fed(&b, &a, http::Method::GET, &make_join(&elsewhere), None).await?;
    ensure!(
        status == 400 && body["errcode"] == "M_UNABLE_TO_AUTHORISE_JOIN",
        "make_join where A is in no allowed room: {status} {body}"
    );

    // Bob's client gets the same answer when his server tries to join through A.
    let (status, body) = bob.join(&elsewhere, Some(&a.name())).await?;
    ensure!(
        status == 400 && body["errcode"] == "M_UNABLE_TO_AUTHORISE_JOIN",
        "Bob's join where A is in no allowed room: {status} {body}"
    );

    // Bob is in the space: the template names Alice.
    let (status, body) = bob.join(&space, Some(&a.name())).await?;
    ensure!(status == 200, "Bob's join of the space: {status} {body}");
    let (status, template) = fed(&b, &a, http::Method::GET, &make_join(&room), None).await?;
    ensure!(status == 200, "make_join: {status} {template}");
    let t = &template["event"];
    ensure!(
        t["content"]["join_authorised_via_users_server"] == alice.id(),
        "template: {template}"
    );
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect()
    };
    let build = |content: Value| -> anyhow::Result<(String, Value)> {
        let (_, rules) = rules_for("12")?;
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(bob.id().to_owned()),
            content,
            sender: bob.id().to_owned(),
            redacts: None,
        };
        let (id, object) = build_pdu(
            &b.node.server().identity,
            &rules,
            Some(&room),
            &ev,
            &EventReference::ids(&strings(&t["prev_events"])),
            &EventReference::ids(&strings(&t["auth_events"])),
            t["depth"].as_i64().unwrap_or(1),
            1_700_000_000_000,
        )?;
        Ok((id, serde_json::to_value(&object)?))
    };
    let send_join = |id: &str| {
        format!(
            "/_matrix/federation/v2/send_join/{}/{}",
            encode(&room),
            encode(id)
        )
    };

    // No authorising user: refused.
    let (id, pdu) = build(json!({"membership": "join"}))?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_join(&id), Some(&pdu)).await?;
    ensure!(
        status == 403
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("join_authorised_via_users_server")),
        "send_join without an authoriser: {status} {body}"
    );

    // An authorising user of another server (B's own): refused.
    let (id, pdu) = build(json!({
        "membership": "join",
        "join_authorised_via_users_server": bob.id(),
    }))?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_join(&id), Some(&pdu)).await?;
    ensure!(
        status == 403
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("another server")),
        "send_join authorised via B: {status} {body}"
    );

    let good = json!({
        "membership": "join",
        "join_authorised_via_users_server": alice.id(),
    });
    // B's signature broken: A does not countersign.
    let (id, mut pdu) = build(good.clone())?;
    let b_name = b.name();
    let signature = pdu["signatures"][&b_name]["ed25519:0"]
        .as_str()
        .map(str::to_owned)
        .or_else(|| {
            pdu["signatures"][&b_name]
                .as_object()
                .and_then(|o| o.values().next())
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .context("B's signature")?;
    let key_id = pdu["signatures"][&b_name]
        .as_object()
        .and_then(|o| o.keys().next().cloned())
        .context("B's key id")?;
    let mut broken: Vec<char> = signature.chars().collect();
    broken[0] = if broken[0] == 'A' { 'B' } else { 'A' };
    pdu["signatures"][&b_name][&key_id] = json!(broken.into_iter().collect::<String>());
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_join(&id), Some(&pdu)).await?;
    ensure!(
        status == 403
            && body["error"]
                .as_str()
                .is_some_and(|e| e.contains("signature")),
        "send_join with a bad signature: {status} {body}"
    );

    // Content changed after signing (same id: the reference hash covers only the
    // redacted content): the content hash fails, A does not countersign.
    let (id, mut pdu) = build(good.clone())?;
    pdu["content"]["displayname"] = json!("Mallory");
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_join(&id), Some(&pdu)).await?;
    ensure!(
        status == 403 && body["error"].as_str().is_some_and(|e| e.contains("hash")),
        "send_join with a bad content hash: {status} {body}"
    );
    let membership = a
        .node
        .server()
        .db
        .read(|c| storage::membership(c, &room, bob.id()))?;
    ensure!(
        membership.as_ref().is_none_or(|m| m.0 != "join"),
        "Bob is joined on A after the refused joins: {membership:?}"
    );

    // The proper join: A answers it signed by both servers.
    let (id, pdu) = build(good)?;
    let (status, body) = fed(&b, &a, http::Method::PUT, &send_join(&id), Some(&pdu)).await?;
    ensure!(status == 200, "send_join: {status} {body}");
    let signed_by = signers(&body["event"]);
    ensure!(
        signed_by.contains(&a.name()) && signed_by.contains(&b.name()),
        "send_join answer signed by {signed_by:?}: {}",
        body["event"]
    );
    a.stop().await?;
    b.stop().await?;
    Ok(())
}
