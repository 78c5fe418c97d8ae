//! warren-p2p: how Warren nodes find and reach each other over libp2p.
//!
//! A Warren node has exactly one ed25519 keypair. It is the Matrix server signing key
//! *and* the libp2p identity, so a node's Matrix server name (64 lowercase hex
//! characters of the public key) and its libp2p [`PeerId`] are two spellings of the same
//! key; the [`identity`] module converts between them (DESIGN.md §2).
//!
//! [`P2p`] runs the swarm (QUIC first, TCP + Noise + Yamux as fallback; identify, ping,
//! AutoNAT, relay v2 client and server (on by default, bounded), DCUtR, Kademlia, mDNS) and carries the
//! Matrix server-server API as HTTP/1.1 on libp2p streams (protocol
//! `/matrix/federation/1`, see `docs/p2p-federation.md`). It implements `warren-core`'s
//! [`FederationTransport`]; it knows nothing about rooms.

mod addr;
mod address_book;
mod behaviour;
mod carriage;
mod config;
mod driver;
pub mod identity;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use tokio::sync::{broadcast, mpsc, oneshot};
use warren_core::Node;
use warren_core::federation::{
    FederationTransport, PeerEvent, PeerSummary, StreamingFuture, TransportError, TransportFuture,
};
use warren_core::server::Server;

pub use carriage::PROTOCOL;
pub use config::{ConfigError, DhtMode, P2pConfig, RelayLimits, default_listen};
pub use identity::{
    AddressError, SERVER_NAME_LEN, keypair_from_seed, peer_id_for_server_name,
    peer_id_from_public_key, public_key_from_server_name, server_name_for_peer_id,
};
pub use libp2p::{Multiaddr, PeerId};
pub use libp2p_identity::Keypair;

use carriage::Limits;
use driver::{Command, Driver};

/// Why [`P2p::connect`] failed.
enum ConnectError {
    ShutDown,
    Failed(String),
}

/// How a peer is connected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionKind {
    /// At least one connection goes straight to the peer.
    Direct,
    /// Only relayed circuits reach the peer.
    Relayed,
}

impl std::fmt::Display for ConnectionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConnectionKind::Direct => "direct",
            ConnectionKind::Relayed => "relayed",
        })
    }
}

/// A connected peer.
#[derive(Clone, Debug)]
pub struct PeerInfo {
    /// Its libp2p id.
    pub peer_id: PeerId,
    /// Its Matrix server name, if it is a Warren (ed25519) peer.
    pub server_name: Option<String>,
    /// Addresses it is known at.
    pub addresses: Vec<Multiaddr>,
    /// Direct or relayed.
    pub connection: ConnectionKind,
    /// What new streams to it run over: `quic`, `tcp`, `relayed` (or `other`).
    pub transport: String,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
}

/// This node's relay reservations (as a client of other nodes' relays).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RelayStatus {
    /// Relays that accepted a reservation for this node: peers connected to one of them
    /// can reach this node through it.
    pub reservations: Vec<PeerId>,
    /// Reservation requests refused (a relay at its limits) or lost since start.
    pub refused: u64,
}

/// Why the transport could not start or a command failed.
#[derive(Debug, thiserror::Error)]
pub enum P2pError {
    /// The configuration was rejected.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The swarm could not be built or could not listen.
    #[error("cannot start the P2P transport: {0}")]
    Start(String),
    /// Dialling failed.
    #[error("{0}")]
    Dial(String),
    /// The transport has stopped.
    #[error("the P2P transport is shut down")]
    ShutDown,
}

/// A running transport. Cheap to clone; all clones drive the same swarm.
#[derive(Clone)]
pub struct P2p {
    inner: Arc<Inner>,
}

struct Inner {
    local_peer: PeerId,
    commands: mpsc::Sender<Command>,
    control: streams::Control,
    events: broadcast::Sender<PeerEvent>,
    limits: Limits,
    connect_timeout: Duration,
    /// The carriage's shared inbound limits, for diagnostics.
    inbound: carriage::Inbound,
    inbound_body_budget: usize,
    /// One permit an outbound request in flight.
    outbound: Arc<tokio::sync::Semaphore>,
    /// The same, per destination peer.
    outbound_per_peer:
        parking_lot::Mutex<std::collections::HashMap<PeerId, Arc<tokio::sync::Semaphore>>>,
    max_outbound_per_peer: usize,
}

