//! An in-memory federation network for many-node simulations (DESIGN.md §1, §7).
//!
//! [`SimNetwork`] holds the federation routers of the nodes it knows, by server name,
//! and gives each node a [`SimTransport`] (its [`FederationTransport`]). A request is
//! handed to the destination's router with an [`AuthenticatedOrigin`] extension naming
//! the sender, exactly as `warren-p2p` serves a request from an authenticated libp2p
//! peer, so the node checks the `X-Matrix` signature and origin as it would over
//! libp2p. No sockets are involved: nodes started with
//! [`start_unbound_node`](crate::start_unbound_node) bind none for their client API
//! either, and their users call it in-process ([`InProcessUser`](crate::InProcessUser)).
//!
//! Faults, all drawn from one seeded generator:
//! - **loss**: a request is lost on the way there (the destination never sees it) or its
//!   response on the way back (the destination did the work); either way the sender gets
//!   a [`TransportError::Timeout`];
//! - **latency**: each direction waits a uniformly drawn delay;
//! - **partitions**: a link between two nodes is up or down ([`SimNetwork::set_link`],
//!   [`SimNetwork::partition`], [`SimNetwork::heal`]);
//! - **churn**: a node is taken offline and back ([`SimNetwork::set_online`]), or
//!   replaced by a restarted node on the same data directory ([`SimNetwork::attach`]
//!   again).
//!
//! Whenever two nodes become able to reach each other, or stop being able to, both get a
//! [`PeerEvent::Connected`] / [`PeerEvent::Disconnected`], as libp2p reports connections,
//! so the federation sender's backoff and anti-entropy react as they do over libp2p.
//! [`FederationTransport::peers`] lists the nodes reachable now.
//!
//! The generator is seeded, so the faults drawn are a function of the seed and of the
//! order in which requests arrive; tokio's scheduling makes that order (and so a run)
//! not exactly reproducible, but a seed that failed once reproduces its fault pattern
//! closely enough to replay.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::broadcast;
use tower::ServiceExt as _;
use warren_core::Node;
use warren_core::federation::{
    AuthenticatedOrigin, FederationTransport, PeerEvent, PeerSummary, TransportError,
    TransportFuture,
};

/// Largest response body the simulated network carries.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Peer events buffered per node before a slow subscriber lags (the sender then retries
/// every destination, as with libp2p).
const EVENT_BUFFER: usize = 1024;

/// A small, fast, seeded generator (SplitMix64). Good enough to draw faults.
#[derive(Clone, Debug)]
pub struct SimRng(u64);

impl SimRng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `0..n` (`0` when `n` is `0`).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }

    /// True with probability `p` (clamped to `0..=1`).
    pub fn chance(&mut self, p: f64) -> bool {
        let p = p.clamp(0.0, 1.0);
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 > 1.0 - p
    }
}

/// The faults of a [`SimNetwork`].
#[derive(Clone, Debug)]
pub struct SimFaults {
    /// Probability that one direction of an exchange is lost.
    pub loss: f64,
    /// Shortest one-way delay.
    pub latency_min: Duration,
    /// Longest one-way delay.
    pub latency_max: Duration,
}

impl Default for SimFaults {
    fn default() -> Self {
        SimFaults {
            loss: 0.0,
            latency_min: Duration::ZERO,
            latency_max: Duration::ZERO,
        }
    }
}

/// What the network counted, for reports.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Requests handed to a destination's router.
    pub delivered: u64,
    /// Requests or responses dropped by loss.
    pub lost: u64,
    /// Requests refused because the destination was unreachable (down, partitioned,
    /// unknown).
    pub unreachable: u64,
}

struct SimNode {
    router: axum::Router,
    online: bool,
    events: broadcast::Sender<PeerEvent>,
}

struct State {
    rng: SimRng,
    faults: SimFaults,
    nodes: HashMap<String, SimNode>,
    /// Links that are down, as (smaller name, larger name).
    down: HashSet<(String, String)>,
}

impl State {
    fn reachable(&self, a: &str, b: &str) -> bool {
        a != b
            && self.nodes.get(a).is_some_and(|n| n.online)
            && self.nodes.get(b).is_some_and(|n| n.online)
            && !self.down.contains(&pair(a, b))
    }

    /// Every pair of nodes that can reach each other now.
    fn connected_pairs(&self) -> BTreeSet<(String, String)> {
        let mut names: Vec<&String> = self.nodes.keys().collect();
        names.sort();
        let mut out = BTreeSet::new();
        for (i, a) in names.iter().enumerate() {
            for b in &names[i + 1..] {
                if self.reachable(a, b) {
                    out.insert(((*a).clone(), (*b).clone()));
                }
            }
        }
        out
    }

    fn latency(&mut self) -> Duration {
        let min = self.faults.latency_min.as_micros() as u64;
        let max = (self.faults.latency_max.as_micros() as u64).max(min);
        Duration::from_micros(min + self.rng.below(max - min + 1))
    }
}

