//! The node's long-lived background tasks, in one registry: the federation sender,
//! anti-entropy, the mailbox drain, push delivery, application service senders, media
//! prefetch, delayed events and the periodic sweeps.
//!
//! Each task is registered under a name; registering a name again replaces (and stops)
//! the task it named, so the registry holds one entry per kind of task and never grows
//! with traffic. Stopping is graceful in the sense that matters for a node whose every
//! write is atomic and whose queues are durable: every task is cancelled, and
//! [`Tasks::stop`] waits (up to a deadline) until each has reached a cancellation point,
//! so none is still using the database when the node's final checkpoint runs.

use std::future::Future;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::task::JoinHandle;

/// The registry (one per node, on [`crate::server::Server`]).
#[derive(Default)]
pub struct Tasks {
    running: Mutex<Vec<(String, JoinHandle<()>)>>,
}

impl Tasks {
    /// Register a running task under `name`, replacing (and stopping) any task of that
    /// name.
    pub fn add(&self, name: impl Into<String>, handle: JoinHandle<()>) {
        let name = name.into();
        let mut running = self.running.lock();
        if let Some(i) = running.iter().position(|(n, _)| *n == name) {
            let (_, old) = running.swap_remove(i);
            old.abort();
        }
        running.push((name, handle));
    }

    /// Spawn `task` on the current runtime and register it under `name`.
    pub fn spawn(&self, name: impl Into<String>, task: impl Future<Output = ()> + Send + 'static) {
        self.add(name, tokio::spawn(task));
    }

    /// The names of the registered tasks that are still running.
    pub fn running(&self) -> Vec<String> {
        self.running
            .lock()
            .iter()
            .filter(|(_, h)| !h.is_finished())
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Cancel every task and wait until each has stopped, at most `grace` in all; a task
    /// still running then (stuck in blocking code) is logged and left to the runtime.
    pub async fn stop(&self, grace: Duration) {
        let tasks: Vec<(String, JoinHandle<()>)> = std::mem::take(&mut *self.running.lock());
        for (_, handle) in &tasks {
            handle.abort();
        }
        let deadline = tokio::time::Instant::now() + grace;
        for (name, handle) in tasks {
            if tokio::time::timeout_at(deadline, handle).await.is_err() {
                tracing::warn!(task = %name, "a background task did not stop in time");
            }
        }
    }

    /// Cancel every task without waiting (a node dropped without `shutdown`).
    pub fn abort_all(&self) {
        for (_, handle) in std::mem::take(&mut *self.running.lock()) {
            handle.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_name_holds_one_task_and_stop_waits_for_every_task() {
        let tasks = Tasks::default();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        tasks.spawn("first", async move {
            // Dropped (and so the sender sees it) only once the task is cancelled.
            let _rx = rx;
            std::future::pending::<()>().await;
        });
        tasks.spawn("second", std::future::pending());
        assert_eq!(tasks.running().len(), 2);
        // The same name again replaces the task, and stops the old one.
        tasks.spawn("second", std::future::pending());
        assert_eq!(tasks.running().len(), 2);

        tasks.stop(Duration::from_secs(5)).await;
        assert!(tasks.running().is_empty());
        assert!(
            tx.is_closed(),
            "the first task was stopped before stop returned"
        );
    }

    #[tokio::test]
    async fn a_nodes_shutdown_stops_every_background_task() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let running = server.tasks.running();
        for name in [
            "typing expiry",
            "presence idle sweep",
            "push delivery",
            "delayed events",
        ] {
            assert!(running.iter().any(|n| n == name), "{name} in {running:?}");
        }
        node.shutdown().await.expect("shutdown");
        assert!(server.tasks.running().is_empty());
    }
}
