//! Small multiaddr helpers.

use libp2p::multiaddr::Protocol;
use libp2p::{Multiaddr, PeerId};

/// The peer id at the end of `addr` (`…/p2p/<id>`), if any.
pub fn peer_of(addr: &Multiaddr) -> Option<PeerId> {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => Some(peer),
        _ => None,
    }
}

/// `addr` without a trailing `/p2p/<id>`.
pub fn without_peer(addr: &Multiaddr) -> Multiaddr {
    let mut a = addr.clone();
    if matches!(a.iter().last(), Some(Protocol::P2p(_))) {
        a.pop();
    }
    a
}

/// Whether the address goes through a relay circuit.
pub fn is_relayed(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::P2pCircuit))
}

/// Whether the address uses QUIC; dialled first.
pub fn is_quic(addr: &Multiaddr) -> bool {
    addr.iter().any(|p| matches!(p, Protocol::QuicV1))
}

/// `<relay addr>/p2p/<relay>/p2p-circuit/p2p/<target>`: reach `target` through `relay`.
pub fn circuit_via(relay_addr: &Multiaddr, relay: PeerId, target: PeerId) -> Multiaddr {
    without_peer(relay_addr)
        .with(Protocol::P2p(relay))
        .with(Protocol::P2pCircuit)
        .with(Protocol::P2p(target))
}

/// Order addresses so QUIC is tried before TCP, and direct before relayed.
pub fn sort_for_dialling(addrs: &mut [Multiaddr]) {
    addrs.sort_by_key(|a| (is_relayed(a), !is_quic(a)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers() -> Result<(), Box<dyn std::error::Error>> {
        let relay = PeerId::random();
        let target = PeerId::random();
        let base: Multiaddr = "/ip4/127.0.0.1/tcp/4001".parse()?;
        let with_peer = base.clone().with(Protocol::P2p(relay));
        assert_eq!(peer_of(&with_peer), Some(relay));
        assert_eq!(peer_of(&base), None);
        assert_eq!(without_peer(&with_peer), base);
        let c = circuit_via(&with_peer, relay, target);
        assert!(is_relayed(&c));
        assert_eq!(peer_of(&c), Some(target));
        let quic: Multiaddr = "/ip4/127.0.0.1/udp/1/quic-v1".parse()?;
        let mut v = vec![c.clone(), base.clone(), quic.clone()];
        sort_for_dialling(&mut v);
        assert_eq!(v, vec![quic, base, c]);
        Ok(())
    }
}
