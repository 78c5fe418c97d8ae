//! The callback interface an app implements to hear about the node, and the thread that
//! calls it.
//!
//! Callbacks never run on the node's runtime: events go through a channel to one
//! dedicated thread per node, which calls the listener in order. A slow or throwing
//! listener therefore delays only later callbacks, never the node.
//!
//! The channel holds at most [`QUEUE`] events. Past that, peer connect/disconnect events
//! are dropped (a peer churning its connections must not grow memory while the app is
//! slow) and state changes are coalesced: the newest one waits in a slot of its own and
//! is delivered once the thread catches up.
//!
//! Notifications wait in a queue of their own of at most [`NOTIFICATIONS`]; when the app
//! does not keep up, the oldest are dropped (the newest are the ones worth showing, and
//! each carries the room's current unread counts).

use std::collections::VecDeque;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::mpsc::{self, TryRecvError, TrySendError};

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
    /// An event arrived that the push rules say should notify a user of this node (a
    /// message in a one-to-one room, a mention, …): show a local notification. No push
    /// gateway is involved. Not called for the user's own events or muted rooms.
    fn on_notification(&self, notification: Notification);
}

/// A notification for a user of this node, as the push rules decided it.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Notification {
    /// The user notified (`@alice:…`).
    pub user_id: String,
    /// The room.
    pub room_id: String,
    /// The event.
    pub event_id: String,
    /// The event's type (`m.room.message`, `m.room.encrypted`, …).
    pub event_type: String,
    /// Who sent it.
    pub sender: String,
    /// The sender's display name in the room, if set.
    pub sender_display_name: Option<String>,
    /// The room's name, if it has one.
    pub room_name: Option<String>,
    /// The message text (`content.body`), when the event is not encrypted.
    pub body: Option<String>,
    /// A mention or keyword: show it prominently.
    pub highlight: bool,
    /// Unread notifications in the room for the user, this one included.
    pub notification_count: u64,
    /// Unread highlights in the room for the user, this one included.
    pub highlight_count: u64,
}

impl From<&warren_core::push::LocalNotification> for Notification {
    fn from(n: &warren_core::push::LocalNotification) -> Self {
        Notification {
            user_id: n.user_id.clone(),
            room_id: n.room_id.clone(),
            event_id: n.event_id.clone(),
            event_type: n.event_type.clone(),
            sender: n.sender.clone(),
            sender_display_name: n.sender_display_name.clone(),
            room_name: n.room_name.clone(),
            body: n.body.clone(),
            highlight: n.highlight,
            notification_count: u64::try_from(n.notification_count).unwrap_or(0),
            highlight_count: u64::try_from(n.highlight_count).unwrap_or(0),
        }
    }
}

/// One thing to tell the listener.
#[derive(Debug)]
pub(crate) enum Event {
    PeerConnected(String),
    PeerDisconnected(String),
    State(NodeState),
    /// Notifications are waiting in their own queue.
    Notifications,
}

/// Most events waiting for the listener thread.
pub(crate) const QUEUE: usize = 256;

/// Most notifications waiting for the listener thread; past it the oldest are dropped.
pub(crate) const NOTIFICATIONS: usize = 64;

/// Notifications waiting for the listener thread, oldest first.
type Waiting = Arc<Mutex<VecDeque<Notification>>>;

/// The sending side of the listener thread's queue.
#[derive(Clone)]
pub(crate) struct Notifier {
    tx: mpsc::SyncSender<Event>,
    /// The newest state change that did not fit in the queue.
    state: Arc<Mutex<Option<NodeState>>>,
    /// Notifications not delivered yet.
    notifications: Waiting,
}

/// The listener thread is gone.
#[derive(Debug)]
pub(crate) struct Closed;

impl Notifier {
    /// Queue `event` without blocking. A full queue drops peer events and keeps the
    /// newest state change aside; `Ok(false)` says the event was dropped or set aside.
    pub(crate) fn send(&self, event: Event) -> Result<bool, Closed> {
        match self.tx.try_send(event) {
            Ok(()) => Ok(true),
            Err(TrySendError::Full(Event::State(state))) => {
                *self.state.lock() = Some(state);
                Ok(false)
            }
            Err(TrySendError::Full(_)) => {
                tracing::debug!("listener queue full; peer event dropped");
                Ok(false)
            }
            Err(TrySendError::Disconnected(_)) => Err(Closed),
        }
    }

