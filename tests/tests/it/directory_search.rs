//! The room directory (aliases, published rooms, `/publicRooms`), the user directory and
//! server-side search (`/search`), against one in-process node: matrix-sdk 0.18 where it
//! has the call, raw HTTP otherwise.

use matrix_sdk::Client;
use matrix_sdk::ruma::{RoomAliasId, ServerName};
use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{http_client, path_segment, register_client, shutdown_node, start_node};

/// A registered user: the matrix-sdk client and its token for raw requests.
struct User {
    client: Client,
    id: String,
    token: String,
}

async fn user(url: &str, name: &str) -> User {
    let client = register_client(url, name, &format!("{name}: a long passphrase"))
        .await
        .unwrap_or_else(|e| panic!("register {name}: {e:#}"));
    let id = client.user_id().expect("logged in").to_string();
    let token = client.access_token().expect("token");
    User { client, id, token }
}

/// One raw request; answers the status and the JSON body.
async fn call(
    url: &str,
    who: &User,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    call_token(url, Some(&who.token), method, path, body).await
}

async fn call_token(
    url: &str,
    token: Option<&str>,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let http = http_client().expect("http client");
    let mut req = http.request(method.clone(), format!("{url}/_matrix/client/v3{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status}: body is not JSON: {text}"));
    (status, json)
}

async fn ok(url: &str, who: &User, method: Method, path: &str, body: Option<Value>) -> Value {
    let (status, v) = call(url, who, method.clone(), path, body).await;
    assert_eq!(status, 200, "{method} {path} by {}: {v}", who.id);
    v
}

async fn create_room(url: &str, who: &User, body: Value) -> String {
    let v = ok(url, who, Method::POST, "/createRoom", Some(body)).await;
    v["room_id"].as_str().expect("room_id").to_owned()
}

async fn join(url: &str, who: &User, room_id: &str) {
    ok(
        url,
        who,
        Method::POST,
        &format!("/join/{}", path_segment(room_id)),
        Some(json!({})),
    )
    .await;
}

async fn send_text(url: &str, who: &User, room_id: &str, txn: &str, body: &str) -> String {
    let v = ok(
        url,
        who,
        Method::PUT,
        &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room_id)),
        Some(json!({"msgtype": "m.text", "body": body})),
    )
    .await;
    v["event_id"].as_str().expect("event_id").to_owned()
}

fn alias_path(alias: &str) -> String {
    format!("/directory/room/{}", path_segment(alias))
}

fn server_of(user_id: &str) -> &str {
    user_id.split_once(':').map(|(_, s)| s).expect("user id")
}

