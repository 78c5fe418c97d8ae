//! Client-server API edges from issue 15, over raw HTTP or matrix-sdk: refresh tokens,
//! push rules on room upgrade (also for a member on another node who joins the new room
//! later), unknown push rule kinds, `/members?at=`, rich `m.topic` on state PUTs, a
//! command bot that is renamed mid-way, the user directory (ids, names, per-room
//! nicknames, one result per user) and the `/versions` list.
//!
//! Each test starts its own node on its own temporary directory; every wait is on a
//! condition, with a deadline.

use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{
    RawUser, WAIT, connect_nodes, http_client, path_segment, shutdown_node, start_federated_node,
    start_node, start_node_with, test_config, wait_until,
};

/// `POST {base}/_matrix/client/v3{path}` without a token: status and JSON body.
async fn post_anonymous(base: &str, path: &str, body: Value) -> anyhow::Result<(u16, Value)> {
    let response = http_client()?
        .post(format!("{base}/_matrix/client/v3{path}"))
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

/// `user` with another access token.
fn with_token(user: &RawUser, token: &str) -> RawUser {
    let mut session = user.session.clone();
    session.access_token = token.to_owned();
    RawUser {
        base: user.base.clone(),
        session,
    }
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
}

#[tokio::test]
async fn refresh_tokens_expire_refresh_and_keep_the_device() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.refreshable_access_token_lifetime = Duration::from_secs(4);
    let node = start_node_with(config).await.expect("start node");
    let base = node.client_url();

    // A client that does not ask gets a token that does not expire, as before.
    let plain = RawUser::register(base.clone(), "plain")
        .await
        .expect("register plain");
    let (_, login) = post_anonymous(
        &base,
        "/login",
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "plain"},
               "password": "secret-password"}),
    )
    .await
    .expect("login without refresh");
    assert!(login.get("refresh_token").is_none(), "{login}");
    assert!(login.get("expires_in_ms").is_none(), "{login}");

    // Registration asking for one: both fields.
    let (status, first) = post_anonymous(
        &base,
        "/register",
        json!({"username": "bot", "password": "bot-password", "refresh_token": true,
               "auth": {"type": "m.login.dummy"}}),
    )
    .await
    .expect("register with refresh");
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["expires_in_ms"], 4000, "{first}");
    let refresh0 = str_field(&first, "refresh_token").to_owned();
    let device = str_field(&first, "device_id").to_owned();

    // Login asking for one, on the same device.
    let (status, login) = post_anonymous(
        &base,
        "/login",
        json!({"type": "m.login.password", "identifier": {"type": "m.id.user", "user": "bot"},
               "password": "bot-password", "device_id": device, "refresh_token": true}),
    )
    .await
    .expect("login with refresh");
    assert_eq!(status, 200, "{login}");
    assert_eq!(login["expires_in_ms"], 4000, "{login}");
    // Logging in again replaced the device's earlier session.
    let (status, _) = post_anonymous(&base, "/refresh", json!({"refresh_token": refresh0}))
        .await
        .expect("refresh with the replaced token");
    assert_eq!(status, 401);
    let refresh1 = str_field(&login, "refresh_token").to_owned();
    let bot = RawUser {
        base: base.clone(),
        session: warren_tests::Session {
            user_id: str_field(&login, "user_id").to_owned(),
            access_token: str_field(&login, "access_token").to_owned(),
        },
    };
    let room = plain.create_room(json!({})).await.expect("create room");
    plain
        .post(
            &format!("/rooms/{}/invite", path_segment(&room)),
            json!({"user_id": bot.id()}),
        )
        .await
        .expect("invite bot");
    bot.post(&format!("/join/{}", path_segment(&room)), json!({}))
        .await
        .expect("bot joins");
    let send_path = format!("/rooms/{}/send/m.room.message/txn-1", path_segment(&room));
    let sent = bot
        .ok(
            Method::PUT,
            &send_path,
            json!({"msgtype": "m.text", "body": "once"}),
        )
        .await
        .expect("send");
    let event_id = str_field(&sent, "event_id").to_owned();

    // The access token expires: 401 M_UNKNOWN_TOKEN with soft_logout.
    wait_until(WAIT, "the refreshable access token expires", async || {
        let (status, body) = bot
            .call(Method::GET, "/account/whoami", Value::Null)
            .await?;
        if status == 200 {
            return Ok(false);
        }
        anyhow::ensure!(status == 401, "{status} {body}");
        anyhow::ensure!(body["errcode"] == "M_UNKNOWN_TOKEN", "{body}");
        anyhow::ensure!(body["soft_logout"] == true, "{body}");
        Ok(true)
    })
    .await
    .expect("expiry");
    // The plain user's token does not expire.
    plain
        .ok(Method::GET, "/account/whoami", Value::Null)
        .await
        .expect("plain token still works");

    // Refresh: a new pair. The old refresh token stays valid until the new pair is used,
    // so refreshing twice works; the first new pair is then never used.
    let (status, unused) = post_anonymous(&base, "/refresh", json!({"refresh_token": refresh1}))
        .await
        .expect("refresh");
    assert_eq!(status, 200, "{unused}");
    assert_eq!(unused["expires_in_ms"], 4000, "{unused}");
    let (status, fresh) = post_anonymous(&base, "/refresh", json!({"refresh_token": refresh1}))
        .await
        .expect("refresh again");
    assert_eq!(status, 200, "{fresh}");
    let refresh2 = str_field(&fresh, "refresh_token").to_owned();
    assert_ne!(refresh2, refresh1);
    let bot = with_token(&bot, str_field(&fresh, "access_token"));

    // Same device; the retried transaction returns the same event.
    let who = bot
        .ok(Method::GET, "/account/whoami", Value::Null)
        .await
        .expect("whoami after refresh");
    assert_eq!(who["device_id"], device.as_str(), "{who}");
    let again = bot
        .ok(
            Method::PUT,
            &send_path,
            json!({"msgtype": "m.text", "body": "once"}),
        )
        .await
        .expect("retried send");
    assert_eq!(again["event_id"], event_id.as_str(), "{again}");

    // The new access token has been used: the old refresh token and the never-used pair
    // are gone, the new refresh token works.
    for (what, token) in [
        ("the old refresh token", refresh1.as_str()),
        (
            "the unused pair's refresh token",
            str_field(&unused, "refresh_token"),
        ),
    ] {
        let (status, body) = post_anonymous(&base, "/refresh", json!({"refresh_token": token}))
            .await
            .expect("refresh with a revoked token");
        assert_eq!(status, 401, "{what}: {body}");
        assert_eq!(body["errcode"], "M_UNKNOWN_TOKEN", "{what}: {body}");
        assert!(body.get("soft_logout").is_none_or(|s| s == false), "{body}");
    }
    let (status, _) = with_token(&bot, str_field(&unused, "access_token"))
        .call(Method::GET, "/account/whoami", Value::Null)
        .await
        .expect("whoami with the unused pair");
    assert_eq!(status, 401);
    let (status, body) = post_anonymous(&base, "/refresh", json!({"refresh_token": refresh2}))
        .await
        .expect("refresh with the new token");
    assert_eq!(status, 200, "{body}");

    // Logging out removes the device and its refresh tokens.
    let bot = with_token(&bot, str_field(&body, "access_token"));
    bot.post("/logout", json!({})).await.expect("logout");
    let (status, _) = post_anonymous(
        &base,
        "/refresh",
        json!({"refresh_token": str_field(&body, "refresh_token")}),
    )
    .await
    .expect("refresh after logout");
    assert_eq!(status, 401);
    shutdown_node(node).await.expect("shutdown");
}

