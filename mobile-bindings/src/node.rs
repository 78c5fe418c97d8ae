//! [`Node`]: a Warren node (client API + P2P transport) on a runtime of its own.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::runtime::Runtime;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use warren_core::federation::PeerEvent;
use warren_core::server::Server;
use warren_p2p::{Multiaddr, P2p, P2pConfig};

use crate::listener::{self, Event, NodeListener, NodeState, Slot};
use crate::{Credentials, WarrenError, logging};

/// How long start waits for the P2P listeners to report their addresses.
const LISTEN_WAIT: Duration = Duration::from_secs(5);

/// How long a node dropped without `stop()` gets to shut down in the background.
const DROP_GRACE: Duration = Duration::from_secs(5);

/// Worker threads of a node's runtime. A phone has few cores and the node is mostly
/// idle; two keep a slow request from stalling the rest.
const WORKER_THREADS: usize = 2;

/// How a node starts.
#[derive(Clone, Debug, uniffi::Record)]
pub struct NodeConfig {
    /// Directory for the signing key, the database, media and the lock file. Created if
    /// missing. Use the app's private files directory.
    pub data_dir: String,
    /// Port of the Matrix client API on 127.0.0.1. 0 picks a free port (read it back with
    /// `client_url()`).
    #[uniffi(default = 0)]
    pub client_port: u16,
    /// P2P listen multiaddrs. Empty: QUIC and TCP on all interfaces at random ports.
    #[uniffi(default = [])]
    pub listen_addrs: Vec<String>,
    /// Peers to connect to at start, each ending in `/p2p/<peer id>`.
    #[uniffi(default = [])]
    pub bootstrap_peers: Vec<String>,
    /// Discover and announce peers on the LAN by multicast DNS (on Android this needs a
    /// `WifiManager.MulticastLock`, see docs/embedding.md).
    #[uniffi(default = true)]
    pub mdns: bool,
    /// Log filter: `error`, `warn`, `info`, `debug`, `trace`, `off`, or a directive such
    /// as `warn,warren_p2p=debug`. Logs go to stderr; the filter is process-wide.
    #[uniffi(default = "info")]
    pub log_level: String,
}

/// How a peer is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, uniffi::Enum)]
pub enum ConnectionKind {
    /// At least one connection goes straight to the peer.
    Direct,
    /// Only relayed circuits reach the peer.
    Relayed,
}

/// A connected peer.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct PeerInfo {
    /// libp2p peer id (`12D3KooW…`).
    pub peer_id: String,
    /// Matrix server name (64 hex characters), if the peer is a Warren node.
    pub server_name: Option<String>,
    /// Multiaddrs it is known at.
    pub addresses: Vec<String>,
    /// Direct or relayed.
    pub connection: ConnectionKind,
    /// Last measured round-trip time in milliseconds.
    pub rtt_ms: Option<u64>,
}

/// What a running node holds; gone once stopped.
struct Running {
    node: warren_core::Node,
    p2p: P2p,
    /// Forwards peer events to the listener thread.
    events: JoinHandle<()>,
    /// Forwards notifications to the listener thread.
    notifications: JoinHandle<()>,
}

/// A running Warren node. Thread-safe; every method may be called from any thread.
#[derive(uniffi::Object)]
pub struct Node {
    /// `None` once stopped (the runtime is shut down by `stop`).
    runtime: Mutex<Option<Runtime>>,
    running: Mutex<Option<Running>>,
    /// The node's services; kept after `stop` only so `Arc`s outlive nothing important.
    server: Arc<Server>,
    client_url: String,
    server_name: String,
    peer_id: String,
    listener: Slot,
    notify: Mutex<listener::Notifier>,
}

/// Parse multiaddrs from the config, naming the field in the error.
fn multiaddrs(field: &str, addrs: &[String]) -> Result<Vec<Multiaddr>, WarrenError> {
    addrs
        .iter()
        .map(|a| {
            a.trim()
                .parse::<Multiaddr>()
                .map_err(|e| WarrenError::invalid(format!("{field}: invalid multiaddr {a:?}: {e}")))
        })
        .collect()
}

/// A runtime on its way into a [`Node`]. If `start` fails, or its future is dropped
/// half-way (a cancelled coroutine), the runtime goes without blocking: a plain drop
/// would wait for its threads, and panic when that happens inside another runtime.
struct RuntimeGuard(Option<Runtime>);

impl RuntimeGuard {
    fn handle(&self) -> Result<tokio::runtime::Handle, WarrenError> {
        self.0
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or(WarrenError::Stopped)
    }