    /// Queue a notification without blocking; a full queue drops its oldest. Returns
    /// whether one was dropped.
    pub(crate) fn notify(&self, n: Notification) -> Result<bool, Closed> {
        let dropped = {
            let mut waiting = self.notifications.lock();
            let dropped = waiting.len() >= NOTIFICATIONS;
            if dropped {
                waiting.pop_front();
            }
            waiting.push_back(n);
            dropped
        };
        // A full channel needs no marker: the thread drains the notifications whenever
        // it has caught up with the channel.
        match self.tx.try_send(Event::Notifications) {
            Ok(()) | Err(TrySendError::Full(_)) => Ok(dropped),
            Err(TrySendError::Disconnected(_)) => Err(Closed),
        }
    }
}

/// The listener slot shared by a node and its dispatch thread.
pub(crate) type Slot = Arc<Mutex<Option<Arc<dyn NodeListener>>>>;

/// Start the dispatch thread. It ends when every sender of the returned channel is gone.
pub(crate) fn spawn_dispatcher(slot: Slot) -> std::io::Result<Notifier> {
    let (tx, rx) = mpsc::sync_channel::<Event>(QUEUE);
    let state: Arc<Mutex<Option<NodeState>>> = Arc::default();
    let set_aside = state.clone();
    let notifications: Waiting = Arc::default();
    let waiting = notifications.clone();
    std::thread::Builder::new()
        .name("warren-listener".into())
        .spawn(move || {
            let mut next = rx.recv().ok();
            while let Some(event) = next {
                match event {
                    Event::Notifications => deliver_notifications(&slot, &waiting),
                    event => deliver(&slot, event),
                }
                next = match rx.try_recv() {
                    Ok(event) => Some(event),
                    // A state change that found the queue full is delivered once the
                    // queue has drained: after what was queued before it.
                    Err(TryRecvError::Empty) => {
                        deliver_notifications(&slot, &waiting);
                        deliver_set_aside(&slot, &set_aside);
                        rx.recv().ok()
                    }
                    Err(TryRecvError::Disconnected) => {
                        deliver_notifications(&slot, &waiting);
                        deliver_set_aside(&slot, &set_aside);
                        None
                    }
                };
            }
        })?;
    Ok(Notifier {
        tx,
        state,
        notifications,
    })
}

/// Deliver the waiting notifications, oldest first, one at a time (so a notification
/// that arrives meanwhile still finds room by dropping the oldest).
fn deliver_notifications(slot: &Slot, waiting: &Mutex<VecDeque<Notification>>) {
    loop {
        let next = waiting.lock().pop_front();
        let Some(n) = next else {
            return;
        };
        let Some(listener) = slot.lock().clone() else {
            continue;
        };
        let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| listener.on_notification(n)));
        if delivered.is_err() {
            tracing::warn!("a NodeListener callback failed; notification dropped");
        }
    }
}

fn deliver_set_aside(slot: &Slot, set_aside: &Mutex<Option<NodeState>>) {
    let state = set_aside.lock().take();
    if let Some(state) = state {
        deliver(slot, Event::State(state));
    }
}