/// A user on a fresh node, and the room they created.
async fn node_and_user(localpart: &str) -> (tempfile::TempDir, warren_core::Node, RawUser) {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let user = RawUser::register(node.client_url(), localpart)
        .await
        .expect("register");
    (dir, node, user)
}

async fn join(user: &RawUser, room: &str) {
    user.post(&format!("/join/{}", path_segment(room)), json!({}))
        .await
        .expect("join");
}

#[tokio::test]
async fn push_rules_for_a_room_follow_its_upgrade() {
    let (_dir, node, alice) = node_and_user("alice").await;
    let bob = RawUser::register(alice.base.clone(), "bob")
        .await
        .expect("register bob");
    let carol = RawUser::register(alice.base.clone(), "carol")
        .await
        .expect("register carol");
    let room = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .expect("create room");
    let other = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .expect("create another room");
    join(&bob, &room).await;
    let rule = |kind: &str, id: &str| format!("/pushrules/global/{kind}/{}", path_segment(id));

    // Alice mutes the room; Bob has a disabled override naming it and a rule for
    // another room; Carol (not a member) has a room rule for it too.
    alice
        .ok(
            Method::PUT,
            &rule("room", &room),
            json!({"actions": ["dont_notify"]}),
        )
        .await
        .expect("alice's room rule");
    let conditions = json!([
        {"kind": "event_match", "key": "room_id", "pattern": room},
        {"kind": "event_match", "key": "type", "pattern": "m.room.message"}
    ]);
    bob.ok(
        Method::PUT,
        &rule("override", "quiet-here"),
        json!({"actions": [], "conditions": conditions}),
    )
    .await
    .expect("bob's override");
    bob.ok(
        Method::PUT,
        &format!("{}/enabled", rule("override", "quiet-here")),
        json!({"enabled": false}),
    )
    .await
    .expect("disable bob's override");
    bob.ok(
        Method::PUT,
        &rule("underride", &format!("loud-{other}")),
        json!({"actions": ["notify"], "conditions": [
            {"kind": "event_match", "key": "room_id", "pattern": other}]}),
    )
    .await
    .expect("bob's rule for another room");
    carol
        .ok(
            Method::PUT,
            &rule("room", &room),
            json!({"actions": ["dont_notify"]}),
        )
        .await
        .expect("carol's room rule");

    let upgraded = alice
        .post(
            &format!("/rooms/{}/upgrade", path_segment(&room)),
            json!({"new_version": "12"}),
        )
        .await
        .expect("upgrade");
    let new_room = str_field(&upgraded, "replacement_room").to_owned();

    let copied = alice
        .ok(Method::GET, &rule("room", &new_room), Value::Null)
        .await
        .expect("alice's rule for the new room");
    assert_eq!(copied["actions"], json!(["dont_notify"]), "{copied}");
    assert_eq!(copied["enabled"], true, "{copied}");
    // The old rule stays.
    alice
        .ok(Method::GET, &rule("room", &room), Value::Null)
        .await
        .expect("alice's rule for the old room");

    // Bob's override is copied under the new room's id, pointing at it, still disabled.
    let copied = bob
        .ok(Method::GET, &rule("override", &new_room), Value::Null)
        .await
        .expect("bob's override for the new room");
    assert_eq!(copied["enabled"], false, "{copied}");
    assert_eq!(
        copied["conditions"],
        json!([
            {"kind": "event_match", "key": "room_id", "pattern": new_room},
            {"kind": "event_match", "key": "type", "pattern": "m.room.message"}
        ]),
        "{copied}"
    );
    let all = bob
        .ok(Method::GET, "/pushrules/", Value::Null)
        .await
        .expect("bob's rules");
    let underride = all["global"]["underride"]
        .as_array()
        .expect("underride list");
    assert_eq!(
        underride
            .iter()
            .filter(|r| r["rule_id"]
                .as_str()
                .is_some_and(|id| id.starts_with("loud-")))
            .count(),
        1,
        "the rule for another room is not copied: {underride:?}"
    );
    // Carol was not in the room: nothing copied.
    let (status, _) = carol
        .call(Method::GET, &rule("room", &new_room), Value::Null)
        .await
        .expect("carol's rules");
    assert_eq!(status, 404);
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test]
async fn unknown_push_rule_kinds_are_not_found() {
    let (_dir, node, alice) = node_and_user("alice").await;
    for path in [
        "/pushrules/global/sideways/x",
        "/pushrules/global/sideways/x/enabled",
        "/pushrules/global/sideways/x/actions",
        "/pushrules/device/override/x",
    ] {
        let (status, body) = alice
            .call(Method::GET, path, Value::Null)
            .await
            .expect("GET rule");
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_eq!(body["errcode"], "M_NOT_FOUND", "GET {path}: {body}");
    }
    for (method, path, body) in [
        (Method::DELETE, "/pushrules/global/sideways/x", Value::Null),
        (
            Method::PUT,
            "/pushrules/global/sideways/x/enabled",
            json!({"enabled": false}),
        ),
        (
            Method::PUT,
            "/pushrules/global/sideways/x/actions",
            json!({"actions": []}),
        ),
    ] {
        let (status, answer) = alice
            .call(method.clone(), path, body)
            .await
            .expect("change rule");
        assert_eq!(status, 404, "{method} {path}: {answer}");
        assert_eq!(
            answer["errcode"], "M_NOT_FOUND",
            "{method} {path}: {answer}"
        );
    }
    // A known kind with an unknown rule: 404 too; creating a rule of an unknown kind is a
    // bad request.
    let (status, _) = alice
        .call(Method::GET, "/pushrules/global/override/nope", Value::Null)
        .await
        .expect("GET unknown rule");
    assert_eq!(status, 404);
    let (status, answer) = alice
        .call(
            Method::PUT,
            "/pushrules/global/sideways/x",
            json!({"actions": []}),
        )
        .await
        .expect("PUT unknown kind");
    assert_eq!(status, 400, "{answer}");
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test]
async fn topic_state_puts_gain_the_rich_form() {
    let (_dir, node, alice) = node_and_user("alice").await;
    let room = alice
        .create_room(json!({"topic": "first"}))
        .await
        .expect("create room");
    let topic_path = format!("/rooms/{}/state/m.room.topic", path_segment(&room));
    let created = alice
        .ok(Method::GET, &topic_path, Value::Null)
        .await
        .expect("topic from createRoom");
    let rich = |t: &str| json!({"m.text": [{"mimetype": "text/plain", "body": t}]});
    assert_eq!(created["m.topic"], rich("first"), "{created}");

    let put = alice
        .ok(Method::PUT, &topic_path, json!({"topic": "second"}))
        .await
        .expect("PUT topic");
    let stored = alice
        .ok(Method::GET, &topic_path, Value::Null)
        .await
        .expect("GET topic");
    assert_eq!(
        stored,
        json!({"topic": "second", "m.topic": rich("second")}),
        "{stored}"
    );
    // The same PUT again changes nothing: the same event.
    let again = alice
        .ok(Method::PUT, &topic_path, json!({"topic": "second"}))
        .await
        .expect("PUT the same topic");
    assert_eq!(again["event_id"], put["event_id"]);
    // A client's own rich form is kept as sent.
    let own = json!({"topic": "plain", "m.topic": {"m.text": [
        {"mimetype": "text/html", "body": "<b>plain</b>"}, {"body": "plain"}]}});
    alice
        .ok(Method::PUT, &topic_path, own.clone())
        .await
        .expect("PUT a rich topic");
    let stored = alice
        .ok(Method::GET, &topic_path, Value::Null)
        .await
        .expect("GET topic");
    assert_eq!(stored, own);
    shutdown_node(node).await.expect("shutdown");
}

