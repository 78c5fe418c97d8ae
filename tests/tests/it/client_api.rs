//! The client-server endpoints of the foundation that the client-flow tests do not reach:
//! profiles rewriting member events, password change, devices, filters (incl. lazy-loaded
//! members), account data and tags, /context, /members filters, /forget, read markers,
//! registration availability and tokens. Raw HTTP against one in-process node.

use reqwest::Client as Http;
use serde_json::{Value, json};
use warren_core::RegistrationPolicy;
use warren_tests::*;

const PW: &str = "a long enough password";

struct Api {
    http: Http,
    base: String,
}

impl Api {
    fn url(&self, path: &str) -> String {
        format!("{}/_matrix/client/v3{path}", self.base)
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> anyhow::Result<(u16, Value)> {
        let mut req = self.http.request(method, self.url(path)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let v = resp.json().await.unwrap_or(Value::Null);
        Ok((status, v))
    }

    async fn get(&self, path: &str, token: &str) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::GET, path, token, None).await
    }

    async fn post(&self, path: &str, token: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::POST, path, token, Some(body))
            .await
    }

    async fn put(&self, path: &str, token: &str, body: Value) -> anyhow::Result<(u16, Value)> {
        self.call(reqwest::Method::PUT, path, token, Some(body))
            .await
    }

    async fn send(&self, room: &str, token: &str, txn: &str, body: &str) -> anyhow::Result<String> {
        let (s, v) = self
            .put(
                &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
                token,
                json!({"msgtype": "m.text", "body": body}),
            )
            .await?;
        anyhow::ensure!(s == 200, "send: {s} {v}");
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    }

    async fn login(&self, user: &str, password: &str) -> anyhow::Result<(u16, Value)> {
        let resp = self
            .http
            .post(self.url("/login"))
            .json(&json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": password,
            }))
            .send()
            .await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }
}

