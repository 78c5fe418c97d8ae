//! The shared services of one node: configuration, identity, database, notifier.
//!
//! Handlers get an `Arc<Server>`; services in `rooms`, `sync` and `client_api` take it.

use std::collections::VecDeque;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use rusqlite::Connection;
use tokio::sync::oneshot::error::RecvError;

use crate::config::Config;
use crate::error::Error;
use crate::federation::FederationTransport;
use crate::identity::Identity;
use crate::push::local::LocalNotification;
use crate::storage::Db;
use crate::storage::effects::Touched;

/// What a write that took a stream position without saying whom it concerns touched.
static EVERYONE: Touched = Touched {
    rooms: Vec::new(),
    users: Vec::new(),
    members_of: Vec::new(),
    everyone: true,
};
use crate::streams::Notifier;

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
    /// The client API's user-interactive authentication sessions.
    pub uiaa: crate::client_api::account::UiaaSessions,
    /// When the node started.
    pub started: Instant,
    /// Federation's state: the transport, the sender's and the mailbox's wake-ups.
    pub federation: crate::federation::FederationState,
    /// Wakes the push deliverer: after each write that queued rows for http pushers.
    pub push_wake: tokio::sync::Notify,
    /// Notifications for the embedding app (mobile listener, `--on-notify`).
    pub local_notifications: crate::push::LocalNotifications,
    /// The local admin API token (see [`crate::admin`]).
    pub admin_token: OnceLock<String>,
    /// The background tasks (see [`crate::tasks`]).
    pub tasks: crate::tasks::Tasks,
    /// What `/sync` and sliding sync keep between requests (see [`crate::sync::SyncState`]).
    pub sync: crate::sync::SyncState,
    /// Rate-limit buckets (per user, client address and peer).
    pub limiter: crate::ratelimit::Limiter,
    /// Where the local messages built ahead of their writes have taken each room
    /// ([`crate::rooms::prebuild`]).
    pub local_heads: crate::rooms::heads::LocalHeads,
    /// One join at a time per room (see [`crate::membership::join`]).
    pub joins: crate::keyed::KeyedPermits,
    /// Registered application services.
    pub appservices: crate::appservice::AppServices,
    /// Wakes the delayed-event task (one was added, restarted or cancelled).
    pub delayed_wake: tokio::sync::Notify,
}

impl Server {
    /// Run a write transaction; once it has committed, its effects run (see
    /// [`crate::storage::effects`]: the federation sender and push deliverer are woken
    /// if it queued rows for them, waiting `/sync` calls if it took a stream position)
    /// and its local notifications are published.
    ///
    /// Called from async handlers. A write that finds the writer free runs right here
    /// (a few hundred microseconds, cheaper than moving the task to another thread);
    /// one that would wait for other writes runs in `block_in_place` on a multi-threaded
    /// runtime, so the worker thread hands its other tasks on instead of stalling them
    /// while it waits.
    pub fn write<T>(&self, f: impl FnOnce(&Connection) -> Result<T, Error>) -> Result<T, Error> {
        let wanted = self.local_notifications.wanted();
        let run = || self.db.write(|tx| gathering_local(wanted, tx, f));
        let (out, local) = if self.db.writer_is_idle() {
            run()
        } else {
            off_the_reactor(run)
        }?;
        self.publish_local(local);
        Ok(out)
    }

    /// Publish the local notifications a committed write produced.
    fn publish_local(&self, local: VecDeque<LocalNotification>) {
        for n in local {
            self.local_notifications.publish(n);
        }
    }

