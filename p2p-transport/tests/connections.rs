//! Connection bounds, each driven to its limit: established connections in all, from
//! peers that dialled in, per peer, inbound handshakes in progress; and idle
//! connections closed after the idle timeout although ping, identify and the DHT run on
//! them.

mod common;

use std::time::Duration;

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use warren_p2p::P2pConfig;

const WAIT: Duration = Duration::from_secs(20);

/// No relaying: a reservation would keep connections open on purpose.
fn plain() -> P2pConfig {
    P2pConfig {
        relay_server: false,
        ..loopback_config()
    }
}

/// Whether `from` gets an answer from `to` now.
async fn served(from: &TestNode, to: &TestNode) -> bool {
    get_from(from, &to.name, "/_test/origin")
        .await
        .is_ok_and(|(status, _)| status == 200)
}

/// V with `victim`; A and B connected to it; C refused while they are; C let in once
/// A goes.
async fn third_peer_refused_until_one_leaves(victim: P2pConfig) -> TestResult {
    let v = start(victim).await?;
    let v_addr = v.addr_with("quic-v1").await?;
    let a = start(plain()).await?;
    let b = start(plain()).await?;
    let c = start(plain()).await?;
    a.p2p.dial(v_addr.clone()).await?;
    b.p2p.dial(v_addr.clone()).await?;
    assert!(served(&a, &v).await && served(&b, &v).await);
    // C's dial may complete on its side before V refuses the connection; either way it
    // gets no answer.
    let _ = c.p2p.dial(v_addr.clone()).await;
    assert!(!served(&c, &v).await, "a third connection was admitted");
    assert!(v.p2p.peers().await?.len() <= 2);
    assert!(served(&a, &v).await && served(&b, &v).await);
    a.stop().await;
    wait_for(WAIT, "C admitted once A left", || async {
        c.p2p.dial(v_addr.clone()).await.is_ok() && served(&c, &v).await
    })
    .await?;
    for n in [b, c, v] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn established_connections_past_the_total_are_refused() -> TestResult {
    third_peer_refused_until_one_leaves(P2pConfig {
        max_connections: 2,
        max_connections_per_peer: 2,
        ..plain()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incoming_connections_past_their_limit_are_refused() -> TestResult {
    third_peer_refused_until_one_leaves(P2pConfig {
        max_established_incoming: 2,
        ..plain()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_to_one_peer_past_the_limit_are_refused() -> TestResult {
    let v = start(plain()).await?;
    let a = start(P2pConfig {
        max_connections_per_peer: 1,
        ..plain()
    })
    .await?;
    a.p2p.dial(v.addr_with("tcp").await?).await?;
    // `dial` opens a new connection even to a connected peer; this one is over the limit.
    let second = a.p2p.dial(v.addr_with("quic-v1").await?).await;
    assert!(second.is_err(), "a second connection to V: {second:?}");
    assert!(served(&a, &v).await);
    for n in [a, v] {
        n.stop().await;
    }
    Ok(())
}

/// Inbound connections still handshaking: a raw TCP socket that starts the
/// multistream-select handshake and stops there holds the only slot; a real peer's
/// dial is refused until it goes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_handshakes_past_the_limit_are_refused() -> TestResult {
    let v = start(P2pConfig {
        max_pending_incoming: 1,
        ..plain()
    })
    .await?;
    let v_tcp = v.addr_with("tcp").await?;
    let port = v_tcp
        .iter()
        .find_map(|p| match p {
            libp2p::multiaddr::Protocol::Tcp(port) => Some(port),
            _ => None,
        })
        .ok_or("no TCP port")?;
    let mut stall = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    stall.write_all(b"\x13/multistream/1.0.0\n").await?;
    // V answering the header shows the connection is pending on V's side.
    let mut header = [0u8; 20];
    tokio::time::timeout(WAIT, stall.read_exact(&mut header)).await??;
    assert_eq!(&header[1..], b"/multistream/1.0.0\n");

    let a = start(plain()).await?;
    let refused = a.p2p.dial(v_tcp.clone()).await;
    assert!(refused.is_err(), "a second pending connection: {refused:?}");
    drop(stall);
    wait_for(
        WAIT,
        "A admitted once the stalled handshake went",
        || async { a.p2p.dial(v_tcp.clone()).await.is_ok() },
    )
    .await?;
    for n in [a, v] {
        n.stop().await;
    }
    Ok(())
}

/// Ping, identify and Kademlia run on every connection; none of them keeps an idle
/// connection open past the idle timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed() -> TestResult {
    let idle = || P2pConfig {
        idle_connection_timeout: Duration::from_secs(1),
        ..plain()
    };
    let v = start(idle()).await?;
    let a = start(idle()).await?;
    a.p2p.dial(v.addr_with("quic-v1").await?).await?;
    assert!(served(&a, &v).await);
    for (me, other) in [(&a, &v), (&v, &a)] {
        let peer = other.p2p.peer_id();
        wait_for(WAIT, "the idle connection closed", || async {
            me.p2p
                .peers()
                .await
                .is_ok_and(|p| !p.iter().any(|p| p.peer_id == peer))
        })
        .await?;
    }
    for n in [a, v] {
        n.stop().await;
    }
    Ok(())
}

/// Dials in progress: one to an address that never answers (a UDP socket that reads and
/// says nothing) holds the only slot; another dial fails at once, and succeeds once the
/// first has given up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_past_the_pending_limit_fail_at_once() -> TestResult {
    let v = start(plain()).await?;
    let v_addr = v.addr_with("quic-v1").await?;
    let a = start(P2pConfig {
        max_pending_outgoing: 1,
        connect_timeout: Duration::from_secs(3),
        ..plain()
    })
    .await?;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let port = silent.local_addr()?.port();
    let nowhere: libp2p::Multiaddr = format!(
        "/ip4/127.0.0.1/udp/{port}/quic-v1/p2p/{}",
        libp2p::PeerId::random()
    )
    .parse()?;
    let stuck = {
        let p2p = a.p2p.clone();
        tokio::spawn(async move { p2p.dial(nowhere).await })
    };
    // The QUIC handshake's first packet arriving shows the dial is in progress.
    let mut buf = [0u8; 2048];
    tokio::time::timeout(WAIT, silent.recv_from(&mut buf)).await??;
    let started = std::time::Instant::now();
    let refused = a.p2p.dial(v_addr.clone()).await;
    assert!(refused.is_err(), "a second dial in progress: {refused:?}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refused at once, not after a timeout"
    );
    assert!(stuck.await?.is_err(), "nobody answered the first dial");
    wait_for(WAIT, "a dial once the slot is free", || async {
        a.p2p.dial(v_addr.clone()).await.is_ok()
    })
    .await?;
    for n in [a, v] {
        n.stop().await;
    }
    Ok(())
}
