//! Criterion micro-benchmark of `/sync` response building and writing out (the JSON
//! bytes the client API sends) on a real node database:
//! a user in 20 rooms of 50 messages each (two members per room).
//!
//! - `sync_initial`: an initial sync (no `since`), the server's default timeline limit;
//! - `sync_incremental`: an incremental sync from just before the newest message, which
//!   carries one event in one room (what a waiting client gets when a message arrives).
//!
//! The node is started in a temporary directory; rooms and messages are written through
//! the core's own room engine, as a client's sends would be.
//!
//! Run: `cargo bench -p warren-core --bench sync`.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use warren_core::client_api::Requester;
use warren_core::events::NewEvent;
use warren_core::rooms::{CreateRoom, append_event, create_room};
use warren_core::server::Server;
use warren_core::storage;
use warren_core::streams::SyncToken;
use warren_core::sync::{Filter, SyncParams, sync};
use warren_core::{Config, Node};

/// Rooms and messages per room; `WARREN_BENCH_ROOMS` and `WARREN_BENCH_MESSAGES` change
/// them (e.g. 1,000 rooms of 10 messages, as `warren bench` measures, for profiling).
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn message(sender: &str, body: String) -> NewEvent {
    NewEvent {
        kind: "m.room.message".into(),
        state_key: None,
        content: json!({"msgtype": "m.text", "body": body}),
        sender: sender.to_owned(),
        redacts: None,
    }
}

/// Users, rooms and messages; returns bob's caller and the last room.
fn populate(server: &Arc<Server>) -> (Requester, String) {
    let alice = server.user_id("alice");
    let bob = server.user_id("bob");
    server
        .write(|c| {
            for (u, token) in [(&alice, "alice-token"), (&bob, "bob-token")] {
                storage::create_user(c, u, None, false, u)?;
                storage::start_session(c, u, "BENCH", None, token)?;
            }
            Ok(())
        })
        .expect("users");
    let mut last = String::new();
    for r in 0..size("WARREN_BENCH_ROOMS", 20) {
        let preset = Some("public_chat".into());
        let room = server
            .write(|c| {
                create_room(
                    c,
                    server,
                    &alice,
                    CreateRoom {
                        preset,
                        ..Default::default()
                    },
                )
            })
            .expect("create room");
        let join = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(bob.clone()),
            content: json!({"membership": "join"}),
            sender: bob.clone(),
            redacts: None,
        };
        server
            .write(|c| append_event(c, server, &room, join, None))
            .expect("join");
        for m in 0..size("WARREN_BENCH_MESSAGES", 50) {
            let ev = message(&alice, format!("room {r} message {m}"));
            server
                .write(|c| append_event(c, server, &room, ev, None))
                .expect("send");
        }
        last = room;
    }
    let caller = Requester::user(bob, "BENCH");
    (caller, last)
}

fn params(since: Option<SyncToken>) -> SyncParams {
    SyncParams {
        since,
        timeout: Duration::ZERO,
        filter: Filter::default(),
        full_state: false,
    }
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path());
    config.client_addr = "127.0.0.1:0".parse().expect("address");
    let node = rt.block_on(Node::start(config)).expect("node starts");
    let server = node.server().clone();
    let (caller, room) = populate(&server);

    let initial = rt
        .block_on(sync(server.clone(), caller.clone(), params(None)))
        .expect("initial sync")
        .to_value()
        .expect("JSON");
    assert_eq!(
        initial["rooms"]["join"].as_object().map(|r| r.len()),
        Some(size("WARREN_BENCH_ROOMS", 20)),
        "every room is in the initial sync"
    );
    // Built and written out, as the client API answers it.
    c.bench_function("sync_initial (20 rooms x 50 messages)", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(sync(server.clone(), caller.clone(), params(None)))
                    .expect("sync")
                    .to_bytes()
                    .expect("JSON"),
            )
        })
    });

    let before = server.notifier.current();
    let alice = server.user_id("alice");
    server
        .write(|c| append_event(c, &server, &room, message(&alice, "new".into()), None))
        .expect("send");
    let since = Some(before);
    let one = rt
        .block_on(sync(server.clone(), caller.clone(), params(since)))
        .expect("incremental sync")
        .to_value()
        .expect("JSON");
    assert_eq!(
        one["rooms"]["join"][&room]["timeline"]["events"]
            .as_array()
            .map(Vec::len),
        Some(1),
        "the incremental sync carries the one new message"
    );
    c.bench_function("sync_incremental (one new message, 20 rooms)", |b| {
        b.iter(|| {
            black_box(
                rt.block_on(sync(server.clone(), caller.clone(), params(since)))
                    .expect("sync")
                    .to_bytes()
                    .expect("JSON"),
            )
        })
    });
    rt.block_on(node.shutdown()).expect("shutdown");
}

criterion_group!(sync_benches, benches);
criterion_main!(sync_benches);