    fn into_inner(mut self) -> Option<Runtime> {
        self.0.take()
    }
}

impl Drop for RuntimeGuard {
    fn drop(&mut self) {
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

fn build_runtime() -> Result<Runtime, WarrenError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKER_THREADS)
        .enable_all()
        .thread_name("warren")
        .max_blocking_threads(warren_core::node::MAX_BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .build()
        .map_err(|e| WarrenError::Start {
            message: format!("cannot start the node's runtime: {e}"),
        })
}

/// Run `fut` on `handle`'s runtime and wait for it from any executor (or none).
async fn on<T: Send + 'static>(
    handle: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> Result<T, WarrenError> {
    handle.spawn(fut).await.map_err(|e| {
        if e.is_panic() {
            WarrenError::internal("an internal task failed")
        } else {
            // Cancelled: the runtime was shut down under it.
            WarrenError::Stopped
        }
    })
}

/// Start the node and its transport on the current (the node's) runtime.
async fn start_on_runtime(
    data_dir: PathBuf,
    client_port: u16,
    p2p_config: P2pConfig,
) -> Result<(warren_core::Node, P2p), WarrenError> {
    let mut config = warren_core::Config::new(data_dir);
    config.client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, client_port));
    let node = warren_core::Node::start(config).await?;
    let p2p = match P2p::attach(&node, p2p_config).await {
        Ok(p2p) => p2p,
        Err(e) => {
            let _ = node.shutdown().await;
            return Err(e.into());
        }
    };
    if let Err(e) = p2p.wait_listening(LISTEN_WAIT).await {
        p2p.shutdown().await;
        let _ = node.shutdown().await;
        return Err(e.into());
    }
    Ok((node, p2p))
}

/// Forward connect/disconnect events to the listener thread until the transport stops.
async fn forward_events(p2p: P2p, notify: listener::Notifier) {
    let mut events = p2p.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(PeerEvent::Connected { server_name }) => Event::PeerConnected(server_name),
            Ok(PeerEvent::Disconnected { server_name }) => Event::PeerDisconnected(server_name),
            Ok(_) => continue,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "listener fell behind; some peer events were dropped"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if notify.send(event).is_err() {
            return;
        }
    }
}

/// Forward the node's local notifications to the listener thread until it stops. Never
/// waits on the app: the listener thread's notification queue drops its oldest.
async fn forward_notifications(server: Arc<Server>, notify: listener::Notifier) {
    let mut notifications = server.local_notifications.subscribe();
    drop(server);
    loop {
        let n = match notifications.recv().await {
            Ok(n) => n,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "notifications dropped: the listener fell behind");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        match notify.notify(listener::Notification::from(&*n)) {
            Ok(false) => {}
            Ok(true) => tracing::debug!("listener slow; oldest notification dropped"),
            Err(_) => return,
        }
    }
}

impl Node {
    fn handle(&self) -> Result<tokio::runtime::Handle, WarrenError> {
        self.runtime
            .lock()
            .as_ref()
            .map(|r| r.handle().clone())
            .ok_or(WarrenError::Stopped)
    }

    fn p2p(&self) -> Result<P2p, WarrenError> {
        self.running
            .lock()
            .as_ref()
            .map(|r| r.p2p.clone())
            .ok_or(WarrenError::Stopped)
    }

    fn notify(&self, event: Event) {
        // The dispatcher only goes away with the node.
        let _ = self.notify.lock().send(event);
    }

    fn state_now(&self) -> NodeState {
        if self.running.lock().is_some() {
            NodeState::Running
        } else {
            NodeState::Stopped
        }
    }
}