impl P2p {
    /// Start the transport for `server`'s identity, serving inbound federation streams
    /// with `router` and keeping the address book in `server`'s database.
    pub async fn start(
        config: P2pConfig,
        server: Arc<Server>,
        router: Router,
    ) -> Result<P2p, P2pError> {
        config.validate()?;
        let key = keypair_from_seed(server.identity.secret_seed());
        let local_peer = key.public().to_peer_id();
        let (mut swarm, control, incoming) =
            behaviour::build_swarm(key, &config).map_err(|e| P2pError::Start(e.to_string()))?;
        // Keep libp2p from advertising the loopback-only view of addresses as external.
        swarm.behaviour_mut().kad.set_mode(match config.dht_mode {
            DhtMode::Auto => None,
            DhtMode::Server => Some(libp2p::kad::Mode::Server),
            DhtMode::Client => Some(libp2p::kad::Mode::Client),
        });
        let limits = Limits {
            max_body: config.max_body_bytes,
            max_response: config.max_response_bytes,
            max_header: config.max_header_bytes,
            request_timeout: config.request_timeout,
            per_peer: config.max_inbound_per_peer,
            total: config.max_inbound_total,
        };
        let connect_timeout = config.connect_timeout;
        let inbound =
            carriage::Inbound::new(config.max_inbound_total, config.max_inbound_body_budget);
        let inbound_body_budget = config.max_inbound_body_budget;
        let outbound = Arc::new(tokio::sync::Semaphore::new(config.max_outbound_requests));
        let max_outbound_per_peer = config.max_outbound_per_peer;
        let (commands, command_rx) = mpsc::channel(256);
        let (events, _) = broadcast::channel(256);
        let book = address_book::AddressBook::start(server);
        let mut driver = Driver::new(swarm, config, command_rx, events.clone(), book);
        driver.start().map_err(P2pError::Start)?;
        tokio::spawn(driver.run());
        tokio::spawn(carriage::serve(incoming, router, limits, inbound.clone()));
        tracing::info!(peer_id = %local_peer, "P2P transport started");
        Ok(P2p {
            inner: Arc::new(Inner {
                local_peer,
                commands,
                control,
                events,
                limits,
                connect_timeout,
                inbound,
                inbound_body_budget,
                outbound,
                outbound_per_peer: Default::default(),
                max_outbound_per_peer,
            }),
        })
    }

    /// Start the transport for a running node: serve its federation router, and make
    /// this transport the one its federation requests use.
    pub async fn attach(node: &Node, config: P2pConfig) -> Result<P2p, P2pError> {
        let p2p = P2p::start(config, node.server().clone(), node.federation_router()).await?;
        node.set_transport(Arc::new(p2p.clone()));
        Ok(p2p)
    }

    /// Inbound federation requests being served now. For tests and diagnostics.
    #[doc(hidden)]
    pub fn inbound_in_flight(&self) -> usize {
        self.inner.limits.total - self.inner.inbound.total.available_permits()
    }

    /// Bytes of inbound request bodies charged to the budget now. For tests and
    /// diagnostics.
    #[doc(hidden)]
    pub fn inbound_body_bytes(&self) -> usize {
        self.inner.inbound_body_budget - self.inner.inbound.body_budget.available_permits()
    }

    /// This node's libp2p id.
    pub fn peer_id(&self) -> PeerId {
        self.inner.local_peer
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, P2pError> {
        let (tx, rx) = oneshot::channel();
        self.inner
            .commands
            .send(make(tx))
            .await
            .map_err(|_| P2pError::ShutDown)?;
        rx.await.map_err(|_| P2pError::ShutDown)
    }

    /// Connect to a multiaddr (with or without `/p2p/<peer id>`); returns the peer
    /// reached. The address is remembered in the address book on success.
    pub async fn dial(&self, addr: Multiaddr) -> Result<PeerId, P2pError> {
        let reached = self.ask(|reply| Command::DialAddr { addr, reply });
        match tokio::time::timeout(self.inner.connect_timeout, reached).await {
            Ok(r) => r?.map_err(P2pError::Dial),
            Err(_) => Err(P2pError::Dial(format!(
                "no connection within {:?}",
                self.inner.connect_timeout
            ))),
        }
    }

    /// Connected peers.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, P2pError> {
        self.ask(Command::Peers).await
    }

