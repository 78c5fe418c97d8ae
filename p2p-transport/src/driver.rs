//! The swarm task: owns the libp2p `Swarm`, turns its events into address-book writes
//! and [`PeerEvent`]s, and answers commands from the [`crate::P2p`] handle.
//!
//! Everything that touches the swarm happens on this one task, so no locks guard it.
//! Requests never wait on it for long: it only starts dials and lookups and replies when
//! their outcome arrives.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::core::transport::ListenerId;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, DialError, SwarmEvent};
use libp2p::{Multiaddr, PeerId, Swarm, identify, kad, mdns, ping, relay};
use tokio::sync::{broadcast, mpsc, oneshot};
use warren_core::federation::PeerEvent;

use crate::addr::{
    circuit_via, endpoint_is_relayed, ip_of, is_quic, is_relayed, peer_of, sort_for_dialling,
    transport_name, without_peer,
};
use crate::address_book::AddressBook;
use crate::behaviour::{Behaviour, BehaviourEvent, KAD_PROTOCOL};
use crate::config::P2pConfig;
use crate::identity::server_name_for_peer_id;
use crate::{ConnectionKind, PeerInfo};

/// At most this many relay reservations are held at once. Any connected peer that
/// offers relaying qualifies (bootstrap, mDNS, DHT, a manual dial), first come first
/// served; a reservation keeps its connection open past the idle timeout.
pub(crate) const MAX_RESERVATIONS: usize = 3;
/// A peer's rediscovery is reported at most this often (mDNS re-announces constantly).
const REDISCOVERY_QUIET: Duration = Duration::from_secs(10);
/// How often the DHT routing table is refreshed.
const DHT_REFRESH: Duration = Duration::from_secs(300);
/// Peer ids remembered as already heard of (for discovered vs rediscovered). Past it the
/// oldest are forgotten: such a peer, heard of again, is reported as discovered again.
const MAX_KNOWN_PEERS: usize = 4096;
/// Per-peer records kept. A record lives while the peer is connected, or for
/// [`REDISCOVERY_QUIET`] after its last rediscovery report; past the cap, a rediscovered
/// peer without a record is not reported (mDNS repeats itself; a later sighting is).
const MAX_PEER_STATES: usize = 4096;
/// mDNS-triggered dials in progress at once. Past it a discovered peer is remembered
/// (address book, peer store) but not dialled now; the next announcement retries.
const MAX_MDNS_DIALS: usize = 32;
/// mDNS-triggered dials: a burst of this many, then [`MDNS_DIAL_REFILL`] apart.
const MDNS_DIAL_BURST: u32 = 32;
/// One more mDNS-triggered dial is allowed every this often.
const MDNS_DIAL_REFILL: Duration = Duration::from_millis(250);

/// QUIC's head start: when a peer is dialled at QUIC and other (TCP, relayed) addresses,
/// QUIC is dialled alone first, the rest this long after (or at once if QUIC fails). A
/// concurrent dial of everything let TCP win on a LAN, and mDNS dialled whichever
/// address it heard first.
pub(crate) const QUIC_HEAD_START: Duration = Duration::from_millis(500);
/// Dials waiting out QUIC's head start; past it, a peer's addresses are dialled all at
/// once.
const MAX_FALLBACKS: usize = 256;

/// The rest of a dial that gave QUIC a head start.
struct Fallback {
    due: Instant,
    addrs: Vec<Multiaddr>,
    extend: bool,
}

/// One open connection.
#[derive(Clone, Debug)]
struct Conn {
    /// The remote address (on the listening end of a circuit only `/p2p/<peer>`).
    remote: Multiaddr,
    /// Through a relay circuit (seen from either end).
    relayed: bool,
    /// This node dialled it.
    dialer: bool,
}

impl Conn {
    fn quic(&self) -> bool {
        !self.relayed && is_quic(&self.remote)
    }
}

/// A set that keeps at most `cap` items, forgetting the oldest inserted first.
pub(crate) struct BoundedSet<T> {
    items: HashSet<T>,
    order: VecDeque<T>,
    cap: usize,
}

