//! History visibility decided per event, from the room's state at each event: what a user
//! who joins late, an invitee and a user who has left may read through `/messages`,
//! `/context`, `/event`, `/sync` and `/search`. Raw HTTP against one in-process node.

use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{Session, http_client, path_segment, register_raw, shutdown_node, start_node};

const PW: &str = "a long enough password";

struct Api {
    http: reqwest::Client,
    base: String,
}

impl Api {
    async fn call(
        &self,
        who: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}/_matrix/client/v3{path}", self.base);
        let mut req = self
            .http
            .request(method, url)
            .bearer_auth(&who.access_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    async fn ok(
        &self,
        who: &Session,
        method: Method,
        path: &str,
        body: Option<Value>,
    ) -> anyhow::Result<Value> {
        let (status, v) = self.call(who, method, path, body).await?;
        anyhow::ensure!(status == 200, "{path}: {status} {v}");
        Ok(v)
    }

    async fn say(&self, who: &Session, room: &str, body: &str) -> anyhow::Result<String> {
        let path = format!(
            "/rooms/{}/send/m.room.message/{}",
            path_segment(room),
            path_segment(body)
        );
        let v = self
            .ok(
                who,
                Method::PUT,
                &path,
                Some(json!({"msgtype": "m.text", "body": body})),
            )
            .await?;
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    async fn set_visibility(&self, who: &Session, room: &str, to: &str) -> anyhow::Result<()> {
        let path = format!(
            "/rooms/{}/state/m.room.history_visibility/",
            path_segment(room)
        );
        self.ok(
            who,
            Method::PUT,
            &path,
            Some(json!({"history_visibility": to})),
        )
        .await?;
        Ok(())
    }

    /// The bodies of the messages `who` can page back through, oldest first.
    async fn readable(&self, who: &Session, room: &str) -> anyhow::Result<Vec<String>> {
        let path = format!("/rooms/{}/messages?dir=b&limit=100", path_segment(room));
        let v = self.ok(who, Method::GET, &path, None).await?;
        Ok(bodies(&v["chunk"]).into_iter().rev().collect())
    }
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
    let api = Api {
        http: http_client()?,
        base: node.client_url().trim_end_matches('/').to_owned(),
    };
    let alice = register_raw(&api.http, &api.base, "alice", PW).await?;
    let bob = register_raw(&api.http, &api.base, "bob", PW).await?;
    let carol = register_raw(&api.http, &api.base, "carol", PW).await?;

    let created = api
        .ok(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({"preset": "public_chat"})),
        )
        .await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    let r = path_segment(&room);

    // Three stretches of history with different settings, all before bob joins.
    api.set_visibility(&alice, &room, "joined").await?;
    let hidden = api.say(&alice, &room, "joined-only one").await?;
    api.set_visibility(&alice, &room, "shared").await?;
    api.say(&alice, &room, "shared one").await?;
    api.set_visibility(&alice, &room, "joined").await?;
    api.say(&alice, &room, "joined-only two").await?;

    api.ok(&bob, Method::POST, &format!("/join/{r}"), Some(json!({})))
        .await?;
    api.say(&alice, &room, "after bob joined").await?;

    // Bob joined after all three: only the stretch that was `shared` is his to read,
    // although the room's setting today is `joined`.
    assert_eq!(
        api.readable(&bob, &room).await?,
        ["shared one", "after bob joined"]
    );
    // Alice, joined throughout, reads everything.
    assert_eq!(
        api.readable(&alice, &room).await?,
        [
            "joined-only one",
            "shared one",
            "joined-only two",
            "after bob joined"
        ]
    );
    // The hidden event is not found by id or by context, nor by search.
    let (status, _) = api
        .call(
            &bob,
            Method::GET,
            &format!("/rooms/{r}/event/{}", path_segment(&hidden)),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let (status, _) = api
        .call(
            &bob,
            Method::GET,
            &format!("/rooms/{r}/context/{}", path_segment(&hidden)),
            None,
        )
        .await?;
    assert_eq!(status, 404);
    let found = api
        .ok(
            &bob,
            Method::POST,
            "/search",
            Some(json!({"search_categories": {"room_events": {"search_term": "one"}}})),
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
    let sync = api
        .ok(
            &bob,
            Method::GET,
            &format!("/sync?filter={}", path_segment(&filter)),
            None,
        )
        .await?;
    let timeline = bodies(&sync["rooms"]["join"][&room]["timeline"]["events"]);
    assert_eq!(timeline, ["shared one", "after bob joined"]);

    // Carol is invited while the room is `invited`: she may read from her invite on.
    api.set_visibility(&alice, &room, "invited").await?;
    api.ok(
        &alice,
        Method::POST,
        &format!("/rooms/{r}/invite"),
        Some(json!({"user_id": carol.user_id})),
    )
    .await?;
    api.say(&alice, &room, "for the invitee").await?;
    assert_eq!(api.readable(&carol, &room).await?, ["for the invitee"]);

    // Bob leaves: what he could read while joined stays readable, nothing after it is,
    // and the `shared` stretch he read only because he was joined now is not (Synapse).
    api.ok(
        &bob,
        Method::POST,
        &format!("/rooms/{r}/leave"),
        Some(json!({})),
    )
    .await?;
    api.say(&alice, &room, "after bob left").await?;
    assert_eq!(
        api.readable(&bob, &room).await?,
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
    let api = Api {
        http: http_client()?,
        base: node.client_url().trim_end_matches('/').to_owned(),
    };
    let alice = register_raw(&api.http, &api.base, "alice", PW).await?;
    let bob = register_raw(&api.http, &api.base, "bob", PW).await?;
    let created = api
        .ok(
            &alice,
            Method::POST,
            "/createRoom",
            Some(json!({"preset": "public_chat"})),
        )
        .await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    api.set_visibility(&alice, &room, "world_readable").await?;
    api.say(&alice, &room, "for the world").await?;
    api.set_visibility(&alice, &room, "joined").await?;
    api.say(&alice, &room, "members only").await?;
    api.ok(
        &bob,
        Method::POST,
        &format!("/join/{}", path_segment(&room)),
        Some(json!({})),
    )
    .await?;
    assert_eq!(api.readable(&bob, &room).await?, ["for the world"]);
    shutdown_node(node).await?;
    Ok(())
}
