//! Small multiaddr helpers.

use std::net::IpAddr;

use libp2p::core::ConnectedPoint;
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

/// Whether a connection goes through a relay circuit, seen from either end. The
/// dialler's remote address names the circuit; on the listening end the remote address
/// is only `/p2p/<peer>` and the circuit shows in the local (relayed listen) address.
pub fn endpoint_is_relayed(endpoint: &ConnectedPoint) -> bool {
    match endpoint {
        ConnectedPoint::Dialer { address, .. } => is_relayed(address),
        ConnectedPoint::Listener {
            local_addr,
            send_back_addr,
        } => is_relayed(local_addr) || is_relayed(send_back_addr),
    }
}

/// What a connection runs over, for display: `relayed`, `quic`, `tcp` or `other`.
pub fn transport_name(remote: &Multiaddr, relayed: bool) -> &'static str {
    if relayed {
        "relayed"
    } else if is_quic(remote) {
        "quic"
    } else if remote.iter().any(|p| matches!(p, Protocol::Tcp(_))) {
        "tcp"
    } else {
        "other"
    }
}

/// The IP address at the start of `addr`, if it has one.
pub fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    match addr.iter().next() {
        Some(Protocol::Ip4(ip)) => Some(IpAddr::V4(ip)),
        Some(Protocol::Ip6(ip)) => Some(IpAddr::V6(ip)),
        _ => None,
    }
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
        assert_eq!(v, vec![quic.clone(), base.clone(), c.clone()]);
        assert_eq!(transport_name(&quic, false), "quic");
        assert_eq!(transport_name(&base, false), "tcp");
        assert_eq!(transport_name(&base, true), "relayed");
        assert_eq!(ip_of(&quic), Some("127.0.0.1".parse()?));
        // The listening end of a circuit sees only `/p2p/<peer>` as remote address.
        let inbound_circuit = ConnectedPoint::Listener {
            local_addr: without_peer(&with_peer)
                .with(Protocol::P2p(relay))
                .with(Protocol::P2pCircuit),
            send_back_addr: Multiaddr::empty().with(Protocol::P2p(target)),
        };
        assert!(endpoint_is_relayed(&inbound_circuit));
        let inbound_direct = ConnectedPoint::Listener {
            local_addr: base.clone(),
            send_back_addr: base.clone(),
        };
        assert!(!endpoint_is_relayed(&inbound_direct));
        Ok(())
    }
}