async fn node_and_two_users() -> anyhow::Result<(
    tempfile::TempDir,
    warren_core::Node,
    Api,
    Session,
    Session,
    String,
)> {
    let dir = tempfile::tempdir()?;
    let node = start_node(dir.path()).await?;
    let api = Api {
        http: http_client()?,
        base: node.client_url(),
    };
    let alice = register_raw(&api.http, &api.base, "alice", PW).await?;
    let bob = register_raw(&api.http, &api.base, "bob", PW).await?;
    let (s, room) = api
        .post(
            "/createRoom",
            &alice.access_token,
            json!({"preset": "public_chat", "name": "coverage"}),
        )
        .await?;
    anyhow::ensure!(s == 200, "createRoom: {room}");
    let room_id = room["room_id"].as_str().unwrap_or_default().to_owned();
    let (s, v) = api
        .post(
            &format!("/join/{}", path_segment(&room_id)),
            &bob.access_token,
            json!({}),
        )
        .await?;
    anyhow::ensure!(s == 200, "join: {v}");
    Ok((dir, node, api, alice, bob, room_id))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_password_and_devices() -> anyhow::Result<()> {
    let (_dir, node, api, alice, _bob, room_id) = node_and_two_users().await?;
    let a = &alice.access_token;

    // A display name change rewrites alice's member event in the room.
    let (s, _) = api
        .put(
            &format!("/profile/{}/displayname", path_segment(&alice.user_id)),
            a,
            json!({"displayname": "Alice A."}),
        )
        .await?;
    assert_eq!(s, 200);
    let (s, member) = api
        .get(
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(&room_id),
                path_segment(&alice.user_id)
            ),
            a,
        )
        .await?;
    assert_eq!(
        (s, member["displayname"].as_str()),
        (200, Some("Alice A.")),
        "{member}"
    );

    // Devices: list, rename, delete with UIAA.
    let (_, second) = api.login("alice", PW).await?;
    let second_device = second["device_id"].as_str().unwrap_or_default().to_owned();
    let (s, devices) = api.get("/devices", a).await?;
    assert_eq!(s, 200);
    assert_eq!(
        devices["devices"].as_array().map_or(0, Vec::len),
        2,
        "{devices}"
    );
    let (s, _) = api
        .put(
            &format!("/devices/{second_device}"),
            a,
            json!({"display_name": "phone"}),
        )
        .await?;
    assert_eq!(s, 200);
    let (_, one) = api.get(&format!("/devices/{second_device}"), a).await?;
    assert_eq!(one["display_name"], "phone");
    let (s, uiaa) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/devices/{second_device}"),
            a,
            Some(json!({})),
        )
        .await?;
    assert_eq!(s, 401, "deleting a device needs UIAA: {uiaa}");
    let session = uiaa["session"].as_str().unwrap_or_default();
    let (s, v) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/devices/{second_device}"),
            a,
            Some(
                json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": "alice"}, "password": PW}}),
            ),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    let second_token = second["access_token"].as_str().unwrap_or_default();
    let (s, _) = api.get("/account/whoami", second_token).await?;
    assert_eq!(s, 401, "the deleted device's token is gone");

    // Password change: old password refused afterwards, new one works.
    let (s, uiaa) = api
        .post(
            "/account/password",
            a,
            json!({"new_password": "another long password"}),
        )
        .await?;
    assert_eq!(s, 401, "{uiaa}");
    let session = uiaa["session"].as_str().unwrap_or_default();
    let (s, v) = api
        .post(
            "/account/password",
            a,
            json!({"new_password": "another long password", "logout_devices": false,
                "auth": {"type": "m.login.password", "session": session,
                    "identifier": {"type": "m.id.user", "user": "alice"}, "password": PW}}),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    assert_eq!(api.login("alice", PW).await?.0, 403);
    assert_eq!(api.login("alice", "another long password").await?.0, 200);
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_account_data_tags_and_read_markers() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let room = path_segment(&room_id);

    // Filters: stored, read back, used by id with lazy-loaded members.
    let filter = json!({"room": {"state": {"lazy_load_members": true}, "timeline": {"limit": 5}}});
    let (s, f) = api
        .post(
            &format!("/user/{}/filter", path_segment(&bob.user_id)),
            b,
            filter.clone(),
        )
        .await?;
    assert_eq!(s, 200, "{f}");
    let filter_id = f["filter_id"].as_str().unwrap_or_default().to_owned();
    let (s, back) = api
        .get(
            &format!("/user/{}/filter/{filter_id}", path_segment(&bob.user_id)),
            b,
        )
        .await?;
    assert_eq!(s, 200);
    assert_eq!(back["room"]["timeline"]["limit"], 5, "{back}");
    for i in 0..8 {
        api.send(&room_id, a, &format!("m{i}"), &format!("message {i}"))
            .await?;
    }
    let (s, sync) = api.get(&format!("/sync?filter={filter_id}"), b).await?;
    assert_eq!(s, 200);
    let joined = &sync["rooms"]["join"][&room_id];
    let timeline = joined["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(timeline.len(), 5, "the filter's timeline limit applies");
    assert_eq!(joined["timeline"]["limited"], true);
    let members_in_state: Vec<&str> = joined["state"]["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["type"] == "m.room.member")
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert!(
        members_in_state.contains(&alice.user_id.as_str()),
        "the timeline's sender is loaded: {members_in_state:?}"
    );

    // Account data, global and per room, and tags.
    let (s, _) = api
        .put(
            &format!(
                "/user/{}/account_data/org.example.pref",
                path_segment(&bob.user_id)
            ),
            b,
            json!({"theme": "dark"}),
        )
        .await?;
    assert_eq!(s, 200);
    let (_, pref) = api
        .get(
            &format!(
                "/user/{}/account_data/org.example.pref",
                path_segment(&bob.user_id)
            ),
            b,
        )
        .await?;
    assert_eq!(pref["theme"], "dark");
    let (s, _) = api
        .put(
            &format!(
                "/user/{}/rooms/{room}/account_data/org.example.note",
                path_segment(&bob.user_id)
            ),
            b,
            json!({"n": 1}),
        )
        .await?;
    assert_eq!(s, 200);
    let (s, _) = api
        .put(
            &format!(
                "/user/{}/rooms/{room}/tags/m.favourite",
                path_segment(&bob.user_id)
            ),
            b,
            json!({"order": 0.5}),
        )
        .await?;
    assert_eq!(s, 200);
    let (_, tags) = api
        .get(
            &format!("/user/{}/rooms/{room}/tags", path_segment(&bob.user_id)),
            b,
        )
        .await?;
    assert_eq!(tags["tags"]["m.favourite"]["order"], 0.5, "{tags}");
    let (s, _) = api
        .put(
            &format!(
                "/user/{}/account_data/org.example.pref",
                path_segment(&alice.user_id)
            ),
            b,
            json!({}),
        )
        .await?;
    assert_eq!(s, 403, "nobody writes another user's account data");

    // Read markers: fully read and a receipt in one call.
    let last = api.send(&room_id, a, "last", "the last one").await?;
    let (s, v) = api
        .post(
            &format!("/rooms/{room}/read_markers"),
            b,
            json!({"m.fully_read": last, "m.read": last}),
        )
        .await?;
    assert_eq!(s, 200, "{v}");
    let (_, fully) = api
        .get(
            &format!(
                "/user/{}/rooms/{room}/account_data/m.fully_read",
                path_segment(&bob.user_id)
            ),
            b,
        )
        .await?;
    assert_eq!(fully["event_id"], last.as_str());
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn context_members_and_forget() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let room = path_segment(&room_id);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            api.send(&room_id, a, &format!("c{i}"), &format!("context {i}"))
                .await?,
        );
    }
    let (s, ctx) = api
        .get(
            &format!("/rooms/{room}/context/{}?limit=2", path_segment(&ids[2])),
            b,
        )
        .await?;
    assert_eq!(s, 200, "{ctx}");
    assert_eq!(ctx["event"]["event_id"], ids[2].as_str());
    let before: Vec<&str> = ctx["events_before"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    let after: Vec<&str> = ctx["events_after"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(before, vec![ids[1].as_str()], "{ctx}");
    assert_eq!(after, vec![ids[3].as_str()], "{ctx}");

    // Bob leaves; /members filters by membership.
    let (s, _) = api
        .post(&format!("/rooms/{room}/leave"), b, json!({}))
        .await?;
    assert_eq!(s, 200);
    let (_, joined) = api
        .get(&format!("/rooms/{room}/members?membership=join"), a)
        .await?;
    let joined: Vec<&str> = joined["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(joined, vec![alice.user_id.as_str()]);
    let (_, not_joined) = api
        .get(&format!("/rooms/{room}/members?not_membership=join"), a)
        .await?;
    let not_joined: Vec<&str> = not_joined["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["state_key"].as_str())
        .collect();
    assert_eq!(not_joined, vec![bob.user_id.as_str()]);

    // Bob forgets the room: it no longer shows in his sync's leave section.
    let (s, _) = api
        .post(&format!("/rooms/{room}/forget"), b, json!({}))
        .await?;
    assert_eq!(s, 200);
    let (_, sync) = api
        .get("/sync?filter={\"room\":{\"include_leave\":true}}", b)
        .await?;
    assert!(
        sync["rooms"]["leave"].get(&room_id).is_none(),
        "a forgotten room is not returned: {sync}"
    );
    let (s, _) = api
        .post(&format!("/rooms/{room}/forget"), a, json!({}))
        .await?;
    assert_eq!(s, 400, "a joined member cannot forget the room");
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_availability_and_tokens() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.registration = RegistrationPolicy::Closed;
    config.registration_tokens = vec!["let-me-in".into()];
    let node = start_node_with(config).await?;
    let http = http_client()?;
    let base = node.client_url();
    let url = format!("{base}/_matrix/client/v3");

    let available: Value = http
        .get(format!("{url}/register/available?username=carol"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(available["available"], true);
    let valid: Value = http
        .get(format!(
            "{url}/register/m.login.registration_token/validity?token=let-me-in"
        ))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(valid["valid"], true);

    let first = http
        .post(format!("{url}/register"))
        .json(&json!({"username": "carol", "password": PW}))
        .send()
        .await?;
    assert_eq!(first.status().as_u16(), 401);
    let first: Value = first.json().await?;
    let flows = first["flows"].to_string();
    assert!(flows.contains("m.login.registration_token"), "{flows}");
    assert!(
        !flows.contains("m.login.dummy"),
        "closed registration offers no dummy stage: {flows}"
    );
    let session = first["session"].as_str().unwrap_or_default();
    let wrong = http
        .post(format!("{url}/register"))
        .json(&json!({"username": "carol", "password": PW,
            "auth": {"type": "m.login.registration_token", "token": "nope", "session": session}}))
        .send()
        .await?;
    assert_eq!(wrong.status().as_u16(), 401);
    let ok = http
        .post(format!("{url}/register"))
        .json(&json!({"username": "carol", "password": PW,
            "auth": {"type": "m.login.registration_token", "token": "let-me-in", "session": session}}))
        .send()
        .await?;
    assert_eq!(ok.status().as_u16(), 200);
    let taken: Value = http
        .get(format!("{url}/register/available?username=carol"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(taken["errcode"], "M_USER_IN_USE", "{taken}");
    shutdown_node(node).await
}

/// Transaction ids are scoped per device and endpoint: the same id in another room, as
/// another event type or on another device is a new event; a retry in the same place
/// gets the first event back; a redaction's transaction id comes back unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_ids_are_scoped_per_device_and_endpoint() -> anyhow::Result<()> {
    let (_dir, node, api, alice, _bob, room_id) = node_and_two_users().await?;
    let a = &alice.access_token;
    let (s, other) = api.post("/createRoom", a, json!({})).await?;
    anyhow::ensure!(s == 200, "createRoom: {other}");
    let other = other["room_id"].as_str().unwrap_or_default().to_owned();

    let first = api.send(&room_id, a, "same", "one").await?;
    let again = api.send(&room_id, a, "same", "one, retried").await?;
    anyhow::ensure!(first == again, "a retry made a new event");
    let elsewhere = api.send(&other, a, "same", "two").await?;
    anyhow::ensure!(
        elsewhere != first,
        "another room returned the first room's event"
    );
    anyhow::ensure!(
        api.send(&other, a, "same", "two, retried").await? == elsewhere,
        "a retry in the second room made a new event"
    );
    let (s, reaction) = api
        .put(
            &format!("/rooms/{}/send/m.reaction/same", path_segment(&room_id)),
            a,
            json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": first, "key": "+1"}}),
        )
        .await?;
    anyhow::ensure!(
        s == 200 && reaction["event_id"] != first.as_str(),
        "{reaction}"
    );
    // Another device of the same user has its own transactions.
    let (s, login) = api
        .post(
            "/login",
            "",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user",
                   "user": "alice"}, "password": PW}),
        )
        .await?;
    anyhow::ensure!(s == 200, "login: {login}");
    let second_device = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    anyhow::ensure!(
        api.send(&room_id, &second_device, "same", "three").await? != first,
        "another device's transaction returned the first device's event"
    );
    // A redaction's transaction id comes back as the client sent it.
    let (s, redaction) = api
        .put(
            &format!(
                "/rooms/{}/redact/{}/same",
                path_segment(&room_id),
                path_segment(&first)
            ),
            a,
            json!({}),
        )
        .await?;
    anyhow::ensure!(s == 200, "redact: {redaction}");
    let redaction_id = redaction["event_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (s, sync) = api.get("/sync", a).await?;
    anyhow::ensure!(s == 200, "sync: {sync}");
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let echoed = events
        .iter()
        .find(|e| e["event_id"] == redaction_id.as_str())
        .map(|e| e["unsigned"]["transaction_id"].clone());
    anyhow::ensure!(
        echoed == Some(json!("same")),
        "the redaction's transaction id: {echoed:?}"
    );
    shutdown_node(node).await
}

/// A state PUT with unchanged content creates nothing and answers with the current
/// event; changed content, or another sender, makes a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_state_is_not_sent_again() -> anyhow::Result<()> {
    let (_dir, node, api, alice, _bob, room_id) = node_and_two_users().await?;
    let a = &alice.access_token;
    let path = format!("/rooms/{}/state/m.room.topic", path_segment(&room_id));
    let put = async |content: Value| -> anyhow::Result<String> {
        let (s, v) = api.put(&path, a, content).await?;
        anyhow::ensure!(s == 200, "PUT topic: {v}");
        Ok(v["event_id"].as_str().unwrap_or_default().to_owned())
    };
    let first = put(json!({"topic": "plans"})).await?;
    let (_, before) = api.get("/sync", a).await?;
    let since = before["next_batch"].as_str().unwrap_or_default().to_owned();
    anyhow::ensure!(
        put(json!({"topic": "plans"})).await? == first,
        "a repeat made an event"
    );
    let (s, after) = api
        .get(&format!("/sync?since={since}&timeout=0"), a)
        .await?;
    anyhow::ensure!(s == 200, "{after}");
    anyhow::ensure!(
        after["rooms"]["join"][&room_id].is_null(),
        "the repeat reached /sync: {after}"
    );
    anyhow::ensure!(put(json!({"topic": "new plans"})).await? != first);
    shutdown_node(node).await
}

/// A member event that is not a transition into `join` (a display name change) is an
/// ordinary timeline event in an incremental `/sync`: no replay of earlier messages, no
/// `limited`. A real rejoin is a new join again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rename_is_not_a_new_join_in_sync() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    for i in 0..5 {
        api.send(&room_id, a, &format!("old{i}"), &format!("old {i}"))
            .await?;
    }
    let (_, first) = api.get("/sync", b).await?;
    let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
    let (s, v) = api
        .put(
            &format!("/profile/{}/displayname", path_segment(&bob.user_id)),
            b,
            json!({"displayname": "Robert"}),
        )
        .await?;
    anyhow::ensure!(s == 200, "{v}");
    let (_, next) = api
        .get(&format!("/sync?since={since}&timeout=0"), b)
        .await?;
    let room = &next["rooms"]["join"][&room_id];
    let timeline = room["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        timeline.len() == 1
            && timeline[0]["type"] == "m.room.member"
            && timeline[0]["content"]["displayname"] == "Robert",
        "the rename's sync: {room}"
    );
    anyhow::ensure!(room["timeline"]["limited"] == false, "{room}");
    anyhow::ensure!(
        room["state"]["events"].as_array().is_none_or(Vec::is_empty),
        "full state for a rename: {room}"
    );

    // Leaving and joining again is a new join: the room comes with its state.
    let since = next["next_batch"].as_str().unwrap_or_default().to_owned();
    let r = path_segment(&room_id);
    api.post(&format!("/rooms/{r}/leave"), b, json!({})).await?;
    api.post(&format!("/rooms/{r}/join"), b, json!({})).await?;
    let (_, again) = api
        .get(&format!("/sync?since={since}&timeout=0"), b)
        .await?;
    let state = again["rooms"]["join"][&room_id]["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        state.iter().any(|e| e["type"] == "m.room.create"),
        "a rejoin without the room's state: {again}"
    );
    shutdown_node(node).await
}

/// Membership edges: kicking a user who left is 403, `joined_members` of a room one left
/// is 403, `/event` answers a non-member in a `world_readable` room and hides the
/// event (404) otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_and_visibility_edges() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let r = path_segment(&room_id);
    let event = api.send(&room_id, a, "e1", "hello").await?;
    api.post(&format!("/rooms/{r}/leave"), b, json!({})).await?;
    let (s, v) = api
        .post(
            &format!("/rooms/{r}/kick"),
            a,
            json!({"user_id": bob.user_id}),
        )
        .await?;
    anyhow::ensure!(
        s == 403 && v["errcode"] == "M_FORBIDDEN",
        "kick of a leaver: {s} {v}"
    );
    let (s, v) = api.get(&format!("/rooms/{r}/joined_members"), b).await?;
    anyhow::ensure!(s == 403, "joined_members after leaving: {s} {v}");
    let (s, v) = api.get(&format!("/rooms/{r}/joined_members"), a).await?;
    anyhow::ensure!(s == 200 && v["joined"].get(&alice.user_id).is_some(), "{v}");

    // A room bob was never in: hidden, until it is world-readable.
    let (_, created) = api
        .post("/createRoom", a, json!({"preset": "private_chat"}))
        .await?;
    let private = created["room_id"].as_str().unwrap_or_default().to_owned();
    let p = path_segment(&private);
    let secret = api.send(&private, a, "e2", "secret").await?;
    let path = format!("/rooms/{p}/event/{}", path_segment(&secret));
    let (s, v) = api.get(&path, b).await?;
    anyhow::ensure!(s == 404 && v["errcode"] == "M_NOT_FOUND", "{s} {v}");
    let (s, v) = api
        .put(
            &format!("/rooms/{p}/state/m.room.history_visibility"),
            a,
            json!({"history_visibility": "world_readable"}),
        )
        .await?;
    anyhow::ensure!(s == 200, "{v}");
    // What was sent before stays hidden (visibility is decided per event).
    let (s, _) = api.get(&path, b).await?;
    anyhow::ensure!(s == 404, "an event from before world_readable: {s}");
    let public = api.send(&private, a, "e3", "public").await?;
    let (s, v) = api
        .get(&format!("/rooms/{p}/event/{}", path_segment(&public)), b)
        .await?;
    anyhow::ensure!(s == 200 && v["content"]["body"] == "public", "{s} {v}");
    let (s, v) = api
        .get(&format!("/rooms/{r}/event/{}", path_segment(&event)), b)
        .await?;
    anyhow::ensure!(s == 200, "bob saw this before leaving: {s} {v}");
    shutdown_node(node).await
}

/// The `leave` section: an incremental sync after leaving carries the timeline up to the
/// leave (limited only when events were left out), an initial sync lists left rooms only
/// with `include_leave`, and lazy-loading members keeps the room's other state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn left_rooms_in_sync() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let r = path_segment(&room_id);
    let (_, first) = api.get("/sync", b).await?;
    let since = first["next_batch"].as_str().unwrap_or_default().to_owned();
    api.send(&room_id, a, "l1", "before the leave").await?;
    api.post(&format!("/rooms/{r}/leave"), b, json!({})).await?;
    api.send(&room_id, a, "l2", "after the leave").await?;

    let (_, next) = api
        .get(&format!("/sync?since={since}&timeout=0"), b)
        .await?;
    let left = &next["rooms"]["leave"][&room_id];
    let timeline = left["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let bodies: Vec<&str> = timeline
        .iter()
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    anyhow::ensure!(bodies == ["before the leave"], "{left}");
    anyhow::ensure!(
        timeline
            .last()
            .is_some_and(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "leave"),
        "the leave ends the timeline: {left}"
    );
    anyhow::ensure!(left["timeline"]["limited"] == false, "{left}");
    anyhow::ensure!(next["rooms"]["join"][&room_id].is_null(), "{next}");

    // A small timeline limit leaves events out: limited, with the state before it.
    let filter = path_segment(r#"{"room":{"timeline":{"limit":1}}}"#);
    let (_, small) = api
        .get(&format!("/sync?since={since}&timeout=0&filter={filter}"), b)
        .await?;
    let left = &small["rooms"]["leave"][&room_id];
    anyhow::ensure!(left["timeline"]["limited"] == true, "{left}");
    anyhow::ensure!(
        left["timeline"]["events"].as_array().map(Vec::len) == Some(1),
        "{left}"
    );

    // Initial syncs: only with include_leave; lazy members keep the room's name.
    let (_, initial) = api.get("/sync", b).await?;
    anyhow::ensure!(initial["rooms"]["leave"][&room_id].is_null(), "{initial}");
    let filter =
        path_segment(r#"{"room":{"include_leave":true,"state":{"lazy_load_members":true}}}"#);
    let (_, with_leave) = api.get(&format!("/sync?filter={filter}"), b).await?;
    let left = &with_leave["rooms"]["leave"][&room_id];
    let state = left["state"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        state.iter().any(|e| e["type"] == "m.room.name"),
        "lazy loading dropped the room's name: {left}"
    );
    shutdown_node(node).await
}

/// Invites from ignored users are not shown in `/sync`; others are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invites_from_ignored_users_are_hidden() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, _room) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let carol = register_raw(&api.http, &api.base, "carol", PW).await?;
    let (s, v) = api
        .put(
            &format!(
                "/user/{}/account_data/m.ignored_user_list",
                path_segment(&bob.user_id)
            ),
            b,
            json!({"ignored_users": {alice.user_id.clone(): {}}}),
        )
        .await?;
    anyhow::ensure!(s == 200, "{v}");
    let invite_bob = async |token: &str| -> anyhow::Result<String> {
        let (_, created) = api
            .post("/createRoom", token, json!({"invite": [bob.user_id]}))
            .await?;
        Ok(created["room_id"].as_str().unwrap_or_default().to_owned())
    };
    let from_alice = invite_bob(a).await?;
    let from_carol = invite_bob(&carol.access_token).await?;
    let (_, sync) = api.get("/sync", b).await?;
    let invites = &sync["rooms"]["invite"];
    anyhow::ensure!(
        invites[&from_alice].is_null(),
        "an ignored user's invite: {invites}"
    );
    anyhow::ensure!(!invites[&from_carol].is_null(), "carol's invite: {invites}");
    shutdown_node(node).await
}

/// MSC4115 (spec v1.11): served events carry the viewer's membership at each event in
/// `unsigned.membership`: `/messages`, `/event` and the `/sync` timeline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_events_carry_the_viewers_membership() -> anyhow::Result<()> {
    let (_dir, node, api, alice, bob, room_id) = node_and_two_users().await?;
    let (a, b) = (&alice.access_token, &bob.access_token);
    let r = path_segment(&room_id);
    let joined = api.send(&room_id, a, "m1", "while bob is here").await?;
    api.post(&format!("/rooms/{r}/leave"), b, json!({})).await?;
    api.send(&room_id, a, "m2", "after bob left").await?;
    let (_, page) = api
        .get(&format!("/rooms/{r}/messages?dir=b&limit=50"), a)
        .await?;
    let membership_of = |page: &Value, body: &str| {
        page["chunk"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["content"]["body"] == body)
            .map(|e| e["unsigned"]["membership"].clone())
    };
    anyhow::ensure!(
        membership_of(&page, "after bob left") == Some(json!("join")),
        "alice is joined: {page}"
    );
    let (_, bobs) = api
        .get(&format!("/rooms/{r}/messages?dir=b&limit=50"), b)
        .await?;
    anyhow::ensure!(
        membership_of(&bobs, "while bob is here") == Some(json!("join")),
        "{bobs}"
    );
    let leave = bobs["chunk"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str())
        .cloned()
        .unwrap_or_default();
    anyhow::ensure!(
        leave["unsigned"]["membership"] == "leave",
        "bob's own leave: {leave}"
    );
    let (_, ev) = api
        .get(&format!("/rooms/{r}/event/{}", path_segment(&joined)), b)
        .await?;
    anyhow::ensure!(ev["unsigned"]["membership"] == "join", "{ev}");
    let (_, sync) = api.get("/sync", a).await?;
    let timeline = sync["rooms"]["join"][&room_id]["timeline"]["events"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // Every event says; before her own join (the create event) alice was not a member.
    anyhow::ensure!(
        !timeline.is_empty()
            && timeline
                .iter()
                .all(|e| e["unsigned"]["membership"].is_string())
            && timeline
                .iter()
                .filter(|e| e["type"] == "m.room.message")
                .all(|e| e["unsigned"]["membership"] == "join"),
        "{timeline:?}"
    );
    shutdown_node(node).await
}

/// `createRoom`'s `topic` writes the rich form too (spec v1.15 `m.topic`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_room_topic_is_rich() -> anyhow::Result<()> {
    let (_dir, node, api, alice, _bob, _room) = node_and_two_users().await?;
    let a = &alice.access_token;
    let (_, created) = api
        .post("/createRoom", a, json!({"topic": "plans for saturday"}))
        .await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    let (s, topic) = api
        .get(
            &format!("/rooms/{}/state/m.room.topic", path_segment(&room)),
            a,
        )
        .await?;
    anyhow::ensure!(
        s == 200
            && topic["topic"] == "plans for saturday"
            && topic["m.topic"]["m.text"]
                == json!([{"mimetype": "text/plain", "body": "plans for saturday"}]),
        "{topic}"
    );
    shutdown_node(node).await
}

/// `default_room_version` decides the version of rooms created without one, and
/// `/capabilities` says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_room_version_is_configurable() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.default_room_version = "11".into();
    let node = start_node_with(config).await?;
    let api = Api {
        http: http_client()?,
        base: node.client_url(),
    };
    let alice = register_raw(&api.http, &api.base, "alice", PW).await?;
    let a = &alice.access_token;
    let (_, caps) = api.get("/capabilities", a).await?;
    anyhow::ensure!(
        caps["capabilities"]["m.room_versions"]["default"] == "11",
        "{caps}"
    );
    let (_, created) = api.post("/createRoom", a, json!({})).await?;
    let room = created["room_id"].as_str().unwrap_or_default().to_owned();
    let (_, create) = api
        .get(
            &format!("/rooms/{}/state/m.room.create", path_segment(&room)),
            a,
        )
        .await?;
    anyhow::ensure!(create["room_version"] == "11", "{create}");
    shutdown_node(node).await?;

    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.default_room_version = "99".into();
    anyhow::ensure!(
        warren_core::Node::start(config).await.is_err(),
        "an unsupported default room version must not start"
    );
    Ok(())
}

