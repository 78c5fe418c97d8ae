//! Notifications on the device: each event the push rules say should notify a local
//! user, handed to whoever embeds the node (the mobile API's listener, the CLI's
//! `--on-notify` command) after the event's write has committed. No gateway involved.
//!
//! The details are gathered inside the write transaction (a few row lookups) only while
//! someone is subscribed, kept on the writing thread, and published by
//! [`crate::server::Server::write`] once that write has committed; a write that fails
//! publishes nothing. Bounded twice: a transaction keeps at most [`PER_WRITE`] (the
//! newest), and each subscriber's queue holds [`QUEUE`]; a subscriber that falls behind
//! loses the oldest ones (it is told how many) and never slows the node.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::broadcast;

/// One notification for one local user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalNotification {
    /// Who is notified.
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
    /// The room's name (`m.room.name`), if set.
    pub room_name: Option<String>,
    /// `content.body`, when the event has one (never for encrypted events).
    pub body: Option<String>,
    /// Whether the push rules highlight it (a mention, a keyword).
    pub highlight: bool,
    /// The room's unread notification count for the user, this one included.
    pub notification_count: i64,
    /// The room's unread highlight count for the user, this one included.
    pub highlight_count: i64,
}

/// Notifications a subscriber may have waiting; past it the oldest are dropped.
pub const QUEUE: usize = 256;
/// Notifications one write transaction publishes at most (the newest are kept).
pub const PER_WRITE: usize = 256;

/// The subscribers of a node's local notifications.
pub struct LocalNotifications {
    tx: broadcast::Sender<Arc<LocalNotification>>,
}

impl Default for LocalNotifications {
    fn default() -> Self {
        LocalNotifications {
            tx: broadcast::channel(QUEUE).0,
        }
    }
}

impl LocalNotifications {
    /// A new subscription. A subscriber that does not keep up gets
    /// `RecvError::Lagged(n)` once, having lost the `n` oldest notifications.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<LocalNotification>> {
        self.tx.subscribe()
    }

    /// Whether anyone listens (the details are gathered only then).
    pub fn wanted(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Hand a notification to every subscriber. Never blocks.
    pub fn publish(&self, n: LocalNotification) {
        let _ = self.tx.send(Arc::new(n));
    }
}

/// The local notifications of the write running on this thread, published once it
/// commits.
#[derive(Default)]
pub(crate) struct AfterCommit {
    /// Gather local notifications (someone listens).
    wanted: bool,
    /// Local notifications to publish, oldest first.
    pub(crate) local: VecDeque<LocalNotification>,
}

thread_local! {
    static PENDING: RefCell<AfterCommit> = RefCell::default();
}

/// Start of a write on this thread: forget anything left over, note whether local
/// notifications are wanted.
pub(crate) fn begin(wanted: bool) {
    PENDING.with_borrow_mut(|p| {
        *p = AfterCommit {
            wanted,
            ..AfterCommit::default()
        }
    });
}

/// End of a write on this thread: what it left to do after its commit.
pub(crate) fn take() -> AfterCommit {
    PENDING.take()
}

/// Whether the current write gathers local notifications.
pub(crate) fn wanted() -> bool {
    PENDING.with_borrow(|p| p.wanted)
}

/// The current write produced a local notification.
pub(crate) fn add(n: LocalNotification) {
    PENDING.with_borrow_mut(|p| {
        if p.local.len() >= PER_WRITE {
            p.local.pop_front();
        }
        p.local.push_back(n);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(i: usize) -> LocalNotification {
        LocalNotification {
            user_id: "@u:x".into(),
            room_id: "!r:x".into(),
            event_id: format!("$e{i}"),
            event_type: "m.room.message".into(),
            sender: "@s:x".into(),
            sender_display_name: None,
            room_name: None,
            body: Some(format!("{i}")),
            highlight: false,
            notification_count: 1,
            highlight_count: 0,
        }
    }

    /// A subscriber that does not read loses the oldest, keeps the newest QUEUE.
    #[test]
    fn a_slow_subscriber_loses_the_oldest() {
        let hub = LocalNotifications::default();
        assert!(!hub.wanted());
        hub.publish(n(0)); // nobody listens: dropped, no error
        let mut rx = hub.subscribe();
        assert!(hub.wanted());
        for i in 0..QUEUE + 10 {
            hub.publish(n(i));
        }
        match rx.try_recv() {
            Err(broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 10),
            other => panic!("expected a lag, got {other:?}"),
        }
        let mut seen = Vec::new();
        while let Ok(x) = rx.try_recv() {
            seen.push(x.event_id.clone());
        }
        assert_eq!(seen.len(), QUEUE);
        assert_eq!(seen.first().map(String::as_str), Some("$e10"));
        assert_eq!(
            seen.last().map(String::as_str),
            Some(format!("$e{}", QUEUE + 9).as_str())
        );
    }

    /// One write keeps at most PER_WRITE, the newest.
    #[test]
    fn one_write_keeps_the_newest() {
        begin(true);
        assert!(wanted());
        for i in 0..PER_WRITE + 5 {
            add(n(i));
        }
        let done = take();
        assert_eq!(done.local.len(), PER_WRITE);
        assert_eq!(done.local.front().map(|x| x.event_id.as_str()), Some("$e5"));
        // Taken: the next write starts clean.
        let again = take();
        assert!(again.local.is_empty() && !again.wanted);
    }
}