impl<T: std::hash::Hash + Eq + Clone> BoundedSet<T> {
    pub(crate) fn new(cap: usize) -> Self {
        BoundedSet {
            items: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Insert; true if it was not there. May forget the oldest item.
    pub(crate) fn insert(&mut self, item: T) -> bool {
        if !self.items.insert(item.clone()) {
            return false;
        }
        self.order.push_back(item);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.items.remove(&old);
            }
        }
        true
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// A token bucket: `burst` at once, then one per `refill`.
pub(crate) struct TokenBucket {
    tokens: u32,
    burst: u32,
    refill: Duration,
    last: Instant,
}

impl TokenBucket {
    pub(crate) fn new(burst: u32, refill: Duration, now: Instant) -> Self {
        TokenBucket {
            tokens: burst,
            burst,
            refill,
            last: now,
        }
    }

    /// Take a token if there is one.
    pub(crate) fn take(&mut self, now: Instant) -> bool {
        let earned = now.duration_since(self.last).as_nanos() / self.refill.as_nanos().max(1);
        if earned > 0 {
            let earned = u32::try_from(earned).unwrap_or(u32::MAX);
            self.tokens = self.tokens.saturating_add(earned).min(self.burst);
            self.last += self.refill * earned.min(self.burst);
            if self.tokens == self.burst {
                self.last = now;
            }
        }
        if self.tokens == 0 {
            return false;
        }
        self.tokens -= 1;
        true
    }
}

/// An error and its causes on one line (libp2p's transport errors print an empty
/// message and keep the reason in `source()`).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !text.is_empty() && !out.contains(&text) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// What the handle asks the swarm task to do.
pub(crate) enum Command {
    /// Connect to `peer` using `addrs` (and whatever the behaviours know).
    Dial {
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Connect to a multiaddr, with or without `/p2p/<id>`; replies with the peer reached.
    DialAddr {
        addr: Multiaddr,
        reply: oneshot::Sender<Result<PeerId, String>>,
    },
    /// Whether `peer` is connected, and every address worth trying for it.
    Candidates {
        peer: PeerId,
        reply: oneshot::Sender<(bool, Vec<Multiaddr>)>,
    },
    /// Ask the DHT where `peer` is; replies with the addresses found.
    FindPeer {
        peer: PeerId,
        reply: oneshot::Sender<Vec<Multiaddr>>,
    },
    Peers(oneshot::Sender<Vec<PeerInfo>>),
    /// Current listen addresses, and whether every configured listener has one.
    ListenAddrs(oneshot::Sender<(bool, Vec<Multiaddr>)>),
    /// Relays holding a reservation for this node, and reservations refused so far.
    RelayStatus(oneshot::Sender<crate::RelayStatus>),
    NetworkChanged(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// Per-peer facts the swarm itself does not keep.
#[derive(Default)]
struct PeerState {
    /// Open connections.
    connections: HashMap<ConnectionId, Conn>,
    rtt: Option<Duration>,
    /// Offers circuit relay v2 (seen in identify).
    relay: bool,
    last_reported: Option<Instant>,
}

impl PeerState {
    /// Whether the record is still needed: connected, or reported recently enough that
    /// the rediscovery quiet period applies.
    fn keep(&self, now: Instant) -> bool {
        !self.connections.is_empty()
            || self
                .last_reported
                .is_some_and(|t| now.duration_since(t) < REDISCOVERY_QUIET)
    }
}

/// Drop the records no longer needed (see [`PeerState::keep`]).
fn prune_peer_states(peers: &mut HashMap<PeerId, PeerState>, now: Instant) {
    peers.retain(|_, s| s.keep(now));
}

pub(crate) struct Driver {
    swarm: Swarm<Behaviour>,
    config: P2pConfig,
    commands: mpsc::Receiver<Command>,
    events: broadcast::Sender<PeerEvent>,
    book: AddressBook,
    peers: HashMap<PeerId, PeerState>,
    /// Peers heard of (address book and this run), for discovered vs rediscovered; the
    /// newest [`MAX_KNOWN_PEERS`].
    known: BoundedSet<PeerId>,
    /// mDNS-triggered dials in progress.
    mdns_dials: HashSet<ConnectionId>,
    mdns_budget: TokenBucket,
    bootstrap: HashMap<PeerId, Multiaddr>,
    listeners: Vec<ListenerId>,
    /// Relays this node holds (or is asking for) a reservation with.
    reservations: HashMap<PeerId, ListenerId>,
    /// Relays that accepted this node's reservation (a subset of `reservations`).
    reserved: HashSet<PeerId>,
    /// Reservation requests refused or failed since start.
    reservations_refused: u64,
    dial_waiters: HashMap<PeerId, Vec<oneshot::Sender<Result<(), String>>>>,
    /// Dials started for `dial_waiters` (their outcome answers them), by connection.
    own_dials: HashMap<ConnectionId, PeerId>,
    addr_waiters: HashMap<ConnectionId, oneshot::Sender<Result<PeerId, String>>>,
    lookups: HashMap<kad::QueryId, (PeerId, oneshot::Sender<Vec<Multiaddr>>)>,
    /// Whether the DHT has been bootstrapped since its first peer arrived.
    dht_bootstrapped: bool,
    /// Configured listeners that have not reported an address yet.
    pending_listeners: HashSet<ListenerId>,
    /// Dials giving QUIC a head start, by peer (at most [`MAX_FALLBACKS`]).
    fallbacks: HashMap<PeerId, Fallback>,
    /// QUIC dials to peers connected otherwise (see `maybe_upgrade_to_quic`); at most one
    /// per peer.
    quic_upgrades: HashMap<PeerId, ConnectionId>,
}

impl Driver {
    pub(crate) fn new(
        swarm: Swarm<Behaviour>,
        config: P2pConfig,
        commands: mpsc::Receiver<Command>,
        events: broadcast::Sender<PeerEvent>,
        book: AddressBook,
    ) -> Driver {
        let bootstrap = config
            .bootstrap
            .iter()
            .filter_map(|a| peer_of(a).map(|p| (p, without_peer(a))))
            .collect();
        Driver {
            swarm,
            config,
            commands,
            events,
            book,
            peers: HashMap::new(),
            known: BoundedSet::new(MAX_KNOWN_PEERS),
            mdns_dials: HashSet::new(),
            mdns_budget: TokenBucket::new(MDNS_DIAL_BURST, MDNS_DIAL_REFILL, Instant::now()),
            bootstrap,
            listeners: Vec::new(),
            reservations: HashMap::new(),
            reserved: HashSet::new(),
            reservations_refused: 0,
            dial_waiters: HashMap::new(),
            own_dials: HashMap::new(),
            addr_waiters: HashMap::new(),
            lookups: HashMap::new(),
            dht_bootstrapped: false,
            pending_listeners: HashSet::new(),
            fallbacks: HashMap::new(),
            quic_upgrades: HashMap::new(),
        }
    }

    /// Listen, load the address book and dial known and bootstrap peers.
    pub(crate) fn start(&mut self) -> Result<(), String> {
        self.listen()?;
        let remembered = self.book.load();
        let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
        for (peer, addr) in remembered {
            self.known.insert(peer);
            self.add_address(peer, addr.clone());
            by_peer.entry(peer).or_default().push(addr);
        }
        for (peer, addr) in self.bootstrap.clone() {
            self.known.insert(peer);
            self.add_address(peer, addr.clone());
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
            self.book.record(peer, &addr, "config");
            by_peer.entry(peer).or_default().push(addr);
        }
        // Reconnect to everyone we knew, without waiting for any discovery.
        for (peer, addrs) in by_peer {
            if let Err(e) =
                self.dial_quic_first(peer, addrs, false, PeerCondition::DisconnectedAndNotDialing)
            {
                tracing::debug!(%peer, error = %e, "redial of a known peer not started");
            }
        }
        Ok(())
    }

    fn listen(&mut self) -> Result<(), String> {
        for addr in self.config.listen.clone() {
            let id = self
                .swarm
                .listen_on(addr.clone())
                .map_err(|e| format!("cannot listen on {addr}: {}", error_chain(&e)))?;
            self.listeners.push(id);
            self.pending_listeners.insert(id);
        }
        Ok(())
    }

    fn add_address(&mut self, peer: PeerId, addr: Multiaddr) {
        self.swarm
            .behaviour_mut()
            .peers
            .store_mut()
            .add_address(&peer, &addr);
    }

    pub(crate) async fn run(mut self) {
        let mut refresh = tokio::time::interval(DHT_REFRESH);
        let mut fallback_tick = tokio::time::interval(QUIC_HEAD_START / 5);
        fallback_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = fallback_tick.tick(), if !self.fallbacks.is_empty() => self.due_fallbacks(),
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown(done)) => {
                        let _ = done.send(());
                        break;
                    }
                    Some(c) => self.on_command(c),
                    None => break,
                },
                _ = refresh.tick() => {
                    // Fails harmlessly while the routing table is empty.
                    let _ = self.swarm.behaviour_mut().kad.bootstrap();
                }
            }
        }
        tracing::debug!("p2p swarm task stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Dial { peer, addrs, reply } => self.dial(peer, addrs, reply),
            Command::DialAddr { addr, reply } => self.dial_addr(addr, reply),
            Command::Candidates { peer, reply } => {
                let _ = reply.send((self.swarm.is_connected(&peer), self.candidates(peer)));
            }
            Command::FindPeer { peer, reply } => {
                let id = self.swarm.behaviour_mut().kad.get_closest_peers(peer);
                self.lookups.insert(id, (peer, reply));
            }
            Command::Peers(reply) => {
                let _ = reply.send(self.peer_infos());
            }
            Command::ListenAddrs(reply) => {
                let ready = self.pending_listeners.is_empty();
                let _ = reply.send((ready, self.swarm.listeners().cloned().collect()));
            }
            Command::RelayStatus(reply) => {
                let mut reservations: Vec<PeerId> = self.reserved.iter().copied().collect();
                reservations.sort_by_key(|p| p.to_base58());
                let _ = reply.send(crate::RelayStatus {
                    reservations,
                    refused: self.reservations_refused,
                });
            }
            Command::NetworkChanged(reply) => {
                self.network_changed();
                let _ = reply.send(());
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Every address worth trying for `peer`: what the peer store knows, then circuits
    /// through every relay we are connected to.
    fn candidates(&self, peer: PeerId) -> Vec<Multiaddr> {
        let mut addrs: Vec<Multiaddr> = self
            .swarm
            .behaviour()
            .peers
            .address_of_peer(&peer)
            .map(|it| it.cloned().collect())
            .unwrap_or_default();
        for (relay, state) in &self.peers {
            if !state.relay || *relay == peer {
                continue;
            }
            let relay_addr = state
                .connections
                .values()
                .find(|c| !c.relayed)
                .map(|c| &c.remote);
            if let Some(relay_addr) = relay_addr {
                addrs.push(circuit_via(relay_addr, *relay, peer));
            }
        }
        addrs.dedup();
        sort_for_dialling(&mut addrs);
        addrs
    }

    fn dial(
        &mut self,
        peer: PeerId,
        addrs: Vec<Multiaddr>,
        reply: oneshot::Sender<Result<(), String>>,
    ) {
        if self.swarm.is_connected(&peer) {
            let _ = reply.send(Ok(()));
            return;
        }
        // A dial of ours in progress counts: the waiter is answered when it ends. A dial
        // someone else started (DCUtR's hole punching, the DHT) does not: it may try
        // only an address the peer does not answer at, for longer than the connect
        // timeout, while a circuit would connect at once.
        if let Some(waiters) = self.dial_waiters.get_mut(&peer)
            && !waiters.is_empty()
        {
            waiters.push(reply);
            return;
        }
        match self.dial_quic_first(peer, addrs, true, PeerCondition::Disconnected) {
            Ok(id) => {
                self.own_dials.insert(id, peer);
                self.dial_waiters.entry(peer).or_default().push(reply);
            }
            // `Disconnected` is false only when a connection exists.
            Err(DialError::DialPeerConditionFalse(_)) => {
                let _ = reply.send(Ok(()));
            }
            Err(e) => {
                let _ = reply.send(Err(e.to_string()));
            }
        }
    }

    /// Dial `peer` at `addrs` unless connected or already dialling, QUIC first: when
    /// there are QUIC and other addresses, QUIC is dialled alone and the rest after
    /// [`QUIC_HEAD_START`] or as soon as QUIC fails. `extend` adds the addresses the
    /// behaviours know (peer store, DHT) to the dial that covers the rest. Returns the
    /// first dial's connection id.
    fn dial_quic_first(
        &mut self,
        peer: PeerId,
        mut addrs: Vec<Multiaddr>,
        extend: bool,
        condition: PeerCondition,
    ) -> Result<ConnectionId, DialError> {
        sort_for_dialling(&mut addrs);
        addrs.dedup();
        // Circuits go with QUIC: a relay is no competitor for QUIC (new streams prefer
        // a direct connection anyway), and a peer reachable only through one must not
        // wait out QUIC's head start, or lose its circuits when the QUIC dial to an
        // address it does not listen on (a hole-punching candidate) outlives the
        // connect timeout.
        let (quic, rest): (Vec<_>, Vec<_>) = addrs
            .iter()
            .cloned()
            .partition(|a| is_quic(a) || is_relayed(a));
        let head_start = quic.iter().any(|a| !is_relayed(a))
            && (!rest.is_empty() || extend)
            && self.fallbacks.len() < MAX_FALLBACKS;
        if !head_start {
            let mut opts = DialOpts::peer_id(peer)
                .addresses(addrs)
                .condition(condition);
            if extend {
                opts = opts.extend_addresses_through_behaviour();
            }
            let opts = opts.build();
            let id = opts.connection_id();
            return self.swarm.dial(opts).map(|()| id);
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(quic)
            .condition(condition)
            .build();
        let id = opts.connection_id();
        self.swarm.dial(opts)?;
        self.fallbacks.insert(
            peer,
            Fallback {
                due: Instant::now() + QUIC_HEAD_START,
                addrs: rest,
                extend,
            },
        );
        Ok(id)
    }

    /// Start the rest of `peer`'s QUIC-first dial, if one waits and the peer is not
    /// connected yet. Whether a dial was started.
    fn fire_fallback(&mut self, peer: PeerId) -> bool {
        let Some(f) = self.fallbacks.remove(&peer) else {
            return false;
        };
        if self.swarm.is_connected(&peer) || (f.addrs.is_empty() && !f.extend) {
            return false;
        }
        // `Disconnected`, not `…AndNotDialing`: the QUIC dial may still be running.
        let mut opts = DialOpts::peer_id(peer)
            .addresses(f.addrs)
            .condition(PeerCondition::Disconnected);
        if f.extend {
            opts = opts.extend_addresses_through_behaviour();
        }
        let opts = opts.build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                if self.dial_waiters.get(&peer).is_some_and(|w| !w.is_empty()) {
                    self.own_dials.insert(id, peer);
                }
                true
            }
            Err(e) => {
                tracing::debug!(%peer, error = %e, "fallback dial not started");
                false
            }
        }
    }

    /// Fallback dials whose QUIC head start is over.
    fn due_fallbacks(&mut self) {
        let now = Instant::now();
        let due: Vec<PeerId> = self
            .fallbacks
            .iter()
            .filter(|(_, f)| f.due <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in due {
            self.fire_fallback(peer);
        }
    }

    /// A peer this node dialled over something other than QUIC (a TCP bootstrap
    /// address, an old address-book entry) announced a QUIC listen address at an IP we
    /// already reach it at: dial that too. New streams go to the QUIC connection (see
    /// `streams`); the other one closes when idle. At most one such dial per peer at a
    /// time; identify repeats rarely, so a peer whose UDP is blocked is not hammered.
    fn maybe_upgrade_to_quic(&mut self, peer: PeerId, listen: &[Multiaddr]) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        if self.quic_upgrades.contains_key(&peer)
            || state.connections.values().any(Conn::quic)
            || !state.connections.values().any(|c| c.dialer && !c.relayed)
        {
            return;
        }
        let ips: HashSet<std::net::IpAddr> = state
            .connections
            .values()
            .filter(|c| !c.relayed)
            .filter_map(|c| ip_of(&c.remote))
            .collect();
        let quic: Vec<Multiaddr> = listen
            .iter()
            .map(without_peer)
            .filter(|a| {
                is_quic(a) && !is_relayed(a) && ip_of(a).is_some_and(|ip| ips.contains(&ip))
            })
            .collect();
        if quic.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(quic)
            .condition(PeerCondition::Always)
            .build();
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                tracing::debug!(%peer, "dialling the peer's QUIC address too");
                self.quic_upgrades.insert(peer, id);
            }
            Err(e) => tracing::debug!(%peer, error = %e, "QUIC upgrade dial not started"),
        }
    }

    fn dial_addr(&mut self, addr: Multiaddr, reply: oneshot::Sender<Result<PeerId, String>>) {
        let opts = match peer_of(&addr) {
            Some(peer) => DialOpts::peer_id(peer)
                .addresses(vec![without_peer(&addr)])
                .condition(PeerCondition::Always)
                .build(),
            None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
        };
        let id = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                self.addr_waiters.insert(id, reply);
            }
            Err(e) => {
                let _ = reply.send(Err(format!("cannot dial {addr}: {e}")));
            }
        }
    }

    fn peer_infos(&self) -> Vec<PeerInfo> {
        let mut out: Vec<PeerInfo> = self
            .peers
            .iter()
            .filter(|(_, s)| !s.connections.is_empty())
            .map(|(peer, s)| {
                let direct = s.connections.values().any(|c| !c.relayed);
                // What new streams use (see `streams`): QUIC, other direct, relayed.
                let transport = s
                    .connections
                    .values()
                    .min_by_key(|c| (c.relayed, !c.quic()))
                    .map_or("relayed", |c| transport_name(&c.remote, c.relayed));
                let mut addresses: Vec<Multiaddr> = self
                    .swarm
                    .behaviour()
                    .peers
                    .address_of_peer(peer)
                    .map(|it| it.cloned().collect())
                    .unwrap_or_default();
                if addresses.is_empty() {
                    addresses = s.connections.values().map(|c| c.remote.clone()).collect();
                }
                // The peer store may hold one address with and without `/p2p/<id>`.
                let mut addresses: Vec<Multiaddr> = addresses.iter().map(without_peer).collect();
                addresses.sort();
                addresses.dedup();
                PeerInfo {
                    peer_id: *peer,
                    server_name: server_name_for_peer_id(peer).ok(),
                    addresses,
                    connection: if direct {
                        ConnectionKind::Direct
                    } else {
                        ConnectionKind::Relayed
                    },
                    transport: transport.to_owned(),
                    rtt: s.rtt,
                }
            })
            .collect();
        out.sort_by_key(|p| p.peer_id.to_base58());
        out
    }

    /// After a network switch: listen afresh, renew relay reservations, tell peers our
    /// new addresses and reconnect to bootstrap peers.
    fn network_changed(&mut self) {
        for id in self.listeners.drain(..) {
            self.swarm.remove_listener(id);
        }
        for (_, id) in self.reservations.drain() {
            self.swarm.remove_listener(id);
        }
        self.reserved.clear();
        if let Err(e) = self.listen() {
            tracing::warn!(error = %e, "re-listening after a network change failed");
        }
        let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        self.swarm.behaviour_mut().identify.push(connected);
        for (peer, addr) in self.bootstrap.clone() {
            let opts = DialOpts::peer_id(peer)
                .addresses(vec![addr])
                .condition(PeerCondition::DisconnectedAndNotDialing)
                .build();
            let _ = self.swarm.dial(opts);
        }
        // Renew reservations with the relays still connected (bootstrap peers first).
        let mut relays: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, s)| s.relay)
            .map(|(p, _)| *p)
            .collect();
        relays.sort_by_key(|p| !self.bootstrap.contains_key(p));
        for relay in relays {
            self.maybe_reserve(relay);
        }
        let _ = self.swarm.behaviour_mut().kad.bootstrap();
    }

    /// Whether a listen address may be announced as external: not loopback, unless every
    /// configured listen address is loopback (a node on one machine, tests).
    fn advertisable(&self, address: &Multiaddr) -> bool {
        let loopback = |a: &Multiaddr| ip_of(a).is_some_and(|ip| ip.is_loopback());
        !loopback(address) || self.config.listen.iter().all(loopback)
    }

    /// Hold a reservation with a connected peer that relays (however it was found:
    /// bootstrap, mDNS, the DHT, a dial), so peers that cannot reach us directly but
    /// reach it can reach us through it. At most [`MAX_RESERVATIONS`].
    fn maybe_reserve(&mut self, relay: PeerId) {
        if self.reservations.contains_key(&relay) || self.reservations.len() >= MAX_RESERVATIONS {
            return;
        }
        let Some(state) = self.peers.get(&relay) else {
            return;
        };
        if !state.relay {
            return;
        }
        let Some(addr) = state
            .connections
            .values()
            .find(|c| !c.relayed)
            .map(|c| c.remote.clone())
        else {
            return;
        };
        let circuit = without_peer(&addr)
            .with(libp2p::multiaddr::Protocol::P2p(relay))
            .with(libp2p::multiaddr::Protocol::P2pCircuit);
        match self.swarm.listen_on(circuit.clone()) {
            Ok(id) => {
                tracing::info!(%relay, "requesting a relay reservation");
                self.reservations.insert(relay, id);
            }
            Err(e) => tracing::warn!(%relay, error = %e, "cannot listen through relay"),
        }
    }

    /// A peer was heard of: report it as discovered or rediscovered.
    fn seen(&mut self, peer: PeerId) {
        let Ok(server_name) = server_name_for_peer_id(&peer) else {
            return;
        };
        if self.known.insert(peer) {
            let _ = self.events.send(PeerEvent::Discovered { server_name });
            return;
        }
        if self.swarm.is_connected(&peer) {
            return;
        }
        let now = Instant::now();
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_PEER_STATES {
            prune_peer_states(&mut self.peers, now);
            if self.peers.len() >= MAX_PEER_STATES {
                return;
            }
        }
        let state = self.peers.entry(peer).or_default();
        if state
            .last_reported
            .is_some_and(|t| now.duration_since(t) < REDISCOVERY_QUIET)
        {
            return;
        }
        state.last_reported = Some(now);
        let _ = self.events.send(PeerEvent::Rediscovered { server_name });
    }

    fn emit_listen_addrs(&self) {
        let addrs = self.swarm.listeners().map(|a| a.to_string()).collect();
        let _ = self.events.send(PeerEvent::ListenAddrsChanged { addrs });
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => {
                let remote = endpoint.get_remote_address().clone();
                let relayed = endpoint_is_relayed(&endpoint);
                let dialer = matches!(endpoint, ConnectedPoint::Dialer { .. });
                self.fallbacks.remove(&peer_id);
                self.own_dials.remove(&connection_id);
                if self.quic_upgrades.get(&peer_id) == Some(&connection_id) {
                    self.quic_upgrades.remove(&peer_id);
                }
                if let ConnectedPoint::Dialer { .. } = endpoint {
                    self.book
                        .record(peer_id, &without_peer(&remote), "connected");
                }
                self.seen(peer_id);
                // New streams prefer direct connections (see `streams`); relayed ones
                // are left to end by themselves (circuit limits, idle timeout), never
                // closed under a request in flight.
                self.peers.entry(peer_id).or_default().connections.insert(
                    connection_id,
                    Conn {
                        remote,
                        relayed,
                        dialer,
                    },
                );
                if num_established.get() == 1
                    && let Ok(server_name) = server_name_for_peer_id(&peer_id)
                {
                    tracing::debug!(%peer_id, "peer connected");
                    let _ = self.events.send(PeerEvent::Connected { server_name });
                }
                self.mdns_dials.remove(&connection_id);
                for w in self.dial_waiters.remove(&peer_id).unwrap_or_default() {
                    let _ = w.send(Ok(()));
                }
                if let Some(w) = self.addr_waiters.remove(&connection_id) {
                    let _ = w.send(Ok(peer_id));
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                if let Some(state) = self.peers.get_mut(&peer_id) {
                    state.connections.remove(&connection_id);
                    if !state.keep(Instant::now()) {
                        self.peers.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.reserved.remove(&peer_id);
                    if let Some(id) = self.reservations.remove(&peer_id) {
                        self.swarm.remove_listener(id);
                    }
                    if let Ok(server_name) = server_name_for_peer_id(&peer_id) {
                        let _ = self.events.send(PeerEvent::Disconnected { server_name });
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.mdns_dials.remove(&connection_id);
                if let Some(peer) = peer_id
                    && self.quic_upgrades.get(&peer) == Some(&connection_id)
                {
                    self.quic_upgrades.remove(&peer);
                }
                let reason = error.to_string();
                self.own_dials.remove(&connection_id);
                // A QUIC dial with a head start failed: the rest goes now, and whoever
                // waits for the peer waits for that. Waiters are answered once none of
                // the dials started for them is left: a dial someone else started (hole
                // punching) failing meanwhile answers nobody.
                if let Some(peer) = peer_id
                    && !self.swarm.is_connected(&peer)
                    && !self.fire_fallback(peer)
                    && !self.own_dials.values().any(|p| *p == peer)
                {
                    for w in self.dial_waiters.remove(&peer).unwrap_or_default() {
                        let _ = w.send(Err(reason.clone()));
                    }
                }
                if let Some(w) = self.addr_waiters.remove(&connection_id) {
                    let _ = w.send(Err(reason));
                }
            }
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } => {
                tracing::info!(%address, "listening");
                self.pending_listeners.remove(&listener_id);
                // A node that relays says it is reachable at its listen addresses (the
                // peers that use it as a relay are connected to it anyway); without this,
                // nothing would be external until AutoNAT confirms an address, which
                // takes several probes and never happens on a LAN of two, and the DHT
                // would not be served. (The relay server itself is on from the start:
                // `behaviour::relay_server`.) Loopback addresses only count when the
                // node listens on nothing else.
                if self.config.relay_server && !is_relayed(&address) && self.advertisable(&address)
                {
                    self.swarm.add_external_address(address.clone());
                }
                self.emit_listen_addrs();
            }
            // The relay client confirms every relayed address as external. Kept, it
            // would make a node reachable only through a relay serve the DHT; its
            // relayed addresses still reach peers as listen addresses (identify).
            SwarmEvent::ExternalAddrConfirmed { address } if is_relayed(&address) => {
                self.swarm.remove_external_address(&address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } => {
                tracing::debug!(%address, "no longer listening");
                if self.config.relay_server && !is_relayed(&address) {
                    self.swarm.remove_external_address(&address);
                }
                self.emit_listen_addrs();
            }
            SwarmEvent::ListenerClosed {
                listener_id,
                reason,
                ..
            } => {
                let relay = self
                    .reservations
                    .iter()
                    .find(|(_, id)| **id == listener_id)
                    .map(|(p, _)| *p);
                if let Some(relay) = relay {
                    self.reservations.remove(&relay);
                    self.reserved.remove(&relay);
                }
                self.pending_listeners.remove(&listener_id);
                if let Err(e) = reason {
                    if let Some(relay) = relay {
                        self.reservations_refused += 1;
                        tracing::info!(%relay, error = %error_chain(&e), "relay reservation refused or lost");
                    } else {
                        tracing::debug!(error = %e, "listener closed");
                    }
                }
                self.emit_listen_addrs();
            }
            _ => {}
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identify(peer_id, info)
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(found)) => {
                // One dial per peer with all its announced addresses (QUIC first), not
                // one per address in announcement order.
                let mut by_peer: Vec<(PeerId, Vec<Multiaddr>)> = Vec::new();
                for (peer, addr) in found {
                    self.add_address(peer, addr.clone());
                    self.book.record(peer, &addr, "mdns");
                    self.seen(peer);
                    match by_peer.iter_mut().find(|(p, _)| *p == peer) {
                        Some((_, addrs)) => addrs.push(addr),
                        None => by_peer.push((peer, vec![addr])),
                    }
                }
                for (peer, addrs) in by_peer {
                    // On a LAN, connect eagerly: that is the whole point of mDNS here. But
                    // announcements are unauthenticated: dial at most MAX_MDNS_DIALS at
                    // once, at the token bucket's rate.
                    if !self.swarm.is_connected(&peer)
                        && self.mdns_dials.len() < MAX_MDNS_DIALS
                        && self.mdns_budget.take(Instant::now())
                        && let Ok(id) = self.dial_quic_first(
                            peer,
                            addrs,
                            false,
                            PeerCondition::DisconnectedAndNotDialing,
                        )
                    {
                        self.mdns_dials.insert(id);
                    }
                }
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                for addr in addresses.iter() {
                    self.book.record(peer, addr, "dht");
                }
                self.seen(peer);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                id, result, step, ..
            }) => self.on_query(id, result, step.last),
            BehaviourEvent::Ping(ping::Event {
                peer,
                result: Ok(rtt),
                ..
            }) => {
                // Only for a peer with a record: a late ping after the last connection
                // closed must not bring one back.
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.rtt = Some(rtt);
                }
            }
            BehaviourEvent::RelayClient(relay::client::Event::ReservationReqAccepted {
                relay_peer_id,
                ..
            }) => {
                tracing::info!(relay = %relay_peer_id, "relay reservation accepted");
                if self.reservations.contains_key(&relay_peer_id) {
                    self.reserved.insert(relay_peer_id);
                }
            }
            _ => {}
        }
    }

    fn on_identify(&mut self, peer: PeerId, info: identify::Info) {
        let speaks_kad = info.protocols.contains(&KAD_PROTOCOL);
        for addr in &info.listen_addrs {
            let addr = without_peer(addr);
            self.book.record(peer, &addr, "identify");
            if speaks_kad {
                self.swarm.behaviour_mut().kad.add_address(&peer, addr);
            }
        }
        if speaks_kad && !self.dht_bootstrapped {
            self.dht_bootstrapped = self.swarm.behaviour_mut().kad.bootstrap().is_ok();
        }
        if info.protocols.contains(&relay::HOP_PROTOCOL_NAME) {
            self.peers.entry(peer).or_default().relay = true;
            self.maybe_reserve(peer);
        }
        self.maybe_upgrade_to_quic(peer, &info.listen_addrs);
    }

    fn on_query(&mut self, id: kad::QueryId, result: kad::QueryResult, last: bool) {
        let kad::QueryResult::GetClosestPeers(result) = result else {
            return;
        };
        let peers = match result {
            Ok(ok) => ok.peers,
            Err(kad::GetClosestPeersError::Timeout { peers, .. }) => peers,
        };
        let Some((target, _)) = self.lookups.get(&id) else {
            return;
        };
        let target = *target;
        let found: Vec<Multiaddr> = peers
            .into_iter()
            .filter(|p| p.peer_id == target)
            .flat_map(|p| p.addrs)
            .collect();
        for addr in &found {
            self.add_address(target, addr.clone());
            self.book.record(target, addr, "dht");
        }
        // Answer as soon as the target turns up, or when the lookup ends without it.
        if (!found.is_empty() || last)
            && let Some((_, reply)) = self.lookups.remove(&id)
        {
            let _ = reply.send(found);
            if let Some(mut q) = self.swarm.behaviour_mut().kad.query_mut(&id) {
                q.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_peers_are_capped_oldest_first() {
        let mut known = BoundedSet::new(3);
        assert!(known.insert(1));
        assert!(!known.insert(1));
        assert!(known.insert(2));
        assert!(known.insert(3));
        assert!(known.insert(4), "over the cap the oldest goes");
        assert_eq!(known.len(), 3);
        assert!(known.insert(1), "1 was forgotten");
        assert!(!known.insert(4));
        for i in 0..10_000 {
            known.insert(100 + i);
        }
        assert_eq!(known.len(), 3);
        assert_eq!(known.order.len(), 3);
    }

    #[test]
    fn peer_records_without_connections_or_recent_reports_are_pruned() {
        let now = Instant::now();
        let mut peers: HashMap<PeerId, PeerState> = HashMap::new();
        let connected = PeerId::random();
        let recent = PeerId::random();
        let stale = PeerId::random();
        let empty = PeerId::random();
        let addr: Multiaddr = "/ip4/127.0.0.1/tcp/1".parse().expect("multiaddr");
        peers.entry(connected).or_default().connections.insert(
            ConnectionId::new_unchecked(1),
            Conn {
                remote: addr,
                relayed: false,
                dialer: true,
            },
        );
        peers.entry(recent).or_default().last_reported = Some(now);
        peers.entry(stale).or_default().last_reported = Some(now);
        peers.entry(empty).or_default();
        let later = now + REDISCOVERY_QUIET / 2;
        prune_peer_states(&mut peers, later);
        assert_eq!(peers.len(), 3, "only the record with nothing in it goes");
        prune_peer_states(&mut peers, now + REDISCOVERY_QUIET);
        let left: Vec<_> = peers.keys().copied().collect();
        assert_eq!(
            left,
            vec![connected],
            "past the quiet period only connected peers stay"
        );
    }

    #[test]
    fn mdns_dials_are_rate_limited() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(4, Duration::from_millis(100), start);
        for _ in 0..4 {
            assert!(bucket.take(start));
        }
        assert!(!bucket.take(start), "the burst is spent");
        assert!(!bucket.take(start + Duration::from_millis(99)));
        assert!(
            bucket.take(start + Duration::from_millis(100)),
            "one refilled"
        );
        assert!(!bucket.take(start + Duration::from_millis(150)));
        // A long pause refills the burst, no more.
        let later = start + Duration::from_secs(60);
        for _ in 0..4 {
            assert!(bucket.take(later));
        }
        assert!(!bucket.take(later));
    }
}