#[uniffi::export]
impl Node {
    /// Start a node: open (or create) the data directory, serve the Matrix client API on
    /// `http://127.0.0.1:<client_port>` and join the P2P network. Returns once the node
    /// serves and its P2P listeners have addresses.
    #[uniffi::constructor]
    pub async fn start(config: NodeConfig) -> Result<Arc<Node>, WarrenError> {
        if config.data_dir.trim().is_empty() {
            return Err(WarrenError::invalid("data_dir must not be empty"));
        }
        logging::init(&config.log_level)?;
        let listen = multiaddrs("listen_addrs", &config.listen_addrs)?;
        let bootstrap = multiaddrs("bootstrap_peers", &config.bootstrap_peers)?;
        let mut p2p_config = P2pConfig {
            bootstrap,
            mdns: config.mdns,
            ..P2pConfig::default()
        };
        if !listen.is_empty() {
            p2p_config.listen = listen;
        }
        p2p_config
            .validate()
            .map_err(|e| WarrenError::invalid(e.to_string()))?;

        let runtime = RuntimeGuard(Some(build_runtime()?));
        let handle = runtime.handle()?;
        let data_dir = PathBuf::from(config.data_dir);
        let (node, p2p) = on(
            &handle,
            start_on_runtime(data_dir, config.client_port, p2p_config),
        )
        .await??;

        let slot: Slot = Arc::default();
        let notify = match listener::spawn_dispatcher(slot.clone()) {
            Ok(notify) => notify,
            Err(e) => {
                let _ = on(&handle, async move {
                    p2p.shutdown().await;
                    node.shutdown().await
                })
                .await;
                return Err(WarrenError::Start {
                    message: format!("cannot start the listener thread: {e}"),
                });
            }
        };
        let events = handle.spawn(forward_events(p2p.clone(), notify.clone()));
        let notifications =
            handle.spawn(forward_notifications(node.server().clone(), notify.clone()));
        let this = Node {
            server: node.server().clone(),
            client_url: node.client_url(),
            server_name: node.server_name().to_owned(),
            peer_id: p2p.peer_id().to_string(),
            runtime: Mutex::new(runtime.into_inner()),
            running: Mutex::new(Some(Running {
                node,
                p2p,
                events,
                notifications,
            })),
            listener: slot,
            notify: Mutex::new(notify),
        };
        Ok(Arc::new(this))
    }

    /// Base URL of the Matrix client-server API, e.g. `http://127.0.0.1:41234`. Point the
    /// app's Matrix client (matrix-rust-sdk, …) at it.
    pub fn client_url(&self) -> String {
        self.client_url.clone()
    }

    /// The Matrix server name: 64 lowercase hex characters of the node's public key.
    pub fn server_name(&self) -> String {
        self.server_name.clone()
    }

    /// The libp2p peer id (the same key as the server name, spelled `12D3KooW…`).
    pub fn peer_id(&self) -> String {
        self.peer_id.clone()
    }

