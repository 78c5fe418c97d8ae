//! Circuit relay v2 offered by every node by default: two nodes that each reach only a
//! neighbour (found without any bootstrap configuration) talk through it, and the
//! relay's bounds (reservations, circuits in all and per peer, bytes and time per
//! circuit) are each driven to their limit.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::*;
use warren_core::federation::TransportError;
use warren_p2p::{ConnectionKind, DhtMode, Multiaddr, P2pConfig, RelayLimits};

const WAIT: Duration = Duration::from_secs(20);

/// A node that listens on nothing: it can dial out, and the only way in is a circuit
/// through a relay it holds a reservation with. No bootstrap peers. A DHT client, as
/// `DhtMode::Auto` keeps such a node (otherwise the relay's DHT would send the others
/// to it through circuits of their own, and the circuit limits tested here would count
/// those).
fn unreachable() -> P2pConfig {
    P2pConfig {
        listen: vec![],
        dht_mode: DhtMode::Client,
        ..loopback_config()
    }
}

/// A relay on loopback with `limits`.
async fn relay(limits: RelayLimits) -> Result<TestNode, Box<dyn std::error::Error + Send + Sync>> {
    start(P2pConfig {
        relay_limits: limits,
        ..loopback_config()
    })
    .await
}

/// Dial the relay's address (as mDNS or `warren connect` would: not a bootstrap peer).
async fn meet(
    node: &TestNode,
    relay_addr: &Multiaddr,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    node.p2p.dial(relay_addr.clone()).await?;
    Ok(())
}

/// Wait until `node` holds a reservation with `relay`.
async fn reserved(node: &TestNode, relay: &TestNode) -> TestResult {
    let relay_peer = relay.p2p.peer_id();
    wait_for(WAIT, "a relay reservation", || async {
        node.p2p
            .relay_status()
            .await
            .is_ok_and(|s| s.reservations.contains(&relay_peer))
    })
    .await
}

/// POST `len` bytes to `/_test/echo` on `to`.
async fn echo(from: &TestNode, to: &str, len: usize) -> Result<(u16, Bytes), TransportError> {
    let req = http::Request::post("/_test/echo")
        .body(Bytes::from(vec![b'x'; len]))
        .map_err(|e| TransportError::NotAddressable(e.to_string()))?;
    let resp = from.p2p.send(to, req).await?;
    Ok((resp.status().as_u16(), resp.into_body()))
}

/// The case: B runs with the default configuration, A and C each found B and
/// nothing else (no bootstrap, no addresses of each other, nothing to dial directly),
/// and still reach each other through B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_default_neighbour_found_without_bootstrap_relays_between_two_peers() -> TestResult {
    assert!(
        P2pConfig::default().relay_server,
        "relaying is on by default"
    );
    let b = start(loopback_config()).await?;
    let b_addr = b.addr_with("quic-v1").await?;
    let a = start(unreachable()).await?;
    let c = start(unreachable()).await?;
    meet(&a, &b_addr).await?;
    meet(&c, &b_addr).await?;
    reserved(&a, &b).await?;
    reserved(&c, &b).await?;
    // Each advertises only its address through B.
    for n in [&a, &c] {
        let addrs = n.p2p.listen_addrs().await?;
        assert!(
            !addrs.is_empty() && addrs.iter().all(|x| x.to_string().contains("p2p-circuit")),
            "{addrs:?}"
        );
    }

    for _ in 0..10 {
        let (status, body) = get_from(&a, &c.name, "/_test/origin").await?;
        assert_eq!((status, body.as_ref()), (200, a.name.as_bytes()));
    }
    let (status, body) = get_from(&c, &a.name, "/_test/origin").await?;
    assert_eq!((status, body.as_ref()), (200, c.name.as_bytes()));
    for (me, other) in [(&a, &c), (&c, &a)] {
        let peers = me.p2p.peers().await?;
        let info = peers
            .iter()
            .find(|p| p.server_name.as_deref() == Some(other.name.as_str()))
            .ok_or("the other end is not listed")?;
        assert_eq!(info.connection, ConnectionKind::Relayed);
    }
    for n in [a, c, b] {
        n.stop().await;
    }
    Ok(())
}