fn pair(a: &str, b: &str) -> (String, String) {
    if a <= b {
        (a.to_owned(), b.to_owned())
    } else {
        (b.to_owned(), a.to_owned())
    }
}

/// An in-memory network of nodes. See the module documentation.
pub struct SimNetwork {
    state: Mutex<State>,
    delivered: AtomicU64,
    lost: AtomicU64,
    unreachable: AtomicU64,
}

impl SimNetwork {
    /// An empty network whose faults are drawn from `seed`.
    pub fn new(seed: u64, faults: SimFaults) -> Arc<SimNetwork> {
        Arc::new(SimNetwork {
            state: Mutex::new(State {
                rng: SimRng::new(seed),
                faults,
                nodes: HashMap::new(),
                down: HashSet::new(),
            }),
            delivered: AtomicU64::new(0),
            lost: AtomicU64::new(0),
            unreachable: AtomicU64::new(0),
        })
    }

    /// Put `node` on the network (online, every link up unless set down before) and
    /// give it its transport. A node restarted on the same data directory (same server
    /// name) replaces the stopped one; links set down stay down.
    ///
    /// Fails if the node already has a transport.
    pub fn attach<L>(self: &Arc<Self>, node: &Node<L>) -> anyhow::Result<()> {
        let name = node.server_name().to_owned();
        {
            let mut state = self.state.lock();
            let events = match state.nodes.remove(&name) {
                Some(old) => old.events,
                None => broadcast::channel(EVENT_BUFFER).0,
            };
            // Offline until the node's sender and anti-entropy have subscribed, so that
            // they see the connections it makes.
            let mut emit = Vec::new();
            let before = state.connected_pairs();
            state.nodes.insert(
                name.clone(),
                SimNode {
                    router: node.federation_router(),
                    online: false,
                    events,
                },
            );
            diff(&state, &before, &mut emit);
            send_all(&state, emit);
        }
        let transport = SimTransport {
            net: self.clone(),
            me: name.clone(),
        };
        anyhow::ensure!(
            node.set_transport(Arc::new(transport)),
            "node {name} already has a transport"
        );
        self.set_online(&name, true);
        Ok(())
    }

    /// Take a node offline (it neither sends nor receives) or bring it back.
    pub fn set_online(&self, name: &str, online: bool) {
        self.change(|state| {
            if let Some(node) = state.nodes.get_mut(name) {
                node.online = online;
            }
        });
    }

    /// Whether `name` is on the network and online.
    pub fn is_online(&self, name: &str) -> bool {
        self.state.lock().nodes.get(name).is_some_and(|n| n.online)
    }

    /// Set the link between `a` and `b` up or down.
    pub fn set_link(&self, a: &str, b: &str, up: bool) {
        self.change(|state| {
            if up {
                state.down.remove(&pair(a, b));
            } else {
                state.down.insert(pair(a, b));
            }
        });
    }

    /// Cut every link between a node of `side` and a node not in it.
    pub fn partition(&self, side: &[String]) {
        self.change(|state| {
            let inside: HashSet<&String> = side.iter().collect();
            let names: Vec<String> = state.nodes.keys().cloned().collect();
            for a in &names {
                for b in &names {
                    if inside.contains(a) && !inside.contains(b) {
                        state.down.insert(pair(a, b));
                    }
                }
            }
        });
    }

    /// Bring every link up.
    pub fn heal(&self) {
        self.change(|state| state.down.clear());
    }

    /// Change the faults from now on.
    pub fn set_faults(&self, faults: SimFaults) {
        self.state.lock().faults = faults;
    }

    /// Whether `a` can reach `b` now.
    pub fn reachable(&self, a: &str, b: &str) -> bool {
        self.state.lock().reachable(a, b)
    }

    /// What the network counted so far.
    pub fn stats(&self) -> SimStats {
        SimStats {
            delivered: self.delivered.load(Ordering::Relaxed),
            lost: self.lost.load(Ordering::Relaxed),
            unreachable: self.unreachable.load(Ordering::Relaxed),
        }
    }

    /// Apply `f` and tell both ends of every connection made or lost.
    fn change(&self, f: impl FnOnce(&mut State)) {
        let mut state = self.state.lock();
        let before = state.connected_pairs();
        f(&mut state);
        let mut emit = Vec::new();
        diff(&state, &before, &mut emit);
        send_all(&state, emit);
    }

