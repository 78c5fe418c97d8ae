//! `warren bench`: start temporary nodes in-process and measure what users feel: sends,
//! sync wake-ups, federation propagation, initial sync, start-up, memory, disk.
//!
//! The nodes run inside this process (a `warren_core::Node` with a loopback QUIC
//! transport each, mDNS off), so memory figures are the whole process's RSS: both nodes,
//! the load generator and its HTTP clients.

mod client;
mod federation;
mod plot;
mod soak;
mod suite;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow};
use serde_json::{Map, Value, json};
use tokio::runtime::Handle;
use warren_core::{Config, Node};
use warren_p2p::{DhtMode, P2p, P2pConfig};

use crate::output;
use suite::{Accounts, ClientFigures};

/// Clients in the concurrent measurements.
pub const CONCURRENCY: usize = 10;

const LISTEN_WAIT: Duration = Duration::from_secs(10);

const LONG_ABOUT: &str = "\
Start two temporary nodes in this process (a temporary directory, client API on \
127.0.0.1, federation over loopback QUIC, mDNS off), drive them over HTTP and print \
what was measured: sequential and concurrent sends, send latency, how fast a waiting \
/sync wakes up, federation propagation between the two nodes, directly and (with three \
more nodes) through a libp2p relay, joining a room on the other node (empty, and with \
100 and 1,000 members), initial /sync of a user in many rooms, start-up time, process \
RSS, database growth, the binary's and the mobile library's size; and the load \
generator's own ceiling (GET /_matrix/client/versions).

Each figure is compared with its budget (PASS/FAIL). Budgets are for release builds at \
full sizes; the profile is printed. With --against URL the client-API measurements also \
run against another homeserver and both columns are printed with their ratio. \
See docs/performance.md.";

/// `warren bench` flags.
#[derive(Debug, clap::Args)]
#[command(long_about = LONG_ABOUT, args_conflicts_with_subcommands = true)]
pub struct BenchArgs {
    #[command(subcommand)]
    mode: Option<BenchMode>,

    /// Tiny sizes: a smoke run of every measurement in seconds, not a measurement.
    #[arg(long)]
    quick: bool,

    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,

    /// Also run the client-API measurements against this homeserver (its client-server
    /// API base URL, e.g. http://127.0.0.1:8008).
    #[arg(long, value_name = "URL")]
    against: Option<String>,

    /// With --against: log in as this user (localpart or full id) instead of registering
    /// fresh users (registration must then be open on that server).
    #[arg(long, requires = "against", requires = "password")]
    user: Option<String>,

    /// The password of --user.
    #[arg(long, requires = "user")]
    password: Option<String>,
}

/// Other modes of `warren bench`.
#[derive(Debug, clap::Subcommand)]
enum BenchMode {
    /// Load one node (a child process) for a while and sample its RSS, WAL, database and
    /// descriptors over time; writes CSV, JSON and an SVG chart.
    Soak(soak::SoakArgs),
}

/// How much work each measurement does.
#[derive(Clone, Debug)]
pub struct Sizes {
    pub warm_up: usize,
    pub sequential_sends: usize,
    pub concurrent_sends_per_client: usize,
    pub wake_samples: usize,
    pub federation_samples: usize,
    /// Remote joins of rooms with only their creator.
    pub join_rooms: usize,
    /// Members in the state of the two big rooms joined (the 100 and 1,000 of the figures).
    pub join_members: [usize; 2],
    pub rooms: usize,
    pub messages_per_room: usize,
    /// Rooms of the reader for the large initial sync (the 100 above included; the
    /// others hold `large_messages_per_room` messages each).
    pub large_rooms: usize,
    pub large_messages_per_room: usize,
    pub versions_sequential: usize,
    pub versions_per_task: usize,
}