    /// The addresses this node listens on (what another node can dial), each ending in
    /// this node's `/p2p/<peer id>`.
    pub async fn listen_addrs(&self) -> Result<Vec<Multiaddr>, P2pError> {
        let (_, addrs) = self.ask(Command::ListenAddrs).await?;
        let me = self.inner.local_peer;
        // Relayed listen addresses already end in our id; direct ones do not.
        Ok(addrs
            .into_iter()
            .map(|a| match addr::peer_of(&a) {
                Some(_) => a,
                None => a.with(libp2p::multiaddr::Protocol::P2p(me)),
            })
            .collect())
    }

    /// Wait until every configured listener has an address (or, after `timeout`, at
    /// least one does), and return the listen addresses.
    pub async fn wait_listening(&self, timeout: Duration) -> Result<Vec<Multiaddr>, P2pError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let mut events = self.subscribe();
        loop {
            let (ready, _) = self.ask(Command::ListenAddrs).await?;
            let addrs = self.listen_addrs().await?;
            if ready && !addrs.is_empty() {
                return Ok(addrs);
            }
            if tokio::time::Instant::now() >= deadline && !addrs.is_empty() {
                return Ok(addrs);
            }
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(_) => continue,
                Err(_) => return Err(P2pError::Start("not listening on any address".into())),
            }
        }
    }

    /// Call after the device's network changed (Wi-Fi ↔ cellular): re-bind listeners,
    /// renew relay reservations and tell peers the new addresses.
    pub async fn network_changed(&self) -> Result<(), P2pError> {
        self.ask(Command::NetworkChanged).await
    }

    /// The relays this node holds reservations with.
    pub async fn relay_status(&self) -> Result<RelayStatus, P2pError> {
        self.ask(Command::RelayStatus).await
    }

    /// Peer events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        self.inner.events.subscribe()
    }

    /// Stop the swarm: close every connection and listener. Idempotent.
    pub async fn shutdown(&self) {
        let _ = self.ask(Command::Shutdown).await;
    }

    /// Make sure a connection to `peer` exists: known addresses and relay circuits
    /// first, then a DHT lookup.
    async fn connect(&self, peer: PeerId) -> Result<(), ConnectError> {
        let (connected, addrs) = self
            .ask(|reply| Command::Candidates { peer, reply })
            .await
            .map_err(|_| ConnectError::ShutDown)?;
        if connected {
            return Ok(());
        }
        let mut tried = String::new();
        if !addrs.is_empty() {
            match self.dial_peer(peer, addrs.clone()).await? {
                Ok(()) => return Ok(()),
                Err(e) => tried = format!("known addresses failed ({e}); "),
            }
        }
        let found = self
            .ask(|reply| Command::FindPeer { peer, reply })
            .await
            .map_err(|_| ConnectError::ShutDown)?;
        let fresh: Vec<_> = found.into_iter().filter(|a| !addrs.contains(a)).collect();
        if fresh.is_empty() {
            return Err(ConnectError::Failed(format!(
                "{tried}no address found in the DHT"
            )));
        }
        self.dial_peer(peer, fresh).await?.map_err(|e| {
            ConnectError::Failed(format!("{tried}addresses from the DHT failed ({e})"))
        })
    }

    async fn dial_peer(
        &self,
        peer: PeerId,
        addrs: Vec<libp2p::Multiaddr>,
    ) -> Result<Result<(), String>, ConnectError> {
        self.ask(|reply| Command::Dial { peer, addrs, reply })
            .await
            .map_err(|_| ConnectError::ShutDown)
    }

    /// Open a raw federation stream to `server_name`, connecting first. For tests and
    /// diagnostics; federation uses [`FederationTransport::request`].
    #[doc(hidden)]
    pub async fn open_stream(&self, server_name: &str) -> Result<libp2p::Stream, TransportError> {
        let peer = self.destination(server_name)?;
        self.connected_stream(server_name, peer).await
    }

    fn destination(&self, server_name: &str) -> Result<PeerId, TransportError> {
        let peer = peer_id_for_server_name(server_name)
            .map_err(|e| TransportError::NotAddressable(e.to_string()))?;
        if peer == self.inner.local_peer {
            return Err(TransportError::NotAddressable(
                "a node does not send federation requests to itself".into(),
            ));
        }
        Ok(peer)
    }

    async fn connected_stream(
        &self,
        server_name: &str,
        peer: PeerId,
    ) -> Result<libp2p::Stream, TransportError> {
        let after = self.inner.connect_timeout;
        let timeout = || TransportError::Timeout {
            server: server_name.to_owned(),
            after,
            stage: "connect",
        };
        let connect = async {
            // A connection can close between being found and carrying the stream (the
            // peer restarted, our network changed); then connect again, giving the swarm
            // a moment to notice the closed connection, at most twice.
            let mut attempt = 0;
            loop {
                attempt += 1;
                self.connect(peer).await.map_err(|reason| match reason {
                    ConnectError::ShutDown => TransportError::ShutDown,
                    ConnectError::Failed(reason) => TransportError::Unreachable {
                        server: server_name.to_owned(),
                        reason,
                    },
                })?;
                match self.inner.control.open_stream(peer).await {
                    Ok(stream) => return Ok(stream),
                    Err(reason) if attempt < 3 => {
                        tracing::debug!(server = server_name, %reason, "stream not opened; reconnecting");
                        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                    }
                    Err(reason) => {
                        return Err(TransportError::Unreachable {
                            server: server_name.to_owned(),
                            reason,
                        });
                    }
                }
            }
        };
        tokio::time::timeout(after, connect)
            .await
            .map_err(|_| timeout())?
    }

    /// Send one federation request to `server_name` and return the response.
    ///
    /// A stream that closes before any response head arrives was dropped unread by
    /// the listener (see `docs/p2p-federation.md`), so the request is sent again, at
    /// most [`SEND_ATTEMPTS`] times in all.
    pub async fn send(
        &self,
        server_name: &str,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let limits = self.inner.limits;
        self.send_with(server_name, request, |stream, request, _slots| {
            carriage::exchange(stream, server_name, request, limits)
        })
        .await
    }

    /// Like [`send`](Self::send), but the response body is returned as a stream as soon
    /// as the head arrived (within the request timeout), without the response size cap:
    /// the caller bounds what it reads and how long. The outbound request slots stay
    /// taken until the body stream ends or is dropped.
    pub async fn send_streaming(
        &self,
        server_name: &str,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<warren_core::federation::BodyStream>, TransportError> {
        use futures::StreamExt as _;
        let limits = self.inner.limits;
        let response = self
            .send_with(server_name, request, |stream, request, slots| {
                carriage::exchange_streaming(stream, server_name, request, limits, slots)
            })
            .await?;
        let server = server_name.to_owned();
        let (parts, body) = response.into_parts();
        let body: warren_core::federation::BodyStream = Box::pin(body.map(move |chunk| {
            chunk.map_err(|reason| TransportError::Protocol {
                server: server.clone(),
                reason,
            })
        }));
        Ok(http::Response::from_parts(parts, body))
    }

    /// Take outbound slots, open a stream and run `exchange` on it, retrying a stream
    /// dropped unread (see [`send`](Self::send)).
    async fn send_with<T, F, Fut>(
        &self,
        server_name: &str,
        request: http::Request<Bytes>,
        exchange: F,
    ) -> Result<T, TransportError>
    where
        F: Fn(libp2p::Stream, http::Request<Bytes>, Arc<OutboundSlots>) -> Fut,
        Fut: Future<Output = Result<T, carriage::ExchangeError>>,
    {
        let peer = self.destination(server_name)?;
        let limits = self.inner.limits;
        // At most `max_outbound_requests` in flight, `max_outbound_per_peer` of them to
        // one peer; the rest wait their turn, each for at most `connect_timeout`.
        let peer_slots = {
            let max = self.inner.max_outbound_per_peer;
            let mut map = self.inner.outbound_per_peer.lock();
            // Forget idle destinations so the map stays small.
            if map.len() > 1024 {
                map.retain(|_, s| s.available_permits() < max);
            }
            map.entry(peer)
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(max)))
                .clone()
        };
        let slots = async {
            let mine = peer_slots.acquire_owned().await?;
            let all = self.inner.outbound.clone().acquire_owned().await?;
            Ok::<_, tokio::sync::AcquireError>((mine, all))
        };
        let slots = match tokio::time::timeout(self.inner.connect_timeout, slots).await {
            Ok(Ok(slots)) => Arc::new(slots),
            Ok(Err(_)) => return Err(TransportError::ShutDown),
            Err(_) => {
                return Err(TransportError::Timeout {
                    server: server_name.to_owned(),
                    after: self.inner.connect_timeout,
                    stage: "waiting for an outbound request slot",
                });
            }
        };
        let (parts, body) = request.into_parts();
        let mut attempt = 1;
        loop {
            let stream = self.connected_stream(server_name, peer).await?;
            let request = http::Request::from_parts(parts.clone(), body.clone());
            let exchange = exchange(stream, request, slots.clone());
            let reason = match tokio::time::timeout(limits.request_timeout, exchange).await {
                Ok(Ok(response)) => return Ok(response),
                Ok(Err(carriage::ExchangeError::NoResponse(reason))) if attempt < SEND_ATTEMPTS => {
                    tracing::debug!(server = server_name, attempt, %reason, "stream dropped unread; retrying");
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(5 * attempt as u64)).await;
                    continue;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => {
                    return Err(TransportError::Timeout {
                        server: server_name.to_owned(),
                        after: limits.request_timeout,
                        stage: "request",
                    });
                }
            };
            return Err(TransportError::Protocol {
                server: server_name.to_owned(),
                reason,
            });
        }
    }
}

