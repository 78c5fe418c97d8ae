//! Criterion micro-benchmark of the send path on a real node database: what
//! `PUT /rooms/{roomId}/send/m.room.message/{txnId}` does inside the single writer,
//! without HTTP.
//!
//! - `send_message (2 members)`: one `m.room.message` with a fresh transaction id into
//!   a public room of two local members (one of them is notified);
//! - `send_message (100 members)`: the same into a room of 100 local members (99 are
//!   notified: push rules evaluated, notification rows and unread counts written).
//!
//! Each iteration is what the handler does (`room_writes::send_message_async`, run to
//! completion on the node's runtime): the members' push rules evaluated on a reader, or
//! (a lone send into a room whose push context is kept) inside its write, then one write (its own transaction, committed, as
//! a sequential client gets): the retry check, the relation check, then
//! `rooms::append_planned` (DAG fields, building, hashing and signing, auth, persisting,
//! notification rows, federation outbox). The search index is filled after the commits
//! by the node's indexer, as on a running node. The node is started in a temporary directory; the rooms are set
//! up through the core's own room engine.
//!
//! Run: `cargo bench -p warren-core --bench send`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;
use warren_core::events::NewEvent;
use warren_core::requester::Requester;
use warren_core::room_writes::send_message_async;
use warren_core::rooms::{CreateRoom, append_event, create_room};
use warren_core::server::Server;
use warren_core::storage;
use warren_core::{Config, Node};

const DEVICE: &str = "BENCH";

/// A public room created by the first of `members` local users, all of them joined.
fn room_of(server: &Arc<Server>, name: &str, members: usize) -> (String, String) {
    let users: Vec<String> = (0..members)
        .map(|i| server.user_id(&format!("{name}{i}")))
        .collect();
    server
        .write(|c| {
            for u in &users {
                storage::create_user(c, u, None, false, u)?;
            }
            Ok(())
        })
        .expect("users");
    let creator = users[0].clone();
    let room = server
        .write(|c| {
            create_room(
                c,
                server,
                &creator,
                CreateRoom {
                    preset: Some("public_chat".into()),
                    ..Default::default()
                },
            )
        })
        .expect("create room");
    for u in &users[1..] {
        let join = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(u.clone()),
            content: json!({"membership": "join"}),
            sender: u.clone(),
            redacts: None,
        };
        server
            .write(|c| append_event(c, server, &room, join, None))
            .expect("join");
    }
    (room, creator)
}

/// One client send, as the handler runs it: `room_writes::send_message_async` on the
/// node's runtime. The requester is the node acting for the sender, with a device, so
/// no rate limit stops the benchmark.
fn send(
    rt: &tokio::runtime::Runtime,
    server: &Arc<Server>,
    room: &str,
    sender: &str,
    n: u64,
) -> String {
    let requester = Requester {
        device_id: DEVICE.to_owned(),
        ..Requester::node_acting_for(sender)
    };
    rt.block_on(send_message_async(
        server,
        &requester,
        room,
        "m.room.message".to_owned(),
        json!({"msgtype": "m.text", "body": format!("message {n} of the send benchmark")}),
        &format!("txn{n}"),
        None,
    ))
    .expect("send")
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
    let counter = AtomicU64::new(0);

    for members in [2, 100] {
        let (room, sender) = room_of(&server, &format!("m{members}u"), members);
        // Warm up caches and the statement cache, as a running node has.
        for _ in 0..20 {
            send(
                &rt,
                &server,
                &room,
                &sender,
                counter.fetch_add(1, Ordering::Relaxed),
            );
        }
        c.bench_function(&format!("send_message ({members} members)"), |b| {
            b.iter(|| {
                black_box(send(
                    &rt,
                    &server,
                    &room,
                    &sender,
                    counter.fetch_add(1, Ordering::Relaxed),
                ))
            })
        });
    }
    rt.block_on(node.shutdown()).expect("shutdown");
}

criterion_group!(send_benches, benches);
criterion_main!(send_benches);
