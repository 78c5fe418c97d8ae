//! A hostile peer on the federation protocol is cut off; other peers are not affected.

mod common;

use std::time::Duration;

use common::*;
use futures::{AsyncReadExt, AsyncWriteExt};
use warren_p2p::P2pConfig;

/// Victim with small limits so the attacks hit them quickly.
fn victim_config() -> P2pConfig {
    P2pConfig {
        max_body_bytes: 1024 * 1024,
        request_timeout: Duration::from_secs(5),
        max_inbound_per_peer: 16,
        max_inbound_total: 64,
        ..loopback_config()
    }
}

/// Three nodes: the victim V, the attacker M and a well-behaved G, M and G connected
/// to V.
async fn setup() -> Result<(TestNode, TestNode, TestNode), Box<dyn std::error::Error + Send + Sync>>
{
    let v = start(victim_config()).await?;
    let m = start(loopback_config()).await?;
    let g = start(loopback_config()).await?;
    let v_addr = v.addr_with("quic-v1").await?;
    m.p2p.dial(v_addr.clone()).await?;
    g.p2p.dial(v_addr).await?;
    Ok((v, m, g))
}

/// G's requests still work.
async fn others_unaffected(g: &TestNode, v: &TestNode) -> TestResult {
    for _ in 0..10 {
        let (status, body) = get_from(g, &v.name, "/_test/origin").await?;
        assert_eq!(status, 200);
        assert_eq!(body, g.name.as_bytes());
    }
    Ok(())
}

/// Read whatever the victim answers until it closes the stream.
async fn read_to_close(stream: &mut libp2p::Stream) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut out)).await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_oversized_headers_get_an_error_and_a_closed_stream() -> TestResult {
    let (v, m, g) = setup().await?;

    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(b"\x00\x01\x02 this is not HTTP\r\n\r\n")
        .await?;
    let answer = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 400"),
        "garbage must get 400 or a closed stream, got {text:?}"
    );

    let mut s = m.p2p.open_stream(&v.name).await?;
    let mut head = b"GET /_test/origin HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 64 * 1024));
    head.extend(b"\r\n\r\n");
    let _ = s.write_all(&head).await;
    let answer = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || text.starts_with("HTTP/1.1 431") || text.starts_with("HTTP/1.1 400"),
        "an oversized head must be refused, got {:?}",
        &text[..text.len().min(80)]
    );
    others_unaffected(&g, &v).await?;
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_never_ending_body_is_cut_off() -> TestResult {
    let (v, m, g) = setup().await?;
    let mut s = m.p2p.open_stream(&v.name).await?;
    s.write_all(b"POST /_test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await?;
    let chunk = {
        let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
        c.extend(std::iter::repeat_n(b'z', 64 * 1024));
        c.extend(b"\r\n");
        c
    };
    // Keep writing until the victim stops reading; it must, well before 64 MiB.
    let mut sent = 0usize;
    let writing = async {
        loop {
            if s.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
            if sent > 64 * 1024 * 1024 {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), writing)
        .await
        .map_err(|_| "the victim kept reading a never-ending body")?;
    eprintln!("never-ending body cut off after {sent} bytes");
    assert!(
        sent < 64 * 1024 * 1024,
        "body was not cut off (sent {sent} bytes)"
    );
    others_unaffected(&g, &v).await?;
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_streams_at_once_do_not_starve_other_peers() -> TestResult {
    let (v, m, g) = setup().await?;
    // Open 1,000 streams and send nothing on them: each would hold a slot forever if
    // the victim let it.
    let mut held = Vec::new();
    let opens = (0..1000).map(|_| m.p2p.open_stream(&v.name));
    let results = futures::future::join_all(opens).await;
    for s in results.into_iter().flatten() {
        held.push(s);
    }
    others_unaffected(&g, &v).await?;
    // The streams over the per-peer limit were reset: at most 16 of what M holds are
    // alive. (Most of the 1,000 are never opened at all: QUIC gives a peer credit for
    // 64 streams at a time, and M's own transport refuses more than 64 opens pending on
    // one connection.)
    let mut dead = 0;
    for s in held.iter_mut() {
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => dead += 1,
            _ => {}
        }
    }
    eprintln!(
        "{} of 1000 streams opened; {dead} of them were reset",
        held.len()
    );
    assert!(
        held.len() - dead <= 16,
        "streams past the limit must be reset, {} of {} are alive",
        held.len() - dead,
        held.len()
    );
    drop(held);
    for n in [v, m, g] {
        n.stop().await;
    }
    Ok(())
}