/// The outbound request slots one request holds (its peer's and the global one).
type OutboundSlots = (
    tokio::sync::OwnedSemaphorePermit,
    tokio::sync::OwnedSemaphorePermit,
);

/// How many times [`P2p::send`] tries a request whose stream was dropped unread.
pub const SEND_ATTEMPTS: u32 = 3;

impl FederationTransport for P2p {
    fn request(&self, destination: &str, request: http::Request<Bytes>) -> TransportFuture<'_> {
        let destination = destination.to_owned();
        Box::pin(async move { self.send(&destination, request).await })
    }

    fn request_streaming(
        &self,
        destination: &str,
        request: http::Request<Bytes>,
    ) -> StreamingFuture<'_> {
        let destination = destination.to_owned();
        Box::pin(async move { self.send_streaming(&destination, request).await })
    }

    fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        P2p::subscribe(self)
    }

    fn peers(&self) -> std::pin::Pin<Box<dyn Future<Output = Vec<PeerSummary>> + Send + '_>> {
        Box::pin(async move {
            let peers = P2p::peers(self).await.unwrap_or_default();
            peers
                .into_iter()
                .map(|p| PeerSummary {
                    peer_id: p.peer_id.to_base58(),
                    server_name: p.server_name,
                    addresses: p.addresses.iter().map(|a| a.to_string()).collect(),
                    connection: p.connection.to_string(),
                    transport: Some(p.transport),
                    rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                })
                .collect()
        })
    }

    fn connect<'a>(
        &'a self,
        address: &'a str,
    ) -> std::pin::Pin<Box<dyn Future<Output = Result<String, TransportError>> + Send + 'a>> {
        Box::pin(async move {
            let addr: Multiaddr = address.parse().map_err(|e| {
                TransportError::NotAddressable(format!("bad multiaddr {address}: {e}"))
            })?;
            let peer = self
                .dial(addr)
                .await
                .map_err(|e| TransportError::Unreachable {
                    server: address.to_owned(),
                    reason: e.to_string(),
                })?;
            Ok(server_name_for_peer_id(&peer).unwrap_or_else(|_| peer.to_base58()))
        })
    }
}