impl Sizes {
    fn new(quick: bool) -> Sizes {
        if quick {
            Sizes {
                warm_up: 2,
                sequential_sends: 20,
                concurrent_sends_per_client: 3,
                wake_samples: 5,
                federation_samples: 3,
                join_rooms: 3,
                join_members: [5, 10],
                rooms: 3,
                messages_per_room: 5,
                large_rooms: 6,
                large_messages_per_room: 2,
                versions_sequential: 50,
                versions_per_task: 10,
            }
        } else {
            Sizes {
                warm_up: 50,
                sequential_sends: 2_000,
                concurrent_sends_per_client: 500,
                wake_samples: 200,
                federation_samples: 100,
                join_rooms: 20,
                join_members: [100, 1_000],
                rooms: 100,
                messages_per_room: 100,
                large_rooms: 1_000,
                large_messages_per_room: 10,
                versions_sequential: 2_000,
                versions_per_task: 500,
            }
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "sequential_sends": self.sequential_sends,
            "concurrent_clients": CONCURRENCY,
            "concurrent_sends_per_client": self.concurrent_sends_per_client,
            "sync_wake_samples": self.wake_samples,
            "federation_samples": self.federation_samples,
            "join_remote_rooms": self.join_rooms,
            "join_members": self.join_members,
            "initial_sync_rooms": self.rooms,
            "initial_sync_messages_per_room": self.messages_per_room,
            "initial_sync_large_rooms": self.large_rooms,
            "initial_sync_large_messages_per_room": self.large_messages_per_room,
        })
    }
}

/// Node-level figures of the local run.
#[derive(Debug, Default)]
struct NodeFigures {
    startup_ms: f64,
    rss_idle_mib: f64,
    rss_after_mib: f64,
    db_bytes_per_10k_messages: f64,
    federation_p50_ms: f64,
    federation_p99_ms: f64,
    federation_relay_p50_ms: f64,
    federation_relay_p99_ms: f64,
    join_remote_p50_ms: f64,
    join_100_members_ms: f64,
    join_1000_members_ms: f64,
    binary_bytes: f64,
    /// None where the library is not built next to this executable.
    mobile_cdylib_bytes: Option<f64>,
}

/// A budget: figure key, limit, whether the figure must be at least (true) or at most.
const BUDGETS: &[(&str, f64, bool)] = &[
    ("sequential_sends_per_s", 2_000.0, true),
    ("concurrent_sends_one_room_per_s", 5_000.0, true),
    ("concurrent_sends_ten_rooms_per_s", 5_000.0, true),
    ("sync_wake_p50_ms", 2.0, false),
    ("federation_p50_ms", 20.0, false),
    ("rss_idle_mib", 30.0, false),
    ("startup_ms", 300.0, false),
    ("initial_sync_ms", 500.0, false),
    // From the federation issue: joining a room with 100 members' state ≤ 1 s.
    ("join_100_members_ms", 1_000.0, false),
];

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// `warren bench`.
///
/// The nodes and the load generator run on two separate runtimes: the node's request
/// handlers do their SQLite writes on the runtime's worker threads, and a client sharing
/// those threads would be stalled by them and measure its own queueing, not the node.
pub fn bench(mut args: BenchArgs) -> anyhow::Result<()> {
    if let Some(BenchMode::Soak(soak)) = args.mode.take() {
        return soak::soak(soak);
    }
    let nodes = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren-node")
        .build()
        .context("could not start the nodes' async runtime")?;
    let load = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren-bench")
        .build()
        .context("could not start the load generator's async runtime")?;
    let result = load.block_on(measure(&args, nodes.handle()));
    load.shutdown_timeout(Duration::from_secs(5));
    nodes.shutdown_timeout(Duration::from_secs(5));
    let report = result?;
    if args.json {
        output::stdout_lines(&[report.to_string()]).context("could not write to stdout")
    } else {
        output::stdout_lines(&table(&report)).context("could not write to stdout")
    }
}

/// Run `f` on the nodes' runtime and wait for it here.
async fn on_nodes<T: Send + 'static>(
    nodes: &Handle,
    f: impl Future<Output = anyhow::Result<T>> + Send + 'static,
) -> anyhow::Result<T> {
    nodes.spawn(f).await.context("a node task panicked")?
}

/// Resident set size of this process (VmRSS in /proc/self/status), in MiB; 0 where
/// there is no /proc.
fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kib| kib / 1024.0)
}

/// Bytes of the SQLite database and its WAL after a checkpoint.
fn db_bytes(node: &Node, data_dir: &Path) -> anyhow::Result<u64> {
    node.server()
        .db
        .checkpoint()
        .map_err(|e| anyhow!("database checkpoint failed: {e}"))?;
    let mut total = 0;
    for entry in std::fs::read_dir(data_dir).context("reading the bench data directory")? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with("warren.db") {
            total += entry.metadata()?.len();
        }
    }
    Ok(total)
}

