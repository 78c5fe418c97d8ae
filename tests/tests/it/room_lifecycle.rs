//! Room and account lifecycle against one in-process node: room upgrades, knocking,
//! the client space hierarchy, reporting, `timestamp_to_event`, account deactivation
//! and the third-party identifier endpoints. matrix-sdk 0.18 where a client feature is
//! tested (tombstone and predecessor, knock, reports), raw HTTP for exact wire checks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, ensure};
use matrix_sdk::Client;
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, RoomId};
use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::*;

const WAIT: Duration = Duration::from_secs(20);

/// A registered user: the matrix-sdk client and its token for raw requests.
struct User {
    client: Client,
    id: String,
    token: String,
    base: String,
}

const PASSWORD: &str = "a long enough passphrase";

async fn user(base: &str, name: &str) -> anyhow::Result<User> {
    let client = register_client(base, name, PASSWORD).await?;
    let id = client.user_id().context("logged in")?.to_string();
    let token = client.access_token().context("token")?;
    Ok(User {
        client,
        id,
        token,
        base: base.to_owned(),
    })
}

impl User {
    /// A raw request under `prefix` (`/_matrix/client/v3`, `…/v1`): status and JSON body.
    async fn call_at(
        &self,
        prefix: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = http_client()?
            .request(method.clone(), format!("{}{prefix}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let json = serde_json::from_str(&text)
            .with_context(|| format!("{method} {path}: {status}: not JSON: {text}"))?;
        Ok((status, json))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        self.call_at("/_matrix/client/v3", method, path, body).await
    }

    async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> anyhow::Result<Value> {
        let (status, v) = self.call(method.clone(), path, body).await?;
        ensure!(
            status == 200,
            "{method} {path} by {}: {status} {v}",
            self.id
        );
        Ok(v)
    }

    async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let v = self.ok(Method::POST, "/createRoom", Some(body)).await?;
        Ok(v["room_id"].as_str().context("room_id")?.to_owned())
    }

    async fn state(&self, room: &str, ty: &str) -> anyhow::Result<(u16, Value)> {
        self.call(
            Method::GET,
            &format!("/rooms/{}/state/{ty}/", path_segment(room)),
            None,
        )
        .await
    }

    async fn say(&self, room: &str, text: &str) -> anyhow::Result<(u16, Value)> {
        let txn = format!(
            "t{}",
            SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos()
        );
        self.call(
            Method::PUT,
            &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
            Some(json!({"msgtype": "m.text", "body": text})),
        )
        .await
    }

    async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.ok(Method::POST, path, Some(body)).await
    }

    /// A raw initial sync with a filter (JSON text).
    async fn raw_sync(&self, filter: &str) -> anyhow::Result<Value> {
        let (status, v) = self
            .call(
                Method::GET,
                &format!("/sync?filter={}", path_segment(filter)),
                None,
            )
            .await?;
        ensure!(status == 200, "/sync: {status} {v}");
        Ok(v)
    }
}

fn errcode(v: &Value) -> &str {
    v["errcode"].as_str().unwrap_or_default()
}

async fn start() -> anyhow::Result<(tempfile::TempDir, warren_core::Node, String)> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let base = node.client_url();
    Ok((dir, node, base))
}

