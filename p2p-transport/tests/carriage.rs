//! Federation carriage between real nodes on loopback: QUIC, TCP, large bodies, origin,
//! unreachable servers, address-book reconnects.

mod common;

use std::time::{Duration, Instant};

use axum::body::Bytes;
use common::*;
use warren_core::federation::{FederationTransport, PeerEvent, TransportError};
use warren_p2p::P2pConfig;

/// 200 requests each way; every response says the origin was the sender.
async fn requests_both_ways(a: &TestNode, b: &TestNode) -> TestResult {
    for i in 0..200 {
        let (status, body) = get_from(a, &b.name, "/_test/origin").await?;
        assert_eq!(status, 200, "request {i} A→B");
        assert_eq!(
            body,
            a.name.as_bytes(),
            "B must see A's server name as origin"
        );
        let (status, body) = get_from(b, &a.name, "/_test/origin").await?;
        assert_eq!(status, 200, "request {i} B→A");
        assert_eq!(
            body,
            b.name.as_bytes(),
            "A must see B's server name as origin"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quic_requests_both_ways_and_a_large_body() -> TestResult {
    let a = start(loopback_config()).await?;
    let b = start(loopback_config()).await?;
    let b_addr = b.addr_with("quic-v1").await?;
    a.p2p.dial(b_addr).await?;
    requests_both_ways(&a, &b).await?;

    // The real federation router answers too, through the trait object.
    let transport: &dyn FederationTransport = &a.p2p;
    let req = http::Request::get("/_matrix/federation/v1/version").body(Bytes::new())?;
    let resp = transport.request(&b.name, req).await?;
    assert_eq!(resp.status(), 200);
    let v: serde_json::Value = serde_json::from_slice(resp.body())?;
    assert_eq!(v["server"]["name"], "Warren");

    // 7 MiB (under the 8 MiB request limit), not all one byte value, round-trips intact.
    let big: Vec<u8> = (0..7 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let req = http::Request::post("/_test/echo").body(Bytes::from(big.clone()))?;
    let resp = a.p2p.send(&b.name, req).await?;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.body()[..] == big[..],
        "7 MiB body must round-trip byte for byte"
    );

    let peers = a.p2p.peers().await?;
    let pb = peers
        .iter()
        .find(|p| p.server_name.as_deref() == Some(b.name.as_str()))
        .ok_or("B missing from A's peers")?;
    assert_eq!(pb.connection, warren_p2p::ConnectionKind::Direct);
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_requests_both_ways() -> TestResult {
    let tcp_only = || P2pConfig {
        listen: vec![addr("/ip4/127.0.0.1/tcp/0")],
        ..loopback_config()
    };
    let a = start(tcp_only()).await?;
    let b = start(tcp_only()).await?;
    let b_addr = b.addr_with("tcp").await?;
    assert!(!b_addr.to_string().contains("quic"));
    a.p2p.dial(b_addr).await?;
    requests_both_ways(&a, &b).await?;
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_malformed_destinations_fail_clearly() -> TestResult {
    let a = start(loopback_config()).await?;
    // A valid key nobody runs a node for.
    let nobody = hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[7u8; 32])
            .verifying_key()
            .to_bytes(),
    );
    let started = Instant::now();
    let err = get_from(&a, &nobody, "/_test/origin")
        .await
        .err()
        .ok_or("must fail")?;
    assert!(
        started.elapsed() <= Duration::from_secs(6),
        "must fail within the connect timeout, took {:?}",
        started.elapsed()
    );
    match err {
        TransportError::Unreachable { server, reason } => {
            assert_eq!(server, nobody);
            assert!(!reason.is_empty());
        }
        TransportError::Timeout { stage, .. } => assert_eq!(stage, "connect"),
        other => return Err(format!("unexpected error {other:?}").into()),
    }
    let err = get_from(&a, "example.org", "/x")
        .await
        .err()
        .ok_or("must fail")?;
    assert!(
        matches!(err, TransportError::NotAddressable(ref m) if m.contains("not a P2P server name")),
        "{err:?}"
    );
    let err = get_from(&a, &a.name, "/x").await.err().ok_or("must fail")?;
    assert!(matches!(err, TransportError::NotAddressable(_)), "{err:?}");
    a.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_node_reconnects_from_its_address_book() -> TestResult {
    let a = start(loopback_config()).await?;
    let b = start(loopback_config()).await?;
    a.p2p.dial(b.addr_with("quic-v1").await?).await?;
    let (status, _) = get_from(&a, &b.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    let b_peer = b.p2p.peer_id().to_base58();
    let server = a.node.server().clone();
    wait_for(Duration::from_secs(10), "B in A's address book", || {
        let server = server.clone();
        let b_peer = b_peer.clone();
        async move {
            server
                .db
                .read(|c| warren_core::storage::recent_peer_addresses(c, 100))
                .is_ok_and(|rows| rows.iter().any(|r| r.peer_id == b_peer))
        }
    })
    .await?;
    drop(server);
    let dir = a.stop().await;

    // Same data directory, no bootstrap, no mDNS, no dial: only the address book.
    let mut events_seen = Vec::new();
    let a = start_in(dir, loopback_config()).await?;
    let mut events = a.p2p.subscribe();
    let b_name = b.name.clone();
    let connected = async {
        loop {
            if a.p2p.peers().await.is_ok_and(|p| {
                p.iter()
                    .any(|p| p.server_name.as_deref() == Some(b_name.as_str()))
            }) {
                return;
            }
            if let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(100), events.recv()).await
            {
                events_seen.push(e);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), connected)
        .await
        .map_err(|_| "restarted node did not reconnect to B from its address book")?;
    let (status, body) = get_from(&a, &b.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    assert_eq!(body, a.name.as_bytes());
    let _ = events_seen
        .iter()
        .any(|e| matches!(e, PeerEvent::Connected { .. }));
    a.stop().await;
    b.stop().await;
    Ok(())
}

/// After a network switch the node listens afresh, tells its peers, and requests flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_changed_rebinds_and_requests_still_flow() -> TestResult {
    let a = start(loopback_config()).await?;
    let b = start(loopback_config()).await?;
    a.p2p.dial(b.addr_with("quic-v1").await?).await?;
    let before = a.addrs().await?;
    let mut events = a.p2p.subscribe();
    a.p2p.network_changed().await?;
    // New listeners report their addresses again.
    let relisted = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(PeerEvent::ListenAddrsChanged { addrs }) = events.recv().await
                && !addrs.is_empty()
            {
                return addrs;
            }
        }
    })
    .await
    .map_err(|_| "no ListenAddrsChanged after network_changed")?;
    assert!(!relisted.is_empty());
    let after = a.p2p.wait_listening(Duration::from_secs(10)).await?;
    assert_eq!(
        after.len(),
        before.len(),
        "same listeners, rebound: {before:?} → {after:?}"
    );
    for _ in 0..10 {
        let (status, body) = get_from(&a, &b.name, "/_test/origin").await?;
        assert_eq!((status, body.as_ref()), (200, a.name.as_bytes()));
        let (status, body) = get_from(&b, &a.name, "/_test/origin").await?;
        assert_eq!((status, body.as_ref()), (200, b.name.as_bytes()));
    }
    a.stop().await;
    b.stop().await;
    Ok(())
}
