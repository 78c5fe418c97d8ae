//! The callback interface an app implements to hear about the node, and the thread that
//! calls it.
//!
//! Callbacks never run on the node's runtime: events go through a channel to one
//! dedicated thread per node, which calls the listener in order. A slow or throwing
//! listener therefore delays only later callbacks, never the node.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc;

use parking_lot::Mutex;

/// What a node is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum NodeState {
    /// Serving the client API and connected to the P2P network.
    Running,
    /// `stop()` was called and the node is shutting down.
    Stopping,
    /// Stopped: the data directory is free for a new node.
    Stopped,
}

/// Implemented by the app to hear about the node. Called on a thread of Warren's (not
/// the UI thread): hop to your main thread before touching UI.
#[uniffi::export(with_foreign)]
pub trait NodeListener: Send + Sync {
    /// The first connection to another node was established. (Peers connected before
    /// the listener was set are not replayed: read them with `peers()`.)
    fn on_peer_connected(&self, server_name: String);
    /// The last connection to another node closed.
    fn on_peer_disconnected(&self, server_name: String);
    /// The node's state changed. Also called once with the current state when the
    /// listener is set.
    fn on_state_changed(&self, state: NodeState);
}

/// One thing to tell the listener.
#[derive(Debug)]
pub(crate) enum Event {
    PeerConnected(String),
    PeerDisconnected(String),
    State(NodeState),
}

/// The listener slot shared by a node and its dispatch thread.
pub(crate) type Slot = Arc<Mutex<Option<Arc<dyn NodeListener>>>>;

/// Start the dispatch thread. It ends when every sender of the returned channel is gone.
pub(crate) fn spawn_dispatcher(slot: Slot) -> std::io::Result<mpsc::Sender<Event>> {
    let (tx, rx) = mpsc::channel::<Event>();
    std::thread::Builder::new()
        .name("warren-listener".into())
        .spawn(move || {
            for event in rx {
                // Clone out of the lock: a callback may call `set_listener` itself.
                let Some(listener) = slot.lock().clone() else {
                    continue;
                };
                // A foreign exception surfaces in Rust as a panic of the generated
                // callback code; it must not kill this thread or reach the app.
                let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| match event {
                    Event::PeerConnected(name) => listener.on_peer_connected(name),
                    Event::PeerDisconnected(name) => listener.on_peer_disconnected(name),
                    Event::State(state) => listener.on_state_changed(state),
                }));
                if delivered.is_err() {
                    tracing::warn!("a NodeListener callback failed; event dropped");
                }
            }
        })?;
    Ok(tx)
}
