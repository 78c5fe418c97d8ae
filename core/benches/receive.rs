//! Criterion micro-benchmark of receiving a PDU over federation on a real node database:
//! what `rooms::receive_pdu` does for a remote user's message (format, signature and
//! hash checks, auth against its auth events, the state before it, the current state,
//! persisting it), without the transport.
//!
//! - `receive_message (10 remote members)`: a room of one local user and ten users of
//!   one remote server;
//! - `receive_message (1000 remote members)`: the same room shape with a thousand remote
//!   members: the room's state is a hundred times larger, the work per message should
//!   not be.
//!
//! Each message is built by the remote server on the room's forward extremities (the
//! common case of a DAG growing in a line). The members join through `receive_pdu`
//! too. Run: `cargo bench -p warren-core --bench receive`.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::{Value, json};
use warren_core::error::Error;
use warren_core::events::{EventReference, NewEvent, build_pdu, rules_for};
use warren_core::rooms::{BoxFuture, CreateRoom, Outcome, RemoteEvents, create_room, receive_pdu};
use warren_core::server::Server;
use warren_core::storage;
use warren_core::{Config, Identity, Node};

/// A remote server that serves nothing: every event the benchmark sends is built on
/// events the node already has.
struct NoRemote;

impl RemoteEvents for NoRemote {
    fn get_event<'a>(&'a self, _: &'a str, id: &'a str) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move { Err(Error::NotFound(format!("no {id}"))) })
    }

    fn get_missing_events<'a>(
        &'a self,
        _: &'a str,
        _: &'a str,
        _: Vec<String>,
        _: Vec<String>,
        _: usize,
    ) -> BoxFuture<'a, Result<Vec<Value>, Error>> {
        Box::pin(async { Ok(Vec::new()) })
    }
}

/// A room on the node and a remote server whose users take part in it.
struct Room {
    server: Arc<Server>,
    remote: Identity,
    room: String,
}

impl Room {
    fn current(&self, ty: &str, sk: &str) -> Option<String> {
        self.server
            .db
            .read(|c| storage::current_state_event(c, &self.room, ty, sk))
            .expect("read")
    }

    /// A PDU of the remote user `sender` on the room's forward extremities, with the
    /// auth events the current state gives.
    fn build(&self, sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> Value {
        let (prev, depth) = self
            .server
            .db
            .read(|c| storage::forward_extremities(c, &self.room))
            .expect("extremities")
            .into_iter()
            .fold((Vec::new(), 0), |(mut ids, d), (id, depth)| {
                ids.push(id);
                (ids, d.max(depth))
            });
        let mut auth: Vec<String> = [("m.room.power_levels", ""), ("m.room.member", sender)]
            .into_iter()
            .filter_map(|(ty, sk)| self.current(ty, sk))
            .collect();
        if kind == "m.room.member" {
            auth.extend(self.current("m.room.join_rules", ""));
        }
        let (_, rules) = rules_for("12").expect("rules");
        let ev = NewEvent {
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            content,
            sender: sender.into(),
            redacts: None,
        };
        let (_, obj) = build_pdu(
            &self.remote,
            &rules,
            Some(&self.room),
            &ev,
            &EventReference::ids(&prev),
            &EventReference::ids(&auth),
            depth + 1,
            storage::now_ms(),
        )
        .expect("build");
        serde_json::to_value(&obj).expect("json")
    }

    async fn receive(&self, pdu: Value) {
        let outcome = receive_pdu(
            &self.server,
            &NoRemote,
            self.remote.server_name(),
            &self.room,
            pdu,
        )
        .await
        .expect("receive");
        assert!(
            matches!(outcome, Outcome::Accepted { .. }),
            "not accepted: {outcome:?}"
        );
    }

    fn user(&self, i: usize) -> String {
        format!("@u{i}:{}", self.remote.server_name())
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
    let counter = AtomicU64::new(0);

    for (seed, members) in [(7u8, 10usize), (8, 1000)] {
        let alice = server.user_id(&format!("alice{members}"));
        server
            .write(|c| storage::create_user(c, &alice, None, false, &alice))
            .expect("user");
        let room = server
            .write(|c| {
                create_room(
                    c,
                    &server,
                    &alice,
                    CreateRoom {
                        preset: Some("public_chat".into()),
                        room_version: Some("12".into()),
                        ..Default::default()
                    },
                )
            })
            .expect("create room");
        let r = Room {
            server: server.clone(),
            remote: Identity::from_seed([seed; 32]).expect("identity"),
            room,
        };
        rt.block_on(async {
            for i in 0..members {
                let u = r.user(i);
                let join = r.build(&u, "m.room.member", Some(&u), json!({"membership": "join"}));
                r.receive(join).await;
            }
        });
        let sender = r.user(0);
        c.bench_function(
            &format!("receive_message ({members} remote members)"),
            |b| {
                b.iter(|| {
                    let n = counter.fetch_add(1, Ordering::Relaxed);
                    let pdu = r.build(
                        &sender,
                        "m.room.message",
                        None,
                        json!({"msgtype": "m.text", "body": format!("message {n}")}),
                    );
                    rt.block_on(r.receive(black_box(pdu)));
                })
            },
        );
    }
    rt.block_on(node.shutdown()).expect("shutdown");
}

criterion_group!(receive_benches, benches);
criterion_main!(receive_benches);