/// A node with relaying off offers nothing: peers hold no reservation with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relaying_can_be_turned_off() -> TestResult {
    let b = start(P2pConfig {
        relay_server: false,
        ..loopback_config()
    })
    .await?;
    let b_addr = b.addr_with("quic-v1").await?;
    let a = start(unreachable()).await?;
    let c = start(unreachable()).await?;
    meet(&a, &b_addr).await?;
    meet(&c, &b_addr).await?;
    // Identify has run (B's protocols are known) once B's TCP listen address, which
    // only identify tells, is in A's and C's view of B.
    let b_peer = b.p2p.peer_id();
    for n in [&a, &c] {
        wait_for(WAIT, "identify from B", || async {
            n.p2p.peers().await.is_ok_and(|p| {
                p.iter().any(|p| {
                    p.peer_id == b_peer
                        && p.addresses.iter().any(|x| x.to_string().contains("/tcp/"))
                })
            })
        })
        .await?;
        let status = n.p2p.relay_status().await?;
        assert!(
            status.reservations.is_empty() && status.refused == 0,
            "{status:?}"
        );
    }
    let err = get_from(&a, &c.name, "/_test/origin").await;
    assert!(
        err.is_err(),
        "A reached C through a node that does not relay"
    );
    for n in [a, c, b] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_past_the_limit_are_refused() -> TestResult {
    let r = relay(RelayLimits {
        max_reservations: 1,
        ..RelayLimits::default()
    })
    .await?;
    let r_addr = r.addr_with("quic-v1").await?;
    let b = start(unreachable()).await?;
    meet(&b, &r_addr).await?;
    reserved(&b, &r).await?;
    let d = start(unreachable()).await?;
    meet(&d, &r_addr).await?;
    wait_for(WAIT, "D's reservation refused", || async {
        d.p2p.relay_status().await.is_ok_and(|s| s.refused >= 1)
    })
    .await?;
    assert!(d.p2p.relay_status().await?.reservations.is_empty());
    // B stays reachable through R; D is not. (A's own reservation is refused too, which
    // shows A has seen that R relays.)
    let a = start(unreachable()).await?;
    meet(&a, &r_addr).await?;
    wait_for(WAIT, "A's reservation refused", || async {
        a.p2p.relay_status().await.is_ok_and(|s| s.refused >= 1)
    })
    .await?;
    let (status, _) = get_from(&a, &b.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    assert!(get_from(&a, &d.name, "/_test/origin").await.is_err());
    for n in [a, b, d, r] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuits_past_the_total_and_per_peer_limits_are_refused() -> TestResult {
    let r = relay(RelayLimits {
        max_circuits: 2,
        max_circuits_per_peer: 1,
        ..RelayLimits::default()
    })
    .await?;
    let r_addr = r.addr_with("quic-v1").await?;
    let mut nodes = Vec::new();
    for _ in 0..5 {
        let n = start(unreachable()).await?;
        meet(&n, &r_addr).await?;
        reserved(&n, &r).await?;
        nodes.push(n);
    }
    let [a1, a2, b, d, x] = <[TestNode; 5]>::try_from(nodes).map_err(|_| "five nodes")?;
    // Circuit 1: A1 → B.
    assert_eq!(get_from(&a1, &b.name, "/_test/origin").await?.0, 200);
    // A1 is an end of one circuit already: a second one from it is refused.
    assert!(
        get_from(&a1, &d.name, "/_test/origin").await.is_err(),
        "a second circuit for A1"
    );
    // Circuit 2: A2 → D.
    assert_eq!(get_from(&a2, &d.name, "/_test/origin").await?.0, 200);
    // Two circuits in all: X, an end of none, is refused too.
    assert!(
        get_from(&x, &b.name, "/_test/origin").await.is_err(),
        "a third circuit"
    );
    // The first two keep working.
    assert_eq!(get_from(&a1, &b.name, "/_test/origin").await?.0, 200);
    assert_eq!(get_from(&a2, &d.name, "/_test/origin").await?.0, 200);
    for n in [a1, a2, b, d, x, r] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_closed_past_its_byte_limit() -> TestResult {
    let r = relay(RelayLimits {
        max_circuit_bytes: 64 * 1024,
        ..RelayLimits::default()
    })
    .await?;
    let r_addr = r.addr_with("quic-v1").await?;
    let a = start(unreachable()).await?;
    let b = start(unreachable()).await?;
    for n in [&a, &b] {
        meet(n, &r_addr).await?;
        reserved(n, &r).await?;
    }
    let (status, body) = echo(&a, &b.name, 4096).await?;
    assert_eq!((status, body.len()), (200, 4096));
    // 256 KiB each way cannot cross a 64 KiB circuit.
    assert!(
        echo(&a, &b.name, 256 * 1024).await.is_err(),
        "256 KiB crossed a 64 KiB circuit"
    );
    // The next request opens a new circuit.
    let (status, body) = echo(&a, &b.name, 4096).await?;
    assert_eq!((status, body.len()), (200, 4096));
    for n in [a, b, r] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_circuit_is_closed_past_its_duration() -> TestResult {
    let r = relay(RelayLimits {
        max_circuit_duration: Duration::from_secs(2),
        ..RelayLimits::default()
    })
    .await?;
    let r_addr = r.addr_with("quic-v1").await?;
    let a = start(unreachable()).await?;
    let b = start(unreachable()).await?;
    for n in [&a, &b] {
        meet(n, &r_addr).await?;
        reserved(n, &r).await?;
    }
    assert_eq!(get_from(&a, &b.name, "/_test/origin").await?.0, 200);
    let b_peer = b.p2p.peer_id();
    // Nothing else closes it this soon (the idle timeout is 120 s).
    wait_for(WAIT, "the circuit closed by the relay", || async {
        a.p2p
            .peers()
            .await
            .is_ok_and(|p| !p.iter().any(|p| p.peer_id == b_peer))
    })
    .await?;
    assert_eq!(get_from(&a, &b.name, "/_test/origin").await?.0, 200);
    for n in [a, b, r] {
        n.stop().await;
    }
    Ok(())
}

/// With every setting at its default (DHT mode too), two nodes that each found only a
/// neighbour reach each other through it at once, and hole punching then gives them a
/// direct connection where one is possible (here, on loopback, it always is).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_everywhere_a_shared_neighbour_connects_and_then_a_direct_link() -> TestResult {
    let defaults = || P2pConfig {
        dht_mode: DhtMode::Auto,
        ..loopback_config()
    };
    let b = start(defaults()).await?;
    let b_addr = b.addr_with("quic-v1").await?;
    let a = start(defaults()).await?;
    let c = start(defaults()).await?;
    meet(&a, &b_addr).await?;
    meet(&c, &b_addr).await?;
    reserved(&c, &b).await?;
    let (status, body) = get_from(&a, &c.name, "/_test/origin").await?;
    assert_eq!((status, body.as_ref()), (200, a.name.as_bytes()));
    let c_peer = c.p2p.peer_id();
    wait_for(WAIT, "a direct connection A–C", || async {
        a.p2p.peers().await.is_ok_and(|p| {
            p.iter()
                .any(|p| p.peer_id == c_peer && p.connection == ConnectionKind::Direct)
        })
    })
    .await?;
    let (status, _) = get_from(&c, &a.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    for n in [a, c, b] {
        n.stop().await;
    }
    Ok(())
}

/// After a network change a node renews its reservations with the relays it is still
/// connected to, bootstrap peers or not, and stays reachable through them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reservations_with_any_relay_are_renewed_after_a_network_change() -> TestResult {
    let b = start(loopback_config()).await?;
    let b_addr = b.addr_with("quic-v1").await?;
    let a = start(unreachable()).await?;
    let c = start(unreachable()).await?;
    meet(&a, &b_addr).await?;
    meet(&c, &b_addr).await?;
    reserved(&a, &b).await?;
    a.p2p.network_changed().await?;
    assert!(
        a.p2p.relay_status().await?.reservations.is_empty(),
        "the old reservation is dropped"
    );
    reserved(&a, &b).await?;
    let (status, _) = get_from(&c, &a.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    for n in [a, c, b] {
        n.stop().await;
    }
    Ok(())
}