    /// Carry one request from `from` to `to`.
    async fn exchange(
        &self,
        from: &str,
        to: &str,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, TransportError> {
        let unreachable = |reason: &str| TransportError::Unreachable {
            server: to.to_owned(),
            reason: reason.to_owned(),
        };
        let (router, there, back, lose_request, lose_response) = {
            let mut state = self.state.lock();
            if !state.nodes.contains_key(to) {
                self.unreachable.fetch_add(1, Ordering::Relaxed);
                return Err(unreachable("not on the simulated network"));
            }
            if !state.reachable(from, to) {
                self.unreachable.fetch_add(1, Ordering::Relaxed);
                return Err(unreachable("no link (offline or partitioned)"));
            }
            let loss = state.faults.loss;
            let lose_request = state.rng.chance(loss);
            let lose_response = state.rng.chance(loss);
            let there = state.latency();
            let back = state.latency();
            let router = state.nodes.get(to).map(|n| n.router.clone());
            (router, there, back, lose_request, lose_response)
        };
        let router = router.ok_or_else(|| unreachable("not on the simulated network"))?;
        let lost = |after: Duration| {
            self.lost.fetch_add(1, Ordering::Relaxed);
            TransportError::Timeout {
                server: to.to_owned(),
                after,
                stage: "request",
            }
        };
        tokio::time::sleep(there).await;
        if lose_request {
            return Err(lost(there));
        }
        // The link may have gone down while the request was on its way.
        if !self.reachable(from, to) {
            self.unreachable.fetch_add(1, Ordering::Relaxed);
            return Err(unreachable("the link went down"));
        }
        let (mut parts, body) = request.into_parts();
        parts
            .extensions
            .insert(AuthenticatedOrigin(from.to_owned()));
        let request = http::Request::from_parts(parts, axum::body::Body::from(body));
        self.delivered.fetch_add(1, Ordering::Relaxed);
        let response = match router.oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        let (parts, body) = response.into_parts();
        let body = axum::body::to_bytes(body, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| TransportError::Protocol {
                server: to.to_owned(),
                reason: format!("cannot read the response body: {e}"),
            })?;
        tokio::time::sleep(back).await;
        if lose_response || !self.reachable(from, to) {
            return Err(lost(there + back));
        }
        Ok(http::Response::from_parts(parts, body))
    }
}

/// Events for the connections in `before` xor now.
fn diff(state: &State, before: &BTreeSet<(String, String)>, out: &mut Vec<(String, PeerEvent)>) {
    let after = state.connected_pairs();
    for (a, b) in after.difference(before) {
        out.push((
            a.clone(),
            PeerEvent::Connected {
                server_name: b.clone(),
            },
        ));
        out.push((
            b.clone(),
            PeerEvent::Connected {
                server_name: a.clone(),
            },
        ));
    }
    for (a, b) in before.difference(&after) {
        out.push((
            a.clone(),
            PeerEvent::Disconnected {
                server_name: b.clone(),
            },
        ));
        out.push((
            b.clone(),
            PeerEvent::Disconnected {
                server_name: a.clone(),
            },
        ));
    }
}

fn send_all(state: &State, events: Vec<(String, PeerEvent)>) {
    for (to, event) in events {
        if let Some(node) = state.nodes.get(&to) {
            // No subscriber yet is fine: nothing is waiting for that peer.
            let _ = node.events.send(event);
        }
    }
}

/// One node's view of a [`SimNetwork`]: its [`FederationTransport`].
pub struct SimTransport {
    net: Arc<SimNetwork>,
    me: String,
}

impl FederationTransport for SimTransport {
    fn request(&self, destination: &str, request: http::Request<Bytes>) -> TransportFuture<'_> {
        let destination = destination.to_owned();
        Box::pin(async move { self.net.exchange(&self.me, &destination, request).await })
    }

    fn subscribe(&self) -> broadcast::Receiver<PeerEvent> {
        let state = self.net.state.lock();
        match state.nodes.get(&self.me) {
            Some(node) => node.events.subscribe(),
            // Not on the network (cannot happen through `attach`): a closed channel.
            None => broadcast::channel(1).1,
        }
    }

    fn peers(&self) -> Pin<Box<dyn std::future::Future<Output = Vec<PeerSummary>> + Send + '_>> {
        Box::pin(async move {
            let state = self.net.state.lock();
            let mut names: Vec<&String> = state
                .nodes
                .keys()
                .filter(|n| state.reachable(&self.me, n))
                .collect();
            names.sort();
            names
                .into_iter()
                .map(|name| PeerSummary {
                    peer_id: name.clone(),
                    server_name: Some(name.clone()),
                    addresses: vec![format!("sim:{name}")],
                    connection: "direct".to_owned(),
                    transport: Some("memory".to_owned()),
                    rtt_ms: None,
                })
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generator_is_seeded() {
        let mut a = SimRng::new(7);
        let mut b = SimRng::new(7);
        let xs: Vec<u64> = (0..8).map(|_| a.next_u64()).collect();
        let ys: Vec<u64> = (0..8).map(|_| b.next_u64()).collect();
        assert_eq!(xs, ys);
        assert_ne!(
            xs,
            (0..8)
                .map(|_| SimRng::new(8).next_u64())
                .collect::<Vec<_>>()
        );
        let mut r = SimRng::new(1);
        assert!(!(0..1000).any(|_| r.chance(0.0)));
        assert!((0..1000).all(|_| r.chance(1.0)));
        let hits = (0..10_000).filter(|_| r.chance(0.25)).count();
        assert!((2_000..3_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| r.below(5) < 5));
    }
}
