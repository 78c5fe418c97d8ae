//! A running node: data directory lock, database, client API listener, background tasks.

use std::fs::File;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::Config;
use crate::error::{Error, StartError};
use crate::identity::Identity;
use crate::server::Server;
use crate::storage::Db;
use crate::streams::Notifier;

/// Blocking threads an embedding runtime should allow (tokio's default is 512). Database
/// work runs on them (`block_in_place`, `spawn_blocking`), and there are only four
/// connections to run it on, so more threads would only wait on the same locks while
/// each keeps a stack and an allocator cache. Idle ones exit after a short keep-alive.
pub const MAX_BLOCKING_THREADS: usize = 32;

/// How long a client transaction id is remembered (as Synapse: a day).
pub const TXN_ID_LIFETIME: Duration = Duration::from_secs(24 * 3600);
/// How often forgotten transaction ids are pruned, and how many at most per pass.
const TXN_PRUNE_EVERY: Duration = Duration::from_secs(3600);
const TXN_PRUNE_BATCH: usize = 10_000;

/// Hourly: forget transaction ids older than [`TXN_ID_LIFETIME`], a batch at a time so
/// no single write holds the writer long.
async fn prune_transaction_ids(server: Arc<Server>) {
    let mut tick = tokio::time::interval(TXN_PRUNE_EVERY);
    loop {
        tick.tick().await;
        loop {
            let cutoff = crate::storage::now_ms()
                .saturating_sub(i64::try_from(TXN_ID_LIFETIME.as_millis()).unwrap_or(i64::MAX));
            let s = server.clone();
            let pruned = tokio::task::spawn_blocking(move || {
                s.db.write(|c| crate::storage::prune_event_txns(c, cutoff, TXN_PRUNE_BATCH))
            })
            .await;
            match pruned {
                Ok(Ok(n)) if n == TXN_PRUNE_BATCH => continue,
                Ok(Ok(_)) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "cannot prune transaction ids");
                    break;
                }
                Err(_) => break,
            }
        }
    }
}

/// Lock file that keeps two nodes off one data directory.
pub const LOCK_FILE: &str = "warren.lock";

/// A started node. Dropping it without [`Node::shutdown`] aborts the server task.
///
/// `L` says where the client API is served: [`Listening`] (the default, from
/// [`Node::start`]) on a TCP socket, or [`Unbound`] (from [`Node::start_unbound`]) nowhere:
/// such a node binds no socket at all, has no [`Node::client_url`] or
/// [`Node::local_addr`], and its client API is driven in-process through
/// [`Node::client_router`].
pub struct Node<L = Listening> {
    server: Arc<Server>,
    client: L,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    _lock: File,
}

/// A [`Node`] whose client API listens on a TCP socket (`Config::client_addr`).
#[derive(Clone, Copy, Debug)]
pub struct Listening {
    addr: SocketAddr,
}

/// A [`Node`] whose client API listens nowhere: [`Node::start_unbound`].
#[derive(Clone, Copy, Debug)]
pub struct Unbound;

/// How long `shutdown` waits for the background tasks to stop.
const TASKS_STOP_GRACE: Duration = Duration::from_secs(5);