/// Upgrades `room` (made by `alice`, with `bob` joined at power 0) to `new_version` and
/// checks everything the upgrade promises; returns the new room.
async fn check_upgrade(
    alice: &User,
    bob: &User,
    old: &str,
    new_version: &str,
) -> anyhow::Result<String> {
    // Bob may not: m.room.tombstone needs 100.
    let (status, v) = bob
        .call(
            Method::POST,
            &format!("/rooms/{}/upgrade", path_segment(old)),
            Some(json!({"new_version": new_version})),
        )
        .await?;
    ensure!(
        status == 403 && errcode(&v) == "M_FORBIDDEN",
        "bob upgrades: {status} {v}"
    );
    let v = alice
        .post(
            &format!("/rooms/{}/upgrade", path_segment(old)),
            json!({"new_version": new_version}),
        )
        .await?;
    let new = v["replacement_room"]
        .as_str()
        .context("replacement_room")?
        .to_owned();
    ensure!(new != old, "the replacement is the old room");

    // The tombstone in the old room.
    let (status, tomb) = alice.state(old, "m.room.tombstone").await?;
    ensure!(
        status == 200 && tomb["replacement_room"] == new.as_str(),
        "tombstone: {status} {tomb}"
    );
    // The new room: version, predecessor, copied state.
    let (status, create) = alice.state(&new, "m.room.create").await?;
    ensure!(status == 200, "create: {status} {create}");
    ensure!(create["room_version"] == new_version, "create: {create}");
    ensure!(create["predecessor"]["room_id"] == old, "create: {create}");
    if new_version == "12" {
        ensure!(
            create["predecessor"].get("event_id").is_none(),
            "a v12 predecessor names only the room: {create}"
        );
    } else {
        ensure!(
            create["predecessor"]["event_id"].is_string(),
            "a pre-v12 predecessor names the tombstone: {create}"
        );
    }
    for (ty, field, want) in [
        ("m.room.name", "name", json!("Old name")),
        ("m.room.topic", "topic", json!("Old topic")),
        ("m.room.join_rules", "join_rule", json!("public")),
        (
            "m.room.history_visibility",
            "history_visibility",
            json!("world_readable"),
        ),
        ("m.room.guest_access", "guest_access", json!("forbidden")),
    ] {
        let (status, content) = alice.state(&new, ty).await?;
        ensure!(
            status == 200 && content[field] == want,
            "{ty} in the new room: {status} {content}"
        );
    }
    // Power levels copied (bob's custom level kept), creators unlisted in v12.
    let (_, power) = alice.state(&new, "m.room.power_levels").await?;
    ensure!(power["events"]["m.room.name"] == 50, "power: {power}");
    if new_version == "12" {
        ensure!(
            power["users"].get(&alice.id).is_none(),
            "a v12 creator is listed: {power}"
        );
    } else {
        ensure!(power["users"][&alice.id] == 100, "power: {power}");
    }
    // Alias and directory listing moved.
    let (_, alias) = alice.state(&new, "m.room.canonical_alias").await?;
    let alias_name = alias["alias"]
        .as_str()
        .context("canonical alias")?
        .to_owned();
    let (_, resolved) = alice
        .call(
            Method::GET,
            &format!("/directory/room/{}", path_segment(&alias_name)),
            None,
        )
        .await?;
    ensure!(resolved["room_id"] == new.as_str(), "alias: {resolved}");
    let (_, old_alias) = alice.state(old, "m.room.canonical_alias").await?;
    ensure!(
        old_alias.get("alias").is_none(),
        "old canonical alias: {old_alias}"
    );
    let (_, old_vis) = alice
        .call(
            Method::GET,
            &format!("/directory/list/room/{}", path_segment(old)),
            None,
        )
        .await?;
    let (_, new_vis) = alice
        .call(
            Method::GET,
            &format!("/directory/list/room/{}", path_segment(&new)),
            None,
        )
        .await?;
    ensure!(
        old_vis["visibility"] == "private" && new_vis["visibility"] == "public",
        "directory: old {old_vis} new {new_vis}"
    );
    // The old room is closed to ordinary users.
    let (_, old_power) = alice.state(old, "m.room.power_levels").await?;
    ensure!(
        old_power["events_default"].as_i64() >= Some(50)
            && old_power["invite"].as_i64() >= Some(50),
        "old power levels: {old_power}"
    );
    let (status, v) = bob.say(old, "still here?").await?;
    ensure!(status == 403, "bob talks in the old room: {status} {v}");
    Ok(new)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_replaces_the_room_with_a_tombstone_predecessor_and_copied_state()
-> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let bob = user(&base, "bob").await?;
    for (from, to, alias) in [("11", "12", "up11"), ("12", "11", "up12")] {
        let old = alice
            .create_room(json!({
                "preset": "public_chat",
                "visibility": "public",
                "room_version": from,
                "name": "Old name",
                "topic": "Old topic",
                "room_alias_name": alias,
                "initial_state": [
                    {"type": "m.room.history_visibility", "state_key": "",
                     "content": {"history_visibility": "world_readable"}},
                    {"type": "m.room.guest_access", "state_key": "",
                     "content": {"guest_access": "forbidden"}},
                ],
            }))
            .await?;
        bob.post(&format!("/join/{}", path_segment(&old)), json!({}))
            .await?;
        check_upgrade(&alice, &bob, &old, to).await?;
    }

    // An unknown version is refused before anything happens.
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let (status, v) = alice
        .call(
            Method::POST,
            &format!("/rooms/{}/upgrade", path_segment(&room)),
            Some(json!({"new_version": "999"})),
        )
        .await?;
    ensure!(
        status == 400 && errcode(&v) == "M_UNSUPPORTED_ROOM_VERSION",
        "version 999: {status} {v}"
    );
    let (status, _) = alice.state(&room, "m.room.tombstone").await?;
    ensure!(status == 404, "a failed upgrade left a tombstone");

    // matrix-sdk sees the tombstone and the successor's predecessor.
    alice
        .client
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await?;
    let v = alice
        .post(
            &format!("/rooms/{}/upgrade", path_segment(&room)),
            json!({"new_version": "12"}),
        )
        .await?;
    let new: OwnedRoomId = RoomId::parse(v["replacement_room"].as_str().context("id")?)?;
    let old: OwnedRoomId = RoomId::parse(&room)?;
    sync_until(
        &alice.client,
        WAIT,
        "the tombstone and the new room",
        |_| {
            let tombstoned = alice
                .client
                .get_room(&old)
                .and_then(|r| r.successor_room())
                .is_some_and(|s| s.room_id == new);
            let successor = alice
                .client
                .get_room(&new)
                .and_then(|r| r.predecessor_room())
                .is_some_and(|p| p.room_id == old);
            Ok(tombstoned && successor)
        },
    )
    .await?;
    shutdown_node(node).await
}

