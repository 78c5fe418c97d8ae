//! The carriage's resource bounds, driven to their limits by a peer speaking raw
//! HTTP on federation streams: request body size, the shared body byte budget, inbound
//! streams per peer, and the response size read back.

mod common;

use std::time::Duration;

use axum::body::Bytes;
use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use warren_core::federation::TransportError;
use warren_p2p::P2pConfig;

const MIB: usize = 1024 * 1024;

/// Victim V with small limits; M (hostile) and G (well-behaved) connected to it.
async fn setup(
    victim: P2pConfig,
) -> Result<(TestNode, TestNode, TestNode), Box<dyn std::error::Error + Send + Sync>> {
    let v = start(victim).await?;
    let m = start(loopback_config()).await?;
    let g = start(loopback_config()).await?;
    let v_addr = v.addr_with("quic-v1").await?;
    m.p2p.dial(v_addr.clone()).await?;
    g.p2p.dial(v_addr).await?;
    Ok((v, m, g))
}

/// Read the victim's answer until it closes the stream (or 10 s pass).
async fn answer(stream: &mut libp2p::Stream) -> String {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn g_still_served(g: &TestNode, v: &TestNode) -> TestResult {
    let (status, body) = get_from(g, &v.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    assert_eq!(body, g.name.as_bytes());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_are_refused_unread() -> TestResult {
    let (v, m, g) = setup(P2pConfig {
        max_body_bytes: MIB,
        max_inbound_body_budget: 4 * MIB,
        ..loopback_config()
    })
    .await?;

    // A declared length over the limit: 413 before a byte of body is sent.
    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(
        format!(
            "POST /_test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MIB + 1
        )
        .as_bytes(),
    )
    .await?;
    let text = answer(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 413"), "got {text:?}");
    assert!(text.contains("M_TOO_LARGE"), "got {text:?}");
    assert_eq!(v.p2p.inbound_body_bytes(), 0, "nothing charged");

    // A chunked body is cut off as it passes the limit.
    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(b"POST /_test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let chunk = {
        let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
        c.extend(std::iter::repeat_n(b'z', 64 * 1024));
        c.extend(b"\r\n");
        c
    };
    for _ in 0..(MIB / (64 * 1024) + 1) {
        if s.write_all(&chunk).await.is_err() {
            break;
        }
    }
    let text = answer(&mut s).await;
    assert!(
        text.starts_with("HTTP/1.1 413"),
        "got {:?}",
        &text[..text.len().min(80)]
    );

    // Through the real client: the status comes back, the request is not served.
    let req = http::Request::post("/_test/echo").body(Bytes::from(vec![7u8; MIB + 1]))?;
    match m.p2p.send(&v.name, req).await {
        Ok(resp) => assert_eq!(resp.status(), 413),
        Err(TransportError::Protocol { .. }) => {}
        Err(e) => return Err(format!("unexpected error {e}").into()),
    }
    // At the limit exactly it is served.
    let req = http::Request::post("/_test/echo").body(Bytes::from(vec![7u8; MIB]))?;
    let resp = m.p2p.send(&v.name, req).await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.body().len(), MIB);

    wait_for(
        Duration::from_secs(5),
        "the budget to be returned",
        || async { v.p2p.inbound_body_bytes() == 0 },
    )
    .await?;
    g_still_served(&g, &v).await?;
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_body_budget_answers_503_instead_of_buffering() -> TestResult {
    let (v, m, g) = setup(P2pConfig {
        max_body_bytes: MIB,
        max_inbound_body_budget: 2 * MIB,
        ..loopback_config()
    })
    .await?;
    let head = format!("POST /_test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: {MIB}\r\n\r\n");

    // Two requests declare 1 MiB each and send a little: the budget is spent.
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = m.p2p.open_stream(&v.name).await?;
        s.write_all(head.as_bytes()).await?;
        s.write_all(&[b'a'; 1000]).await?;
        held.push(s);
    }
    wait_for(Duration::from_secs(10), "two bodies charged", || async {
        v.p2p.inbound_body_bytes() == 2 * MIB
    })
    .await?;

    // A third gets 503 at once, without its body being read.
    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(head.as_bytes()).await?;
    let text = answer(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 503"), "got {text:?}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1\r\n"),
        "no Retry-After in {text:?}"
    );
    // So does a chunked one, on its first chunk.
    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(
        b"POST /_test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n",
    )
    .await?;
    let text = answer(&mut s).await;
    assert!(text.starts_with("HTTP/1.1 503"), "got {text:?}");
    assert_eq!(v.p2p.inbound_body_bytes(), 2 * MIB, "never over the budget");

    // Bodiless requests need no budget.
    g_still_served(&g, &v).await?;

    // Closing the held streams returns the budget, and bodies are served again.
    drop(held);
    wait_for(
        Duration::from_secs(10),
        "the budget to be returned",
        || async { v.p2p.inbound_body_bytes() == 0 },
    )
    .await?;
    let req = http::Request::post("/_test/echo").body(Bytes::from(vec![1u8; MIB]))?;
    let resp = g.p2p.send(&v.name, req).await?;
    assert_eq!(resp.status(), 200);
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_peer_limit_are_reset() -> TestResult {
    let (v, m, g) = setup(P2pConfig {
        max_inbound_per_peer: 4,
        max_inbound_total: 16,
        ..loopback_config()
    })
    .await?;
    // Four streams that send half a head and stop: each holds a slot.
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut s = m.p2p.open_stream(&v.name).await?;
        s.write_all(b"GET /_test/origin HTTP/1.1\r\n").await?;
        held.push(s);
    }
    wait_for(
        Duration::from_secs(10),
        "four requests in flight",
        || async { v.p2p.inbound_in_flight() == 4 },
    )
    .await?;
    // The fifth and later streams are reset unread: no answer, closed at once.
    for _ in 0..4 {
        let mut s = m.p2p.open_stream(&v.name).await?;
        let _ = s
            .write_all(b"GET /_test/origin HTTP/1.1\r\nHost: x\r\n\r\n")
            .await;
        let text = answer(&mut s).await;
        assert!(text.is_empty(), "a stream past the limit got {text:?}");
    }
    assert_eq!(v.p2p.inbound_in_flight(), 4);
    // Another peer is not affected.
    g_still_served(&g, &v).await?;
    drop(held);
    wait_for(Duration::from_secs(15), "the slots to be freed", || async {
        v.p2p.inbound_in_flight() == 0
    })
    .await?;
    let (status, _) = get_from(&m, &v.name, "/_test/origin").await?;
    assert_eq!(status, 200);
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_read_only_up_to_the_response_limit() -> TestResult {
    let a = start(P2pConfig {
        max_response_bytes: MIB,
        ..loopback_config()
    })
    .await?;
    let b = start(loopback_config()).await?;
    a.p2p.dial(b.addr_with("quic-v1").await?).await?;
    let req = http::Request::post("/_test/echo").body(Bytes::from(vec![3u8; MIB]))?;
    assert_eq!(a.p2p.send(&b.name, req).await?.body().len(), MIB);
    let req = http::Request::post("/_test/echo").body(Bytes::from(vec![3u8; MIB + 1]))?;
    match a.p2p.send(&b.name, req).await {
        Err(TransportError::Protocol { reason, .. }) => {
            assert!(reason.contains("length limit"), "{reason}")
        }
        other => return Err(format!("a response over the limit must fail, got {other:?}").into()),
    }
    a.stop().await;
    b.stop().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_keeps_within_the_receivers_per_peer_limit() -> TestResult {
    // V serves 2 requests from one peer at a time and resets the streams past that; A
    // sends at most 2 at a time to one peer, so 40 concurrent requests all get through
    // (without the sender's cap, 38 streams would be reset at once and their 3 attempts
    // soon spent).
    let v = start(P2pConfig {
        max_inbound_per_peer: 2,
        max_inbound_total: 4,
        ..loopback_config()
    })
    .await?;
    let a = start(P2pConfig {
        max_outbound_per_peer: 2,
        ..loopback_config()
    })
    .await?;
    a.p2p.dial(v.addr_with("quic-v1").await?).await?;
    let sends = (0..40).map(|i| {
        let req = http::Request::post("/_test/echo").body(Bytes::from(vec![i as u8; 64 * 1024]));
        let a = &a;
        let v = &v;
        async move {
            let req = req.map_err(|e| e.to_string())?;
            let resp = a.p2p.send(&v.name, req).await.map_err(|e| e.to_string())?;
            if resp.status() != 200 || resp.body().len() != 64 * 1024 {
                return Err(format!("request {i}: {}", resp.status()));
            }
            Ok::<_, String>(())
        }
    });
    for r in futures::future::join_all(sends).await {
        r?;
    }
    assert!(v.p2p.inbound_in_flight() <= 2);
    a.stop().await;
    v.stop().await;
    Ok(())
}
