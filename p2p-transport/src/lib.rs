//! warren-p2p: how Warren nodes find and reach each other over libp2p.
//!
//! A Warren node has exactly one ed25519 keypair. It is the Matrix server signing key
//! *and* the libp2p identity, so a node's Matrix server name (64 lowercase hex
//! characters of the public key) and its libp2p [`PeerId`] are two spellings of the same
//! key. The [`identity`] module converts between them as pure functions, in both
//! directions, with no key server and no DNS (DESIGN.md §2).
//!
//! This stage ships only that mapping. The libp2p swarm (QUIC first, TCP + Noise + Yamux
//! fallback), discovery (mDNS, Kademlia, identify, AutoNAT, relay, DCUtR) and the
//! HTTP-over-libp2p federation carriage (`/matrix/federation/1`, implementing
//! `warren-core`'s `FederationTransport`) arrive with the P2P issue.

pub mod identity;

pub use identity::{
    AddressError, SERVER_NAME_LEN, keypair_from_seed, peer_id_for_server_name,
    peer_id_from_public_key, public_key_from_server_name, server_name_for_peer_id,
};
pub use libp2p_identity::{Keypair, PeerId};