#[tokio::test(flavor = "multi_thread")]
async fn aliases_create_resolve_delete_with_permissions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    let carol = user(&url, "carol").await;
    let server = server_of(&alice.id).to_owned();

    let room = create_room(&url, &alice, json!({"preset": "public_chat"})).await;
    join(&url, &bob, &room).await;

    // Alice creates an alias; it resolves, with this server as a resident.
    let fun = format!("#fun:{server}");
    ok(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&fun),
        Some(json!({"room_id": room})),
    )
    .await;
    let got = ok(&url, &bob, Method::GET, &alias_path(&fun), None).await;
    assert_eq!(got["room_id"], room.as_str());
    assert_eq!(got["servers"][0], server.as_str());
    let resolved = bob
        .client
        .resolve_room_alias(&RoomAliasId::parse(&fun).expect("alias"))
        .await
        .expect("matrix-sdk resolves the alias");
    assert_eq!(resolved.room_id.as_str(), room);

    // Taken: 409 M_UNKNOWN, whoever asks.
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&fun),
        Some(json!({"room_id": room})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (409, Some("M_UNKNOWN")),
        "{v}"
    );

    // Carol is not in the room: no alias for her.
    let (status, v) = call(
        &url,
        &carol,
        Method::PUT,
        &alias_path(&format!("#carol:{server}")),
        Some(json!({"room_id": room})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );

    // Bob (joined, power 0) may add aliases of his own.
    let bobs = format!("#bobs:{server}");
    ok(
        &url,
        &bob,
        Method::PUT,
        &alias_path(&bobs),
        Some(json!({"room_id": room})),
    )
    .await;
    let listed = ok(
        &url,
        &bob,
        Method::GET,
        &format!("/rooms/{}/aliases", path_segment(&room)),
        None,
    )
    .await;
    assert_eq!(listed["aliases"], json!([bobs.clone(), fun.clone()]));
    let (status, v) = call(
        &url,
        &carol,
        Method::GET,
        &format!("/rooms/{}/aliases", path_segment(&room)),
        None,
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );

    // Bob may not delete Alice's alias (not its creator, no power for canonical_alias)...
    let (status, v) = call(&url, &bob, Method::DELETE, &alias_path(&fun), None).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );
    // ...Alice may delete Bob's (she has the power), and Bob his own.
    ok(&url, &alice, Method::DELETE, &alias_path(&bobs), None).await;
    let (status, v) = call(&url, &bob, Method::GET, &alias_path(&bobs), None).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );
    let bob2 = format!("#bob2:{server}");
    ok(
        &url,
        &bob,
        Method::PUT,
        &alias_path(&bob2),
        Some(json!({"room_id": room})),
    )
    .await;
    ok(&url, &bob, Method::DELETE, &alias_path(&bob2), None).await;
    let (status, _) = call(&url, &bob, Method::DELETE, &alias_path(&bob2), None).await;
    assert_eq!(status, 404);

    // Bad input.
    for bad in ["notanalias", "#nocolon", "#:"] {
        let (status, v) = call(&url, &alice, Method::GET, &alias_path(bad), None).await;
        assert_eq!(
            (status, v["errcode"].as_str()),
            (400, Some("M_INVALID_PARAM")),
            "{bad}: {v}"
        );
    }
    let other = format!("#x:{}", "ab".repeat(32));
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&other),
        Some(json!({"room_id": room})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&format!("#ok:{server}")),
        Some(json!({"room_id": "not a room"})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&format!("#ok:{server}")),
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );
    // A remote alias on a node without federation: a Matrix error, not a crash.
    let (status, v) = call(&url, &alice, Method::GET, &alias_path(&other), None).await;
    assert!(status >= 400 && v["errcode"].is_string(), "{status} {v}");

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn public_rooms_publish_search_and_paginate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;

    let garden = create_room(&url, &alice, json!({"preset": "public_chat", "visibility": "public", "name": "Gardening club", "topic": "tomatoes", "room_alias_name": "garden"})).await;
    let tools = create_room(
        &url,
        &alice,
        json!({"preset": "public_chat", "name": "Tools"}),
    )
    .await;
    let chess = create_room(
        &url,
        &alice,
        json!({"preset": "public_chat", "visibility": "public", "name": "Chess"}),
    )
    .await;
    join(&url, &bob, &garden).await;

    // Tools starts private; Bob (power 0) may not publish it, Alice may.
    let list = |r: &str| format!("/directory/list/room/{}", path_segment(r));
    let v = ok(&url, &alice, Method::GET, &list(&tools), None).await;
    assert_eq!(v["visibility"], "private");
    join(&url, &bob, &tools).await;
    let (status, v) = call(
        &url,
        &bob,
        Method::PUT,
        &list(&tools),
        Some(json!({"visibility": "public"})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &list(&tools),
        Some(json!({"visibility": "sideways"})),
    )
    .await;
    assert_eq!(status, 400, "{v}");
    ok(
        &url,
        &alice,
        Method::PUT,
        &list(&tools),
        Some(json!({"visibility": "public"})),
    )
    .await;
    let v = ok(&url, &bob, Method::GET, &list(&tools), None).await;
    assert_eq!(v["visibility"], "public");
    let (status, _) = call(&url, &bob, Method::GET, &list("!unknown:nowhere"), None).await;
    assert_eq!(status, 404);

    // Everything, unauthenticated GET, a huge limit clamped.
    let (status, all) = call_token(
        &url,
        None,
        Method::GET,
        "/publicRooms?limit=99999999999",
        None,
    )
    .await;
    assert_eq!(status, 200, "{all}");
    assert_eq!(all["total_room_count_estimate"], 3);
    let chunk = all["chunk"].as_array().expect("chunk");
    assert_eq!(chunk.len(), 3);
    // Most members first: garden and tools have two.
    assert_eq!(chunk[2]["room_id"], chess.as_str());
    let g = chunk
        .iter()
        .find(|r| r["room_id"] == garden.as_str())
        .expect("garden listed");
    assert_eq!(g["name"], "Gardening club");
    assert_eq!(g["topic"], "tomatoes");
    assert_eq!(g["num_joined_members"], 2);
    assert_eq!(g["join_rule"], "public");
    assert_eq!(g["world_readable"], false);
    assert_eq!(g["guest_can_join"], false);
    assert_eq!(
        g["canonical_alias"],
        format!("#garden:{}", server_of(&alice.id))
    );

    // A search term (name, topic or alias, any case).
    let v = ok(
        &url,
        &bob,
        Method::POST,
        "/publicRooms",
        Some(json!({"filter": {"generic_search_term": "TOMATO"}})),
    )
    .await;
    assert_eq!(v["chunk"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["chunk"][0]["room_id"], garden.as_str());
    let v = ok(
        &url,
        &bob,
        Method::POST,
        "/publicRooms",
        Some(json!({"filter": {"generic_search_term": "nothing like it"}})),
    )
    .await;
    assert_eq!(v["chunk"], json!([]));

    // Pages of one: next_batch walks through all three, prev_batch walks back.
    let mut seen = Vec::new();
    let mut since: Option<String> = None;
    let mut prev: Option<String>;
    loop {
        let mut body = json!({"limit": 1});
        if let Some(s) = &since {
            body["since"] = json!(s);
        }
        let page = ok(&url, &bob, Method::POST, "/publicRooms", Some(body)).await;
        assert_eq!(page["chunk"].as_array().map(Vec::len), Some(1), "{page}");
        seen.push(page["chunk"][0]["room_id"].as_str().expect("id").to_owned());
        prev = page["prev_batch"].as_str().map(str::to_owned);
        match page["next_batch"].as_str() {
            Some(n) => since = Some(n.to_owned()),
            None => break,
        }
        assert!(seen.len() <= 3, "pagination does not end");
    }
    assert_eq!(seen.len(), 3);
    assert_eq!(
        seen.iter().collect::<std::collections::BTreeSet<_>>().len(),
        3
    );
    let back = ok(
        &url,
        &bob,
        Method::POST,
        "/publicRooms",
        Some(json!({"limit": 1, "since": prev.expect("prev_batch on the last page")})),
    )
    .await;
    assert_eq!(back["chunk"][0]["room_id"], seen[1].as_str());

    // matrix-sdk's GET /publicRooms, with limit and since.
    let first = alice
        .client
        .public_rooms(Some(2), None, None)
        .await
        .expect("sdk publicRooms");
    assert_eq!(first.chunk.len(), 2);
    let next = first.next_batch.expect("next_batch");
    let second = alice
        .client
        .public_rooms(Some(2), Some(&next), None)
        .await
        .expect("sdk page 2");
    assert_eq!(second.chunk.len(), 1);
    assert_eq!(second.chunk[0].room_id.as_str(), chess);
    // Naming this server explicitly is the same as not naming one.
    let own = ServerName::parse(server_of(&alice.id)).expect("server name");
    let again = alice
        .client
        .public_rooms(Some(10), None, Some(&own))
        .await
        .expect("sdk own server");
    assert_eq!(again.chunk.len(), 3);

    // Bad input.
    let (status, v) = call_token(&url, None, Method::GET, "/publicRooms?limit=-3", None).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = call(
        &url,
        &bob,
        Method::POST,
        "/publicRooms",
        Some(json!({"since": "garbage"})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = call(
        &url,
        &bob,
        Method::POST,
        "/publicRooms?server=not%20a%20server",
        Some(json!({})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );

    // Unpublished: gone from the list.
    ok(
        &url,
        &alice,
        Method::PUT,
        &list(&garden),
        Some(json!({"visibility": "private"})),
    )
    .await;
    let v = ok(&url, &bob, Method::POST, "/publicRooms", Some(json!({}))).await;
    assert!(
        v["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .all(|r| r["room_id"] != garden.as_str()),
        "{v}"
    );

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn user_directory_shows_room_mates_not_strangers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    let carol = user(&url, "carol").await;
    let dave = user(&url, "dave").await;
    let bobby = user(&url, "bobby").await;

    // Bob's display name is set before he joins, so his member event carries it.
    ok(
        &url,
        &bob,
        Method::PUT,
        &format!("/profile/{}/displayname", path_segment(&bob.id)),
        Some(json!({"displayname": "Robert Tables"})),
    )
    .await;
    let shared = create_room(
        &url,
        &alice,
        json!({"preset": "private_chat", "invite": [bob.id]}),
    )
    .await;
    join(&url, &bob, &shared).await;
    // Carol and Dave talk in private: strangers to Alice.
    let private = create_room(
        &url,
        &carol,
        json!({"preset": "private_chat", "invite": [dave.id]}),
    )
    .await;
    join(&url, &dave, &private).await;
    // Bobby is in a public room Alice is not in: findable.
    create_room(&url, &bobby, json!({"preset": "public_chat"})).await;

    let search = |term: &str, limit: Option<u64>| {
        let mut body = json!({"search_term": term});
        if let Some(l) = limit {
            body["limit"] = json!(l);
        }
        body
    };
    let v = ok(
        &url,
        &alice,
        Method::POST,
        "/user_directory/search",
        Some(search("tables", None)),
    )
    .await;
    assert_eq!(v["results"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["results"][0]["user_id"], bob.id.as_str());
    assert_eq!(v["results"][0]["display_name"], "Robert Tables");
    assert_eq!(v["limited"], false);

    let v = ok(
        &url,
        &alice,
        Method::POST,
        "/user_directory/search",
        Some(search("carol", None)),
    )
    .await;
    assert_eq!(
        v["results"],
        json!([]),
        "carol shares no room with alice: {v}"
    );
    let v = ok(
        &url,
        &alice,
        Method::POST,
        "/user_directory/search",
        Some(search("dave", None)),
    )
    .await;
    assert_eq!(v["results"], json!([]), "{v}");

    // "bob" matches bob (user id) and bobby (public room); limit 1 says limited.
    let v = ok(
        &url,
        &alice,
        Method::POST,
        "/user_directory/search",
        Some(search("bob", Some(1))),
    )
    .await;
    assert_eq!(v["results"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(v["limited"], true);
    let found = alice
        .client
        .search_users("bob", 10)
        .await
        .expect("sdk user search");
    let ids: Vec<String> = found
        .results
        .iter()
        .map(|u| u.user_id.to_string())
        .collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(ids.contains(&bob.id) && ids.contains(&bobby.id), "{ids:?}");
    assert!(!found.limited);

    // Carol finds Dave.
    let v = ok(
        &url,
        &carol,
        Method::POST,
        "/user_directory/search",
        Some(search("DAVE", Some(u64::MAX))),
    )
    .await;
    assert_eq!(v["results"][0]["user_id"], dave.id.as_str(), "{v}");

    // Bad input.
    let (status, v) = call(
        &url,
        &alice,
        Method::POST,
        "/user_directory/search",
        Some(json!({"limit": 3})),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );

    shutdown_node(node).await.expect("shutdown");
}

async fn search(url: &str, who: &User, criteria: Value, next_batch: Option<&str>) -> (u16, Value) {
    let path = match next_batch {
        Some(n) => format!("/search?next_batch={}", path_segment(n)),
        None => "/search".to_owned(),
    };
    let (status, v) = call(
        url,
        who,
        Method::POST,
        &path,
        Some(json!({"search_categories": {"room_events": criteria}})),
    )
    .await;
    (
        status,
        if status == 200 {
            v["search_categories"]["room_events"].clone()
        } else {
            v
        },
    )
}

fn result_ids(v: &Value) -> Vec<String> {
    v["results"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["result"]["event_id"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread")]
async fn search_finds_messages_by_word() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    let carol = user(&url, "carol").await;

    let room = create_room(
        &url,
        &alice,
        json!({"preset": "private_chat", "invite": [bob.id], "name": "Banana republic"}),
    )
    .await;
    join(&url, &bob, &room).await;
    let first = send_text(&url, &alice, &room, "t1", "I like pineapple on pizza").await;
    let between = send_text(&url, &bob, &room, "t2", "nothing to see here").await;
    let second = send_text(
        &url,
        &bob,
        &room,
        "t3",
        "Pineapple pineapple PINEAPPLE, the pineapples are ripe",
    )
    .await;
    let after = send_text(&url, &alice, &room, "t4", "ok").await;
    // Carol's room: Alice is not in it.
    let secret_room = create_room(&url, &carol, json!({"preset": "private_chat"})).await;
    send_text(
        &url,
        &carol,
        &secret_room,
        "c1",
        "my secret pineapple stash",
    )
    .await;

    // Rank: the message saying it four times first.
    let (status, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "order_by": "rank"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(result_ids(&v), vec![second.clone(), first.clone()], "{v}");
    assert_eq!(v["count"], 2);
    assert!(
        v["highlights"]
            .as_array()
            .expect("highlights")
            .contains(&json!("pineapple"))
    );
    assert!(
        v["results"][0]["rank"].as_f64().expect("rank")
            >= v["results"][1]["rank"].as_f64().expect("rank")
    );
    assert_eq!(v["results"][0]["result"]["room_id"], room.as_str());
    assert_eq!(
        v["results"][0]["result"]["content"]["body"],
        "Pineapple pineapple PINEAPPLE, the pineapples are ripe"
    );

    // Recent: newest first. A prefix and another case match too.
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "PINEAPP", "order_by": "recent"}),
        None,
    )
    .await;
    assert_eq!(result_ids(&v), vec![second.clone(), first.clone()], "{v}");
    // Every word must match.
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple pizza"}),
        None,
    )
    .await;
    assert_eq!(result_ids(&v), vec![first.clone()], "{v}");

    // Carol finds only her own room's message.
    let (_, v) = search(&url, &carol, json!({"search_term": "pineapple"}), None).await;
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["results"][0]["result"]["room_id"], secret_room.as_str());

    // Filters: senders, rooms.
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "filter": {"senders": [alice.id]}}),
        None,
    )
    .await;
    assert_eq!(result_ids(&v), vec![first.clone()], "{v}");
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "filter": {"not_rooms": [room]}}),
        None,
    )
    .await;
    assert_eq!(v["count"], 0, "{v}");

    // Context around a result, with profiles.
    let (_, v) = search(&url, &alice, json!({"search_term": "ripe", "event_context": {"before_limit": 1, "after_limit": 1, "include_profile": true}}), None).await;
    assert_eq!(result_ids(&v), vec![second.clone()], "{v}");
    let ctx = &v["results"][0]["context"];
    assert_eq!(
        ctx["events_before"][0]["event_id"],
        between.as_str(),
        "{ctx}"
    );
    assert_eq!(ctx["events_after"][0]["event_id"], after.as_str(), "{ctx}");
    assert_eq!(ctx["events_before"].as_array().map(Vec::len), Some(1));
    assert!(ctx["start"].is_string() && ctx["end"].is_string(), "{ctx}");
    assert!(ctx["profile_info"][bob.id.as_str()].is_object(), "{ctx}");

    // Room names, when the keys ask for them.
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "banana", "keys": ["content.name"]}),
        None,
    )
    .await;
    assert_eq!(v["count"], 1, "{v}");
    assert_eq!(v["results"][0]["result"]["type"], "m.room.name");
    let (_, v) = search(
        &url,
        &alice,
        json!({"search_term": "banana", "keys": ["content.body"]}),
        None,
    )
    .await;
    assert_eq!(v["count"], 0, "{v}");

    // Pagination: pages of one.
    let (_, page1) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "order_by": "recent", "filter": {"limit": 1}}),
        None,
    )
    .await;
    assert_eq!(result_ids(&page1), vec![second.clone()]);
    let next = page1["next_batch"].as_str().expect("next_batch").to_owned();
    let (_, page2) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "order_by": "recent", "filter": {"limit": 1}}),
        Some(&next),
    )
    .await;
    assert_eq!(result_ids(&page2), vec![first.clone()]);
    assert!(
        page2.get("next_batch").is_none_or(Value::is_null),
        "{page2}"
    );

    // A redacted message is no longer found.
    ok(
        &url,
        &bob,
        Method::PUT,
        &format!(
            "/rooms/{}/redact/{}/r1",
            path_segment(&room),
            path_segment(&second)
        ),
        Some(json!({})),
    )
    .await;
    let (_, v) = search(&url, &alice, json!({"search_term": "pineapple"}), None).await;
    assert_eq!(result_ids(&v), vec![first.clone()], "{v}");

    // Bad input.
    let (status, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "order_by": "sideways"}),
        None,
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );
    let (status, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple", "keys": ["content.nope"]}),
        None,
    )
    .await;
    assert_eq!(status, 400, "{v}");
    let (status, v) = search(&url, &alice, json!({"order_by": "rank"}), None).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );
    let (status, v) = search(
        &url,
        &alice,
        json!({"search_term": "pineapple"}),
        Some("not-a-token"),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_INVALID_PARAM")),
        "{v}"
    );
    let (status, v) = search(&url, &alice, json!({"search_term": "pineapple", "filter": {"limit": 1_000_000_000_000u64}, "event_context": {"before_limit": 1_000_000u64}}), None).await;
    assert_eq!(status, 200, "huge limits are clamped: {v}");
    assert_eq!(v["count"], 1);
    // FTS5 syntax in the term is just words.
    let (status, v) = search(
        &url,
        &alice,
        json!({"search_term": "\"pine* OR NEAR( -"}),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    let (status, v) = search(&url, &alice, json!({"search_term": "   "}), None).await;
    assert_eq!((status, v["count"].as_u64()), (200, Some(0)), "{v}");
    let (status, v) = call(&url, &alice, Method::POST, "/search", Some(json!({}))).await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_BAD_JSON")),
        "{v}"
    );

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_alias_and_public_rooms_over_federation() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = warren_tests::start_federated_node(da.path())
        .await
        .expect("node a");
    let b = warren_tests::start_federated_node(db.path())
        .await
        .expect("node b");
    warren_tests::connect_nodes(&a, &b).await.expect("connect");
    let (url_a, url_b) = (a.node.client_url(), b.node.client_url());
    let alice = user(&url_a, "alice").await;
    let bob = user(&url_b, "bob").await;

    let room = create_room(&url_a, &alice, json!({"preset": "public_chat", "visibility": "public", "name": "Mesh lobby", "room_alias_name": "lobby"})).await;
    let alias = format!("#lobby:{}", a.name());

    // Bob's node asks Alice's node.
    let got = ok(&url_b, &bob, Method::GET, &alias_path(&alias), None).await;
    assert_eq!(got["room_id"], room.as_str(), "{got}");
    assert_eq!(got["servers"][0], a.name().as_str(), "{got}");
    let (status, v) = call(
        &url_b,
        &bob,
        Method::GET,
        &alias_path(&format!("#missing:{}", a.name())),
        None,
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );

    // Alice's directory, seen from Bob's node (GET and POST with a search term).
    let (status, v) = call(
        &url_b,
        &bob,
        Method::GET,
        &format!("/publicRooms?server={}&limit=5", a.name()),
        None,
    )
    .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["chunk"][0]["room_id"], room.as_str(), "{v}");
    let v = ok(
        &url_b,
        &bob,
        Method::POST,
        &format!("/publicRooms?server={}", a.name()),
        Some(json!({"filter": {"generic_search_term": "mesh"}})),
    )
    .await;
    assert_eq!(v["chunk"][0]["name"], "Mesh lobby", "{v}");
    let v = ok(&url_b, &bob, Method::POST, "/publicRooms", Some(json!({}))).await;
    assert_eq!(
        v["chunk"],
        json!([]),
        "bob's own node publishes nothing: {v}"
    );

    // Events received over federation are indexed too: Bob joins by the remote alias
    // and finds Alice's message with his own node's /search.
    ok(
        &url_b,
        &bob,
        Method::POST,
        &format!("/join/{}", path_segment(&alias)),
        Some(json!({})),
    )
    .await;
    let kiwi = send_text(&url_a, &alice, &room, "k1", "a federated kiwi arrives").await;
    let found = warren_tests::wait_until(
        warren_tests::WAIT,
        "bob's node finds the kiwi",
        async || {
            let (status, v) = search(&url_b, &bob, json!({"search_term": "kiwi"}), None).await;
            anyhow::ensure!(status == 200, "search failed: {v}");
            Ok(result_ids(&v) == vec![kiwi.clone()])
        },
    )
    .await;
    found.expect("received message is searchable");

    b.stop().await.expect("stop b");
    a.stop().await.expect("stop a");
}