struct BenchNode {
    node: Node,
    p2p: P2p,
}

/// The transport of a bench node: QUIC on loopback, no mDNS, DHT server.
fn loopback_p2p() -> anyhow::Result<P2pConfig> {
    Ok(P2pConfig {
        listen: vec!["/ip4/127.0.0.1/udp/0/quic-v1".parse()?],
        mdns: false,
        dht_mode: DhtMode::Server,
        connect_timeout: Duration::from_secs(5),
        ..P2pConfig::default()
    })
}

/// Start a node on `dir` with the transport `p2p_config`; returns it once the client API
/// answers.
async fn start_node(dir: PathBuf, p2p_config: P2pConfig) -> anyhow::Result<BenchNode> {
    std::fs::create_dir_all(&dir)?;
    let mut config = Config::new(dir);
    // Throughput is what is measured, as with Synapse run with its rate limits off.
    config.rate_limits = warren_core::RateLimits::off();
    config.client_addr = "127.0.0.1:0".parse()?;
    let node = Node::start(config)
        .await
        .map_err(|e| anyhow!("the bench node did not start: {e}"))?;
    let listens = !p2p_config.listen.is_empty();
    let p2p = P2p::attach(&node, p2p_config).await?;
    if listens {
        p2p.wait_listening(LISTEN_WAIT).await?;
    }
    client::versions(&client::http_client()?, &node.client_url()).await?;
    Ok(BenchNode { node, p2p })
}

async fn measure(args: &BenchArgs, nodes: &Handle) -> anyhow::Result<Value> {
    let sizes = Sizes::new(args.quick);
    let quiet = args.json;
    let progress = move |what: &str| {
        if !quiet {
            eprintln!("bench: {what}");
        }
    };
    let dir = tempfile::tempdir().context("could not create a temporary directory")?;
    let (dir_a, dir_b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let mut node = NodeFigures::default();

    progress("starting node A");
    let started = Instant::now();
    let a = on_nodes(nodes, start_node(dir_a.clone(), loopback_p2p()?)).await?;
    node.startup_ms = started.elapsed().as_secs_f64() * 1000.0;
    tokio::time::sleep(Duration::from_millis(200)).await;
    node.rss_idle_mib = rss_mib();

    progress("starting node B and connecting it to A");
    let b = on_nodes(nodes, start_node(dir_b, loopback_p2p()?)).await?;
    let (pa, pb) = (a.p2p.clone(), b.p2p.clone());
    on_nodes(nodes, async move {
        let addr = pa
            .listen_addrs()
            .await?
            .into_iter()
            .next()
            .context("node A has no listen address")?;
        pb.dial(addr).await?;
        Ok(())
    })
    .await?;

    let db_before = db_bytes(&a.node, &dir_a)?;
    let messages = AtomicU64::new(0);
    // Node A's single writer at the start of each phase: how busy it was in each.
    let server_a = a.node.server().clone();
    let marks = std::cell::RefCell::new(Vec::new());
    let mark = |what: &str| {
        progress(what);
        let stats = server_a.db.writer_stats();
        marks
            .borrow_mut()
            .push((what.to_owned(), Instant::now(), stats));
    };
    let local = suite::run(
        &Accounts::register(&a.node.client_url()),
        &sizes,
        &messages,
        &mark,
    )
    .await
    .context("measuring the local node")?;
    mark("(end)");
    let writer = writer_phases(&marks.into_inner());
    let db_after = db_bytes(&a.node, &dir_a)?;
    let sent = messages.load(Ordering::Relaxed).max(1);
    node.db_bytes_per_10k_messages =
        (db_after.saturating_sub(db_before)) as f64 / sent as f64 * 10_000.0;

    progress("federation propagation A → B");
    let mut fed = federation::propagation(&a, &b, "fed", sizes.federation_samples)
        .await
        .context("measuring federation propagation")?;
    fed.sort();
    node.federation_p50_ms = suite::percentile_ms(&fed, 0.5);
    node.federation_p99_ms = suite::percentile_ms(&fed, 0.99);
    node.rss_after_mib = rss_mib();
    node.binary_bytes = std::env::current_exe()
        .and_then(std::fs::metadata)
        .map_or(0.0, |m| m.len() as f64);
    node.mobile_cdylib_bytes = mobile_cdylib_bytes();

    progress("join latency: a user on B joins rooms on A");
    let [small, large] = sizes.join_members;
    let joins = federation::joins(nodes, &a, &b, sizes.join_rooms, &[small, large], &progress)
        .await
        .context("measuring join latency")?;
    let mut remote = joins.remote;
    remote.sort();
    node.join_remote_p50_ms = suite::percentile_ms(&remote, 0.5);
    let ms = |d: Option<&Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1000.0);
    node.join_100_members_ms = ms(joins.with_members.first());
    node.join_1000_members_ms = ms(joins.with_members.get(1));

    progress("federation propagation through a relay (three more nodes)");
    let mut relayed = federation::relay_propagation(nodes, dir.path(), sizes.federation_samples)
        .await
        .context("measuring federation propagation through a relay")?;
    relayed.sort();
    node.federation_relay_p50_ms = suite::percentile_ms(&relayed, 0.5);
    node.federation_relay_p99_ms = suite::percentile_ms(&relayed, 0.99);

    let against = match &args.against {
        Some(url) => {
            progress(&format!("the same client-API measurements against {url}"));
            let accounts = match (&args.user, &args.password) {
                (Some(user), Some(password)) => Accounts::Login {
                    base: url.clone(),
                    user: user.clone(),
                    password: password.clone(),
                },
                _ => Accounts::register(url),
            };
            let other = AtomicU64::new(0);
            Some(
                suite::run(&accounts, &sizes, &other, &progress)
                    .await
                    .with_context(|| format!("measuring {}", accounts.base()))?,
            )
        }
        None => None,
    };

    for n in [a, b] {
        on_nodes(nodes, async move {
            n.p2p.shutdown().await;
            let _ = n.node.shutdown().await;
            Ok(())
        })
        .await?;
    }
    let mut report = report(args, &sizes, &local, &node, against.as_ref());
    report["writer"] = writer;
    Ok(report)
}

