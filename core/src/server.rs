//! The shared services of one node: configuration, identity, database, notifier.
//!
//! Handlers get an `Arc<Server>`; services in `rooms`, `sync` and `client_api` take it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use rusqlite::Connection;

use crate::config::Config;
use crate::error::Error;
use crate::federation::FederationTransport;
use crate::identity::Identity;
use crate::storage::Db;
use crate::streams::Notifier;

/// An in-progress user-interactive authentication session.
#[derive(Clone, Debug)]
pub struct UiaaSession {
    /// Stages completed so far.
    pub completed: Vec<String>,
    /// For authenticated endpoints: the user the session belongs to.
    pub user_id: Option<String>,
    /// Created at, for expiry.
    pub created: Instant,
}

/// One node's services.
pub struct Server {
    /// Configuration.
    pub config: Config,
    /// Signing key and server name.
    pub identity: Identity,
    /// SQLite.
    pub db: Db,
    /// Stream positions and wake-ups.
    pub notifier: Notifier,
    /// Media files on disk.
    pub media: crate::media::MediaStore,
    /// Other nodes' media: fetches in flight and the prefetch queue.
    pub remote_media: crate::media::RemoteMedia,
    /// URL previews: their cache and HTTP client.
    pub url_previews: crate::media::preview::UrlPreviews,
    /// UIAA sessions, keyed by session id.
    pub uiaa: Mutex<HashMap<String, UiaaSession>>,
    /// When the node started.
    pub started: Instant,
    /// How federation requests leave this node; set once by the embedding crate.
    pub transport: OnceLock<Arc<dyn FederationTransport>>,
    /// Set inside a write transaction that queued federation traffic; the sender is
    /// woken once that transaction has committed.
    pub outbox_dirty: AtomicBool,
    /// Wakes the federation sender.
    pub outbox_wake: tokio::sync::Notify,
    /// Wakes the push deliverer (rows were queued for http pushers).
    pub push_wake: tokio::sync::Notify,
    /// Notifications for the embedding app (mobile listener, `--on-notify`).
    pub local_notifications: crate::push::LocalNotifications,
    /// The push deliverer task.
    pub push_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The local admin API token (see [`crate::admin`]).
    pub admin_token: OnceLock<String>,
    /// The federation sender task, once a transport is attached.
    pub sender_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The anti-entropy task, once a transport is attached.
    pub anti_entropy_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// The mailbox task (collecting this node's mail), once a transport is attached.
    pub mailbox_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Asks the mailbox task to collect mail now (a mailbox was just named).
    pub mailbox_wake: tokio::sync::Notify,
    /// Sliding sync connections (what each client connection already has).
    pub sliding: crate::sync::sliding::Connections,
    /// The last initial `/sync` answers (see [`crate::sync::initial_cache`]).
    pub initial_syncs: crate::sync::initial_cache::InitialSyncCache,
    /// Rate-limit buckets (per user, client address and peer).
    pub limiter: crate::ratelimit::Limiter,
    /// One join at a time per room (see [`crate::rooms::join`]).
    pub joins: crate::keyed::KeyedPermits,
    /// Registered application services.
    pub appservices: crate::appservice::AppServices,
    /// Wakes the delayed-event task (one was added, restarted or cancelled).
    pub delayed_wake: tokio::sync::Notify,
}