/// `m.room.canonical_alias`: every alias in `alias` and `alt_aliases` must exist and
/// point to the room (`400 M_BAD_ALIAS`), as the spec asks.
#[tokio::test(flavor = "multi_thread")]
async fn canonical_aliases_must_point_to_the_room() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let server = server_of(&alice.id).to_owned();
    let room = create_room(&url, &alice, json!({"preset": "public_chat"})).await;
    let other = create_room(&url, &alice, json!({"preset": "public_chat"})).await;
    let here = format!("#here:{server}");
    let there = format!("#there:{server}");
    ok(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&here),
        Some(json!({"room_id": room})),
    )
    .await;
    ok(
        &url,
        &alice,
        Method::PUT,
        &alias_path(&there),
        Some(json!({"room_id": other})),
    )
    .await;
    let path = format!(
        "/rooms/{}/state/m.room.canonical_alias",
        path_segment(&room)
    );
    for (content, what) in [
        (
            json!({"alias": format!("#nowhere:{server}")}),
            "an alias that does not exist",
        ),
        (json!({"alias": there}), "an alias of another room"),
        (
            json!({"alias": here, "alt_aliases": [there]}),
            "an alt alias of another room",
        ),
    ] {
        let (status, v) = call(&url, &alice, Method::PUT, &path, Some(content)).await;
        assert_eq!(
            (status, v["errcode"].as_str()),
            (400, Some("M_BAD_ALIAS")),
            "{what}: {v}"
        );
    }
    let (status, v) = call(
        &url,
        &alice,
        Method::PUT,
        &path,
        Some(json!({"alias": "nonsense"})),
    )
    .await;
    assert_eq!(status, 400, "a malformed alias: {v}");
    ok(
        &url,
        &alice,
        Method::PUT,
        &path,
        Some(json!({"alias": here, "alt_aliases": [here]})),
    )
    .await;
    ok(&url, &alice, Method::PUT, &path, Some(json!({}))).await;
    shutdown_node(node).await.expect("shutdown");
}
