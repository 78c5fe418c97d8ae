//! History visibility decided per event, from the room's state at each event: what a user
//! who joins late, an invitee and a user who has left may read through `/messages`,
//! `/context`, `/event`, `/sync` and `/search`. Raw HTTP against one in-process node.

use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{RawUser, path_segment, shutdown_node, start_node};

async fn say(who: &RawUser, room: &str, body: &str) -> anyhow::Result<String> {
    let path = format!(
        "/rooms/{}/send/m.room.message/{}",
        path_segment(room),
        path_segment(body)
    );
    let v = who
        .ok(
            Method::PUT,
            &path,
            json!({"msgtype": "m.text", "body": body}),
        )
        .await?;
    Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
}

async fn set_visibility(who: &RawUser, room: &str, to: &str) -> anyhow::Result<()> {
    let path = format!(
        "/rooms/{}/state/m.room.history_visibility/",
        path_segment(room)
    );
    who.ok(Method::PUT, &path, json!({"history_visibility": to}))
        .await?;
    Ok(())
}

/// The bodies of the messages `who` can page back through, oldest first.
async fn readable(who: &RawUser, room: &str) -> anyhow::Result<Vec<String>> {
    let path = format!("/rooms/{}/messages?dir=b&limit=100", path_segment(room));
    let v = who.ok(Method::GET, &path, Value::Null).await?;
    Ok(bodies(&v["chunk"]).into_iter().rev().collect())
}

fn bodies(events: &Value) -> Vec<String> {
    events
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_visibility_is_decided_by_the_state_at_each_event() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let base = node.client_url().trim_end_matches('/').to_owned();
    let alice = RawUser::register(base.clone(), "alice").await?;
    let bob = RawUser::register(base.clone(), "bob").await?;
    let carol = RawUser::register(base.clone(), "carol").await?;

    let created = alice
        .ok(
            Method::POST,
            "/createRoom",
            json!({"preset": "public_chat"}),
        )
        .await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    let r = path_segment(&room);

    // Three stretches of history with different settings, all before bob joins.
    set_visibility(&alice, &room, "joined").await?;
    let hidden = say(&alice, &room, "joined-only one").await?;
    set_visibility(&alice, &room, "shared").await?;
    say(&alice, &room, "shared one").await?;
    set_visibility(&alice, &room, "joined").await?;
    say(&alice, &room, "joined-only two").await?;

    bob.ok(Method::POST, &format!("/join/{r}"), json!({}))
        .await?;
    say(&alice, &room, "after bob joined").await?;

    // Bob joined after all three: only the stretch that was `shared` is his to read,
    // although the room's setting today is `joined`.
    assert_eq!(
        readable(&bob, &room).await?,
        ["shared one", "after bob joined"]
    );
    // Alice, joined throughout, reads everything.
    assert_eq!(
        readable(&alice, &room).await?,
        [
            "joined-only one",
            "shared one",
            "joined-only two",
            "after bob joined"
        ]
    );
    // The hidden event is not found by id or by context, nor by search.
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/rooms/{r}/event/{}", path_segment(&hidden)),
            Value::Null,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = bob
        .call(
            Method::GET,
            &format!("/rooms/{r}/context/{}", path_segment(&hidden)),
            Value::Null,
        )
        .await?;
    assert_eq!(status, 404);
    let found = bob
        .ok(
            Method::POST,
            "/search",
            json!({"search_categories": {"room_events": {"search_term": "one"}}}),
        )
        .await?;
    let results = &found["search_categories"]["room_events"]["results"];
    let hits: Vec<String> = results
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["result"]["content"]["body"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(hits, ["shared one"]);
    // Bob's first sync shows the same.
    let filter = json!({"room": {"timeline": {"limit": 50}}}).to_string();
    let sync = bob
        .ok(
            Method::GET,
            &format!("/sync?filter={}", path_segment(&filter)),
            Value::Null,
        )
        .await?;
    let timeline = bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]);
    assert_eq!(timeline, ["shared one", "after bob joined"]);

    // Carol is invited while the room is `invited`: she may read from her invite on.
    set_visibility(&alice, &room, "invited").await?;
    alice
        .ok(
            Method::POST,
            &format!("/rooms/{r}/invite"),
            json!({"user_id": carol.id()}),
        )
        .await?;
    say(&alice, &room, "for the invitee").await?;
    assert_eq!(readable(&carol, &room).await?, ["for the invitee"]);

    // Bob leaves: what he could read while joined stays readable, nothing after it is,
    // and the `shared` stretch he read only because he was joined now is not (Synapse).
    bob.ok(Method::POST, &format!("/rooms/{r}/leave"), json!({}))
        .await?;
    say(&alice, &room, "after bob left").await?;
    assert_eq!(
        readable(&bob, &room).await?,
        ["after bob joined", "for the invitee"]
    );

    shutdown_node(node).await?;
    Ok(())
}

/// A room that was `world_readable` when a message was sent shows it to anyone who
/// joins later, even after the setting became `joined`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn world_readable_history_stays_readable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let base = node.client_url().trim_end_matches('/').to_owned();
    let alice = RawUser::register(base.clone(), "alice").await?;
    let bob = RawUser::register(base.clone(), "bob").await?;
    let created = alice
        .ok(
            Method::POST,
            "/createRoom",
            json!({"preset": "public_chat"}),
        )
        .await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    set_visibility(&alice, &room, "world_readable").await?;
    say(&alice, &room, "for the world").await?;
    set_visibility(&alice, &room, "joined").await?;
    say(&alice, &room, "members only").await?;
    bob.ok(
        Method::POST,
        &format!("/join/{}", path_segment(&room)),
        json!({}),
    )
    .await?;
    assert_eq!(readable(&bob, &room).await?, ["for the world"]);
    shutdown_node(node).await?;
    Ok(())
}