    /// Where other nodes can reach this one: multiaddrs ending in `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<String>, WarrenError> {
        let p2p = self.p2p()?;
        let addrs = on(&self.handle()?, async move { p2p.listen_addrs().await }).await??;
        Ok(addrs.iter().map(ToString::to_string).collect())
    }

    /// Make sure the user `localpart` exists on this node and sign a new device in.
    /// Creates the account with `password` if it is missing; otherwise checks the
    /// password (a wrong one is an `Auth` error). For apps that sign their user in with
    /// no registration screen; restore the returned session in the Matrix client.
    pub async fn ensure_owner_account(
        &self,
        localpart: String,
        password: String,
    ) -> Result<Credentials, WarrenError> {
        if self.running.lock().is_none() {
            return Err(WarrenError::Stopped);
        }
        let server = self.server.clone();
        on(
            &self.handle()?,
            crate::account::ensure_owner_account(server, localpart, password),
        )
        .await?
    }

    /// The nodes this one is connected to.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, WarrenError> {
        let p2p = self.p2p()?;
        let peers = on(&self.handle()?, async move { p2p.peers().await }).await??;
        Ok(peers
            .into_iter()
            .map(|p| PeerInfo {
                peer_id: p.peer_id.to_string(),
                server_name: p.server_name,
                addresses: p.addresses.iter().map(ToString::to_string).collect(),
                connection: match p.connection {
                    warren_p2p::ConnectionKind::Direct => ConnectionKind::Direct,
                    warren_p2p::ConnectionKind::Relayed => ConnectionKind::Relayed,
                },
                rtt_ms: p
                    .rtt
                    .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            })
            .collect())
    }

    /// Connect to another node at `multiaddr` (with or without `/p2p/<peer id>`), e.g.
    /// one read from a QR code. Returns the peer id reached; the address is remembered.
    pub async fn connect(&self, multiaddr: String) -> Result<String, WarrenError> {
        let addr = multiaddr
            .trim()
            .parse::<Multiaddr>()
            .map_err(|e| WarrenError::invalid(format!("invalid multiaddr {multiaddr:?}: {e}")))?;
        let p2p = self.p2p()?;
        let peer = on(&self.handle()?, async move { p2p.dial(addr).await }).await??;
        Ok(peer.to_string())
    }

    /// Call when the device's connectivity changed (Wi-Fi ↔ cellular, VPN, airplane
    /// mode off): re-binds listeners, renews relay reservations, tells peers.
    pub async fn network_changed(&self) -> Result<(), WarrenError> {
        let p2p = self.p2p()?;
        on(&self.handle()?, async move { p2p.network_changed().await }).await??;
        Ok(())
    }

    /// Name an always-on peer (a home Pi, a friend's laptop) as this node's mailbox: its
    /// server name, or a multiaddr (dialled to learn it). Other nodes leave what they
    /// cannot deliver while this device sleeps with it, and this node collects it when
    /// it connects to the mailbox. Returns the mailbox's server name.
    pub async fn add_mailbox(&self, mailbox: String) -> Result<String, WarrenError> {
        self.p2p()?;
        let server = self.server.clone();
        on(&self.handle()?, async move {
            warren_core::mailbox::record::add(&server, &mailbox).await
        })
        .await?
        .map_err(mailbox_error)
    }

    /// Stop using a mailbox. Returns whether it was one.
    pub fn remove_mailbox(&self, server_name: String) -> Result<bool, WarrenError> {
        self.p2p()?;
        warren_core::mailbox::record::remove(&self.server, &server_name).map_err(mailbox_error)
    }

    /// The server names of this node's mailboxes.
    pub fn mailboxes(&self) -> Result<Vec<String>, WarrenError> {
        self.p2p()?;
        let own = self
            .server
            .db
            .read(warren_core::storage::own_mailboxes)
            .map_err(WarrenError::internal)?;
        Ok(own.into_iter().map(|(name, _)| name).collect())
    }

    /// Retry federation now instead of waiting out backoffs: wakes the sender of queued
    /// events. Call when the app returns to the foreground.
    pub fn kick_backoff(&self) -> Result<(), WarrenError> {
        if self.running.lock().is_none() {
            return Err(WarrenError::Stopped);
        }
        self.server.federation.outbox_wake.notify_one();
        Ok(())
    }

    /// Change the log filter (same syntax as `NodeConfig.log_level`). Process-wide.
    pub fn set_log_level(&self, level: String) -> Result<(), WarrenError> {
        logging::set_level(&level)
    }

    /// Set (or, with `None`, clear) the listener. It is told the current state at once.
    pub fn set_listener(&self, listener: Option<Arc<dyn NodeListener>>) {
        let has = listener.is_some();
        *self.listener.lock() = listener;
        if has {
            self.notify(Event::State(self.state_now()));
        }
    }

    /// Whether the node runs or is stopped.
    pub fn state(&self) -> NodeState {
        self.state_now()
    }

    /// Stop: close P2P connections, let in-flight client requests finish (at most a few
    /// seconds), flush the database and release the data directory. Calling it again does
    /// nothing. After `stop`, start a new `Node` on the same directory to resume.
    pub async fn stop(&self) -> Result<(), WarrenError> {
        let Some(running) = self.running.lock().take() else {
            return Ok(());
        };
        self.notify(Event::State(NodeState::Stopping));
        let handle = self.handle()?;
        let result = on(&handle, async move {
            running.p2p.shutdown().await;
            running.events.abort();
            running.notifications.abort();
            running.node.shutdown().await
        })
        .await;
        // Every task left (the transport's, the address book's) ends with the runtime;
        // its threads wind down in the background.
        if let Some(runtime) = self.runtime.lock().take() {
            runtime.shutdown_background();
        }
        self.notify(Event::State(NodeState::Stopped));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(WarrenError::internal(format!(
                "the node did not shut down cleanly: {e}"
            ))),
            Err(e) => Err(e),
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let running = self.running.lock().take();
        let runtime = self.runtime.lock().take();
        let Some(runtime) = runtime else {
            return;
        };
        let Some(running) = running else {
            runtime.shutdown_background();
            return;
        };
        // Dropped without `stop()`: shut down on a thread of its own (a drop may happen on
        // any thread, even inside an async runtime, where blocking is not allowed).
        let spawned = std::thread::Builder::new()
            .name("warren-drop".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let stop = async {
                        running.p2p.shutdown().await;
                        running.events.abort();
                        running.notifications.abort();
                        running.node.shutdown().await
                    };
                    if tokio::time::timeout(DROP_GRACE, stop).await.is_err() {
                        tracing::warn!("node dropped without stop() did not shut down in time");
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(1));
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot shut down a dropped node cleanly");
        }
    }
}

/// A mailbox change refused: a bad name or address, a peer that cannot be reached, or
/// the node's own failure.
fn mailbox_error(e: warren_core::error::Error) -> WarrenError {
    use warren_core::error::Error;
    match e {
        Error::InvalidParam(m) => WarrenError::invalid(m),
        Error::RemoteServer(message) => WarrenError::Network { message },
        other => WarrenError::internal(other),
    }
}
