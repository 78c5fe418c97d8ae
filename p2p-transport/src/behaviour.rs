//! The composed libp2p behaviour and the swarm built around it.

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    StreamProtocol, Swarm, SwarmBuilder, autonat, connection_limits, dcutr, identify, identity,
    kad, mdns, noise, peer_store, ping, relay, tcp, yamux,
};

use crate::config::{DhtMode, P2pConfig};

/// Kademlia protocol id. Warren keeps its own DHT rather than joining the IPFS one:
/// only Warren nodes can answer where another Warren node is.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/warren/kad/1.0.0");

/// identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/warren/1.0.0";

/// Streams one peer may have open on one Yamux (TCP) connection. Past it the peer's
/// stream opens are refused by Yamux. Yamux starts each stream with a 256 KiB receive
/// window and grows it only as the application reads, so unread data per connection is
/// at most 64 × 256 KiB = 16 MiB (the connection-wide cap on window growth is not
/// configurable through `libp2p-yamux` 0.48; it stays at Yamux's 1 GiB, reachable only
/// by data the carriage actually reads, which its own limits bound).
pub const YAMUX_MAX_STREAMS: usize = 64;
/// Streams one peer may have open on one QUIC connection; past it QUIC gives the
/// peer no more stream credit, so its opens wait.
pub const QUIC_MAX_STREAMS: u32 = 64;
/// Unacknowledged bytes a peer may send on one QUIC stream (its flow-control window).
pub const QUIC_MAX_STREAM_DATA: u32 = 1024 * 1024;
/// Unacknowledged bytes a peer may send on one QUIC connection, all streams together.
pub const QUIC_MAX_CONNECTION_DATA: u32 = 8 * 1024 * 1024;
/// How long a QUIC handshake may take. libp2p's default, 5 s, is shorter than the
/// retransmissions a lossy radio link needs; the dial as a whole is still bounded by the
/// connect timeout.
pub const QUIC_HANDSHAKE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Kademlia records this node stores for others. Warren only uses FIND_NODE, so the
/// store is kept tiny: a DHT peer's PUT_VALUE past these limits is refused.
const KAD_MAX_RECORDS: usize = 16;
/// Largest Kademlia record value stored.
const KAD_MAX_VALUE_BYTES: usize = 1024;
/// Provider records (keys this node provides, and providers per key).
const KAD_MAX_PROVIDED_KEYS: usize = 16;

/// libp2p's relay configuration for `limits` (its rate limiters kept: 30 circuits and
/// reservations per peer per 2 min, 60 per IP address per minute).
/// The relay server (circuit relay v2 "hop"), on for good from the start.
///
/// Left to itself it turns on and off as the node's external addresses come and go, and
/// each time tells every connection's handler, relayed connections included. Those
/// have no relay handler (a placeholder stands in), and libp2p-relay 0.22 panics
/// there (`libp2p-swarm` `handler/either.rs`, "entered unreachable code"), which kills
/// the connection: a node with a relayed connection lost it whenever an address
/// changed (a relayed address confirmed, then dropped by the driver; a listener
/// closing). Every node relays by default, so the status never needs to change.
fn relay_server(id: libp2p::PeerId, config: relay::Config) -> relay::Behaviour {
    let mut server = relay::Behaviour::new(id, config);
    server.set_status(Some(relay::Status::Enable));
    server
}

fn relay_config(limits: &crate::config::RelayLimits) -> relay::Config {
    relay::Config {
        max_reservations: limits.max_reservations,
        // A peer reserves once per connection; libp2p admits one more than this (see
        // below), so two connections' worth.
        max_reservations_per_peer: 1,
        max_circuits: limits.max_circuits,
        // libp2p-relay 0.22 refuses a circuit when the source already has *more* than
        // this many, so it admits one more than the setting: pass one less.
        max_circuits_per_peer: limits.max_circuits_per_peer.saturating_sub(1),
        max_circuit_bytes: limits.max_circuit_bytes,
        max_circuit_duration: limits.max_circuit_duration,
        ..relay::Config::default()
    }
}

fn yamux_config() -> yamux::Config {
    let mut c = yamux::Config::default();
    c.set_max_num_streams(YAMUX_MAX_STREAMS);
    c
}

/// Everything a Warren node runs on its swarm.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    pub(crate) limits: connection_limits::Behaviour,
    pub(crate) relay_client: relay::client::Behaviour,
    pub(crate) relay_server: Toggle<relay::Behaviour>,
    pub(crate) identify: identify::Behaviour,
    pub(crate) ping: ping::Behaviour,
    pub(crate) autonat: autonat::Behaviour,
    pub(crate) dcutr: dcutr::Behaviour,
    pub(crate) kad: kad::Behaviour<kad::store::MemoryStore>,
    pub(crate) mdns: Toggle<mdns::tokio::Behaviour>,
    pub(crate) peers: peer_store::Behaviour<peer_store::memory_store::MemoryStore>,
    pub(crate) stream: crate::streams::Behaviour,
}

