//! Federation carriage benchmark: request round trip and throughput between two real
//! nodes over loopback, QUIC and TCP. A program that prints numbers, not a timed test.
//!
//! Run: `cargo bench -p warren-p2p --bench carriage` (add `-- --json` for JSON).
//! Budget (issue 3): QUIC round trip, small body, warm connection, p50 ≤ 1 ms.

use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use warren_core::{Config, Node};
use warren_p2p::{DhtMode, P2p, P2pConfig};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

const ROUND_TRIPS: usize = 2000;
const CONCURRENT_REQUESTS: usize = 4000;
const CONCURRENCY: usize = 32;
const BULK_BYTES: usize = 8 * 1024 * 1024;
const BULK_ROUNDS: usize = 8;

struct Bench {
    _dirs: Vec<tempfile::TempDir>,
    nodes: Vec<(Node, P2p)>,
}

async fn node(listen: &str) -> Result<(tempfile::TempDir, Node, P2p), BoxError> {
    let dir = tempfile::tempdir()?;
    let mut c = Config::new(dir.path());
    c.client_addr = "127.0.0.1:0".parse()?;
    let node = Node::start(c).await?;
    let routes = Router::new()
        .route("/_bench/ping", get(|| async { "pong" }))
        .route(
            "/_bench/echo",
            post(|b: Bytes| async move { b }).layer(DefaultBodyLimit::disable()),
        )
        .merge(node.federation_router());
    let config = P2pConfig {
        listen: vec![listen.parse()?],
        mdns: false,
        dht_mode: DhtMode::Server,
        ..P2pConfig::default()
    };
    let p2p = P2p::start(config, node.server().clone(), routes).await?;
    Ok((dir, node, p2p))
}

async fn pair(listen: &str) -> Result<Bench, BoxError> {
    let (da, na, pa) = node(listen).await?;
    let (db, nb, pb) = node(listen).await?;
    let addr = pb
        .wait_listening(Duration::from_secs(10))
        .await?
        .into_iter()
        .next()
        .ok_or("no listen address")?;
    pa.dial(addr).await?;
    Ok(Bench {
        _dirs: vec![da, db],
        nodes: vec![(na, pa), (nb, pb)],
    })
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).map_or(f64::NAN, |d| d.as_secs_f64() * 1000.0)
}

struct Figures {
    transport: &'static str,
    p50_ms: f64,
    p99_ms: f64,
    sequential_rps: f64,
    concurrent_rps: f64,
    bulk_mib_s: f64,
}

async fn measure(transport: &'static str, listen: &str) -> Result<Figures, BoxError> {
    let bench = pair(listen).await?;
    let a = bench.nodes[0].1.clone();
    let b_name = bench.nodes[1].0.server_name().to_owned();
    let ping = || http::Request::get("/_bench/ping").body(Bytes::new());
    // Warm up: connection, stream machinery, allocator.
    for _ in 0..100 {
        a.send(&b_name, ping()?).await?;
    }
    let mut rtts = Vec::with_capacity(ROUND_TRIPS);
    let started = Instant::now();
    for _ in 0..ROUND_TRIPS {
        let t = Instant::now();
        let r = a.send(&b_name, ping()?).await?;
        rtts.push(t.elapsed());
        if r.status() != 200 {
            return Err(format!("ping answered {}", r.status()).into());
        }
    }
    let sequential_rps = ROUND_TRIPS as f64 / started.elapsed().as_secs_f64();
    rtts.sort();

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let a = a.clone();
        let b_name = b_name.clone();
        tasks.spawn(async move {
            for _ in 0..CONCURRENT_REQUESTS / CONCURRENCY {
                let req = http::Request::get("/_bench/ping").body(Bytes::new())?;
                a.send(&b_name, req).await?;
            }
            Ok::<_, BoxError>(())
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let concurrent_rps = CONCURRENT_REQUESTS as f64 / started.elapsed().as_secs_f64();

    let body = Bytes::from(vec![0x5au8; BULK_BYTES]);
    let started = Instant::now();
    for _ in 0..BULK_ROUNDS {
        let req = http::Request::post("/_bench/echo").body(body.clone())?;
        let r = a.send(&b_name, req).await?;
        if r.body().len() != BULK_BYTES {
            return Err("echo lost bytes".into());
        }
    }
    // Each round moves the body both ways.
    let moved = (2 * BULK_BYTES * BULK_ROUNDS) as f64 / (1024.0 * 1024.0);
    let bulk_mib_s = moved / started.elapsed().as_secs_f64();

    for (node, p2p) in bench.nodes {
        p2p.shutdown().await;
        let _ = node.shutdown().await;
    }
    Ok(Figures {
        transport,
        p50_ms: percentile(&rtts, 0.50),
        p99_ms: percentile(&rtts, 0.99),
        sequential_rps,
        concurrent_rps,
        bulk_mib_s,
    })
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), BoxError> {
    let json = std::env::args().any(|a| a == "--json");
    let mut all = Vec::new();
    for (name, listen) in [
        ("quic", "/ip4/127.0.0.1/udp/0/quic-v1"),
        ("tcp", "/ip4/127.0.0.1/tcp/0"),
    ] {
        all.push(measure(name, listen).await?);
    }
    if json {
        let rows: Vec<_> = all
            .iter()
            .map(|f| {
                serde_json::json!({
                    "transport": f.transport,
                    "rtt_p50_ms": f.p50_ms,
                    "rtt_p99_ms": f.p99_ms,
                    "sequential_requests_per_s": f.sequential_rps,
                    "concurrent_requests_per_s": f.concurrent_rps,
                    "concurrency": CONCURRENCY,
                    "bulk_mib_per_s": f.bulk_mib_s,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!(
        "{:<6} {:>10} {:>10} {:>12} {:>16} {:>10}",
        "", "p50 (ms)", "p99 (ms)", "seq req/s", "req/s (32 conc)", "MiB/s"
    );
    for f in &all {
        println!(
            "{:<6} {:>10.3} {:>10.3} {:>12.0} {:>16.0} {:>10.1}",
            f.transport, f.p50_ms, f.p99_ms, f.sequential_rps, f.concurrent_rps, f.bulk_mib_s
        );
    }
    let quic = &all[0];
    println!(
        "budget: QUIC round trip p50 ≤ 1 ms: {} ({:.3} ms)",
        if quic.p50_ms <= 1.0 { "PASS" } else { "FAIL" },
        quic.p50_ms
    );
    Ok(())
}