fn deliver(slot: &Slot, event: Event) {
    // Clone out of the lock: a callback may call `set_listener` itself.
    let Some(listener) = slot.lock().clone() else {
        return;
    };
    // A foreign exception surfaces in Rust as a panic of the generated callback code; it
    // must not kill this thread or reach the app.
    let delivered = std::panic::catch_unwind(AssertUnwindSafe(|| match event {
        Event::PeerConnected(name) => listener.on_peer_connected(name),
        Event::PeerDisconnected(name) => listener.on_peer_disconnected(name),
        Event::State(state) => listener.on_state_changed(state),
        Event::Notifications => {}
    }));
    if delivered.is_err() {
        tracing::warn!("a NodeListener callback failed; event dropped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Blocks in its first callback until released; records every callback.
    struct Slow {
        entered: Mutex<Option<mpsc::Sender<()>>>,
        release: Mutex<mpsc::Receiver<()>>,
        seen: Mutex<Vec<String>>,
        done: mpsc::SyncSender<()>,
    }

    impl Slow {
        fn record(&self, what: String) {
            if let Some(entered) = self.entered.lock().take() {
                let _ = entered.send(());
                let _ = self.release.lock().recv();
            }
            let last = what == "state:Stopped";
            self.seen.lock().push(what);
            if last {
                let _ = self.done.send(());
            }
        }
    }

    impl NodeListener for Slow {
        fn on_peer_connected(&self, server_name: String) {
            self.record(format!("up:{server_name}"));
        }
        fn on_peer_disconnected(&self, server_name: String) {
            self.record(format!("down:{server_name}"));
        }
        fn on_state_changed(&self, state: NodeState) {
            self.record(format!("state:{state:?}"));
        }
        fn on_notification(&self, notification: Notification) {
            self.record(format!("note:{}", notification.event_id));
        }
    }

    fn note(i: usize) -> Notification {
        Notification {
            user_id: "@u:x".into(),
            room_id: "!r:x".into(),
            event_id: format!("$e{i}"),
            event_type: "m.room.message".into(),
            sender: "@s:x".into(),
            sender_display_name: None,
            room_name: None,
            body: Some("hi".into()),
            highlight: false,
            notification_count: 1,
            highlight_count: 0,
        }
    }

    #[test]
    fn a_slow_listener_gets_the_newest_notifications() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::sync_channel(1);
        let slow = Arc::new(Slow {
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
            seen: Mutex::new(Vec::new()),
            done: done_tx,
        });
        let slot: Slot = Arc::new(Mutex::new(Some(slow.clone() as Arc<dyn NodeListener>)));
        let notify = spawn_dispatcher(slot).expect("listener thread");
        notify
            .send(Event::PeerConnected("first".into()))
            .expect("open");
        entered.recv().expect("first callback");
        // Stuck: more notifications than the queue holds, and more markers than the
        // channel holds.
        let total = QUEUE + 50;
        let dropped = (0..total)
            .filter(|i| notify.notify(note(*i)).expect("open"))
            .count();
        assert_eq!(dropped, total - NOTIFICATIONS);
        notify.send(Event::State(NodeState::Stopped)).expect("open");
        release.send(()).expect("release");
        done.recv().expect("the state after the notifications");
        let seen = slow.seen.lock().clone();
        let notes: Vec<&String> = seen.iter().filter(|s| s.starts_with("note:")).collect();
        assert_eq!(notes.len(), NOTIFICATIONS, "{seen:?}");
        assert_eq!(*notes[0], format!("note:$e{}", total - NOTIFICATIONS));
        assert_eq!(*notes[NOTIFICATIONS - 1], format!("note:$e{}", total - 1));
    }

    #[test]
    fn a_slow_listener_drops_peer_events_and_keeps_the_newest_state() {
        let (entered_tx, entered) = mpsc::channel();
        let (release, release_rx) = mpsc::channel();
        let (done_tx, done) = mpsc::sync_channel(1);
        let slow = Arc::new(Slow {
            entered: Mutex::new(Some(entered_tx)),
            release: Mutex::new(release_rx),
            seen: Mutex::new(Vec::new()),
            done: done_tx,
        });
        let slot: Slot = Arc::new(Mutex::new(Some(slow.clone() as Arc<dyn NodeListener>)));
        let notify = spawn_dispatcher(slot).expect("listener thread");
        assert!(
            notify
                .send(Event::PeerConnected("first".into()))
                .expect("open")
        );
        // The thread is now stuck in the first callback: the queue fills and stays full.
        entered.recv().expect("first callback");
        let mut queued = 0;
        for i in 0..QUEUE + 100 {
            if notify
                .send(Event::PeerConnected(format!("p{i}")))
                .expect("open")
            {
                queued += 1;
            }
        }
        assert_eq!(queued, QUEUE, "exactly the queue's room is taken");
        assert!(
            !notify
                .send(Event::State(NodeState::Stopping))
                .expect("open")
        );
        assert!(!notify.send(Event::State(NodeState::Stopped)).expect("open"));
        release.send(()).expect("release");
        done.recv().expect("the newest state is delivered");
        let seen = slow.seen.lock().clone();
        assert_eq!(
            seen.len(),
            1 + QUEUE + 1,
            "first, the queue, one coalesced state"
        );
        assert_eq!(seen[QUEUE], format!("up:p{}", QUEUE - 1));
        assert_eq!(seen.last().map(String::as_str), Some("state:Stopped"));
        assert!(
            !seen.iter().any(|s| s == "state:Stopping"),
            "coalesced away"
        );
    }
}