    /// [`Server::write`] without blocking a thread: the write is queued for whoever holds
    /// the writer to run in its transaction, or run here at once if nobody does (see
    /// [`crate::storage::Db::submit`]); the same effects follow its commit. A caller
    /// dropped while its write is queued (a client that hung up) does not take them
    /// along: the write may still commit, and then its effects and notifications follow
    /// it on a task of their own.
    pub async fn write_async<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Connection) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let wanted = self.local_notifications.wanted();
        let queued = self.db.submit(move |tx| gathering_local(wanted, tx, f));
        let mut waiting = QueuedWrite {
            server: Arc::clone(self),
            queued: Some(queued),
        };
        let outcome = waiting.answer().await;
        self.after_queued_write(outcome)
    }

    /// What follows a queued write once its batch has ended, as after [`Server::write`].
    fn after_queued_write<T>(&self, outcome: QueuedOutcome<T>) -> Result<T, Error> {
        let out = outcome.unwrap_or_else(|_| {
            Err(Error::internal(
                "write lost: dropped unrun (it panicked, or no transaction could start)",
            ))
        });
        let (out, local) = self.db.after_write(out, true)?;
        self.publish_local(local);
        Ok(out)
    }

    /// Run one committed write's effects: called by the database after each write, on
    /// the writing thread, once the batch holding the write has committed (installed by
    /// [`crate::Node::start`]).
    pub fn after_commit(&self, effects: crate::storage::effects::Effects) {
        if let Some(pos) = effects.stream_pos {
            self.notifier.committed(pos);
            // Every waiter when the write did not say whom it concerns.
            self.notifier
                .wake(effects.touched.as_deref().unwrap_or(&EVERYONE));
        }
        if effects.federation_queued() {
            self.federation.outbox_wake.notify_one();
        }
        if effects.pushes_queued() {
            self.push_wake.notify_one();
        }
    }

    /// Take one token of `action` for `key`, or answer `429 M_LIMIT_EXCEEDED`.
    pub fn rate_limit(&self, action: crate::ratelimit::Action, key: &str) -> Result<(), Error> {
        Ok(self.limiter.take(action, key, 1.0)?)
    }

    /// Take one token of `action` for `requester`, unless no limit applies to it (an
    /// application service registered with `rate_limited: false`, the node itself).
    pub fn rate_limit_requester(
        &self,
        action: crate::ratelimit::Action,
        requester: &crate::requester::Requester,
    ) -> Result<(), Error> {
        if requester.rate_limited() {
            self.rate_limit(action, &requester.user_id)
        } else {
            Ok(())
        }
    }

    /// Whether [`Server::rate_limit_requester`] would let `requester` through now,
    /// without taking a token.
    pub fn rate_limit_allows(
        &self,
        action: crate::ratelimit::Action,
        requester: &crate::requester::Requester,
    ) -> bool {
        !requester.rate_limited() || self.limiter.check(action, &requester.user_id).is_ok()
    }

    /// The federation transport, once one is attached.
    pub fn transport(&self) -> Option<&Arc<dyn FederationTransport>> {
        self.federation.transport.get()
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

pub use crate::blocking::off_the_reactor;

/// Run the write `f` on `tx` gathering the local notifications it produces, on the
/// thread that runs it (the writer runs each write on one thread, its caller's or the
/// holder's), whether `f` succeeds or not.
fn gathering_local<T>(
    wanted: bool,
    tx: &Connection,
    f: impl FnOnce(&Connection) -> Result<T, Error>,
) -> Result<Written<T>, Error> {
    crate::push::local::begin(wanted);
    let out = f(tx);
    let local = crate::push::local::take();
    Ok((out?, local.local))
}

/// A write's value and the local notifications it produced.
type Written<T> = (T, VecDeque<LocalNotification>);

/// What a queued write's caller receives: its value and local notifications, with its
/// effects, or why it failed (or nothing, if it was dropped unrun).
type QueuedOutcome<T> =
    Result<Result<(Written<T>, crate::storage::effects::Effects), Error>, RecvError>;

/// A queued write still waited for. Dropped before its answer came (the request was
/// cancelled), it hands the wait to a task of its own, so that a write which commits
/// still has its effects run and its notifications published.
struct QueuedWrite<T: Send + 'static> {
    server: Arc<Server>,
    queued: Option<crate::storage::Queued<Written<T>>>,
}

