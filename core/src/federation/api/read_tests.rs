//! The services behind the federation read endpoints, on a real node's database: who
//! may read, what they see, and the DAG walks. A "remote" server is put in a room by
//! appending a join for one of its users locally (rooms do not span nodes yet).

use serde_json::json;

use crate::Error;
use crate::events::NewEvent;
use crate::federation::visible::{
    RoomRead, auth_chain, authorize_room_read, load_room_pdu, state_before, state_events,
};
use crate::federation::walk;
use crate::rooms::{CreateRoom, append_event, create_room};
use crate::server::Server;
use crate::storage::StoredEvent;
use crate::test_support::{ev, node};

const REMOTE: &str = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";
const OTHER: &str = "cccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccccc";

fn send(server: &Server, room: &str, e: NewEvent) -> String {
    server
        .write(|tx| append_event(tx, server, room, e, None))
        .expect("append")
        .event_id
}

fn message(server: &Server, room: &str, sender: &str, body: &str) -> String {
    send(
        server,
        room,
        ev(
            sender,
            "m.room.message",
            None,
            json!({"msgtype": "m.text", "body": body}),
        ),
    )
}

fn room(server: &Server, creator: &str, req: CreateRoom) -> String {
    server
        .write(|tx| create_room(tx, server, creator, req))
        .expect("create room")
}

fn public() -> CreateRoom {
    CreateRoom {
        preset: Some("public_chat".into()),
        ..Default::default()
    }
}

fn read(server: &Server, room: &str, origin: &str) -> Result<RoomRead, Error> {
    server.db.read(|c| authorize_room_read(c, room, origin))
}

fn ids(events: &[StoredEvent]) -> Vec<&str> {
    events.iter().map(|e| e.event_id.as_str()).collect()
}