fn lock_data_dir(config: &Config) -> Result<File, StartError> {
    let path = config.data_dir.join(LOCK_FILE);
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| StartError::Other(format!("cannot open lock file {}: {e}", path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => {
            Err(StartError::Locked(config.data_dir.display().to_string()))
        }
        Err(std::fs::TryLockError::Error(e)) => Err(StartError::Other(format!(
            "cannot lock {}: {e}",
            path.display()
        ))),
    }
}

/// A data directory opened and locked, its database open: the start of a node before
/// its client API is bound (or not) and its services built.
struct Opened {
    config: Config,
    identity: Identity,
    appservices: Vec<crate::appservice::registration::AppService>,
    lock: File,
    db: Db,
    pos: crate::streams::StreamPosition,
}

impl Opened {
    fn open(config: Config) -> Result<Opened, StartError> {
        if !crate::events::SUPPORTED_ROOM_VERSIONS.contains(&config.default_room_version.as_str()) {
            return Err(StartError::Other(format!(
                "default room version {:?} is not supported (supported: {})",
                config.default_room_version,
                crate::events::SUPPORTED_ROOM_VERSIONS.join(", ")
            )));
        }
        let identity = Identity::load_or_create(&config.data_dir)?;
        let appservices = crate::appservice::registration::load_all(
            &config.app_service_config_files,
            identity.server_name(),
        )
        .map_err(StartError::Other)?;
        let lock = lock_data_dir(&config)?;
        let db = Db::open(&config.database_path())?;
        // What the process kept of a database at this path before may not be this one's.
        if let Some(file) = db.file() {
            crate::push::forget_database(file);
            crate::rooms::forget_database(file);
        }
        let pos = db
            .max_stream_position()
            .map_err(|e| StartError::Other(e.to_string()))?;
        Ok(Opened {
            config,
            identity,
            appservices,
            lock,
            db,
            pos,
        })
    }

    /// Build the node's services over the opened database.
    fn into_server(self) -> Result<(Arc<Server>, File), StartError> {
        let Opened {
            config,
            identity,
            appservices,
            lock,
            db,
            pos,
        } = self;
        let media = crate::media::MediaStore::open(&config.media_dir())?;
        let limiter = crate::ratelimit::Limiter::new(config.rate_limits.clone());
        let server = Arc::new(Server {
            media,
            remote_media: Default::default(),
            url_previews: Default::default(),
            config,
            identity,
            db,
            notifier: Notifier::new(pos),
            uiaa: Default::default(),
            started: Instant::now(),
            federation: Default::default(),
            push_wake: Default::default(),
            local_notifications: Default::default(),
            tasks: Default::default(),
            admin_token: Default::default(),
            sync: Default::default(),
            limiter,
            local_heads: Default::default(),
            joins: crate::keyed::KeyedPermits::new(1, crate::rooms::MAX_ROOMS_JOINING),
            appservices: crate::appservice::AppServices::new(appservices),
            delayed_wake: Default::default(),
        });
        // Each write's effects (wake-ups, stream positions) run after its commit.
        let after_commit = Arc::downgrade(&server);
        server.db.set_after_commit(Box::new(move |effects| {
            if let Some(server) = after_commit.upgrade() {
                server.after_commit(effects);
            }
        }));
        crate::appservice::register_senders(&server)
            .map_err(|e| StartError::Other(format!("appservice sender users: {e}")))?;
        let token = crate::admin::load_or_create_token(&server.config.data_dir)
            .map_err(|e| StartError::Other(format!("cannot create the admin token: {e}")))?;
        let _ = server.admin_token.set(token);
        Ok((server, lock))
    }
}

/// Start the node's background tasks (those that need no transport).
fn spawn_background_tasks(server: &Arc<Server>) {
    let typing_server = server.clone();
    server.tasks.spawn("typing expiry", async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            typing_server.notifier.expire_typing();
        }
    });
    // Presence: online users idle for too long become unavailable.
    let presence_server = server.clone();
    server.tasks.spawn("presence idle sweep", async move {
        let mut tick = tokio::time::interval(crate::presence::SWEEP_EVERY);
        loop {
            tick.tick().await;
            let server = presence_server.clone();
            let swept = tokio::task::spawn_blocking(move || {
                crate::presence::sweep_idle(&server, crate::storage::now_ms())
            })
            .await;
            if let Ok(Err(e)) = swept {
                tracing::warn!(error = %e, "presence idle sweep failed");
            }
        }
    });
    let tasks = &server.tasks;
    tasks.spawn(
        "transaction id pruning",
        prune_transaction_ids(server.clone()),
    );
    tasks.add(
        "media prefetch",
        crate::media::remote::start_prefetch(server.clone()),
    );
    tasks.add(
        "search indexer",
        crate::search::start_indexer(server.clone()),
    );
    // Push gateways get whatever the push queue holds, rows from before a restart too.
    tasks.add(
        "push delivery",
        crate::push::delivery::start(server.clone()),
    );
    tasks.add(
        "delayed events",
        crate::delayed_events::start(server.clone()),
    );
    for (i, sender) in crate::appservice::sender::start(server)
        .into_iter()
        .enumerate()
    {
        tasks.add(format!("application service sender {i}"), sender);
    }
}

