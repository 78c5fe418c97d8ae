//! Relationships between events against one in-process node: edits (`m.replace`),
//! threads (`m.thread`), references and reactions, as bundled aggregations in
//! `unsigned.m.relations` (in `/sync`, `/messages`, `/event`, `/context`), and the
//! `/relations` and `/threads` endpoints. matrix-sdk 0.18 clients send and read (their
//! ruma types must parse what the server bundles); raw HTTP checks the exact JSON and the
//! error answers.

use matrix_sdk::room::{IncludeRelations, ListThreadsOptions, MessagesOptions, RelationsOptions};
use matrix_sdk::ruma::api::client::room::create_room::v3::{
    Request as CreateRoomRequest, RoomPreset,
};
use matrix_sdk::ruma::api::client::threads::get_threads::v1::IncludeThreads;
use matrix_sdk::ruma::events::reaction::ReactionEventContent;
use matrix_sdk::ruma::events::relation::{Annotation, RelationType, Thread};
use matrix_sdk::ruma::events::room::message::{
    OriginalSyncRoomMessageEvent, Relation, ReplacementMetadata, RoomMessageEventContent,
};
use matrix_sdk::ruma::{OwnedEventId, OwnedRoomId, UInt};
use matrix_sdk::{Client, Room};
use reqwest::Method;
use serde_json::{Value, json};
use warren_tests::{
    WAIT, http_client, login_client, path_segment, raw_json, register_client, shutdown_node,
    start_node, sync_until, timeline_json,
};

/// A registered user with a matrix-sdk client and its token for raw requests.
struct User {
    client: Client,
    token: String,
    password: String,
    localpart: String,
}

async fn user(url: &str, localpart: &str) -> User {
    let password = format!("{localpart}: a long enough passphrase");
    let client = register_client(url, localpart, &password)
        .await
        .unwrap_or_else(|e| panic!("register {localpart}: {e:#}"));
    let token = client.access_token().expect("token");
    sync_until(&client, WAIT, "the first sync returns", |_| Ok(true))
        .await
        .expect("initial sync");
    User {
        client,
        token,
        password,
        localpart: localpart.to_owned(),
    }
}

/// Alice creates a public room; the others join it.
async fn room_with(alice: &User, others: &[&User]) -> (OwnedRoomId, Room) {
    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PublicChat);
    let room = alice.client.create_room(create).await.expect("create room");
    let room_id = room.room_id().to_owned();
    for u in others {
        u.client.join_room_by_id(&room_id).await.expect("join");
    }
    (room_id, room)
}

