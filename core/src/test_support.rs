//! What the core's tests on a real node share: a node in a temporary directory, and
//! events to append to its rooms.

use serde_json::Value;

use crate::events::NewEvent;
use crate::{Config, Node};

/// A node with its data in a new temporary directory (kept as long as the first value),
/// its client API on a free loopback port.
pub async fn node() -> (tempfile::TempDir, Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = Config::new(dir.path());
    config.client_addr = "127.0.0.1:0".parse().expect("addr");
    let node = Node::start(config).await.expect("start");
    (dir, node)
}

/// An event to append.
pub fn ev(sender: &str, kind: &str, state_key: Option<&str>, content: Value) -> NewEvent {
    NewEvent {
        kind: kind.into(),
        state_key: state_key.map(str::to_owned),
        content,
        sender: sender.into(),
        redacts: None,
    }
}

/// An `m.text` message from `sender`.
pub fn message(sender: &str, body: &str) -> NewEvent {
    ev(
        sender,
        "m.room.message",
        None,
        serde_json::json!({"msgtype": "m.text", "body": body}),
    )
}

/// Append an `m.text` message from `sender` to `room` in a write of its own; its id.
pub fn send(server: &crate::server::Server, room: &str, sender: &str, body: &str) -> String {
    server
        .write(|c| crate::rooms::append_event(c, server, room, message(sender, body), None))
        .expect("send")
        .event_id
}

/// A room of local users, in one write: `creator` (created as a user with the others)
/// makes it with `options`, then every one of `members` joins. Returns the room id.
pub fn room_with(
    server: &crate::server::Server,
    creator: &str,
    members: &[&str],
    options: crate::rooms::CreateRoom,
) -> String {
    server
        .write(|c| {
            for u in std::iter::once(&creator).chain(members) {
                crate::storage::create_user(c, u, None, false, u)?;
            }
            let room = crate::rooms::create_room(c, server, creator, options)?;
            for u in members {
                let join = ev(
                    u,
                    "m.room.member",
                    Some(u),
                    serde_json::json!({"membership": "join"}),
                );
                crate::rooms::append_event(c, server, &room, join, None)?;
            }
            Ok(room)
        })
        .expect("room")
}

/// A public room of local users (see [`room_with`]).
pub fn public_room(server: &crate::server::Server, creator: &str, members: &[&str]) -> String {
    let options = crate::rooms::CreateRoom {
        preset: Some("public_chat".into()),
        ..Default::default()
    };
    room_with(server, creator, members, options)
}
