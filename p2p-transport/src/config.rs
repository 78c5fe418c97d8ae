//! How a transport is started: listen addresses, bootstrap peers, discovery switches,
//! and the limits that keep a hostile peer from exhausting the node.

use std::time::Duration;

use libp2p::Multiaddr;

/// Kademlia mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DhtMode {
    /// Client until an external address is confirmed (AutoNAT), then server. The
    /// default: a phone behind NAT must not advertise itself as a DHT server.
    #[default]
    Auto,
    /// Always answer DHT queries (bootstrap nodes, LAN meshes, tests on loopback).
    Server,
    /// Never answer DHT queries.
    Client,
}

/// Transport configuration. `Default` gives a node that listens on QUIC and TCP on all
/// interfaces at random ports, with mDNS on and relaying for others off.
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// Addresses to listen on. Default: QUIC and TCP on `0.0.0.0`, random ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start; each must end in `/p2p/<peer id>`. They seed the
    /// DHT and, if they offer it, relay this node when it is not directly reachable.
    pub bootstrap: Vec<Multiaddr>,
    /// LAN discovery by multicast DNS.
    pub mdns: bool,
    /// Offer circuit relay v2 to other peers.
    pub relay_server: bool,
    /// Kademlia server/client mode.
    pub dht_mode: DhtMode,
    /// How long to try to reach a peer before a request fails.
    pub connect_timeout: Duration,
    /// How long one request may take once connected (both directions).
    pub request_timeout: Duration,
    /// Largest request or response body carried.
    pub max_body_bytes: usize,
    /// Largest request or response head (request line/status and headers).
    pub max_header_bytes: usize,
    /// How many inbound requests one peer may have in flight; streams past it are reset.
    pub max_inbound_per_peer: usize,
    /// How many inbound requests all peers together may have in flight.
    pub max_inbound_total: usize,
    /// Connections, established, to all peers together.
    pub max_connections: u32,
    /// Connections to one peer.
    pub max_connections_per_peer: u32,
    /// Inbound connections still handshaking.
    pub max_pending_incoming: u32,
    /// How long an idle connection (no streams) is kept open.
    pub idle_connection_timeout: Duration,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: default_listen(),
            bootstrap: Vec::new(),
            mdns: true,
            relay_server: false,
            dht_mode: DhtMode::Auto,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: 64 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_inbound_per_peer: 64,
            max_inbound_total: 512,
            max_connections: 256,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            idle_connection_timeout: Duration::from_secs(120),
        }
    }
}

/// QUIC and TCP on all IPv4 interfaces, random ports.
pub fn default_listen() -> Vec<Multiaddr> {
    ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"]
        .iter()
        .filter_map(|a| a.parse().ok())
        .collect()
}

/// A configuration the transport cannot run with.
#[derive(Debug, thiserror::Error)]
#[error("invalid P2P configuration: {0}")]
pub struct ConfigError(pub String);

impl P2pConfig {
    /// Reject settings that would make the transport misbehave, with the reason.
    pub fn validate(&self) -> Result<(), ConfigError> {
        // hyper refuses read buffers under 8 KiB.
        if self.max_header_bytes < 8192 {
            return Err(ConfigError("max_header_bytes must be at least 8192".into()));
        }
        if self.max_inbound_per_peer == 0 || self.max_inbound_total < self.max_inbound_per_peer {
            return Err(ConfigError(
                "max_inbound_per_peer must be > 0 and at most max_inbound_total".into(),
            ));
        }
        for addr in &self.bootstrap {
            if crate::addr::peer_of(addr).is_none() {
                return Err(ConfigError(format!(
                    "bootstrap address {addr} must end in /p2p/<peer id>"
                )));
            }
        }
        Ok(())
    }
}
