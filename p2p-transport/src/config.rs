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
/// interfaces at random ports, with mDNS on, and that relays for its peers within
/// [`RelayLimits`].
#[derive(Clone, Debug)]
pub struct P2pConfig {
    /// Addresses to listen on. Default: QUIC and TCP on `0.0.0.0`, random ports.
    pub listen: Vec<Multiaddr>,
    /// Peers to connect to at start; each must end in `/p2p/<peer id>`. They seed the
    /// DHT and, if they offer it, relay this node when it is not directly reachable.
    pub bootstrap: Vec<Multiaddr>,
    /// LAN discovery by multicast DNS.
    pub mdns: bool,
    /// Offer circuit relay v2 to other peers (default on), within `relay_limits`, so
    /// two peers that both reach this node reach each other through it. A node holds
    /// reservations with up to three relay-capable peers it is connected to, however it
    /// found them (configuration, mDNS, the DHT, a manual dial).
    pub relay_server: bool,
    /// What relaying for others may cost this node.
    pub relay_limits: RelayLimits,
    /// Kademlia server/client mode.
    pub dht_mode: DhtMode,
    /// How long to try to reach a peer before a request fails. Default 30 s: on a lossy
    /// link (40 % TCP loss) the SYN alone is retransmitted at 1, 3, 7 and 15 s, and the
    /// noise and multistream round trips each wait out retransmission timeouts; 10 s
    /// gave up on most such connections that would have completed.
    pub connect_timeout: Duration,
    /// How long one request may take once connected (both directions). Default 60 s,
    /// long enough for a full transaction over a lossy link.
    pub request_timeout: Duration,
    /// Largest inbound request body, in bytes. Default 8 MiB, the same as
    /// `warren_core::federation::MAX_FEDERATION_BODY` (what the signature check
    /// reads). A request declaring more gets 413 before any of its body is read; a
    /// chunked one is answered 413 as soon as it passes the limit.
    pub max_body_bytes: usize,
    /// Largest response body read from a peer, in bytes. Default 16 MiB, the same as
    /// `warren_core::federation::client::MAX_RESPONSE_JSON`. Reading stops there and the
    /// request fails; nothing past it is buffered.
    pub max_response_bytes: usize,
    /// Bytes of inbound request bodies buffered at once, all peers together. Default
    /// 32 MiB. A request is charged its `Content-Length` before its body is read (or
    /// each chunk as it arrives) and keeps the charge until its response is ready; a
    /// request that does not fit gets 503 at once instead of being buffered.
    pub max_inbound_body_budget: usize,
    /// Largest request or response head (request line/status and headers).
    pub max_header_bytes: usize,
    /// How many inbound requests one peer may have in flight. Default 8. Streams past
    /// it are reset unread.
    pub max_inbound_per_peer: usize,
    /// How many inbound requests all peers together may have in flight. Default 64.
    /// Streams past it are reset unread.
    pub max_inbound_total: usize,
    /// How many outbound requests may be in flight at once. Default 32. Further callers
    /// wait for a slot, for at most `connect_timeout`, then fail with a timeout.
    pub max_outbound_requests: usize,
    /// How many outbound requests may be in flight to one peer. Default 8, the default
    /// `max_inbound_per_peer`, so a Warren sender does not have its own streams reset.
    /// Further callers wait as for `max_outbound_requests`.
    pub max_outbound_per_peer: usize,
    /// Connections, established, to all peers together. Default 256; connections past
    /// it are refused.
    pub max_connections: u32,
    /// Established connections that the peer dialled. Default 64; past it inbound
    /// connections are refused, so strangers cannot take every slot.
    pub max_established_incoming: u32,
    /// Connections to one peer. Default 4.
    pub max_connections_per_peer: u32,
    /// Inbound connections still handshaking. Default 64.
    pub max_pending_incoming: u32,
    /// Dials in progress. Default 32; a dial past it fails at once (it is retried by
    /// whatever needed it: the next request, discovery, the redial at start).
    pub max_pending_outgoing: u32,
    /// How long an idle connection (no streams) is kept open.
    pub idle_connection_timeout: Duration,
}