impl<T: Send + 'static> QueuedWrite<T> {
    /// Wait for the answer; once it came, dropping this hands nothing on.
    async fn answer(&mut self) -> QueuedOutcome<T> {
        let outcome = match self.queued.as_mut() {
            Some(queued) => queued.await,
            None => Ok(Err(Error::internal("a queued write was answered twice"))),
        };
        self.queued = None;
        outcome
    }
}

impl<T: Send + 'static> Drop for QueuedWrite<T> {
    fn drop(&mut self) {
        let Some(queued) = self.queued.take() else {
            return;
        };
        let server = Arc::clone(&self.server);
        let finish = async move {
            let outcome: QueuedOutcome<T> = queued.await;
            // Nobody to answer: the outcome only has its effects to run.
            let _ = server.after_queued_write(outcome);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(finish);
            }
            Err(_) => tracing::warn!("a cancelled write's effects were dropped: no runtime"),
        }
    }
}

#[cfg(test)]
mod tests {

    /// The race suspected in issue 16: one write commits while another, on another
    /// thread, has queued federation traffic but not committed yet. The first must not
    /// wake the sender (the rows are not visible yet, and the wake-up would be spent);
    /// the second wakes it after its own commit, when a scan finds its rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn each_write_that_queues_traffic_wakes_the_sender_after_its_commit() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let _ = sender_woken(&server);
        let (queued_tx, queued_rx) = std::sync::mpsc::channel();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let first = {
            let server = server.clone();
            std::thread::spawn(move || {
                server
                    .write(|c| {
                        let edu = serde_json::json!({ "edu_type": "m.presence", "content": {} });
                        crate::storage::enqueue_edu(c, "elsewhere", &edu)?;
                        queued_tx.send(()).expect("send");
                        go_rx.recv().expect("go");
                        Ok(())
                    })
                    .expect("queueing write");
            })
        };
        queued_rx.recv().expect("queued");
        // Under the old shared flag, any other write finishing now woke it here.
        assert!(
            !sender_woken(&server),
            "woken while the queued rows are uncommitted"
        );
        go_tx.send(()).expect("go");
        tokio::task::spawn_blocking(move || first.join().expect("join"))
            .await
            .expect("join");
        assert!(
            sender_woken(&server),
            "the queued traffic waits for the periodic rescan"
        );
        let depth = server
            .db
            .read(|c| crate::storage::outbox_depth(c, "elsewhere"))
            .expect("depth");
        assert_eq!(depth, 1);
        // A write that queues nothing wakes nobody.
        server.write(|_| Ok(())).expect("empty write");
        assert!(!sender_woken(&server), "an empty write woke the sender");
        node.shutdown().await.expect("shutdown");
    }

    /// Whether the federation sender has a wake-up waiting (taking it).
    fn sender_woken(server: &super::Server) -> bool {
        futures::FutureExt::now_or_never(server.federation.outbox_wake.notified()).is_some()
    }

    /// Rows queued by storage itself (presence on a join, a device-list change), with no
    /// mark from the caller, wake the sender once the write commits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rows_queued_in_storage_wake_the_sender() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let _ = sender_woken(&server);
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": {} });
        server
            .write(|c| crate::storage::enqueue_edu(c, "elsewhere", &edu))
            .expect("write");
        assert!(
            sender_woken(&server),
            "an EDU queued in storage waits for the rescan"
        );
        node.shutdown().await.expect("shutdown");
    }

    /// A write through `Db::write` (not `Server::write`) that queues traffic wakes the
    /// sender after its commit too.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_db_write_that_queues_traffic_wakes_the_sender() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let _ = sender_woken(&server);
        let edu = serde_json::json!({ "edu_type": "m.presence", "content": {} });
        server
            .db
            .write(|c| crate::federation::outbox::enqueue_edu(c, &server, "elsewhere", &edu))
            .expect("write");
        assert!(
            sender_woken(&server),
            "an EDU queued in Db::write waits for the rescan"
        );
        node.shutdown().await.expect("shutdown");
    }
}
