//! Search indexing after the commit: a send leaves the index alone, a search catches up
//! first (so it sees every committed event, and no redacted text), and the indexer
//! catches up on its own, batch by batch, with nobody searching.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;

use crate::requester::Requester;
use crate::rooms::{CreateRoom, append_event};
use crate::search::{self, RoomEventsCriteria};
use crate::server::Server;
use crate::storage;
use crate::test_support::{ev, message, node, room_with, send};

fn room_of(server: &Arc<Server>, user: &str) -> String {
    room_with(server, user, &[], CreateRoom::default())
}

/// The event ids a search for `term` finds for `user`.
fn found(server: &Server, user: &str, term: &str) -> Vec<String> {
    search::catch_up(server).expect("catch up");
    let criteria: RoomEventsCriteria =
        serde_json::from_value(json!({"search_term": term})).expect("criteria");
    let answer = server
        .db
        .read_tx(|c| search::room_events(c, &Requester::user(user, "D"), &criteria, None))
        .expect("search");
    answer["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| r["result"]["event_id"].as_str().expect("id").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_leaves_the_index_alone_and_a_search_sees_it() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_of(&server, &alice);
    // The send and the look at the index in one write: nothing can index in between.
    let (sent, behind) = server
        .write(|c| {
            let e = message(&alice, "otters hold hands");
            let sent = append_event(c, &server, &room, e, None)?.event_id;
            Ok((sent, storage::search_index_lag(c)?))
        })
        .expect("send");
    assert!(behind >= 1, "the send itself indexed: lag {behind}");
    assert_eq!(found(&server, &alice, "otters"), vec![sent]);
    assert_eq!(
        server.db.read(storage::search_index_lag).expect("lag"),
        0,
        "a search catches the index up first"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_redacted_before_it_was_indexed_is_never_found() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_of(&server, &alice);
    let (kept, gone) = server
        .write(|c| {
            let kept = append_event(c, &server, &room, message(&alice, "badgers dig"), None)?;
            let gone = append_event(c, &server, &room, message(&alice, "badgers sleep"), None)?;
            let (kept, gone) = (kept.event_id, gone.event_id);
            let mut redaction = ev(&alice, "m.room.redaction", None, json!({}));
            redaction.redacts = Some(gone.clone());
            append_event(c, &server, &room, redaction, None)?;
            Ok((kept, gone))
        })
        .expect("sends");
    let hits = found(&server, &alice, "badgers");
    assert_eq!(hits, vec![kept], "{gone} was redacted before indexing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn index_pending_takes_a_batch_at_a_time_and_stops_at_until() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_of(&server, &alice);
    // Whatever room creation left is indexed first, so only the messages wait.
    search::catch_up(&server).expect("catch up");
    let positions: Vec<i64> = (0..5)
        .map(|i| {
            let id = send(&server, &room, &alice, &format!("word{i}"));
            server
                .db
                .read(|c| Ok(storage::get_event(c, &id)?.expect("stored").stream_ordering))
                .expect("position")
        })
        .collect();
    let batch = server
        .write(|c| storage::index_pending(c, 2, positions[3]))
        .expect("index");
    assert_eq!((batch.scanned, batch.indexed, batch.more), (2, 2, true));
    let batch = server
        .write(|c| storage::index_pending(c, 2, positions[3]))
        .expect("index");
    assert_eq!((batch.scanned, batch.indexed, batch.more), (2, 2, false));
    // Up to `until` and no further: the fifth waits.
    assert_eq!(server.db.read(storage::search_index_lag).expect("lag"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_indexer_catches_up_with_nobody_searching() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_of(&server, &alice);
    // More than two batches, in one write: the indexer needs several writes for them.
    let n = search::INDEX_BATCH * 2 + 10;
    server
        .write(|c| {
            for i in 0..n {
                let e = message(&alice, &format!("heron {i}"));
                append_event(c, &server, &room, e, None)?;
            }
            Ok(())
        })
        .expect("sends");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let lag = server.db.read(storage::search_index_lag).expect("lag");
        if lag == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "indexer still {lag} behind");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let hits = server
        .db
        .read(|c| {
            storage::search_events(
                c,
                "\"heron\"*",
                &["content.body"],
                std::slice::from_ref(&room),
                false,
                n + 1,
            )
        })
        .expect("hits");
    assert_eq!(hits.len(), n);
}

/// Indexing is a write nobody's `/sync` sees: it leaves the write generation (which the
/// answers kept for repeated initial syncs are checked against) where it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexing_keeps_the_kept_initial_sync_answers_valid() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room = room_of(&server, &alice);
    send(&server, &room, &alice, "kingfisher");
    let before = server.db.write_generation();
    let behind = server.db.read(storage::search_index_lag).expect("lag");
    let indexed = search::catch_up(&server).expect("catch up");
    assert!(
        behind == 0 || indexed > 0,
        "something was indexed, or the indexer got there first"
    );
    assert_eq!(server.db.write_generation(), before);
    assert_eq!(server.db.read(storage::search_index_lag).expect("lag"), 0);
}