impl Node {
    /// Open the data directory, bind the client API and start serving.
    pub async fn start(config: Config) -> Result<Node, StartError> {
        let opened = Opened::open(config)?;
        let client_addr = opened.config.client_addr;
        let listener = tokio::net::TcpListener::bind(client_addr)
            .await
            .map_err(|e| {
                if e.kind() == std::io::ErrorKind::AddrInUse {
                    StartError::AddrInUse(client_addr.to_string())
                } else {
                    StartError::Bind(client_addr.to_string(), e.to_string())
                }
            })?;
        let addr = listener
            .local_addr()
            .map_err(|e| StartError::Other(e.to_string()))?;
        let (server, lock) = opened.into_server()?;
        crate::admin::write_url(&server.config.data_dir, &format!("http://{addr}"))
            .map_err(|e| StartError::Other(format!("cannot record the admin URL: {e}")))?;
        let app = crate::client_api::router(server.clone());
        let limits = server.config.connections.clone();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = stop_rx.await;
            };
            crate::client_api::listener::serve(listener, app, limits, shutdown).await;
        });
        spawn_background_tasks(&server);
        tracing::info!(server_name = %server.server_name(), %addr, "node started");
        Ok(Node {
            server,
            client: Listening { addr },
            stop: Some(stop_tx),
            task: Some(task),
            _lock: lock,
        })
    }

    /// Base URL of the client-server API.
    pub fn client_url(&self) -> String {
        format!("http://{}", self.client.addr)
    }

    /// The bound client API address.
    pub fn local_addr(&self) -> SocketAddr {
        self.client.addr
    }
}

impl Node<Unbound> {
    /// Start a node as [`Node::start`] does, except that its client API binds no socket
    /// (`Config::client_addr` is ignored) and no admin URL is recorded in the data
    /// directory: requests reach it only in-process, through [`Node::client_router`].
    /// For tests and embedders that need no HTTP client; everything else (database,
    /// background tasks, [`Node::set_transport`], [`Node::shutdown`]) is the same.
    pub async fn start_unbound(config: Config) -> Result<Node<Unbound>, StartError> {
        let (server, lock) = Opened::open(config)?.into_server()?;
        spawn_background_tasks(&server);
        tracing::info!(server_name = %server.server_name(), "node started (client API unbound)");
        Ok(Node {
            server,
            client: Unbound,
            stop: None,
            task: None,
            _lock: lock,
        })
    }
}

impl<L> Node<L> {
    /// The server name: 64 lowercase hex characters of the public key.
    pub fn server_name(&self) -> &str {
        self.server.server_name()
    }

    /// The node's services (for embedding and tests).
    pub fn server(&self) -> &Arc<Server> {
        &self.server
    }

    /// The client-server API as a router, to be called in-process (e.g. with
    /// `tower::ServiceExt::oneshot`). This is the router a listening node serves, without
    /// what its listener adds: no connection limits, no request timeout, and no peer
    /// address (`ConnectInfo`), so per-address rate limits key such requests as
    /// `"unknown"`.
    pub fn client_router(&self) -> axum::Router {
        crate::client_api::router(self.server.clone())
    }

    /// The inbound server-server API, for a transport to serve on its streams.
    pub fn federation_router(&self) -> axum::Router {
        crate::federation::router(self.server.clone())
    }

    /// Attach the transport that carries outbound federation requests. Only the first
    /// call has an effect; it returns whether this one did.
    pub fn set_transport(
        &self,
        transport: Arc<dyn crate::federation::FederationTransport>,
    ) -> bool {
        let events = transport.subscribe();
        if self.server.federation.transport.set(transport).is_err() {
            return false;
        }
        // The sender delivers whatever the outbox holds, including rows queued before a
        // restart.
        let task = crate::federation::sender::start(self.server.clone(), events);
        self.server.tasks.add("federation sender", task);
        // Anti-entropy: pull what connected peers have and we miss (DESIGN.md §4).
        let peer_events = self.server.transport().map(|t| t.subscribe());
        if let Some(peer_events) = peer_events {
            let task = crate::federation::anti_entropy::start(self.server.clone(), peer_events);
            self.server.tasks.add("anti-entropy", task);
        }
        // Mailboxes: collect what others left for this node while it was away.
        if let Some(peer_events) = self.server.transport().map(|t| t.subscribe()) {
            let task = crate::mailbox::drain::start(self.server.clone(), peer_events);
            self.server.tasks.add("mailbox drain", task);
        }
        true
    }

    /// Stop accepting requests, let in-flight ones finish, flush the database.
    pub async fn shutdown(mut self) -> Result<(), Error> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            // Long-polling /sync calls would hold graceful shutdown for up to their timeout;
            // give in-flight requests a moment, then stop.
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::warn!("in-flight requests did not finish in 5 s; stopping anyway");
            }
        }
        self.server.remote_media.abort_fetches();
        // No task is still writing when the last checkpoint runs.
        self.server.tasks.stop(TASKS_STOP_GRACE).await;
        self.server.db.checkpoint()?;
        tracing::info!("node stopped");
        Ok(())
    }
}

impl<L> Drop for Node<L> {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
        self.server.remote_media.abort_fetches();
        self.server.tasks.abort_all();
    }
}