/// Node A's writer in each client-API phase, from the marks taken as each began (the
/// phase's setup, such as creating its rooms, included): how long the phase took, the
/// writes and commits it ran, and the share of its time the writer was held. A share
/// near 100 % means sends queued for the writer; well below it, they did not.
fn writer_phases(marks: &[(String, Instant, warren_core::storage::WriterStats)]) -> Value {
    let phases: Vec<Value> = marks
        .windows(2)
        .map(|w| {
            let ((phase, from, before), (_, to, after)) = (&w[0], &w[1]);
            let seconds = to.duration_since(*from).as_secs_f64();
            let writes = after.writes.saturating_sub(before.writes);
            let commits = after.commits.saturating_sub(before.commits);
            let busy = after.busy_ns.saturating_sub(before.busy_ns) as f64 / 1e9;
            json!({
                "phase": phase,
                "seconds": round(seconds),
                "writes": writes,
                "commits": commits,
                "writes_per_commit": round(writes as f64 / commits.max(1) as f64),
                "busy_pct": round(100.0 * busy / seconds.max(1e-9)),
            })
        })
        .collect();
    Value::Array(phases)
}

/// Size of the warren-mobile cdylib built next to this executable (the same profile's
/// target directory), if it is there: `cargo build --release -p warren-mobile`.
fn mobile_cdylib_bytes() -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let name = format!(
        "{}warren_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    );
    let dir = exe.parent()?;
    // A test or example binary lives one level down (target/<profile>/deps).
    [Some(dir), dir.parent()]
        .into_iter()
        .flatten()
        .find_map(|d| std::fs::metadata(d.join(&name)).ok())
        .map(|m| m.len() as f64)
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn report(
    args: &BenchArgs,
    sizes: &Sizes,
    local: &ClientFigures,
    node: &NodeFigures,
    against: Option<&ClientFigures>,
) -> Value {
    let mut figures = Map::new();
    for (key, value, _) in local.rows() {
        figures.insert(key.into(), json!(round(value)));
    }
    for (key, value) in [
        ("federation_p50_ms", node.federation_p50_ms),
        ("federation_p99_ms", node.federation_p99_ms),
        ("federation_relay_p50_ms", node.federation_relay_p50_ms),
        ("federation_relay_p99_ms", node.federation_relay_p99_ms),
        ("join_remote_p50_ms", node.join_remote_p50_ms),
        ("join_100_members_ms", node.join_100_members_ms),
        ("join_1000_members_ms", node.join_1000_members_ms),
        ("startup_ms", node.startup_ms),
        ("rss_idle_mib", node.rss_idle_mib),
        ("rss_after_mib", node.rss_after_mib),
        ("db_bytes_per_10k_messages", node.db_bytes_per_10k_messages),
        ("binary_bytes", node.binary_bytes),
    ] {
        figures.insert(key.into(), json!(round(value)));
    }
    // Every figure is a number; one that could not be measured is left out and the notes
    // say why.
    let mut notes = Map::new();
    match node.mobile_cdylib_bytes {
        Some(bytes) => {
            figures.insert("mobile_cdylib_bytes".into(), json!(bytes));
        }
        None => {
            notes.insert(
                "mobile_cdylib_bytes".into(),
                json!(format!(
                    "not measured: no {}warren_mobile{} next to this executable; \
                     build it with `cargo build --release -p warren-mobile`",
                    std::env::consts::DLL_PREFIX,
                    std::env::consts::DLL_SUFFIX
                )),
            );
        }
    }
    let budgets: Vec<Value> = BUDGETS
        .iter()
        .map(|&(key, limit, at_least)| {
            let value = figures.get(key).and_then(Value::as_f64).unwrap_or(f64::NAN);
            let pass = if at_least {
                value >= limit
            } else {
                value <= limit
            };
            json!({
                "figure": key,
                "limit": limit,
                "at_least": at_least,
                "value": value,
                "pass": pass,
            })
        })
        .collect();
    let against = against.map(|other| {
        let mut theirs = Map::new();
        let mut ratio = Map::new();
        for ((key, mine, _), (_, their, _)) in local.rows().into_iter().zip(other.rows()) {
            theirs.insert(key.into(), json!(round(their)));
            let r = if their == 0.0 { 0.0 } else { mine / their };
            ratio.insert(key.into(), json!(round(r)));
        }
        json!({
            "url": args.against,
            "figures": theirs,
            "ratio_warren_to_other": ratio,
        })
    });
    json!({
        "profile": profile(),
        "quick": args.quick,
        "sizes": sizes.to_json(),
        "rss_note": "process RSS: both nodes run inside the bench process with the load generator",
        "figures": figures,
        "notes": notes,
        "budgets": budgets,
        "against": against,
    })
}

/// (label, JSON key, unit) of every row of the table, in order.
const ROWS: &[(&str, &str, &str)] = &[
    ("sequential sends", "sequential_sends_per_s", "/s"),
    ("send latency p50", "send_p50_ms", "ms"),
    ("send latency p99", "send_p99_ms", "ms"),
    (
        "10 clients, 1 room",
        "concurrent_sends_one_room_per_s",
        "/s",
    ),
    (
        "10 clients, 10 rooms",
        "concurrent_sends_ten_rooms_per_s",
        "/s",
    ),
    ("sync wake p50", "sync_wake_p50_ms", "ms"),
    ("sync wake p99", "sync_wake_p99_ms", "ms"),
    (
        "sync wake p50, 2 members",
        "sync_wake_small_room_p50_ms",
        "ms",
    ),
    ("initial sync, new device", "initial_sync_ms", "ms"),
    (
        "initial sync, same device",
        "initial_sync_same_device_ms",
        "ms",
    ),
    (
        "initial sync, 1,000 rooms",
        "initial_sync_1000_rooms_ms",
        "ms",
    ),
    ("versions, sequential", "versions_sequential_per_s", "/s"),
    ("versions, 10 clients", "versions_concurrent_per_s", "/s"),
    ("federation p50", "federation_p50_ms", "ms"),
    ("federation p99", "federation_p99_ms", "ms"),
    ("federation via relay p50", "federation_relay_p50_ms", "ms"),
    ("federation via relay p99", "federation_relay_p99_ms", "ms"),
    ("join remote room p50", "join_remote_p50_ms", "ms"),
    ("join, 100 members", "join_100_members_ms", "ms"),
    ("join, 1,000 members", "join_1000_members_ms", "ms"),
    ("start-up to serving", "startup_ms", "ms"),
    ("process RSS idle", "rss_idle_mib", "MiB"),
    ("process RSS after", "rss_after_mib", "MiB"),
    ("database per 10k msgs", "db_bytes_per_10k_messages", "B"),
    ("binary size", "binary_bytes", "B"),
    ("mobile cdylib size", "mobile_cdylib_bytes", "B"),
];

fn fmt_value(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.3}")
    }
}