/// A pusher belongs to the device that set it: a password change that logs out the
/// other devices removes theirs, and the changing device keeps its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_change_removes_the_other_devices_pushers() -> anyhow::Result<()> {
    let (_dir, node, api, alice, _bob, _room) = node_and_two_users().await?;
    let a = &alice.access_token;
    let (s, login) = api
        .post(
            "/login",
            "",
            json!({"type": "m.login.password", "identifier": {"type": "m.id.user",
                   "user": "alice"}, "password": PW}),
        )
        .await?;
    anyhow::ensure!(s == 200, "login: {login}");
    let phone = login["access_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let pusher = |key: &str| {
        json!({"kind": "http", "app_id": "org.example.app", "pushkey": key,
               "app_display_name": "App", "device_display_name": "Device", "lang": "en",
               "data": {"url": "http://127.0.0.1:9/_matrix/push/v1/notify"}})
    };
    for (token, key) in [(a.as_str(), "laptop-key"), (phone.as_str(), "phone-key")] {
        let (s, v) = api.post("/pushers/set", token, pusher(key)).await?;
        anyhow::ensure!(s == 200, "{v}");
    }
    let keys = async || -> anyhow::Result<Vec<String>> {
        let (_, v) = api.get("/pushers", a).await?;
        let mut keys: Vec<String> = v["pushers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["pushkey"].as_str().map(str::to_owned))
            .collect();
        keys.sort();
        Ok(keys)
    };
    anyhow::ensure!(keys().await? == ["laptop-key", "phone-key"]);
    let (s, v) = api
        .post(
            "/account/password",
            a,
            json!({"new_password": "a new passphrase", "auth": {"type": "m.login.password",
                   "identifier": {"type": "m.id.user", "user": "alice"}, "password": PW}}),
        )
        .await?;
    anyhow::ensure!(s == 200, "password change: {v}");
    anyhow::ensure!(
        keys().await? == ["laptop-key"],
        "the logged-out phone's pusher stayed"
    );
    shutdown_node(node).await
}