#[tokio::test]
async fn room_reads_need_a_joined_member_or_a_world_readable_room_and_the_acl() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room_id = room(&server, &alice, public());

    let err = read(&server, "!unknown:x", REMOTE).expect_err("unknown room");
    assert!(matches!(err, Error::NotFound(_)), "{err:?}");
    let err = read(&server, &room_id, REMOTE).expect_err("not in the room");
    assert!(matches!(err, Error::Forbidden(_)), "{err:?}");

    let bob = format!("@bob:{REMOTE}");
    send(
        &server,
        &room_id,
        ev(
            &bob,
            "m.room.member",
            Some(&bob),
            json!({"membership": "join"}),
        ),
    );
    let ok = read(&server, &room_id, REMOTE).expect("joined server may read");
    assert!(ok.origin_joined);
    // A server whose name merely ends like a joined one is not in the room.
    assert!(read(&server, &room_id, &REMOTE[1..]).is_err());

    // The ACL wins over membership.
    send(
        &server,
        &room_id,
        ev(
            &alice,
            "m.room.server_acl",
            Some(""),
            json!({"allow": ["*"], "deny": [REMOTE]}),
        ),
    );
    let err = read(&server, &room_id, REMOTE).expect_err("denied by ACL");
    assert!(matches!(err, Error::Forbidden(m) if m.contains("ACL")));

    // A world-readable room may be read by a server with nobody in it.
    let open = room(
        &server,
        &alice,
        CreateRoom {
            initial_state: vec![(
                "m.room.history_visibility".into(),
                String::new(),
                json!({"history_visibility": "world_readable"}),
            )],
            ..public()
        },
    );
    let ok = read(&server, &open, OTHER).expect("world readable");
    assert!(!ok.origin_joined);
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn events_the_origin_may_not_see_are_handed_out_redacted() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room_id = room(
        &server,
        &alice,
        CreateRoom {
            initial_state: vec![(
                "m.room.history_visibility".into(),
                String::new(),
                json!({"history_visibility": "joined"}),
            )],
            ..public()
        },
    );
    let before = message(&server, &room_id, &alice, "before bob");
    let bob = format!("@bob:{REMOTE}");
    let join = send(
        &server,
        &room_id,
        ev(
            &bob,
            "m.room.member",
            Some(&bob),
            json!({"membership": "join"}),
        ),
    );
    let after = message(&server, &room_id, &alice, "after bob");
    let r = read(&server, &room_id, REMOTE).expect("read");
    let rendered = server
        .db
        .read(|c| {
            let evs = [&before, &join, &after]
                .iter()
                .map(|id| load_room_pdu(c, &room_id, id))
                .collect::<Result<Vec<_>, _>>()?;
            r.render(c, &evs)
        })
        .expect("render");
    assert_eq!(rendered[0]["content"], json!({}), "{}", rendered[0]);
    assert!(rendered[0]["signatures"].is_object() && rendered[0]["prev_events"].is_array());
    assert_eq!(rendered[1]["content"]["membership"], "join");
    assert_eq!(rendered[2]["content"]["body"], "after bob");
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn state_before_an_event_and_auth_chains() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    for version in ["11", "12"] {
        let room_id = room(
            &server,
            &alice,
            CreateRoom {
                room_version: Some(version.into()),
                ..public()
            },
        );
        let first = message(&server, &room_id, &alice, "one");
        send(
            &server,
            &room_id,
            ev(&alice, "m.room.name", Some(""), json!({"name": "Room"})),
        );
        let second = message(&server, &room_id, &alice, "two");
        server
            .db
            .read(|c| {
                let ev1 = load_room_pdu(c, &room_id, &first)?;
                let ev2 = load_room_pdu(c, &room_id, &second)?;
                let s1 = state_before(c, &ev1)?;
                let s2 = state_before(c, &ev2)?;
                let key = |t: &str| (t.to_owned(), String::new());
                let member = ("m.room.member".to_owned(), alice.clone());
                assert!(s1.contains_key(&key("m.room.create")));
                assert!(s1.contains_key(&member));
                assert!(!s1.contains_key(&key("m.room.name")), "name came later");
                assert!(s2.contains_key(&key("m.room.name")));
                let state = state_events(c, &s2)?;
                let chain = auth_chain(c, &room_id, &state)?;
                assert!(chain.windows(2).all(|w| w[0].depth <= w[1].depth));
                let create = s2[&key("m.room.create")].as_str();
                let power = s2[&key("m.room.power_levels")].as_str();
                let join = s2[&member].as_str();
                // From v12 the create event is implied by the room id and is no
                // longer an auth event; before, it heads every auth chain.
                assert_eq!(ids(&chain).contains(&create), version == "11", "v{version}");
                if version == "11" {
                    assert_eq!(chain.first().map(|e| e.event_id.as_str()), Some(create));
                }
                // The auth chain of a message: power levels and alice's join.
                let own = auth_chain(c, &room_id, std::slice::from_ref(&ev2))?;
                let own_ids = ids(&own);
                assert!(
                    own_ids.contains(&power) && own_ids.contains(&join),
                    "{own_ids:?}"
                );
                assert!(!own_ids.contains(&second.as_str()));
                // The create event has empty state before it.
                let create_ev = load_room_pdu(c, &room_id, create)?;
                assert!(state_before(c, &create_ev)?.is_empty());
                // Other rooms' events are not this room's.
                assert!(matches!(
                    load_room_pdu(c, "!other:x", &first),
                    Err(Error::NotFound(_))
                ));
                Ok(())
            })
            .expect("checks");
    }
    node.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn backfill_and_missing_events_walk_the_dag_within_limits() {
    let (_dir, node) = node().await;
    let server = node.server().clone();
    let alice = server.user_id("alice");
    let room_id = room(&server, &alice, public());
    let m: Vec<String> = (0..6)
        .map(|i| message(&server, &room_id, &alice, &format!("m{i}")))
        .collect();
    server
        .db
        .read(|c| {
            let got = walk::backfill(c, &room_id, &[m[5].clone()], 3)?;
            assert_eq!(ids(&got), vec![m[5].as_str(), &m[4], &m[3]]);
            // Everything, capped, deepest first, ending at the create event.
            let all = walk::backfill(c, &room_id, &[m[5].clone()], 10_000)?;
            assert!(all.len() > 6 && all.len() <= walk::MAX_BACKFILL);
            assert!(all.windows(2).all(|w| w[0].depth > w[1].depth));
            assert_eq!(all.last().map(|e| e.kind.as_str()), Some("m.room.create"));
            // Unknown starting points give nothing.
            assert!(walk::backfill(c, &room_id, &["$nope".into()], 10)?.is_empty());
            assert!(walk::backfill(c, "!other:x", &[m[5].clone()], 10)?.is_empty());

            let between =
                walk::missing_events(c, &room_id, &[m[1].clone()], &[m[5].clone()], 10, 0)?;
            assert_eq!(ids(&between), vec![m[2].as_str(), &m[3], &m[4]]);
            let limited =
                walk::missing_events(c, &room_id, &[m[1].clone()], &[m[5].clone()], 2, 0)?;
            assert_eq!(ids(&limited), vec![m[3].as_str(), &m[4]]);
            let deep = load_room_pdu(c, &room_id, &m[3])?.depth;
            let shallow = walk::missing_events(c, &room_id, &[], &[m[5].clone()], 20, deep)?;
            assert_eq!(ids(&shallow), vec![m[3].as_str(), &m[4]]);
            let capped = walk::missing_events(c, &room_id, &[], &[m[5].clone()], 1_000, 0)?;
            assert!(capped.len() <= walk::MAX_MISSING_EVENTS && capped.len() > 6);
            Ok(())
        })
        .expect("walks");
    node.shutdown().await.expect("shutdown");
}