fn table(report: &Value) -> Vec<String> {
    let figures = &report["figures"];
    let other = &report["against"];
    let mut lines = vec![format!(
        "profile: {}{}",
        report["profile"].as_str().unwrap_or("?"),
        if report["quick"] == true {
            " (--quick: tiny sizes, figures are not measurements)"
        } else {
            ""
        }
    )];
    let s = &report["sizes"];
    lines.push(format!(
        "sizes: {} sequential sends, {} clients × {} concurrent sends, {} sync wakes, \
         {} federation samples, {} remote joins, joins of rooms with {} members, \
         initial sync {} rooms × {} messages, then {} rooms (the new ones with {} messages)",
        s["sequential_sends"],
        s["concurrent_clients"],
        s["concurrent_sends_per_client"],
        s["sync_wake_samples"],
        s["federation_samples"],
        s["join_remote_rooms"],
        s["join_members"],
        s["initial_sync_rooms"],
        s["initial_sync_messages_per_room"],
        s["initial_sync_large_rooms"],
        s["initial_sync_large_messages_per_room"],
    ));
    lines.push(
        "memory: process RSS (both nodes run in this process with the load generator)".into(),
    );
    let with_other = !other.is_null();
    let mut head = format!("{:<26} {:>12} {:<4}", "FIGURE", "WARREN", "");
    if with_other {
        head.push_str(&format!(" {:>12} {:>8}", "OTHER", "RATIO"));
    }
    head.push_str("  BUDGET");
    lines.push(head);
    for &(label, key, unit) in ROWS {
        let v = figures[key]
            .as_f64()
            .map_or_else(|| "-".to_owned(), fmt_value);
        let mut line = format!("{label:<26} {v:>12} {unit:<4}");
        if with_other {
            match other["figures"][key].as_f64() {
                Some(o) => line.push_str(&format!(
                    " {:>12} {:>8}",
                    fmt_value(o),
                    format!(
                        "{:.2}",
                        other["ratio_warren_to_other"][key].as_f64().unwrap_or(0.0)
                    )
                )),
                None => line.push_str(&format!(" {:>12} {:>8}", "-", "-")),
            }
        }
        if let Some(budget) = report["budgets"]
            .as_array()
            .and_then(|b| b.iter().find(|b| b["figure"] == key))
        {
            let op = if budget["at_least"] == true {
                "≥"
            } else {
                "≤"
            };
            line.push_str(&format!(
                "  {op} {} {}",
                fmt_value(budget["limit"].as_f64().unwrap_or(0.0)),
                if budget["pass"] == true {
                    "PASS"
                } else {
                    "FAIL"
                }
            ));
        }
        lines.push(line);
    }
    if let Some(notes) = report["notes"].as_object() {
        for (key, note) in notes {
            lines.push(format!("{key}: {}", note.as_str().unwrap_or("?")));
        }
    }
    if with_other {
        lines.push(format!(
            "other: {} (ratio = warren / other)",
            other["url"].as_str().unwrap_or("?")
        ));
    }
    if let Some(phases) = report["writer"].as_array() {
        lines.push("node A's writer, per phase: held, writes, writes per commit".into());
        for p in phases {
            lines.push(format!(
                "  {:<60} {:>5.1} % {:>7} {:>6.2}",
                p["phase"].as_str().unwrap_or("?"),
                p["busy_pct"].as_f64().unwrap_or(0.0),
                p["writes"].as_u64().unwrap_or(0),
                p["writes_per_commit"].as_f64().unwrap_or(0.0),
            ));
        }
    }
    lines
}