/// A raw client-server request under `/_matrix/client/{version}`; answers status and JSON.
async fn call(url: &str, token: &str, method: Method, path: &str) -> (u16, Value) {
    let http = http_client().expect("http client");
    let resp = http
        .request(method.clone(), format!("{url}/_matrix/client{path}"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    let json = serde_json::from_str(&text)
        .unwrap_or_else(|_| panic!("{method} {path}: {status}: body is not JSON: {text}"));
    (status, json)
}

async fn get_ok(url: &str, who: &User, path: &str) -> Value {
    let (status, v) = call(url, &who.token, Method::GET, path).await;
    assert_eq!(status, 200, "GET {path} by {}: {v}", who.localpart);
    v
}

async fn send_text(room: &Room, body: &str) -> OwnedEventId {
    room.send(RoomMessageEventContent::text_plain(body))
        .await
        .unwrap_or_else(|e| panic!("sending {body:?}: {e}"))
        .response
        .event_id
}

async fn send_edit(room: &Room, original: &OwnedEventId, body: &str) -> OwnedEventId {
    let content = RoomMessageEventContent::text_plain(format!("* {body}"))
        .make_replacement(ReplacementMetadata::new(original.clone(), None));
    let mut json = serde_json::to_value(&content).expect("content json");
    // `make_replacement` puts the new content in `m.new_content`; the fallback body is
    // what clients without edit support show.
    json["m.new_content"]["body"] = json!(body);
    room.send_raw("m.room.message", json)
        .await
        .unwrap_or_else(|e| panic!("sending edit {body:?}: {e}"))
        .response
        .event_id
}

async fn send_in_thread(room: &Room, root: &OwnedEventId, body: &str) -> OwnedEventId {
    let mut content = RoomMessageEventContent::text_plain(body);
    content.relates_to = Some(Relation::Thread(Thread::without_fallback(root.clone())));
    room.send(content)
        .await
        .unwrap_or_else(|e| panic!("sending thread reply {body:?}: {e}"))
        .response
        .event_id
}

fn event_path(room_id: &OwnedRoomId, event_id: &OwnedEventId) -> String {
    format!(
        "/v3/rooms/{}/event/{}",
        path_segment(room_id.as_str()),
        path_segment(event_id.as_str())
    )
}

fn relations_path(room_id: &OwnedRoomId, event_id: &OwnedEventId, rest: &str) -> String {
    format!(
        "/v1/rooms/{}/relations/{}{rest}",
        path_segment(room_id.as_str()),
        path_segment(event_id.as_str())
    )
}

/// The bundled edit's event id of an event, if any.
fn bundled_edit(ev: &Value) -> Option<&str> {
    ev["unsigned"]["m.relations"]["m.replace"]["event_id"].as_str()
}

#[tokio::test(flavor = "multi_thread")]
async fn an_edit_is_bundled_with_the_original_everywhere_it_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    let (room_id, room) = room_with(&alice, &[&bob]).await;

    let original = send_text(&room, "helo wrld").await;
    let edit = send_edit(&room, &original, "hello world").await;

    // A new device's initial sync shows the original with the edit bundled; matrix-sdk's
    // ruma types parse the bundle as the replacing event.
    let fresh = login_client(&url, &alice.localpart, &alice.password)
        .await
        .expect("login");
    let original_str = original.as_str();
    let response = sync_until(&fresh, WAIT, "the original shows its edit", |r| {
        Ok(timeline_json(r, &room_id)?
            .iter()
            .any(|ev| ev["event_id"] == original_str && bundled_edit(ev).is_some()))
    })
    .await
    .expect("sync");
    let timeline = timeline_json(&response, &room_id).expect("timeline");
    let in_sync = timeline
        .iter()
        .find(|ev| ev["event_id"] == original_str)
        .expect("original in timeline");
    assert_eq!(bundled_edit(in_sync), Some(edit.as_str()), "{in_sync}");
    let bundled = &in_sync["unsigned"]["m.relations"]["m.replace"];
    assert_eq!(bundled["content"]["m.new_content"]["body"], "hello world");
    assert_eq!(
        bundled["sender"],
        alice.client.user_id().expect("id").as_str()
    );
    assert!(bundled["origin_server_ts"].is_i64(), "{bundled}");
    let raw_original = response.rooms.joined[&room_id]
        .timeline
        .events
        .iter()
        .find(|ev| raw_json(ev.raw()).is_ok_and(|v| v["event_id"] == original_str))
        .expect("raw original");
    let typed: OriginalSyncRoomMessageEvent = serde_json::from_str(raw_original.raw().json().get())
        .expect("ruma parses the original with its bundle");
    let replace = typed
        .unsigned
        .relations
        .replace
        .expect("ruma sees the bundled m.replace");
    assert_eq!(replace.event_id, edit);

    // /messages, through matrix-sdk, raw JSON checked.
    let bob_room = bob.client.get_room(&room_id).expect("bob's room");
    let mut options = MessagesOptions::backward();
    options.limit = UInt::from(20u32);
    let page = bob_room.messages(options).await.expect("/messages");
    let in_messages = page
        .chunk
        .iter()
        .map(|ev| raw_json(ev.raw()).expect("json"))
        .find(|ev| ev["event_id"] == original_str)
        .expect("original in /messages");
    assert_eq!(
        bundled_edit(&in_messages),
        Some(edit.as_str()),
        "{in_messages}"
    );
    // The edit itself carries no bundle of its own.
    let edit_in_messages = page
        .chunk
        .iter()
        .map(|ev| raw_json(ev.raw()).expect("json"))
        .find(|ev| ev["event_id"] == edit.as_str())
        .expect("edit in /messages");
    assert!(
        edit_in_messages["unsigned"].get("m.relations").is_none(),
        "{edit_in_messages}"
    );

    // /event and /context.
    let ev = get_ok(&url, &bob, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), Some(edit.as_str()), "{ev}");
    let ctx = get_ok(
        &url,
        &bob,
        &format!(
            "/v3/rooms/{}/context/{}?limit=4",
            path_segment(room_id.as_str()),
            path_segment(original.as_str())
        ),
    )
    .await;
    assert_eq!(bundled_edit(&ctx["event"]), Some(edit.as_str()), "{ctx}");

    // Simplified sliding sync (MSC4186) timelines carry it too.
    let ss: Value = http_client()
        .expect("http")
        .post(format!(
            "{url}/_matrix/client/unstable/org.matrix.simplified_msc3575/sync?timeout=0"
        ))
        .bearer_auth(&bob.token)
        .json(&json!({
            "conn_id": "relations",
            "room_subscriptions": {room_id.as_str(): {"timeline_limit": 20, "required_state": []}},
        }))
        .send()
        .await
        .expect("sliding sync")
        .json()
        .await
        .expect("sliding sync json");
    let in_ss = ss["rooms"][room_id.as_str()]["timeline"]
        .as_array()
        .unwrap_or_else(|| panic!("no timeline: {ss}"))
        .iter()
        .find(|ev| ev["event_id"] == original_str)
        .cloned()
        .unwrap_or_else(|| panic!("original not in the sliding sync timeline: {ss}"));
    assert_eq!(bundled_edit(&in_ss), Some(edit.as_str()), "{in_ss}");

    // /search results carry the bundle too.
    let http = http_client().expect("http");
    let found: Value = http
        .post(format!("{url}/_matrix/client/v3/search"))
        .bearer_auth(&bob.token)
        .json(&json!({"search_categories": {"room_events": {"search_term": "helo"}}}))
        .send()
        .await
        .expect("search")
        .json()
        .await
        .expect("search json");
    let results = &found["search_categories"]["room_events"]["results"];
    assert_eq!(results[0]["result"]["event_id"], original_str, "{found}");
    assert_eq!(
        bundled_edit(&results[0]["result"]),
        Some(edit.as_str()),
        "{found}"
    );

    // A later edit replaces the bundled one.
    let edit2 = send_edit(&room, &original, "hello, world").await;
    let ev = get_ok(&url, &bob, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), Some(edit2.as_str()), "{ev}");
    assert_eq!(
        ev["unsigned"]["m.relations"]["m.replace"]["content"]["m.new_content"]["body"],
        "hello, world"
    );

    // An edit by someone else is not a valid replacement and is never bundled.
    let bob_edit = send_edit(&bob_room, &original, "bob was here").await;
    let ev = get_ok(&url, &bob, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), Some(edit2.as_str()), "{ev}");
    assert_ne!(bundled_edit(&ev), Some(bob_edit.as_str()));

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn redacting_edits_and_originals_changes_the_bundle() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let (room_id, room) = room_with(&alice, &[]).await;

    let original = send_text(&room, "first").await;
    let edit1 = send_edit(&room, &original, "second").await;
    let edit2 = send_edit(&room, &original, "third").await;
    let ev = get_ok(&url, &alice, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), Some(edit2.as_str()), "{ev}");

    // Redacting the newest edit falls back to the one before it, then to none.
    room.redact(&edit2, None, None).await.expect("redact edit2");
    let ev = get_ok(&url, &alice, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), Some(edit1.as_str()), "{ev}");
    room.redact(&edit1, None, None).await.expect("redact edit1");
    let ev = get_ok(&url, &alice, &event_path(&room_id, &original)).await;
    assert_eq!(bundled_edit(&ev), None, "{ev}");
    // Also in the next sync's view of the original (a fresh device's initial sync).
    let fresh = login_client(&url, &alice.localpart, &alice.password)
        .await
        .expect("login");
    let original_str = original.as_str();
    let response = sync_until(&fresh, WAIT, "the original is in the timeline", |r| {
        Ok(timeline_json(r, &room_id)?
            .iter()
            .any(|ev| ev["event_id"] == original_str))
    })
    .await
    .expect("sync");
    let timeline = timeline_json(&response, &room_id).expect("timeline");
    let in_sync = timeline
        .iter()
        .find(|ev| ev["event_id"] == original_str)
        .expect("original");
    assert_eq!(bundled_edit(in_sync), None, "{in_sync}");

    // A redacted original gets no m.replace even though its edit is intact, but the
    // relationship is still stored (and listed by /relations).
    let other = send_text(&room, "to be removed").await;
    let other_edit = send_edit(&room, &other, "edited before removal").await;
    let ev = get_ok(&url, &alice, &event_path(&room_id, &other)).await;
    assert_eq!(bundled_edit(&ev), Some(other_edit.as_str()), "{ev}");
    room.redact(&other, None, None)
        .await
        .expect("redact original");
    let ev = get_ok(&url, &alice, &event_path(&room_id, &other)).await;
    assert!(ev["unsigned"]["redacted_because"].is_object(), "{ev}");
    assert_eq!(bundled_edit(&ev), None, "{ev}");
    let rel = get_ok(
        &url,
        &alice,
        &relations_path(&room_id, &other, "/m.replace"),
    )
    .await;
    let ids: Vec<&str> = rel["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(ids, vec![other_edit.as_str()]);

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thread_is_summarised_on_its_root_and_listed_by_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let bob = user(&url, "bob").await;
    let carol = user(&url, "carol").await;
    let (room_id, room) = room_with(&alice, &[&bob, &carol]).await;
    let bob_room = bob.client.get_room(&room_id).expect("bob's room");

    let root = send_text(&room, "thread root").await;
    let _lonely = send_text(&room, "not a thread").await;
    send_in_thread(&bob_room, &root, "reply 1").await;
    send_in_thread(&room, &root, "reply 2").await;
    let last = send_in_thread(&bob_room, &root, "reply 3").await;
    // The newest reply's own edit is bundled inside `latest_event`.
    let last_edit = send_edit(&bob_room, &last, "reply 3, edited").await;

    // Carol's new device: the root in the initial sync carries the thread summary.
    let fresh = login_client(&url, &carol.localpart, &carol.password)
        .await
        .expect("login");
    let root_str = root.as_str();
    let response = sync_until(&fresh, WAIT, "the root shows its thread", |r| {
        Ok(timeline_json(r, &room_id)?.iter().any(|ev| {
            ev["event_id"] == root_str && ev["unsigned"]["m.relations"]["m.thread"].is_object()
        }))
    })
    .await
    .expect("sync");
    let timeline = timeline_json(&response, &room_id).expect("timeline");
    let in_sync = timeline
        .iter()
        .find(|ev| ev["event_id"] == root_str)
        .expect("root");
    let thread = &in_sync["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["count"], 3, "{thread}");
    assert_eq!(
        thread["latest_event"]["event_id"],
        last.as_str(),
        "{thread}"
    );
    assert_eq!(
        thread["current_user_participated"], false,
        "carol: {thread}"
    );
    assert_eq!(
        thread["latest_event"]["unsigned"]["m.relations"]["m.replace"]["event_id"],
        last_edit.as_str(),
        "{thread}"
    );
    // ruma parses the summary.
    let raw_root = response.rooms.joined[&room_id]
        .timeline
        .events
        .iter()
        .find(|ev| raw_json(ev.raw()).is_ok_and(|v| v["event_id"] == root_str))
        .expect("raw root");
    let typed: OriginalSyncRoomMessageEvent =
        serde_json::from_str(raw_root.raw().json().get()).expect("ruma parses the root");
    let summary = typed.unsigned.relations.thread.expect("ruma sees m.thread");
    assert_eq!(summary.count, UInt::from(3u32));

    // Bob replied, alice started it: both participated. /messages says so.
    for (who, participated) in [(&alice, true), (&bob, true), (&carol, false)] {
        let r = who.client.get_room(&room_id).expect("room");
        let mut options = MessagesOptions::backward();
        options.limit = UInt::from(30u32);
        let page = r.messages(options).await.expect("/messages");
        let root_json = page
            .chunk
            .iter()
            .map(|ev| raw_json(ev.raw()).expect("json"))
            .find(|ev| ev["event_id"] == root_str)
            .expect("root in /messages");
        let t = &root_json["unsigned"]["m.relations"]["m.thread"];
        assert_eq!(t["count"], 3, "{root_json}");
        assert_eq!(
            t["current_user_participated"], participated,
            "{}: {root_json}",
            who.localpart
        );
    }

    // /threads through matrix-sdk: the root, with its summary.
    let threads = bob_room
        .list_threads(ListThreadsOptions::default())
        .await
        .expect("/threads");
    let roots: Vec<Value> = threads
        .chunk
        .iter()
        .map(|ev| raw_json(ev.raw()).expect("json"))
        .collect();
    assert_eq!(roots.len(), 1, "{roots:?}");
    assert_eq!(roots[0]["event_id"], root_str);
    assert_eq!(roots[0]["unsigned"]["m.relations"]["m.thread"]["count"], 3);
    assert!(threads.prev_batch_token.is_none());

    // include=participated: bob sees it, carol does not.
    let participated = ListThreadsOptions {
        include_threads: IncludeThreads::Participated,
        ..Default::default()
    };
    let bobs = bob_room.list_threads(participated).await.expect("bob");
    assert_eq!(bobs.chunk.len(), 1);
    let carol_room = carol.client.get_room(&room_id).expect("carol's room");
    let carols = carol_room
        .list_threads(ListThreadsOptions {
            include_threads: IncludeThreads::Participated,
            ..Default::default()
        })
        .await
        .expect("carol");
    assert!(carols.chunk.is_empty());

    // /messages filters on what relates to an event (Synapse's `related_by_*`).
    let bob_id = bob.client.user_id().expect("bob").to_string();
    for (filter, expected) in [
        (
            json!({"related_by_rel_types": ["m.thread"]}),
            vec![root_str],
        ),
        (
            json!({"related_by_senders": [bob_id]}),
            vec![last.as_str(), root_str],
        ),
        (
            json!({"related_by_rel_types": ["m.thread"], "related_by_senders": ["@nobody:x"]}),
            vec![],
        ),
    ] {
        let path = format!(
            "/v3/rooms/{}/messages?dir=b&limit=50&filter={}",
            path_segment(room_id.as_str()),
            path_segment(&filter.to_string())
        );
        let page = get_ok(&url, &carol, &path).await;
        let ids: Vec<&str> = page["chunk"]
            .as_array()
            .expect("chunk")
            .iter()
            .filter_map(|e| e["event_id"].as_str())
            .collect();
        assert_eq!(ids, expected, "{filter}");
    }

    // More threads, paged by activity: the most recently active first.
    let root2 = send_text(&room, "second root").await;
    send_in_thread(&room, &root2, "in the second thread").await;
    let root3 = send_text(&room, "third root").await;
    send_in_thread(&room, &root3, "in the third thread").await;
    // A new reply moves the first thread to the top.
    send_in_thread(&room, &root, "reply 4").await;
    let mut seen = Vec::new();
    let mut from = None;
    loop {
        let page = carol_room
            .list_threads(ListThreadsOptions {
                from: from.clone(),
                limit: Some(UInt::from(2u32)),
                ..Default::default()
            })
            .await
            .expect("page");
        assert!(page.chunk.len() <= 2);
        for ev in &page.chunk {
            seen.push(
                raw_json(ev.raw()).expect("json")["event_id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        match page.prev_batch_token {
            Some(t) => from = Some(t),
            None => break,
        }
    }
    assert_eq!(
        seen,
        vec![root.to_string(), root3.to_string(), root2.to_string()]
    );

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn relations_paginate_filter_and_recurse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let (room_id, room) = room_with(&alice, &[]).await;

    let parent = send_text(&room, "react to me").await;
    let mut reactions = Vec::new();
    for key in ["a", "b", "c", "d", "e"] {
        let content = ReactionEventContent::new(Annotation::new(parent.clone(), key.to_owned()));
        reactions.push(room.send(content).await.expect("react").response.event_id);
    }
    let reply = send_in_thread(&room, &parent, "a reply").await;
    let reply_edit = send_edit(&room, &reply, "a reply, edited").await;

    // All relations, newest first, 2 at a time.
    let mut seen = Vec::new();
    let mut from = None;
    let mut pages = 0;
    loop {
        let page = room
            .relations(
                parent.clone(),
                RelationsOptions {
                    from: from.clone(),
                    limit: Some(UInt::from(2u32)),
                    ..Default::default()
                },
            )
            .await
            .expect("/relations");
        pages += 1;
        assert!(page.chunk.len() <= 2);
        for ev in &page.chunk {
            seen.push(
                raw_json(ev.raw()).expect("json")["event_id"]
                    .as_str()
                    .expect("id")
                    .to_owned(),
            );
        }
        match page.next_batch_token {
            Some(t) => from = Some(t),
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    let mut expected: Vec<String> = reactions.iter().map(|e| e.to_string()).collect();
    expected.push(reply.to_string());
    expected.reverse();
    assert_eq!(seen, expected, "direct children only, newest first");
    assert_eq!(pages, 3);

    // Raw: the same through `from`, with `prev_batch`, and forwards.
    let first = get_ok(&url, &alice, &relations_path(&room_id, &parent, "?limit=2")).await;
    assert!(first.get("prev_batch").is_none(), "{first}");
    assert!(first.get("recursion_depth").is_none(), "{first}");
    let next = first["next_batch"].as_str().expect("next_batch");
    let second = get_ok(
        &url,
        &alice,
        &relations_path(&room_id, &parent, &format!("?limit=2&from={next}")),
    )
    .await;
    assert_eq!(second["prev_batch"], next);
    assert_eq!(second["chunk"][0]["event_id"], reactions[3].as_str());
    let forwards = get_ok(
        &url,
        &alice,
        &relations_path(&room_id, &parent, "?dir=f&limit=3"),
    )
    .await;
    let ids: Vec<&str> = forwards["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter_map(|e| e["event_id"].as_str())
        .collect();
    assert_eq!(
        ids,
        vec![
            reactions[0].as_str(),
            reactions[1].as_str(),
            reactions[2].as_str()
        ]
    );

    // Filter by relation type and by event type.
    let threads_only = room
        .relations(
            parent.clone(),
            RelationsOptions {
                include_relations: IncludeRelations::RelationsOfType(RelationType::Thread),
                ..Default::default()
            },
        )
        .await
        .expect("m.thread");
    assert_eq!(threads_only.chunk.len(), 1);
    let reply_json = raw_json(threads_only.chunk[0].raw()).expect("json");
    assert_eq!(reply_json["event_id"], reply.as_str());
    // The reply is served with its own edit bundled.
    assert_eq!(
        bundled_edit(&reply_json),
        Some(reply_edit.as_str()),
        "{reply_json}"
    );
    let typed = get_ok(
        &url,
        &alice,
        &relations_path(&room_id, &parent, "/m.annotation/m.reaction?limit=10"),
    )
    .await;
    assert_eq!(typed["chunk"].as_array().map(Vec::len), Some(5), "{typed}");
    let none = get_ok(
        &url,
        &alice,
        &relations_path(&room_id, &parent, "/m.annotation/m.room.message"),
    )
    .await;
    assert_eq!(none["chunk"], json!([]));

    // recurse=true also finds the edit of the thread reply (two levels down).
    let recursed = room
        .relations(
            parent.clone(),
            RelationsOptions {
                recurse: true,
                limit: Some(UInt::from(20u32)),
                ..Default::default()
            },
        )
        .await
        .expect("recurse");
    let ids: Vec<String> = recursed
        .chunk
        .iter()
        .map(|ev| {
            raw_json(ev.raw()).expect("json")["event_id"]
                .as_str()
                .expect("id")
                .to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 7, "{ids:?}");
    assert_eq!(ids[0], reply_edit.to_string());
    assert_eq!(recursed.recursion_depth, Some(UInt::from(3u32)));

    // Bad parameters are Matrix errors.
    for bad in ["?dir=x", "?from=nonsense", "?limit=0"] {
        let (status, v) = call(
            &url,
            &alice.token,
            Method::GET,
            &relations_path(&room_id, &parent, bad),
        )
        .await;
        assert_eq!(status, 400, "{bad}: {v}");
        assert_eq!(v["errcode"], "M_INVALID_PARAM", "{bad}: {v}");
    }

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn references_are_bundled_and_bad_relations_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let (room_id, room) = room_with(&alice, &[]).await;

    let parent = send_text(&room, "referenced").await;
    let mut refs = Vec::new();
    for i in 0..2 {
        let content = json!({
            "msgtype": "m.text",
            "body": format!("see above {i}"),
            "m.relates_to": {"rel_type": "m.reference", "event_id": parent.as_str()},
        });
        refs.push(
            room.send_raw("m.room.message", content)
                .await
                .expect("reference")
                .response
                .event_id,
        );
    }
    let ev = get_ok(&url, &alice, &event_path(&room_id, &parent)).await;
    assert_eq!(
        ev["unsigned"]["m.relations"]["m.reference"],
        json!({"chunk": [{"event_id": refs[0].as_str()}, {"event_id": refs[1].as_str()}]}),
        "{ev}"
    );

    // The same reaction twice is refused (Synapse's errcode); a thread cannot start at an
    // event that relates to another.
    let reaction = ReactionEventContent::new(Annotation::new(parent.clone(), "👍".to_owned()));
    room.send(reaction).await.expect("first reaction");
    let send = |content: Value, kind: &'static str, txn: &'static str| {
        let url = url.clone();
        let token = alice.token.clone();
        let path = format!(
            "{url}/_matrix/client/v3/rooms/{}/send/{kind}/{txn}",
            path_segment(room_id.as_str())
        );
        async move {
            let resp = http_client()
                .expect("http")
                .put(path)
                .bearer_auth(token)
                .json(&content)
                .send()
                .await
                .expect("send");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("json"))
        }
    };
    let (status, v) = send(
        json!({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent.as_str(), "key": "👍"}}),
        "m.reaction",
        "dup1",
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (400, Some("M_DUPLICATE_ANNOTATION")),
        "{v}"
    );
    let (status, v) = send(
        json!({"msgtype": "m.text", "body": "x",
               "m.relates_to": {"rel_type": "m.thread", "event_id": refs[0].as_str()}}),
        "m.room.message",
        "thread1",
    )
    .await;
    assert_eq!(status, 400, "{v}");

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread")]
async fn outsiders_cannot_read_relations_or_threads() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let url = node.client_url();
    let alice = user(&url, "alice").await;
    let mallory = user(&url, "mallory").await;
    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PrivateChat);
    let room = alice.client.create_room(create).await.expect("create");
    let room_id = room.room_id().to_owned();
    let root = send_text(&room, "secret").await;
    send_in_thread(&room, &root, "secret reply").await;

    // The spec's answer for /relations is 404 (the event is not visible to them).
    let (status, v) = call(
        &url,
        &mallory.token,
        Method::GET,
        &relations_path(&room_id, &root, ""),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );
    // For /threads it is 403.
    let (status, v) = call(
        &url,
        &mallory.token,
        Method::GET,
        &format!("/v1/rooms/{}/threads", path_segment(room_id.as_str())),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (403, Some("M_FORBIDDEN")),
        "{v}"
    );
    // A member asking about an unknown event: 404 too.
    let (status, v) = call(
        &url,
        &alice.token,
        Method::GET,
        &format!(
            "/v1/rooms/{}/relations/{}",
            path_segment(room_id.as_str()),
            path_segment("$unknown")
        ),
    )
    .await;
    assert_eq!(
        (status, v["errcode"].as_str()),
        (404, Some("M_NOT_FOUND")),
        "{v}"
    );
    // And the member does see the thread.
    let threads = get_ok(
        &url,
        &alice,
        &format!(
            "/v1/rooms/{}/threads?include=all",
            path_segment(room_id.as_str())
        ),
    )
    .await;
    assert_eq!(threads["chunk"][0]["event_id"], root.as_str(), "{threads}");
    let (status, _) = call(
        &url,
        &alice.token,
        Method::GET,
        &format!(
            "/v1/rooms/{}/threads?include=some",
            path_segment(room_id.as_str())
        ),
    )
    .await;
    assert_eq!(status, 400);

    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relations_received_over_federation_are_aggregated() {
    use matrix_sdk::ruma::OwnedServerName;
    use warren_tests::{connect_nodes, start_federated_node};

    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start_federated_node(da.path()).await.expect("node a");
    let b = start_federated_node(db.path()).await.expect("node b");
    connect_nodes(&b, &a).await.expect("connect");
    let alice = user(&a.node.client_url(), "alice").await;
    let bob = user(&b.node.client_url(), "bob").await;
    let mut create = CreateRoomRequest::new();
    create.preset = Some(RoomPreset::PublicChat);
    let room = alice.client.create_room(create).await.expect("create");
    let room_id = room.room_id().to_owned();
    let via: OwnedServerName = a.name().try_into().expect("server name");
    let target: &matrix_sdk::ruma::RoomOrAliasId = (&*room_id).into();
    let bob_room = bob
        .client
        .join_room_by_id_or_alias(target, &[via])
        .await
        .expect("bob joins over federation");

    // Bob's messages, edit and thread replies are built on B and received by A.
    let original = send_text(&bob_room, "typo").await;
    let edit = send_edit(&bob_room, &original, "no typo").await;
    send_in_thread(&bob_room, &original, "first reply").await;
    let last = send_in_thread(&bob_room, &original, "second reply").await;

    let url_a = a.node.client_url();
    let path = event_path(&room_id, &original);
    let mut seen = Value::Null;
    warren_tests::wait_until(WAIT, "node A bundles bob's edit and thread", async || {
        let (status, ev) = call(&url_a, &alice.token, Method::GET, &path).await;
        let done = status == 200
            && bundled_edit(&ev) == Some(edit.as_str())
            && ev["unsigned"]["m.relations"]["m.thread"]["count"] == 2;
        seen = ev;
        Ok(done)
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}; last answer: {seen}"));
    let thread = &seen["unsigned"]["m.relations"]["m.thread"];
    assert_eq!(thread["latest_event"]["event_id"], last.as_str());
    assert_eq!(thread["current_user_participated"], false);
    let threads = get_ok(
        &url_a,
        &alice,
        &format!("/v1/rooms/{}/threads", path_segment(room_id.as_str())),
    )
    .await;
    assert_eq!(
        threads["chunk"][0]["event_id"],
        original.as_str(),
        "{threads}"
    );

    a.stop().await.expect("stop a");
    b.stop().await.expect("stop b");
}