thread_local! {
    /// Set by [`Server::mark_outbox_dirty`] on the thread running a write, taken by
    /// [`Server::write`] once that write's closure returns. A single shared flag is not
    /// enough: one write committing could clear the mark of another still uncommitted,
    /// wake the sender before that write's rows are visible, and leave them waiting for
    /// the sender's periodic rescan.
    static OUTBOX_QUEUED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

impl Server {
    /// Run a write transaction, then publish the stream position it reached so waiting
    /// `/sync` calls wake up.
    ///
    /// Called from async handlers. A write that finds the writer free runs right here
    /// (a few hundred microseconds, cheaper than moving the task to another thread);
    /// one that would wait for other writes runs in `block_in_place` on a multi-threaded
    /// runtime, so the worker thread hands its other tasks on instead of stalling them
    /// while it waits.
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let wanted = self.local_notifications.wanted();
        let run = || {
            self.db.write(|tx| {
                crate::push::local::begin(wanted);
                let out = f(tx);
                // Taken on the thread that ran `f` (the writer runs each write on its
                // caller's thread), whether `f` succeeded or not.
                let queued = OUTBOX_QUEUED.replace(false);
                let push = crate::push::local::take();
                let out = out?;
                let pos: i64 = tx.query_row("SELECT pos FROM stream_sequence", [], |r| r.get(0))?;
                Ok((out, pos, queued, push))
            })
        };
        let (out, pos, queued, push) = if self.db.writer_is_idle() {
            run()
        } else {
            off_the_reactor(run)
        }?;
        self.notifier.committed(pos);
        // Push effects of this write, now that it is committed.
        if push.pushes_queued {
            self.push_wake.notify_one();
        }
        for n in push.local {
            self.local_notifications.publish(n);
        }
        // This write's own mark decides. The shared flag covers marks made outside
        // `Server::write`; taking it here may wake the sender before another write's
        // rows are committed, but that write wakes it again after its own commit.
        let shared = self.outbox_dirty.swap(false, Ordering::AcqRel);
        if queued || shared {
            self.outbox_wake.notify_one();
        }
        Ok(out)
    }

    /// Take one token of `action` for `key`, or answer `429 M_LIMIT_EXCEEDED`.
    pub fn rate_limit(&self, action: crate::ratelimit::Action, key: &str) -> Result<(), Error> {
        Ok(self.limiter.take(action, key, 1.0)?)
    }

    /// Note that the current write transaction queued federation traffic: the sender is
    /// woken once that write has committed.
    pub fn mark_outbox_dirty(&self) {
        OUTBOX_QUEUED.set(true);
        self.outbox_dirty.store(true, Ordering::Release);
    }

    /// The federation transport, once one is attached.
    pub fn transport(&self) -> Option<&Arc<dyn FederationTransport>> {
        self.transport.get()
    }

    /// The server name (64 hex characters).
    pub fn server_name(&self) -> &str {
        self.identity.server_name()
    }

    /// `@localpart:server`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server_name())
    }

    /// Whether a user id belongs to this server.
    pub fn is_local_user(&self, user_id: &str) -> bool {
        user_id
            .rsplit_once(':')
            .is_some_and(|(_, server)| server == self.server_name())
    }
}

/// Run blocking work from async code without stalling the runtime's other tasks: in
/// `block_in_place` on a multi-threaded runtime, directly elsewhere (a current-thread
/// runtime, which cannot give its thread away, or no runtime at all).
pub fn off_the_reactor<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Config, Node};

    /// One write commits while another, on another thread, has queued federation
    /// traffic but not committed yet: the first wakes the sender (too early for the
    /// second's rows), and the second must wake it again after its own commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_write_that_queues_traffic_wakes_the_sender_after_its_commit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = Config::new(dir.path());
        config.client_addr = "127.0.0.1:0".parse().expect("addr");
        let node = Node::start(config).await.expect("start");
        let server = node.server().clone();
        let woken = |server: &super::Server| {
            let notified = server.outbox_wake.notified();
            futures::FutureExt::now_or_never(tokio::time::timeout(
                Duration::from_millis(1),
                notified,
            ))
            .is_some_and(|r| r.is_ok())
        };
        // The second write marks on its own thread (as it would inside its closure)...
        let (marked_tx, marked_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let second = {
            let server = server.clone();
            std::thread::spawn(move || {
                server.mark_outbox_dirty();
                marked_tx.send(()).expect("send");
                go_rx.recv().expect("go");
                server.write(|_| Ok(())).expect("second write");
            })
        };
        marked_rx.recv().expect("marked");
        // ...then the first write commits and wakes the sender.
        server.write(|_| Ok(())).expect("first write");
        assert!(woken(&server), "the first write did not wake the sender");
        go_tx.send(()).expect("go");
        tokio::task::spawn_blocking(move || second.join().expect("join"))
            .await
            .expect("join");
        assert!(
            woken(&server),
            "the second write's traffic waits for the periodic rescan"
        );
        node.shutdown().await.expect("shutdown");
    }
}