impl Default for P2pConfig {
    fn default() -> Self {
        P2pConfig {
            listen: default_listen(),
            bootstrap: Vec::new(),
            mdns: true,
            relay_server: true,
            relay_limits: RelayLimits::default(),
            dht_mode: DhtMode::Auto,
            connect_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            max_body_bytes: warren_core::federation::MAX_FEDERATION_BODY,
            max_response_bytes: warren_core::federation::client::MAX_RESPONSE_JSON,
            max_inbound_body_budget: 32 * 1024 * 1024,
            max_header_bytes: 16 * 1024,
            max_inbound_per_peer: 8,
            max_inbound_total: 64,
            max_outbound_requests: 32,
            max_outbound_per_peer: 8,
            max_connections: 256,
            max_established_incoming: 64,
            max_connections_per_peer: 4,
            max_pending_incoming: 64,
            max_pending_outgoing: 32,
            idle_connection_timeout: Duration::from_secs(120),
        }
    }
}

/// The bounds on relaying for other peers (circuit relay v2), chosen for a phone: a few
/// circuits of a few MiB each, for minutes. Past a bound the relay refuses the
/// reservation or circuit (`RESOURCE_LIMIT_EXCEEDED`), or closes the circuit; the peers
/// then try another relay or a direct connection, and the federation sender retries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RelayLimits {
    /// Peers that may hold a reservation (be reachable through this node) at once.
    /// Default 16.
    pub max_reservations: usize,
    /// Circuits relayed at once, all peers together. Default 8.
    pub max_circuits: usize,
    /// Circuits one peer may be an end of at once. Default 2.
    pub max_circuits_per_peer: usize,
    /// Bytes one circuit may carry, both directions together; the circuit is closed
    /// past it (the next request opens a new one). Default 2 MiB: a federation
    /// transaction or a join of a small room fits many times over.
    pub max_circuit_bytes: u64,
    /// How long one circuit may stay open. Default 10 min.
    pub max_circuit_duration: Duration,
}

impl Default for RelayLimits {
    fn default() -> Self {
        RelayLimits {
            max_reservations: 16,
            max_circuits: 8,
            max_circuits_per_peer: 2,
            max_circuit_bytes: 2 * 1024 * 1024,
            max_circuit_duration: Duration::from_secs(10 * 60),
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
        // Semaphore permits are counted in u32 for one acquisition.
        if self.max_body_bytes > u32::MAX as usize
            || self.max_inbound_body_budget > u32::MAX as usize
        {
            return Err(ConfigError("body limits must fit in 32 bits".into()));
        }
        if self.max_inbound_body_budget < self.max_body_bytes {
            return Err(ConfigError(
                "max_inbound_body_budget must be at least max_body_bytes".into(),
            ));
        }
        if self.max_outbound_requests == 0
            || self.max_outbound_per_peer == 0
            || self.max_response_bytes == 0
        {
            return Err(ConfigError(
                "max_outbound_requests, max_outbound_per_peer and max_response_bytes must be > 0"
                    .into(),
            ));
        }
        let r = &self.relay_limits;
        if r.max_reservations == 0
            || r.max_circuits == 0
            || r.max_circuits_per_peer == 0
            || r.max_circuits_per_peer > r.max_circuits
            || r.max_circuit_bytes == 0
            || r.max_circuit_duration.is_zero()
        {
            return Err(ConfigError(
                "relay limits must be > 0, with max_circuits_per_peer at most max_circuits".into(),
            ));
        }
        if self.max_connections == 0
            || self.max_connections_per_peer == 0
            || self.max_connections_per_peer > self.max_connections
        {
            return Err(ConfigError(
                "max_connections and max_connections_per_peer must be > 0, with \
                 max_connections_per_peer at most max_connections"
                    .into(),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relaying_is_on_by_default_and_its_limits_are_checked() {
        let c = P2pConfig::default();
        assert!(c.relay_server);
        assert!(c.validate().is_ok());
        let bad = |f: fn(&mut RelayLimits)| {
            let mut c = P2pConfig::default();
            f(&mut c.relay_limits);
            c.validate().is_err()
        };
        assert!(bad(|r| r.max_circuits = 0));
        assert!(bad(|r| r.max_circuits_per_peer = 0));
        assert!(bad(|r| r.max_circuits_per_peer = r.max_circuits + 1));
        assert!(bad(|r| r.max_reservations = 0));
        assert!(bad(|r| r.max_circuit_bytes = 0));
        assert!(bad(|r| r.max_circuit_duration = Duration::ZERO));
        let mut c = P2pConfig::default();
        c.max_connections_per_peer = c.max_connections + 1;
        assert!(c.validate().is_err());
    }
}