/// Build the swarm: QUIC and TCP (Noise + Yamux), the relay client transport, and the
/// behaviours above, configured from `config`.
/// The built swarm, the handle that opens federation streams, and the queue of inbound
/// ones.
pub(crate) type Built = (
    Swarm<Behaviour>,
    crate::streams::Control,
    tokio::sync::mpsc::Receiver<(libp2p::PeerId, libp2p::Stream)>,
);

pub(crate) fn build_swarm(
    key: identity::Keypair,
    config: &P2pConfig,
) -> Result<Built, Box<dyn std::error::Error + Send + Sync>> {
    let (streams, control, inbound) = crate::streams::Behaviour::new(crate::carriage::PROTOCOL);
    let limits = connection_limits::ConnectionLimits::default()
        .with_max_established(Some(config.max_connections))
        .with_max_established_per_peer(Some(config.max_connections_per_peer))
        .with_max_pending_incoming(Some(config.max_pending_incoming))
        .with_max_pending_outgoing(Some(config.max_pending_outgoing))
        .with_max_established_incoming(Some(config.max_established_incoming));
    let mdns_on = config.mdns;
    let relay_on = config.relay_server;
    let relay_config = relay_config(&config.relay_limits);
    let dht_mode = config.dht_mode;
    let idle = config.idle_connection_timeout;
    let swarm = SwarmBuilder::with_existing_identity(key)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux_config,
        )?
        .with_quic_config(|mut c| {
            c.max_concurrent_stream_limit = QUIC_MAX_STREAMS;
            c.max_stream_data = QUIC_MAX_STREAM_DATA;
            c.max_connection_data = QUIC_MAX_CONNECTION_DATA;
            c.handshake_timeout = QUIC_HANDSHAKE_TIMEOUT;
            c
        })
        .with_relay_client(noise::Config::new, yamux_config)?
        .with_behaviour(move |key, relay_client| {
            let id = key.public().to_peer_id();
            let mut kad_config = kad::Config::new(KAD_PROTOCOL);
            // The driver bootstraps once a DHT peer is known, then periodically; libp2p's
            // own timer would warn every few seconds on a node that knows nobody yet.
            kad_config.set_periodic_bootstrap_interval(None);
            kad_config.set_query_timeout(std::time::Duration::from_secs(10));
            let store = kad::store::MemoryStore::with_config(
                id,
                kad::store::MemoryStoreConfig {
                    max_records: KAD_MAX_RECORDS,
                    max_value_bytes: KAD_MAX_VALUE_BYTES,
                    max_provided_keys: KAD_MAX_PROVIDED_KEYS,
                    max_providers_per_key: KAD_MAX_PROVIDED_KEYS,
                },
            );
            let mut kad = kad::Behaviour::with_config(id, store, kad_config);
            match dht_mode {
                DhtMode::Auto => {}
                DhtMode::Server => kad.set_mode(Some(kad::Mode::Server)),
                DhtMode::Client => kad.set_mode(Some(kad::Mode::Client)),
            }
            let mdns = if mdns_on {
                match mdns::tokio::Behaviour::new(mdns::Config::default(), id) {
                    Ok(m) => Some(m),
                    Err(e) => {
                        tracing::warn!(error = %e, "mDNS unavailable; LAN discovery is off");
                        None
                    }
                }
            } else {
                None
            };
            Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                relay_client,
                relay_server: Toggle::from(relay_on.then(|| relay_server(id, relay_config))),
                identify: identify::Behaviour::new(
                    identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                        .with_agent_version(format!("warren/{}", env!("CARGO_PKG_VERSION")))
                        .with_push_listen_addr_updates(true),
                ),
                ping: ping::Behaviour::default(),
                // A mesh with no internet is a normal deployment: LAN addresses count.
                autonat: autonat::Behaviour::new(
                    id,
                    autonat::Config {
                        only_global_ips: false,
                        ..Default::default()
                    },
                ),
                dcutr: dcutr::Behaviour::new(id),
                kad,
                mdns: Toggle::from(mdns),
                peers: peer_store::Behaviour::new(peer_store::memory_store::MemoryStore::new(
                    Default::default(),
                )),
                stream: streams,
            }
        })?
        .with_swarm_config(|c| c.with_idle_connection_timeout(idle))
        .build();
    Ok((swarm, control, inbound))
}