fn knock_rule() -> Value {
    json!([{"type": "m.room.join_rules", "state_key": "", "content": {"join_rule": "knock"}}])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_local_knock_is_seen_then_invited_and_joined_or_kicked() -> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let bob = user(&base, "bob").await?;
    let carol = user(&base, "carol").await?;
    let room = alice
        .create_room(
            json!({"preset": "private_chat", "name": "Door", "initial_state": knock_rule()}),
        )
        .await?;
    let room_id: OwnedRoomId = RoomId::parse(&room)?;

    // An invite-only room takes no knocks.
    let closed = alice.create_room(json!({"preset": "private_chat"})).await?;
    let (status, v) = bob
        .call(
            Method::POST,
            &format!("/knock/{}", path_segment(&closed)),
            Some(json!({})),
        )
        .await?;
    ensure!(
        status == 403 && errcode(&v) == "M_FORBIDDEN",
        "knock on invite-only: {status} {v}"
    );

    // Bob knocks with matrix-sdk; his sync shows the room under `knock`.
    bob.client
        .knock(room_id.clone().into(), Some("let me in".into()), vec![])
        .await?;
    let sync = bob.raw_sync(r#"{"room":{"timeline":{"limit":5}}}"#).await?;
    let knock_state = sync["rooms"]["knock"][&room]["knock_state"]["events"]
        .as_array()
        .cloned()
        .with_context(|| format!("no knock section: {}", sync["rooms"]))?;
    ensure!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.join_rules" && e["content"]["join_rule"] == "knock"),
        "knock_state: {knock_state:?}"
    );
    ensure!(
        knock_state
            .iter()
            .any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "Door"),
        "knock_state: {knock_state:?}"
    );
    ensure!(
        knock_state.iter().any(|e| e["type"] == "m.room.member"
            && e["state_key"] == bob.id.as_str()
            && e["content"]["membership"] == "knock"
            && e["content"]["reason"] == "let me in"),
        "knock_state: {knock_state:?}"
    );
    ensure!(
        sync["rooms"]["join"].get(&room).is_none(),
        "a knocking user sees the room as joined"
    );
    // Bob cannot read the room while knocking.
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b", path_segment(&room)),
            None,
        )
        .await?;
    ensure!(status == 403, "knocking user reads messages: {status}");

    // Alice sees the knock and invites; Bob's next sync moves the room to `invite`.
    let (_, member) = alice
        .call(
            Method::GET,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(&room),
                path_segment(&bob.id)
            ),
            None,
        )
        .await?;
    ensure!(
        member["membership"] == "knock",
        "bob's member state: {member}"
    );
    alice
        .post(
            &format!("/rooms/{}/invite", path_segment(&room)),
            json!({"user_id": bob.id}),
        )
        .await?;
    bob.client
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await?;
    sync_until(&bob.client, WAIT, "bob is invited", |_| {
        Ok(bob
            .client
            .get_room(&room_id)
            .is_some_and(|r| r.state() == matrix_sdk::RoomState::Invited))
    })
    .await?;
    bob.post(&format!("/rooms/{}/join", path_segment(&room)), json!({}))
        .await?;
    let (status, v) = bob.say(&room, "hello door").await?;
    ensure!(status == 200, "bob talks after joining: {status} {v}");

    // Carol knocks and is turned away (kicked); her knock then shows up as left.
    carol
        .post(
            &format!("/knock/{}", path_segment(&room)),
            json!({"reason": "me too"}),
        )
        .await?;
    alice
        .post(
            &format!("/rooms/{}/kick", path_segment(&room)),
            json!({"user_id": carol.id, "reason": "not today"}),
        )
        .await?;
    let sync = carol.raw_sync(r#"{"room":{"include_leave":true}}"#).await?;
    ensure!(
        sync["rooms"]["knock"].get(&room).is_none() && sync["rooms"]["leave"].get(&room).is_some(),
        "carol after the refusal: {}",
        sync["rooms"]
    );
    // A knock on a room one is in is refused.
    let (status, v) = bob
        .call(
            Method::POST,
            &format!("/knock/{}", path_segment(&room)),
            Some(json!({})),
        )
        .await?;
    ensure!(status == 403, "knock while joined: {status} {v}");
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_space_hierarchy_lists_the_space_and_its_children() -> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let bob = user(&base, "bob").await?;
    let space = alice
        .create_room(json!({
            "preset": "public_chat", "name": "Space",
            "creation_content": {"type": "m.space"},
        }))
        .await?;
    let first = alice
        .create_room(json!({"preset": "public_chat", "name": "First"}))
        .await?;
    let second = alice
        .create_room(json!({"preset": "public_chat", "name": "Second"}))
        .await?;
    let server = alice.id.split_once(':').context("server")?.1.to_owned();
    for (child, order, suggested) in [(&second, "b", false), (&first, "a", true)] {
        alice
            .ok(
                Method::PUT,
                &format!(
                    "/rooms/{}/state/m.space.child/{}",
                    path_segment(&space),
                    path_segment(child)
                ),
                Some(json!({"via": [server], "order": order, "suggested": suggested})),
            )
            .await?;
    }
    let hierarchy = |query: String| {
        let bob = &bob;
        let space = space.clone();
        async move {
            bob.call_at(
                "/_matrix/client/v1",
                Method::GET,
                &format!("/rooms/{}/hierarchy{query}", path_segment(&space)),
                None,
            )
            .await
        }
    };
    let names = |v: &Value| -> Vec<String> {
        v["rooms"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| r["name"].as_str().map(str::to_owned))
            .collect()
    };
    // Bob is in none of them; all are public, so he sees the whole tree, in order.
    let (status, all) = hierarchy(String::new()).await?;
    ensure!(status == 200, "hierarchy: {status} {all}");
    ensure!(
        names(&all) == ["Space", "First", "Second"],
        "rooms: {:?}",
        names(&all)
    );
    ensure!(all["rooms"][0]["room_type"] == "m.space", "space: {all}");
    let children = all["rooms"][0]["children_state"]
        .as_array()
        .context("children_state")?;
    ensure!(
        children.len() == 2
            && children
                .iter()
                .all(|c| c["type"] == "m.space.child" && c["origin_server_ts"].is_i64()),
        "children_state: {children:?}"
    );
    ensure!(all.get("next_batch").is_none(), "one page: {all}");

    let (_, suggested) = hierarchy("?suggested_only=true".into()).await?;
    ensure!(names(&suggested) == ["Space", "First"], "{suggested}");
    let (_, shallow) = hierarchy("?max_depth=0".into()).await?;
    ensure!(names(&shallow) == ["Space"], "{shallow}");

    // Pages of one room.
    let (_, page1) = hierarchy("?limit=1".into()).await?;
    let token = page1["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();
    let (_, page2) = hierarchy(format!("?limit=1&from={}", path_segment(&token))).await?;
    ensure!(
        names(&page1) == ["Space"] && names(&page2) == ["First"],
        "pages: {page1} {page2}"
    );
    let (status, v) = hierarchy(format!(
        "?limit=1&max_depth=0&from={}",
        path_segment(&token)
    ))
    .await?;
    ensure!(
        status == 400 && errcode(&v) == "M_INVALID_PARAM",
        "token with other params: {status} {v}"
    );

    // A private space is not shown to outsiders.
    let secret = alice
        .create_room(json!({"preset": "private_chat", "creation_content": {"type": "m.space"}}))
        .await?;
    let (status, v) = bob
        .call_at(
            "/_matrix/client/v1",
            Method::GET,
            &format!("/rooms/{}/hierarchy", path_segment(&secret)),
            None,
        )
        .await?;
    ensure!(status == 403, "private space: {status} {v}");
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_stored_and_unknown_events_are_not_found() -> anyhow::Result<()> {
    let (dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    let (_, sent) = alice.say(&room, "something rude").await?;
    let event_id: OwnedEventId = sent["event_id"].as_str().context("event_id")?.try_into()?;
    let room_id: OwnedRoomId = RoomId::parse(&room)?;

    alice
        .client
        .sync_once(matrix_sdk::config::SyncSettings::default())
        .await?;
    let sdk_room = alice.client.get_room(&room_id).context("room in sdk")?;
    sdk_room
        .report_content(event_id.clone(), Some("spam".into()))
        .await?;
    sdk_room.report_room("whole room is bad".into()).await?;

    let (status, v) = alice
        .call(
            Method::POST,
            &format!(
                "/rooms/{}/report/{}",
                path_segment(&room),
                path_segment("$doesnotexist")
            ),
            Some(json!({"reason": "x"})),
        )
        .await?;
    ensure!(
        status == 404 && errcode(&v) == "M_NOT_FOUND",
        "unknown event: {status} {v}"
    );
    let (status, v) = alice
        .call(
            Method::POST,
            &format!(
                "/rooms/{}/report/{}",
                path_segment(&room),
                path_segment(event_id.as_str())
            ),
            Some(json!({"score": 5})),
        )
        .await?;
    ensure!(
        status == 400 && errcode(&v) == "M_INVALID_PARAM",
        "bad score: {status} {v}"
    );
    let (status, v) = alice
        .call(
            Method::POST,
            &format!("/rooms/{}/report", path_segment("!nope:elsewhere")),
            Some(json!({"reason": "x"})),
        )
        .await?;
    ensure!(status == 404, "unknown room: {status} {v}");

    // The node's admin lists both reports, newest first.
    let token = std::fs::read_to_string(dir.path().join(warren_core::admin::TOKEN_FILE))?;
    let list: Value = http_client()?
        .get(format!("{base}/_warren/admin/v1/reports"))
        .bearer_auth(token.trim())
        .send()
        .await?
        .json()
        .await?;
    let reports = list["reports"].as_array().context("reports")?;
    ensure!(reports.len() == 2, "reports: {list}");
    ensure!(
        reports[0]["event_id"].is_null() && reports[0]["reason"] == "whole room is bad",
        "room report: {list}"
    );
    ensure!(
        reports[1]["event_id"] == event_id.as_str()
            && reports[1]["reason"] == "spam"
            && reports[1]["user_id"] == alice.id.as_str(),
        "event report: {list}"
    );
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_to_event_finds_the_nearest_event_both_ways() -> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let room = alice.create_room(json!({"preset": "private_chat"})).await?;
    // Three messages with distinct timestamps: wait for the clock to pass each one.
    let mut sent = Vec::new();
    for text in ["one", "two", "three"] {
        let (status, v) = alice.say(&room, text).await?;
        ensure!(status == 200, "send: {v}");
        let id = v["event_id"].as_str().context("event_id")?.to_owned();
        let ev = alice
            .ok(
                Method::GET,
                &format!("/rooms/{}/event/{}", path_segment(&room), path_segment(&id)),
                None,
            )
            .await?;
        let ts = ev["origin_server_ts"].as_i64().context("ts")?;
        wait_until(WAIT, "the clock passes the event", async || {
            Ok(SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64 > ts)
        })
        .await?;
        sent.push((id, ts));
    }
    let lookup = |ts: i64, dir: &'static str| {
        let alice = &alice;
        let room = room.clone();
        async move {
            alice
                .call_at(
                    "/_matrix/client/v1",
                    Method::GET,
                    &format!(
                        "/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}",
                        path_segment(&room)
                    ),
                    None,
                )
                .await
        }
    };
    let (one, two, three) = (&sent[0], &sent[1], &sent[2]);
    for (ts, dir, want) in [
        (one.1 + 1, "f", two),
        (two.1, "f", two),
        (three.1 - 1, "b", two),
        (three.1, "b", three),
        (one.1, "b", one),
    ] {
        let (status, v) = lookup(ts, dir).await?;
        ensure!(
            status == 200 && v["event_id"] == want.0.as_str() && v["origin_server_ts"] == want.1,
            "ts {ts} dir {dir}: {status} {v}, want {want:?}"
        );
    }
    let (status, v) = lookup(three.1 + 60_000, "f").await?;
    ensure!(
        status == 404 && errcode(&v) == "M_NOT_FOUND",
        "nothing after: {status} {v}"
    );
    let (status, v) = lookup(1, "b").await?;
    ensure!(status == 404, "nothing before: {status} {v}");
    let (status, v) = lookup(one.1, "x").await?;
    ensure!(
        status == 400 && errcode(&v) == "M_INVALID_PARAM",
        "bad dir: {status} {v}"
    );
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_logs_out_leaves_rooms_and_refuses_login() -> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let bob = user(&base, "bob").await?;
    let room = alice
        .create_room(json!({"preset": "public_chat", "name": "Club"}))
        .await?;
    bob.post(&format!("/join/{}", path_segment(&room)), json!({}))
        .await?;
    let invited = alice.create_room(json!({"preset": "private_chat"})).await?;
    alice
        .post(
            &format!("/rooms/{}/invite", path_segment(&invited)),
            json!({"user_id": bob.id}),
        )
        .await?;
    let found = alice
        .post("/user_directory/search", json!({"search_term": "bob"}))
        .await?;
    ensure!(
        found["results"].as_array().is_some_and(|r| r.len() == 1),
        "bob in the directory: {found}"
    );

    // UIAA: first the flows, then the password.
    let (status, flows) = bob
        .call(Method::POST, "/account/deactivate", Some(json!({})))
        .await?;
    ensure!(
        status == 401 && flows["flows"][0]["stages"][0] == "m.login.password",
        "deactivate without auth: {status} {flows}"
    );
    let (status, v) = bob
        .call(
            Method::POST,
            "/account/deactivate",
            Some(
                json!({"auth": {"type": "m.login.password", "session": flows["session"],
                "identifier": {"type": "m.id.user", "user": bob.id}, "password": "wrong"}}),
            ),
        )
        .await?;
    ensure!(status == 401, "wrong password: {status} {v}");
    let v = bob
        .post(
            "/account/deactivate",
            json!({"erase": true, "auth": {"type": "m.login.password", "session": flows["session"],
                "identifier": {"type": "m.id.user", "user": bob.id}, "password": PASSWORD}}),
        )
        .await?;
    ensure!(v["id_server_unbind_result"] == "no-support", "answer: {v}");

    // Logged out everywhere, login refused.
    let (status, v) = bob.call(Method::GET, "/account/whoami", None).await?;
    ensure!(
        status == 401 && errcode(&v) == "M_UNKNOWN_TOKEN",
        "old token: {status} {v}"
    );
    let resp = http_client()?
        .post(format!("{base}/_matrix/client/v3/login"))
        .json(&json!({"type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": "bob"}, "password": PASSWORD}))
        .send()
        .await?;
    let err = matrix_error(resp).await?;
    ensure!(
        err.status == 403 && err.errcode == "M_USER_DEACTIVATED",
        "login: {err:?}"
    );

    // Bob left the room and declined the invite; the directory no longer has him.
    let members = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/joined_members", path_segment(&room)),
            None,
        )
        .await?;
    ensure!(
        members["joined"].get(&bob.id).is_none(),
        "bob still joined: {members}"
    );
    for r in [&room, &invited] {
        let (_, m) = alice
            .call(
                Method::GET,
                &format!(
                    "/rooms/{}/state/m.room.member/{}",
                    path_segment(r),
                    path_segment(&bob.id)
                ),
                None,
            )
            .await?;
        ensure!(m["membership"] == "leave", "bob's membership in {r}: {m}");
    }
    let found = alice
        .post("/user_directory/search", json!({"search_term": "bob"}))
        .await?;
    ensure!(
        found["results"].as_array().is_some_and(|r| r.is_empty()),
        "bob still in the directory: {found}"
    );
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn third_party_ids_are_an_empty_list_and_changes_get_matrix_errors() -> anyhow::Result<()> {
    let (_dir, node, base) = start().await?;
    let alice = user(&base, "alice").await?;
    let list = alice.ok(Method::GET, "/account/3pid", None).await?;
    ensure!(list == json!({"threepids": []}), "3pid list: {list}");
    // matrix-sdk parses the list too.
    let sdk = alice.client.account().get_3pids().await?;
    ensure!(sdk.threepids.is_empty(), "sdk 3pids: {:?}", sdk.threepids);

    for (path, body, status, code) in [
        (
            "/account/3pid/add",
            json!({"client_secret": "s", "sid": "1"}),
            400,
            "M_THREEPID_AUTH_FAILED",
        ),
        (
            "/account/3pid/bind",
            json!({"client_secret": "s", "sid": "1", "id_server": "id.example", "id_access_token": "t"}),
            400,
            "M_THREEPID_AUTH_FAILED",
        ),
        ("/account/3pid/add", json!({}), 400, "M_MISSING_PARAM"),
        (
            "/account/3pid/delete",
            json!({"medium": "email", "address": "a@example.org"}),
            400,
            "M_THREEPID_NOT_FOUND",
        ),
        (
            "/account/3pid/email/requestToken",
            json!({"client_secret": "s", "email": "a@example.org", "send_attempt": 1}),
            400,
            "M_THREEPID_MEDIUM_NOT_SUPPORTED",
        ),
    ] {
        let (got, v) = alice.call(Method::POST, path, Some(body)).await?;
        ensure!(
            got == status && errcode(&v) == code,
            "{path}: {got} {v}, want {status} {code}"
        );
    }
    // The room's aliases endpoint answers too.
    let room = alice
        .create_room(json!({"preset": "public_chat", "room_alias_name": "hall"}))
        .await?;
    let aliases = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/aliases", path_segment(&room)),
            None,
        )
        .await?;
    ensure!(
        aliases["aliases"]
            .as_array()
            .is_some_and(|a| a.len() == 1 && a[0].as_str().is_some_and(|s| s.starts_with("#hall:"))),
        "aliases: {aliases}"
    );
    shutdown_node(node).await
}