/// The user ids of `/members?at=` whose membership is `join`.
async fn joined_at(user: &RawUser, room: &str, at: &str) -> anyhow::Result<Vec<String>> {
    let v = user
        .ok(
            Method::GET,
            &format!(
                "/rooms/{}/members?membership=join&at={}",
                path_segment(room),
                path_segment(at)
            ),
            Value::Null,
        )
        .await?;
    let mut ids: Vec<String> = v["chunk"]
        .as_array()
        .map(|chunk| {
            chunk
                .iter()
                .filter_map(|e| e["state_key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    Ok(ids)
}

#[tokio::test]
async fn members_at_takes_sync_and_pagination_tokens() {
    let (_dir, node, alice) = node_and_user("alice").await;
    let bob = RawUser::register(alice.base.clone(), "bob")
        .await
        .expect("register bob");
    let room = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .expect("create room");
    let put_msg = async |txn: &str| {
        alice
            .ok(
                Method::PUT,
                &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(&room)),
                json!({"msgtype": "m.text", "body": txn}),
            )
            .await
            .expect("send")
    };
    put_msg("before-bob").await;
    let before = alice
        .ok(Method::GET, "/sync?timeout=0", Value::Null)
        .await
        .expect("sync before bob");
    let before_token = str_field(&before, "next_batch").to_owned();
    join(&bob, &room).await;
    put_msg("after-bob").await;
    let now = alice
        .ok(Method::GET, "/sync?timeout=0", Value::Null)
        .await
        .expect("sync after bob");
    let now_token = str_field(&now, "next_batch").to_owned();

    let alone = vec![alice.id().to_owned()];
    let mut both = vec![alice.id().to_owned(), bob.id().to_owned()];
    both.sort();
    assert_eq!(
        joined_at(&alice, &room, &before_token)
            .await
            .expect("at sync token"),
        alone
    );
    assert_eq!(
        joined_at(&alice, &room, &now_token)
            .await
            .expect("at the newer sync token"),
        both
    );

    // `/messages` tokens: `end` of one message back from now is before "after-bob",
    // after Bob's join; paging on past Bob's join gives a token from before it.
    let page = |from: String, limit: u32| {
        let alice = &alice;
        let room = room.clone();
        async move {
            alice
                .ok(
                    Method::GET,
                    &format!(
                        "/rooms/{}/messages?dir=b&limit={limit}&from={}",
                        path_segment(&room),
                        path_segment(&from)
                    ),
                    Value::Null,
                )
                .await
                .expect("messages")
        }
    };
    let first = page(now_token.clone(), 1).await;
    let start = str_field(&first, "start").to_owned();
    assert_eq!(
        joined_at(&alice, &room, &start).await.expect("at start"),
        both
    );
    let end = str_field(&first, "end").to_owned();
    assert_eq!(joined_at(&alice, &room, &end).await.expect("at end"), both);
    let second = page(end, 2).await;
    let end = str_field(&second, "end").to_owned();
    assert_eq!(
        joined_at(&alice, &room, &end)
            .await
            .expect("at end before the join"),
        alone,
        "{second}"
    );

    // Tokens the server never hands out: 400.
    for bad in ["nonsense", "s", "sx_1", "t1", "t-5_0", "12"] {
        let (status, body) = alice
            .call(
                Method::GET,
                &format!("/rooms/{}/members?at={bad}", path_segment(&room)),
                Value::Null,
            )
            .await
            .expect("members with a bad token");
        assert_eq!(status, 400, "at={bad}: {body}");
    }
    shutdown_node(node).await.expect("shutdown");
}

/// What the bot has done so far.
#[derive(Default)]
struct Bot {
    joins: usize,
    /// Every `!ping` event the bot's syncs delivered, in order (duplicates included).
    commands: Vec<String>,
    /// Member events of the bot itself that its syncs delivered.
    own_member_events: Vec<Value>,
    /// Whether any joined room's timeline came back `limited` after the join.
    limited_after_join: bool,
}

/// One `/sync` of the bot: join rooms it is invited to, answer `!ping` commands.
async fn bot_step(client: &matrix_sdk::Client, bot: &mut Bot) -> anyhow::Result<()> {
    let settings = matrix_sdk::config::SyncSettings::default().timeout(Duration::from_secs(2));
    let response = client.sync_once(settings).await?;
    let me = client.user_id().map(|u| u.to_string()).unwrap_or_default();
    for room_id in response.rooms.invited.keys() {
        client.join_room_by_id(room_id).await?;
        bot.joins += 1;
    }
    for (room_id, update) in &response.rooms.joined {
        if bot.joins > 0 && update.timeline.limited {
            bot.limited_after_join = true;
        }
        for ev in warren_tests::timeline_json(&response, room_id)? {
            if ev["type"] == "m.room.member" && ev["state_key"] == me.as_str() {
                bot.own_member_events.push(ev.clone());
            }
            let Some(body) = warren_tests::message_body(&ev) else {
                continue;
            };
            if ev["sender"] == me.as_str() || !body.starts_with("!ping") {
                continue;
            }
            bot.commands.push(str_field(&ev, "event_id").to_owned());
            if let Some(room) = client.get_room(room_id) {
                room.send(
                    matrix_sdk::ruma::events::room::message::RoomMessageEventContent::text_plain(
                        format!("pong {body}"),
                    ),
                )
                .await?;
            }
        }
    }
    Ok(())
}

/// Steps the bot until `done` holds, with a deadline.
async fn run_bot_until(
    client: &matrix_sdk::Client,
    bot: &mut Bot,
    what: &str,
    done: impl Fn(&Bot) -> bool,
) {
    let deadline = std::time::Instant::now() + WAIT;
    while !done(bot) {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting until {what}"
        );
        bot_step(client, bot).await.expect("bot sync");
    }
}

#[tokio::test]
async fn a_renamed_command_bot_joins_once_and_answers_each_command_once() {
    let (_dir, node, alice) = node_and_user("alice").await;
    let client = warren_tests::register_client(&alice.base, "pingbot", "bot-password")
        .await
        .expect("register the bot");
    let bot_id = client.user_id().expect("logged in").to_string();
    let mut bot = Bot::default();
    bot_step(&client, &mut bot).await.expect("initial sync");

    let room = alice
        .create_room(json!({"invite": [bot_id]}))
        .await
        .expect("create room");
    run_bot_until(&client, &mut bot, "the bot joins", |b| b.joins > 0).await;

    let mut txn = 0;
    let mut send = async |body: &str| {
        txn += 1;
        alice
            .ok(
                Method::PUT,
                &format!("/rooms/{}/send/m.room.message/t{txn}", path_segment(&room)),
                json!({"msgtype": "m.text", "body": body}),
            )
            .await
            .expect("alice sends")
    };
    send("!ping 1").await;
    run_bot_until(&client, &mut bot, "the bot sees !ping 1", |b| {
        b.commands.len() == 1
    })
    .await;

    // Renamed mid-way: a member event that is not a new join.
    client
        .account()
        .set_display_name(Some("Ping Bot, renamed"))
        .await
        .expect("rename the bot");
    run_bot_until(&client, &mut bot, "the bot sees its rename", |b| {
        b.own_member_events
            .iter()
            .any(|e| e["content"]["displayname"] == "Ping Bot, renamed")
    })
    .await;
    // Alice renames herself too (in the room only).
    alice
        .ok(
            Method::PUT,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(&room),
                path_segment(alice.id())
            ),
            json!({"membership": "join", "displayname": "Alice here"}),
        )
        .await
        .expect("alice's room nickname");
    send("!ping 2").await;
    run_bot_until(&client, &mut bot, "the bot sees !ping 2", |b| {
        b.commands.len() >= 2
    })
    .await;
    // A few more syncs bring nothing old back.
    send("!ping 3").await;
    run_bot_until(&client, &mut bot, "the bot sees !ping 3", |b| {
        b.commands.len() >= 3
    })
    .await;
    for _ in 0..2 {
        bot_step(&client, &mut bot).await.expect("bot sync");
    }

    assert_eq!(bot.joins, 1, "the bot joined once");
    let mut unique = bot.commands.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        bot.commands.len(),
        "a command came back: {:?}",
        bot.commands
    );
    assert_eq!(bot.commands.len(), 3);
    assert!(!bot.limited_after_join, "a timeline came back limited");
    // Alice got one answer per command.
    let messages = alice
        .ok(
            Method::GET,
            &format!("/rooms/{}/messages?dir=b&limit=50", path_segment(&room)),
            Value::Null,
        )
        .await
        .expect("messages");
    let pongs = messages["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| warren_tests::message_body(e).is_some_and(|b| b.starts_with("pong")))
        .count();
    assert_eq!(pongs, 3, "{messages}");
    shutdown_node(node).await.expect("shutdown");
}

/// The user ids of a `/user_directory/search` answer, and its `limited` flag.
async fn directory_search(
    user: &RawUser,
    term: &str,
    limit: u64,
) -> anyhow::Result<(Vec<String>, bool, Value)> {
    let v = user
        .post(
            "/user_directory/search",
            json!({"search_term": term, "limit": limit}),
        )
        .await?;
    let ids = v["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["user_id"].as_str().map(str::to_owned))
        .collect();
    let limited = v["limited"].as_bool().unwrap_or(false);
    Ok((ids, limited, v))
}

#[tokio::test]
async fn user_directory_matches_ids_names_and_room_nicknames_once_per_user() {
    let (_dir, node, alice) = node_and_user("alice").await;
    let reg = |name: &'static str| RawUser::register(alice.base.clone(), name);
    let bob = reg("bob").await.expect("bob");
    let carol = reg("carol").await.expect("carol");
    let dave = reg("dave").await.expect("dave");
    let erin = reg("erin").await.expect("erin");

    bob.ok(
        Method::PUT,
        &format!("/profile/{}/displayname", path_segment(bob.id())),
        json!({"displayname": "Robert Tables"}),
    )
    .await
    .expect("bob's display name");
    // Bob shares two rooms with Alice, with a different nickname in each.
    let first = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.id()]}))
        .await
        .expect("first room");
    let second = alice
        .create_room(json!({"preset": "private_chat", "invite": [bob.id()]}))
        .await
        .expect("second room");
    for (room, nick) in [(&first, "Bobcat"), (&second, "Captain Drop")] {
        join(&bob, room).await;
        bob.ok(
            Method::PUT,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(room),
                path_segment(bob.id())
            ),
            json!({"membership": "join", "displayname": nick}),
        )
        .await
        .expect("per-room nickname");
    }
    // Carol and Dave talk in private: strangers to Alice. Erin sits in a public room.
    let private = carol
        .create_room(json!({"preset": "private_chat", "invite": [dave.id()]}))
        .await
        .expect("private room");
    join(&dave, &private).await;
    erin.create_room(json!({"preset": "public_chat"}))
        .await
        .expect("erin's public room");

    let server = alice.id().split_once(':').expect("server").1.to_owned();
    for term in [
        "bob",
        "BOB",
        &format!("@bob:{server}"),
        "robert",
        "tables",
        "bobcat",
        "captain drop",
        "drop",
    ] {
        let (ids, limited, v) = directory_search(&alice, term, 10).await.expect("search");
        assert_eq!(ids, vec![bob.id().to_owned()], "{term}: {v}");
        assert!(!limited, "{term}: {v}");
        // The global display name is shown, whichever nickname matched.
        assert_eq!(
            v["results"][0]["display_name"], "Robert Tables",
            "{term}: {v}"
        );
    }
    // Strangers are not found; a user in a public room is.
    for term in ["carol", "dave"] {
        let (ids, _, v) = directory_search(&alice, term, 10).await.expect("search");
        assert!(ids.is_empty(), "{term}: {v}");
    }
    let (ids, _, v) = directory_search(&alice, "erin", 10).await.expect("search");
    assert_eq!(ids, vec![erin.id().to_owned()], "{v}");
    // Carol finds Dave, with whom she shares a room.
    let (ids, _, v) = directory_search(&carol, "dave", 10).await.expect("search");
    assert_eq!(ids, vec![dave.id().to_owned()], "{v}");

    // Every user id holds the server name: all visible users match, one each.
    let (all, limited, v) = directory_search(&alice, &server, 50).await.expect("search");
    let mut unique = all.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), all.len(), "one result per user: {v}");
    assert_eq!(all.len(), 3, "alice, bob and erin: {v}");
    assert!(!limited, "{v}");
    let (some, limited, v) = directory_search(&alice, &server, 2).await.expect("search");
    assert_eq!(some.len(), 2, "{v}");
    assert!(limited, "{v}");

    // Bob leaves both rooms: no longer a room mate, no longer found.
    for room in [&first, &second] {
        bob.post(&format!("/rooms/{}/leave", path_segment(room)), json!({}))
            .await
            .expect("leave");
    }
    let (ids, _, v) = directory_search(&alice, "bobcat", 10)
        .await
        .expect("search");
    assert!(ids.is_empty(), "{v}");
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_rules_follow_an_upgrade_when_a_member_on_another_node_joins_later() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start_federated_node(da.path()).await.expect("node a");
    let b = start_federated_node(db.path()).await.expect("node b");
    connect_nodes(&a, &b).await.expect("connect");
    let alice = RawUser::register(a.node.client_url(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(b.node.client_url(), "bob")
        .await
        .expect("bob");
    let room = alice
        .create_room(json!({"preset": "public_chat"}))
        .await
        .expect("room");
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        json!({}),
    )
    .await
    .expect("bob joins over federation");
    let rule = |id: &str| format!("/pushrules/global/room/{}", path_segment(id));
    bob.ok(
        Method::PUT,
        &rule(&room),
        json!({"actions": ["dont_notify"]}),
    )
    .await
    .expect("bob mutes the room");

    // Alice upgrades on her node: Bob's rules live on his, which the upgrade cannot reach.
    let upgraded = alice
        .post(
            &format!("/rooms/{}/upgrade", path_segment(&room)),
            json!({"new_version": "11"}),
        )
        .await
        .expect("upgrade");
    let new_room = str_field(&upgraded, "replacement_room").to_owned();
    let (status, _) = bob
        .call(Method::GET, &rule(&new_room), Value::Null)
        .await
        .expect("rule before the join");
    assert_eq!(status, 404);

    // Bob follows the tombstone: joining the new room copies his rule.
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&new_room), a.name()),
        json!({}),
    )
    .await
    .expect("bob joins the new room");
    let copied = bob
        .ok(Method::GET, &rule(&new_room), Value::Null)
        .await
        .expect("bob's rule for the new room");
    assert_eq!(copied["actions"], json!(["dont_notify"]), "{copied}");
    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}

#[tokio::test]
async fn versions_lists_the_implemented_spec_versions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let v: Value = http_client()
        .expect("client")
        .get(format!("{}/_matrix/client/versions", node.client_url()))
        .send()
        .await
        .expect("GET /versions")
        .json()
        .await
        .expect("json");
    let versions: Vec<&str> = v["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|x| x.as_str().expect("a string"))
        .collect();
    // r0.6.1 for old clients, then every v1.x up to v1.11 (authenticated media, MSC4115
    // membership on served events), with no gap and nothing past what is implemented.
    let mut expected = vec!["r0.6.1".to_owned()];
    expected.extend((1..=11).map(|n| format!("v1.{n}")));
    assert_eq!(versions, expected, "{v}");
    for feature in [
        "org.matrix.simplified_msc3575",
        "org.matrix.msc4151",
        "org.matrix.msc4140",
    ] {
        assert_eq!(v["unstable_features"][feature], true, "{feature}: {v}");
    }
    shutdown_node(node).await.expect("shutdown");
}
