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
