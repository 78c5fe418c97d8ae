//! `warren bench soak`: one node in a child process (`warren run`), a stated load from
//! this process, and the node's memory, WAL, database and descriptors sampled from the
//! outside (`/proc/<pid>`) over time.
//!
//! Phases: idle (the fresh node, no users) → setup (register the users, one shared room,
//! first `/sync` of every client) → load (N long-polling `/sync` clients and M senders
//! for T seconds) → rest (no load at all for R seconds: every client stopped and its
//! connections closed) → optionally a login storm and held idle connections, each
//! followed by a short cooldown. A sampler thread records one row per interval; at the
//! end the rows go to CSV and JSON, a chart to SVG, and a summary compares the figures
//! with the targets of the bounded-resources issue.

use std::fmt::Write as _;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::client::{self, Client};
use super::plot::{self, Band, Panel, Series, Target};
use super::suite::percentile_ms;
use crate::output;

const LONG_ABOUT: &str = "\
Start one node as a child process (`warren run` of this executable on a temporary data \
directory, client API on a free loopback port, so registration is open; libp2p on \
loopback QUIC only, mDNS off) and drive a stated load against it over HTTP: N users \
each looping `GET /sync?since=…&timeout=30000`, and M users sending m.room.message into \
one shared room as fast as they can (or at --rate per sender) for T seconds, then R \
seconds with no load at all. Optionally a login storm (--logins) and held idle TCP \
connections (--idle-conns) follow.

Every interval the node's RSS (VmRSS, VmHWM), WAL and database file sizes, open \
descriptors and threads are read from outside the process (/proc/<pid>), together with \
the send latency and /sync deliveries of the interval. One table row per sample goes to \
stdout as it is taken, then a summary compared with the targets (RSS idle ≤ 24 MiB, \
peak under load ≤ 96 MiB, after the rest ≤ 48 MiB; WAL ≤ 64 MiB always and ≤ 4 MiB \
5 s after the load). The summary is a report: the exit status is 0 whatever it says.

Written to --out: samples.csv, soak.json (parameters, phases, samples, summary), \
soak.svg (memory and WAL, latency, descriptors over time, phases shaded), table.txt \
(what was printed) and node.log (the node's stderr). Linux only (/proc). See \
docs/performance.md.";

/// `warren bench soak` flags.
#[derive(Debug, clap::Args)]
#[command(long_about = LONG_ABOUT)]
pub struct SoakArgs {
    /// Long-polling /sync clients, each its own user.
    #[arg(short = 'n', long, default_value_t = 50, value_name = "N")]
    sync_clients: usize,

    /// Senders, each its own user, all in one shared room.
    #[arg(short = 'm', long, default_value_t = 10, value_name = "M")]
    senders: usize,

    /// Seconds of load.
    #[arg(
        short = 't',
        long = "load",
        default_value_t = 30.0,
        value_name = "SECS"
    )]
    load_secs: f64,

    /// Seconds of rest after the load, with no client connected.
    #[arg(
        short = 'r',
        long = "rest",
        default_value_t = 60.0,
        value_name = "SECS"
    )]
    rest_secs: f64,

    /// Seconds the fresh node is left alone before the set-up (the idle RSS is read at
    /// the end of it).
    #[arg(long = "idle", default_value_t = 5.0, value_name = "SECS")]
    idle_secs: f64,

    /// Seconds between samples.
    #[arg(
        short = 'i',
        long = "interval",
        default_value_t = 1.0,
        value_name = "SECS"
    )]
    interval_secs: f64,

    /// Messages per second of each sender; 0 sends as fast as the node answers.
    #[arg(long, default_value_t = 0.0, value_name = "PER_S")]
    rate: f64,

    /// After the rest: this many concurrent logins with a wrong password (a login storm),
    /// then a cooldown (5 s, or --rest if shorter).
    #[arg(long, default_value_t = 0, value_name = "K")]
    logins: usize,

    /// After the rest (and the login storm): open this many TCP connections to the
    /// client API, hold them idle for --hold seconds, close them, then a cooldown.
    #[arg(long, default_value_t = 0, value_name = "K")]
    idle_conns: usize,

    /// Seconds the --idle-conns connections are held open.
    #[arg(long = "hold", default_value_t = 10.0, value_name = "SECS")]
    hold_secs: f64,

    /// Directory for the samples, the chart and the logs (created if missing; files of
    /// an earlier run there are overwritten).
    #[arg(long, default_value = "warren-soak", value_name = "DIR")]
    out: PathBuf,
}

/// Filter of the soak's `/sync` clients: the shared room's timeline, no presence.
const SYNC_FILTER: &str = r#"{"room":{"timeline":{"limit":20}},"presence":{"not_types":["*"]}}"#;
const LONG_POLL_MS: u64 = 30_000;
/// Content key carrying the send time (µs since the soak started) of every message.
const STAMP: &str = "org.warren.soak_sent_us";
const PASSWORD: &str = "warren-soak-password";
const NODE_START_WAIT: Duration = Duration::from_secs(60);
const NODE_STOP_WAIT: Duration = Duration::from_secs(30);
/// Pause after each optional phase (or the rest, if shorter).
const COOLDOWN: Duration = Duration::from_secs(5);
/// Set-up requests in flight at once (registration hashes a password on purpose).
const SETUP_CONCURRENCY: usize = 4;
/// The WAL target after the load is read this long after the load stopped.
const WAL_SETTLE_SECS: f64 = 5.0;

/// Targets of the bounded-resources issue (MiB).
const TARGET_IDLE_RSS: f64 = 24.0;
const TARGET_LOAD_RSS: f64 = 96.0;
const TARGET_REST_RSS: f64 = 48.0;
const TARGET_MAX_WAL: f64 = 64.0;
const TARGET_SETTLED_WAL: f64 = 4.0;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
enum Phase {
    Idle = 0,
    Setup = 1,
    Load = 2,
    Rest = 3,
    Logins = 4,
    Conns = 5,
    Cooldown = 6,
    Stop = 7,
}

impl Phase {
    const ALL: [Phase; 8] = [
        Phase::Idle,
        Phase::Setup,
        Phase::Load,
        Phase::Rest,
        Phase::Logins,
        Phase::Conns,
        Phase::Cooldown,
        Phase::Stop,
    ];

    fn from_u8(v: u8) -> Phase {
        Phase::ALL
            .into_iter()
            .find(|p| *p as u8 == v)
            .unwrap_or(Phase::Stop)
    }

    fn name(self) -> &'static str {
        match self {
            Phase::Idle => "idle",
            Phase::Setup => "setup",
            Phase::Load => "load",
            Phase::Rest => "rest",
            Phase::Logins => "logins",
            Phase::Conns => "conns",
            Phase::Cooldown => "cooldown",
            Phase::Stop => "stop",
        }
    }
}

/// What the load generator observed since the last sample.
#[derive(Default)]
struct Window {
    send_latencies: Vec<Duration>,
    send_errors: u64,
    syncs: u64,
    sync_errors: u64,
    deliveries: Vec<Duration>,
}

/// State shared by the load tasks and the sampler thread.
struct Shared {
    start: Instant,
    phase: AtomicU8,
    /// (phase, seconds since start) at every phase change.
    marks: Mutex<Vec<(Phase, f64)>>,
    window: Mutex<Window>,
    /// Every send latency and delivery of the run, for the summary.
    all_sends: Mutex<Vec<Duration>>,
    all_deliveries: Mutex<Vec<Duration>>,
    messages: AtomicU64,
    /// A few distinct error messages, for the report.
    errors: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    fn new() -> Shared {
        Shared {
            start: Instant::now(),
            phase: AtomicU8::new(Phase::Idle as u8),
            marks: Mutex::new(vec![(Phase::Idle, 0.0)]),
            window: Mutex::new(Window::default()),
            all_sends: Mutex::new(Vec::new()),
            all_deliveries: Mutex::new(Vec::new()),
            messages: AtomicU64::new(0),
            errors: Mutex::new(Vec::new()),
        }
    }

    fn secs(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    fn micros(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Relaxed))
    }

    fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::Relaxed);
        lock(&self.marks).push((phase, self.secs()));
    }

    fn note_error(&self, e: &anyhow::Error) {
        let text = format!("{e:#}");
        let mut errors = lock(&self.errors);
        if errors.len() < 5 && !errors.contains(&text) {
            errors.push(text);
        }
    }
}

/// One row of the samples.
#[derive(Clone, Debug)]
struct Sample {
    t: f64,
    phase: Phase,
    rss_mib: f64,
    hwm_mib: f64,
    /// RssAnon: the heap (malloc arenas), stacks.
    anon_mib: f64,
    /// RssFile + RssShmem.
    file_mib: f64,
    wal_mib: f64,
    db_mib: f64,
    fds: u64,
    threads: u64,
    sends_per_s: f64,
    send_p50_ms: f64,
    send_p99_ms: f64,
    send_errors: u64,
    syncs_per_s: f64,
    sync_errors: u64,
    delivery_p50_ms: f64,
    delivery_p99_ms: f64,
}

const CSV_HEADER: &str = "t_s,phase,rss_mib,hwm_mib,anon_mib,file_mib,wal_mib,db_mib,fds,threads,sends_per_s,\
send_p50_ms,send_p99_ms,send_errors,syncs_per_s,sync_errors,delivery_p50_ms,delivery_p99_ms";

fn num(v: f64) -> String {
    if v.is_finite() {
        format!("{v:.3}")
    } else {
        String::new()
    }
}

fn json_num(v: f64) -> Value {
    if v.is_finite() {
        json!((v * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    }
}

impl Sample {
    fn csv(&self) -> String {
        format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            num(self.t),
            self.phase.name(),
            num(self.rss_mib),
            num(self.hwm_mib),
            num(self.anon_mib),
            num(self.file_mib),
            num(self.wal_mib),
            num(self.db_mib),
            self.fds,
            self.threads,
            num(self.sends_per_s),
            num(self.send_p50_ms),
            num(self.send_p99_ms),
            self.send_errors,
            num(self.syncs_per_s),
            self.sync_errors,
            num(self.delivery_p50_ms),
            num(self.delivery_p99_ms),
        )
    }

    fn json(&self) -> Value {
        json!({
            "t_s": json_num(self.t),
            "phase": self.phase.name(),
            "rss_mib": json_num(self.rss_mib),
            "hwm_mib": json_num(self.hwm_mib),
            "anon_mib": json_num(self.anon_mib),
            "file_mib": json_num(self.file_mib),
            "wal_mib": json_num(self.wal_mib),
            "db_mib": json_num(self.db_mib),
            "fds": self.fds,
            "threads": self.threads,
            "sends_per_s": json_num(self.sends_per_s),
            "send_p50_ms": json_num(self.send_p50_ms),
            "send_p99_ms": json_num(self.send_p99_ms),
            "send_errors": self.send_errors,
            "syncs_per_s": json_num(self.syncs_per_s),
            "sync_errors": self.sync_errors,
            "delivery_p50_ms": json_num(self.delivery_p50_ms),
            "delivery_p99_ms": json_num(self.delivery_p99_ms),
        })
    }

    fn row(&self) -> String {
        let ms = |v: f64| {
            if v.is_finite() {
                format!("{v:.1}")
            } else {
                "-".to_owned()
            }
        };
        format!(
            "{:>7.1} {:<8} {:>7.1} {:>7.1} {:>7.2} {:>7.2} {:>5} {:>4} {:>7.0} {:>7} {:>7} {:>7.0} {:>8} {:>8} {:>5}",
            self.t,
            self.phase.name(),
            self.rss_mib,
            self.hwm_mib,
            self.wal_mib,
            self.db_mib,
            self.fds,
            self.threads,
            self.sends_per_s,
            ms(self.send_p50_ms),
            ms(self.send_p99_ms),
            self.syncs_per_s,
            ms(self.delivery_p50_ms),
            ms(self.delivery_p99_ms),
            self.send_errors + self.sync_errors,
        )
    }
}

const ROW_HEADER: &str = "    t_s phase        RSS     HWM     WAL      DB   fds  thr  sends/s  p50 ms  p99 ms  syncs/s  dlv p50  dlv p99  errs";
const ROW_UNITS: &str = "                     MiB     MiB     MiB     MiB                  (send latency)            (send → /sync, ms)";

/// The child `warren run`.
struct NodeProcess {
    child: Child,
    pid: u32,
    url: String,
    data_dir: PathBuf,
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        // Only with a live child on an error path: never leave a node behind.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl NodeProcess {
    /// Start `warren run` (this executable) on `data_dir`; returns once it serves.
    fn start(data_dir: &Path, log: &Path) -> anyhow::Result<NodeProcess> {
        let exe = std::env::current_exe().context("cannot find this executable")?;
        let log_file = std::fs::File::create(log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let mut cmd = Command::new(exe);
        // Nothing of this shell's node configuration may reach the measured node.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("WARREN_") {
                cmd.env_remove(key);
            }
        }
        cmd.env_remove("RUST_LOG")
            .arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .args([
                "--client-addr",
                "127.0.0.1:0",
                "--p2p-listen",
                "/ip4/127.0.0.1/udp/0/quic-v1",
                "--no-mdns",
                "--log-level",
                "warn",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file);
        let mut child = cmd.spawn().context("cannot start `warren run`")?;
        let pid = child.id();
        let (tx, rx) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            // Keeps draining stdout after the start so the node never blocks on the pipe.
            std::thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    let _ = tx.send(line);
                }
            });
        }
        let mut node = NodeProcess {
            child,
            pid,
            url: String::new(),
            data_dir: data_dir.to_owned(),
        };
        let deadline = Instant::now() + NODE_START_WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if let Some(url) = line.strip_prefix("client API: ") {
                        node.url = url.trim().to_owned();
                        return Ok(node);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    bail!(
                        "the node did not serve within {NODE_START_WAIT:?} (see {})",
                        log.display()
                    )
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = node.child.wait().ok();
                    bail!(
                        "the node exited before serving ({}); its log: {}",
                        status.map_or_else(|| "unknown status".to_owned(), |s| s.to_string()),
                        std::fs::read_to_string(log).unwrap_or_default().trim()
                    )
                }
            }
        }
    }

    /// SIGTERM (through kill(1): this crate has no unsafe code and no libc), then wait;
    /// SIGKILL after [`NODE_STOP_WAIT`]. Returns how it ended.
    fn stop(&mut self) -> String {
        let term = Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let deadline = Instant::now() + NODE_STOP_WAIT;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(Some(status)) => return status.to_string(),
                Ok(None) => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return format!("cannot wait for the node: {e}"),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        format!("killed: no exit within {NODE_STOP_WAIT:?} of SIGTERM")
    }
}

/// What /proc/<pid>/status says (KiB, and a count of threads).
struct ProcStatus {
    rss: u64,
    hwm: u64,
    anon: u64,
    /// RssFile + RssShmem: mapped files (the binary, SQLite's shared memory).
    file: u64,
    threads: u64,
}

fn proc_status(pid: u32) -> ProcStatus {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
    };
    ProcStatus {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:") + field("RssShmem:"),
        threads: field("Threads:"),
    }
}

fn fd_count(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

fn file_len(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

const MIB: f64 = 1024.0 * 1024.0;

fn sorted_percentiles(mut v: Vec<Duration>) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    v.sort();
    (percentile_ms(&v, 0.5), percentile_ms(&v, 0.99))
}

/// The sampler: one sample every `interval` until `stop`, printed as it is taken.
struct Sampler {
    shared: Arc<Shared>,
    pid: u32,
    db: PathBuf,
    wal: PathBuf,
    interval: Duration,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Sampler {
    fn take(&self, since_last: Duration) -> Sample {
        let status = proc_status(self.pid);
        let window = std::mem::take(&mut *lock(&self.shared.window));
        let secs = since_last.as_secs_f64().max(1e-9);
        let sends = window.send_latencies.len();
        let (send_p50_ms, send_p99_ms) = sorted_percentiles(window.send_latencies);
        let (delivery_p50_ms, delivery_p99_ms) = sorted_percentiles(window.deliveries);
        Sample {
            t: self.shared.secs(),
            phase: self.shared.phase(),
            rss_mib: status.rss as f64 / 1024.0,
            hwm_mib: status.hwm as f64 / 1024.0,
            anon_mib: status.anon as f64 / 1024.0,
            file_mib: status.file as f64 / 1024.0,
            wal_mib: file_len(&self.wal) as f64 / MIB,
            db_mib: file_len(&self.db) as f64 / MIB,
            fds: fd_count(self.pid),
            threads: status.threads,
            sends_per_s: sends as f64 / secs,
            send_p50_ms,
            send_p99_ms,
            send_errors: window.send_errors,
            syncs_per_s: window.syncs as f64 / secs,
            sync_errors: window.sync_errors,
            delivery_p50_ms,
            delivery_p99_ms,
        }
    }

    fn print(&self, line: String) {
        let _ = output::stdout_lines(&[&line]);
        lock(&self.lines).push(line);
    }

    fn run(self) {
        self.print(ROW_HEADER.to_owned());
        self.print(ROW_UNITS.to_owned());
        let mut last = Instant::now();
        let mut next = last;
        loop {
            next += self.interval;
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            } else {
                next = now;
            }
            let now = Instant::now();
            let sample = self.take(now - last);
            last = now;
            self.print(sample.row());
            lock(&self.samples).push(sample);
            if self.stop.load(Ordering::Relaxed) {
                break;
            }
        }
    }
}

fn secs(v: f64, what: &str) -> anyhow::Result<Duration> {
    if !(v.is_finite() && v >= 0.0) {
        bail!("{what} must be a number of seconds ≥ 0, not {v}");
    }
    Ok(Duration::from_secs_f64(v))
}

/// `warren bench soak`.
pub fn soak(args: SoakArgs) -> anyhow::Result<()> {
    if !Path::new("/proc/self/status").exists() {
        bail!("the soak reads the node's memory from /proc, which this system does not have");
    }
    let interval = secs(args.interval_secs, "--interval")?;
    if interval < Duration::from_millis(50) {
        bail!("--interval must be at least 0.05 s");
    }
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        bail!("--rate must be ≥ 0");
    }
    if args.sync_clients + args.senders == 0 {
        bail!("nothing to do: --sync-clients and --senders are both 0");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("cannot create {}", args.out.display()))?;
    let out = std::path::absolute(&args.out).unwrap_or_else(|_| args.out.clone());
    let dir = tempfile::tempdir().context("could not create a temporary directory")?;
    let data_dir = dir.path().join("node");
    std::fs::create_dir_all(&data_dir)?;

    eprintln!(
        "soak: starting the node (warren run) on {}",
        data_dir.display()
    );
    let mut node = NodeProcess::start(&data_dir, &out.join("node.log"))?;
    eprintln!("soak: node pid {} serving {}", node.pid, node.url);

    let db = warren_core::Config::new(&node.data_dir).database_path();
    let mut wal_name = db.file_name().map(|n| n.to_owned()).unwrap_or_default();
    wal_name.push("-wal");
    let wal = db.with_file_name(wal_name);

    let shared = Arc::new(Shared::new());
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sampler = Sampler {
        shared: shared.clone(),
        pid: node.pid,
        db,
        wal,
        interval,
        stop: stop.clone(),
        samples: samples.clone(),
        lines: lines.clone(),
    };
    let sampler = std::thread::Builder::new()
        .name("soak-sampler".into())
        .spawn(move || sampler.run())
        .context("cannot start the sampler thread")?;

    // The load generator's own runtime; the sampler is a plain thread so a saturated
    // runtime cannot delay the samples.
    let load = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("warren-soak")
        .build()
        .context("could not start the load generator's async runtime")?;
    let result = load.block_on(drive(&args, &node.url, &shared));
    load.shutdown_timeout(Duration::from_secs(5));

    shared.set_phase(Phase::Stop);
    stop.store(true, Ordering::Relaxed);
    let _ = sampler.join();
    eprintln!("soak: stopping the node");
    let exit = node.stop();
    let storm = result?;

    let samples = std::mem::take(&mut *lock(&samples));
    let marks = lock(&shared.marks).clone();
    let report = Report::new(&args, &shared, &samples, &marks, storm, exit);
    let summary = report.summary_lines();
    let _ = output::stdout_lines(&summary);
    lock(&lines).extend(summary);
    write_outputs(&out, &args, &report, &samples, &marks, &lock(&lines))?;
    Ok(())
}

/// What the optional phases saw.
#[derive(Default, Debug)]
struct Extras {
    logins: Option<LoginStorm>,
    conns_opened: Option<usize>,
}

#[derive(Default, Debug)]
struct LoginStorm {
    forbidden: usize,
    limited: usize,
    other: usize,
    failed: usize,
    elapsed: Duration,
}

async fn drive(args: &SoakArgs, url: &str, shared: &Arc<Shared>) -> anyhow::Result<Extras> {
    let idle = secs(args.idle_secs, "--idle")?;
    let load = secs(args.load_secs, "--load")?;
    let rest = secs(args.rest_secs, "--rest")?;
    let hold = secs(args.hold_secs, "--hold")?;
    let cooldown = COOLDOWN.min(rest);
    tokio::time::sleep(idle).await;

    shared.set_phase(Phase::Setup);
    let users = args.sync_clients + args.senders;
    eprintln!("soak: registering {users} users and joining them to one room");
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let mut clients: Vec<Arc<Client>> = Vec::with_capacity(users);
    for chunk in (0..users).collect::<Vec<_>>().chunks(SETUP_CONCURRENCY) {
        let mut tasks = JoinSet::new();
        for &i in chunk {
            let base = url.to_owned();
            let localpart = format!("soak{stamp:x}_{i}");
            tasks.spawn(async move {
                let c = Client::register(&base, &localpart, PASSWORD).await?;
                Ok::<_, anyhow::Error>((i, Arc::new(c)))
            });
        }
        let mut got = Vec::new();
        while let Some(r) = tasks.join_next().await {
            got.push(r.context("a registration task panicked")??);
        }
        got.sort_by_key(|(i, _)| *i);
        clients.extend(got.into_iter().map(|(_, c)| c));
    }
    let user_ids: Vec<String> = clients.iter().map(|c| c.user_id.clone()).collect();
    let creator = clients.first().context("no users")?.clone();
    let room = creator
        .create_room(json!({"preset": "public_chat", "name": "soak"}))
        .await?;
    for chunk in clients[1..].chunks(SETUP_CONCURRENCY * 2) {
        let mut tasks = JoinSet::new();
        for c in chunk {
            let (c, room) = (c.clone(), room.clone());
            tasks.spawn(async move { c.join(&room, None).await });
        }
        while let Some(r) = tasks.join_next().await {
            r.context("a join task panicked")??;
        }
    }
    let (syncers, senders) = clients.split_at(args.sync_clients);
    let mut first = Vec::with_capacity(syncers.len());
    for chunk in syncers.chunks(SETUP_CONCURRENCY * 2) {
        let mut tasks = JoinSet::new();
        for c in chunk {
            let c = c.clone();
            tasks.spawn(async move {
                let body = c.sync(None, 0, Some(SYNC_FILTER)).await?;
                let since = body["next_batch"]
                    .as_str()
                    .with_context(|| format!("sync without next_batch: {body}"))?
                    .to_owned();
                Ok::<_, anyhow::Error>((c, since))
            });
        }
        while let Some(r) = tasks.join_next().await {
            first.push(r.context("a sync task panicked")??);
        }
    }

    eprintln!(
        "soak: load for {:.0} s: {} /sync clients, {} senders ({})",
        load.as_secs_f64(),
        args.sync_clients,
        args.senders,
        if args.rate > 0.0 {
            format!("{} msg/s each", args.rate)
        } else {
            "as fast as possible".to_owned()
        }
    );
    shared.set_phase(Phase::Load);
    let stop_sending = Arc::new(AtomicBool::new(false));
    let mut sync_tasks = JoinSet::new();
    for (c, since) in first {
        sync_tasks.spawn(sync_loop(c, room.clone(), since, shared.clone()));
    }
    let mut send_tasks = JoinSet::new();
    for c in senders {
        send_tasks.spawn(send_loop(
            c.clone(),
            room.clone(),
            shared.clone(),
            stop_sending.clone(),
            args.rate,
        ));
    }
    tokio::time::sleep(load).await;
    stop_sending.store(true, Ordering::Relaxed);
    shared.set_phase(Phase::Rest);
    // Senders finish the send in flight; the parked /sync requests are dropped with their
    // connections, and so are every client's connection pools.
    let _ = tokio::time::timeout(Duration::from_secs(60), async {
        while send_tasks.join_next().await.is_some() {}
    })
    .await;
    send_tasks.abort_all();
    sync_tasks.abort_all();
    while sync_tasks.join_next().await.is_some() {}
    drop(clients);
    drop(creator);
    eprintln!("soak: rest for {:.0} s", rest.as_secs_f64());
    tokio::time::sleep(rest).await;

    let mut extras = Extras::default();
    if args.logins > 0 {
        eprintln!(
            "soak: login storm: {} concurrent wrong-password logins",
            args.logins
        );
        shared.set_phase(Phase::Logins);
        extras.logins = Some(login_storm(url, &user_ids, args.logins).await?);
        shared.set_phase(Phase::Cooldown);
        tokio::time::sleep(cooldown).await;
    }
    if args.idle_conns > 0 {
        eprintln!(
            "soak: holding {} idle TCP connections for {} s",
            args.idle_conns,
            hold.as_secs_f64()
        );
        shared.set_phase(Phase::Conns);
        let opened = idle_connections(url, args.idle_conns, hold).await?;
        extras.conns_opened = Some(opened);
        shared.set_phase(Phase::Cooldown);
        tokio::time::sleep(cooldown).await;
    }
    Ok(extras)
}

async fn sync_loop(c: Arc<Client>, room: String, mut since: String, shared: Arc<Shared>) {
    loop {
        match c.sync(Some(&since), LONG_POLL_MS, Some(SYNC_FILTER)).await {
            Ok(body) => {
                let now = shared.micros();
                let mut delays = Vec::new();
                if let Some(events) = body["rooms"]["join"][&room]["timeline"]["events"].as_array()
                {
                    for e in events {
                        if let Some(sent) = e["content"][STAMP].as_u64() {
                            delays.push(Duration::from_micros(now.saturating_sub(sent)));
                        }
                    }
                }
                if let Some(next) = body["next_batch"].as_str() {
                    since = next.to_owned();
                }
                let mut w = lock(&shared.window);
                w.syncs += 1;
                w.deliveries.extend_from_slice(&delays);
                drop(w);
                lock(&shared.all_deliveries).extend(delays);
            }
            Err(e) => {
                lock(&shared.window).sync_errors += 1;
                shared.note_error(&e);
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

async fn send_loop(
    c: Arc<Client>,
    room: String,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    rate: f64,
) {
    let mut tick = (rate > 0.0).then(|| {
        let mut t = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        if let Some(t) = &mut tick {
            t.tick().await;
            if stop.load(Ordering::Relaxed) {
                break;
            }
        }
        let content = json!({
            "msgtype": "m.text",
            "body": format!("soak message {n} from {}", c.user_id),
            STAMP: shared.micros(),
        });
        let started = Instant::now();
        match c.send_content(&room, &content).await {
            Ok(_) => {
                let took = started.elapsed();
                lock(&shared.window).send_latencies.push(took);
                lock(&shared.all_sends).push(took);
                shared.messages.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                lock(&shared.window).send_errors += 1;
                shared.note_error(&e);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        n += 1;
    }
}

/// `k` logins with a wrong password at once, spread over the registered users.
async fn login_storm(url: &str, users: &[String], k: usize) -> anyhow::Result<LoginStorm> {
    let http = client::http_client()?;
    let endpoint = format!("{}/_matrix/client/v3/login", url.trim_end_matches('/'));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..k {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        let user = users
            .get(i % users.len().max(1))
            .cloned()
            .unwrap_or_default();
        tasks.spawn(async move {
            let body = json!({
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user},
                "password": "not-the-password",
            });
            let response = http.post(&endpoint).json(&body).send().await?;
            let status = response.status().as_u16();
            let _ = response.bytes().await;
            Ok::<_, reqwest::Error>(status)
        });
    }
    let mut storm = LoginStorm::default();
    while let Some(r) = tasks.join_next().await {
        match r {
            Ok(Ok(403)) => storm.forbidden += 1,
            Ok(Ok(429)) => storm.limited += 1,
            Ok(Ok(_)) => storm.other += 1,
            _ => storm.failed += 1,
        }
    }
    storm.elapsed = started.elapsed();
    Ok(storm)
}

/// Open `k` TCP connections to the client API, send nothing, hold them; returns how many
/// opened.
async fn idle_connections(url: &str, k: usize, hold: Duration) -> anyhow::Result<usize> {
    let authority = url
        .strip_prefix("http://")
        .context("the client API is not http://")?
        .trim_end_matches('/')
        .to_owned();
    let mut conns = Vec::with_capacity(k);
    for _ in 0..k {
        match tokio::net::TcpStream::connect(&authority).await {
            Ok(c) => conns.push(c),
            Err(e) => {
                eprintln!("soak: opened {} of {k} connections, then: {e}", conns.len());
                break;
            }
        }
    }
    let opened = conns.len();
    tokio::time::sleep(hold).await;
    drop(conns);
    Ok(opened)
}

/// The figures of the summary.
struct Report {
    profile: &'static str,
    params: Value,
    idle_rss: f64,
    /// The last sample before the load: after registering the users.
    load_start: Option<Sample>,
    /// The sample of the highest RSS under load.
    load_peak: Option<Sample>,
    load_peak_rss: f64,
    load_hwm: f64,
    rest_end_rss: f64,
    max_wal: f64,
    settled_wal: f64,
    db_bytes_per_message: f64,
    max_fds: u64,
    load_max_fds: u64,
    messages: u64,
    load_secs: f64,
    send_p50: f64,
    send_p99: f64,
    delivery_p50: f64,
    delivery_p99: f64,
    errors: u64,
    error_examples: Vec<String>,
    extras: Extras,
    /// RSS of the samples of the login storm and its cooldown.
    logins_peak_rss: f64,
    /// VmHWM before and after the login storm.
    logins_hwm: (f64, f64),
    conns_max_fds: u64,
    node_exit: String,
}

fn phase_span(marks: &[(Phase, f64)], phase: Phase) -> Option<(f64, f64)> {
    let i = marks.iter().position(|(p, _)| *p == phase)?;
    let end = marks.get(i + 1).map_or(f64::INFINITY, |m| m.1);
    Some((marks[i].1, end))
}

fn max_of(samples: &[Sample], phase: Option<Phase>, f: impl Fn(&Sample) -> f64) -> f64 {
    samples
        .iter()
        .filter(|s| phase.is_none_or(|p| s.phase == p))
        .map(f)
        .fold(f64::NAN, f64::max)
}

fn last_of(samples: &[Sample], phase: Phase) -> Option<&Sample> {
    samples.iter().rev().find(|s| s.phase == phase)
}

impl Report {
    fn new(
        args: &SoakArgs,
        shared: &Shared,
        samples: &[Sample],
        marks: &[(Phase, f64)],
        extras: Extras,
        node_exit: String,
    ) -> Report {
        let load_span = phase_span(marks, Phase::Load);
        let load_end = load_span.map_or(f64::NAN, |s| s.1);
        let settled_wal = samples
            .iter()
            .find(|s| s.phase == Phase::Rest && s.t >= load_end + WAL_SETTLE_SECS)
            .map_or(f64::NAN, |s| s.wal_mib);
        // The main file only: the WAL file keeps its size after a checkpoint, so it says
        // nothing about growth (it has its own rows).
        let on_disk = |s: &Sample| s.db_mib * MIB;
        let messages = shared.messages.load(Ordering::Relaxed);
        let load_start = load_span.map_or(f64::NAN, |s| s.0);
        let before_load = samples.iter().rfind(|s| s.t <= load_start);
        let db_bytes_per_message = match (before_load, last_of(samples, Phase::Rest)) {
            (Some(before), Some(after)) if messages > 0 => {
                (on_disk(after) - on_disk(before)) / messages as f64
            }
            _ => f64::NAN,
        };
        let (send_p50, send_p99) =
            sorted_percentiles(std::mem::take(&mut *lock(&shared.all_sends)));
        let (delivery_p50, delivery_p99) =
            sorted_percentiles(std::mem::take(&mut *lock(&shared.all_deliveries)));
        let errors = samples.iter().map(|s| s.send_errors + s.sync_errors).sum();
        let idle = |p: Phase| last_of(samples, p).map_or(f64::NAN, |s| s.rss_mib);
        // The storm is over in well under a sample interval: take the samples of the storm
        // and its cooldown, and VmHWM before and after it.
        let storm_span = phase_span(marks, Phase::Logins);
        let in_storm: Vec<&Sample> = storm_span.map_or_else(Vec::new, |(from, _)| {
            let end = marks
                .iter()
                .find(|(p, t)| *t > from && !matches!(p, Phase::Logins | Phase::Cooldown))
                .map_or(f64::INFINITY, |m| m.1);
            samples
                .iter()
                .filter(|s| s.t >= from && s.t <= end)
                .collect()
        });
        let hwm_before_storm = storm_span
            .and_then(|(from, _)| samples.iter().rfind(|s| s.t < from))
            .map_or(f64::NAN, |s| s.hwm_mib);
        Report {
            profile: super::profile(),
            params: json!({
                "sync_clients": args.sync_clients,
                "senders": args.senders,
                "load_s": args.load_secs,
                "rest_s": args.rest_secs,
                "idle_s": args.idle_secs,
                "interval_s": args.interval_secs,
                "rate_per_sender": args.rate,
                "logins": args.logins,
                "idle_conns": args.idle_conns,
                "hold_s": args.hold_secs,
            }),
            idle_rss: idle(Phase::Idle),
            load_start: before_load.cloned(),
            load_peak: samples
                .iter()
                .filter(|s| s.phase == Phase::Load)
                .max_by(|a, b| a.rss_mib.total_cmp(&b.rss_mib))
                .cloned(),
            load_peak_rss: max_of(samples, Some(Phase::Load), |s| s.rss_mib),
            load_hwm: last_of(samples, Phase::Load).map_or(f64::NAN, |s| s.hwm_mib),
            rest_end_rss: idle(Phase::Rest),
            max_wal: max_of(samples, None, |s| s.wal_mib),
            settled_wal,
            db_bytes_per_message,
            max_fds: samples.iter().map(|s| s.fds).max().unwrap_or(0),
            load_max_fds: samples
                .iter()
                .filter(|s| s.phase == Phase::Load)
                .map(|s| s.fds)
                .max()
                .unwrap_or(0),
            messages,
            load_secs: load_span.map_or(f64::NAN, |(a, b)| b - a),
            send_p50,
            send_p99,
            delivery_p50,
            delivery_p99,
            errors,
            error_examples: lock(&shared.errors).clone(),
            extras,
            logins_peak_rss: in_storm.iter().map(|s| s.rss_mib).fold(f64::NAN, f64::max),
            logins_hwm: (
                hwm_before_storm,
                in_storm.last().map_or(f64::NAN, |s| s.hwm_mib),
            ),
            conns_max_fds: samples
                .iter()
                .filter(|s| s.phase == Phase::Conns)
                .map(|s| s.fds)
                .max()
                .unwrap_or(0),
            node_exit,
        }
    }

    /// (label, value in MiB, limit) of every target.
    fn targets(&self) -> Vec<(&'static str, f64, f64)> {
        vec![
            ("RSS idle, before the load", self.idle_rss, TARGET_IDLE_RSS),
            ("RSS peak under load", self.load_peak_rss, TARGET_LOAD_RSS),
            (
                "RSS at the end of the rest",
                self.rest_end_rss,
                TARGET_REST_RSS,
            ),
            ("WAL, largest", self.max_wal, TARGET_MAX_WAL),
            (
                "WAL 5 s after the load",
                self.settled_wal,
                TARGET_SETTLED_WAL,
            ),
        ]
    }

    fn summary_lines(&self) -> Vec<String> {
        let p = &self.params;
        let mut lines = vec![
            String::new(),
            format!(
                "soak summary (profile: {}): {} /sync clients, {} senders, load {} s, rest {} s",
                self.profile, p["sync_clients"], p["senders"], p["load_s"], p["rest_s"]
            ),
        ];
        for (label, value, limit) in self.targets() {
            let verdict = if !value.is_finite() {
                "n/a (not sampled)"
            } else if value <= limit {
                "PASS"
            } else {
                "FAIL"
            };
            lines.push(format!(
                "  {label:<30} {:>9} MiB   target ≤ {limit:>3} MiB  {verdict}",
                fmt_f(value, 1)
            ));
        }
        let split = |s: &Option<Sample>| {
            s.as_ref().map_or_else(
                || "-".to_owned(),
                |s| {
                    format!(
                        "{:.1} MiB at {:.0} s ({:.1} anonymous, {:.1} file/shared; {} threads)",
                        s.rss_mib, s.t, s.anon_mib, s.file_mib, s.threads
                    )
                },
            )
        };
        lines.push(format!(
            "  {:<30} {}",
            "RSS before the load",
            split(&self.load_start)
        ));
        lines.push(format!(
            "  {:<30} {}",
            "RSS at the load's peak",
            split(&self.load_peak)
        ));
        lines.push(format!(
            "  {:<30} {:>9} MiB   (VmHWM at the end of the load: the peak between samples too)",
            "RSS high-water mark",
            fmt_f(self.load_hwm, 1)
        ));
        lines.push(format!(
            "  {:<30} {:>9}       (under load: {})",
            "open descriptors, most", self.max_fds, self.load_max_fds
        ));
        let rate = self.messages as f64 / self.load_secs;
        lines.push(format!(
            "  {:<30} {:>9}       ({} /s over the load)",
            "messages sent",
            self.messages,
            fmt_f(rate, 0)
        ));
        lines.push(format!(
            "  {:<30} {:>9} B     (database file at the end of the rest − before the load, ÷ messages)",
            "database growth per message",
            fmt_f(self.db_bytes_per_message, 0)
        ));
        lines.push(format!(
            "  {:<30} {:>9} ms    p99 {} ms",
            "send latency p50",
            fmt_f(self.send_p50, 2),
            fmt_f(self.send_p99, 2)
        ));
        lines.push(format!(
            "  {:<30} {:>9} ms    p99 {} ms",
            "send → /sync delivery p50",
            fmt_f(self.delivery_p50, 2),
            fmt_f(self.delivery_p99, 2)
        ));
        lines.push(format!("  {:<30} {:>9}", "request errors", self.errors));
        for e in &self.error_examples {
            lines.push(format!("    e.g. {e}"));
        }
        if let Some(storm) = &self.extras.logins {
            lines.push(format!(
                "  {:<30} {:>9} MiB   VmHWM {} → {} MiB; {} logins in {:.2} s: {} × 403, {} × 429, {} other, {} failed",
                "RSS after the login storm",
                fmt_f(self.logins_peak_rss, 1),
                fmt_f(self.logins_hwm.0, 1),
                fmt_f(self.logins_hwm.1, 1),
                p["logins"],
                storm.elapsed.as_secs_f64(),
                storm.forbidden,
                storm.limited,
                storm.other,
                storm.failed
            ));
        }
        if let Some(opened) = self.extras.conns_opened {
            lines.push(format!(
                "  {:<30} {:>9}       with {opened} idle connections opened",
                "open descriptors, most", self.conns_max_fds
            ));
        }
        lines.push(format!("  node exit: {}", self.node_exit));
        lines
    }

    fn json(&self) -> Value {
        let targets: Vec<Value> = self
            .targets()
            .into_iter()
            .map(|(label, value, limit)| {
                json!({
                    "figure": label,
                    "value_mib": json_num(value),
                    "limit_mib": limit,
                    "pass": value.is_finite().then_some(value <= limit),
                })
            })
            .collect();
        json!({
            "idle_rss_mib": json_num(self.idle_rss),
            "before_load": self.load_start.as_ref().map(Sample::json),
            "load_peak": self.load_peak.as_ref().map(Sample::json),
            "load_peak_rss_mib": json_num(self.load_peak_rss),
            "load_hwm_mib": json_num(self.load_hwm),
            "rest_end_rss_mib": json_num(self.rest_end_rss),
            "max_wal_mib": json_num(self.max_wal),
            "wal_5s_after_load_mib": json_num(self.settled_wal),
            "db_bytes_per_message": json_num(self.db_bytes_per_message),
            "max_fds": self.max_fds,
            "load_max_fds": self.load_max_fds,
            "messages": self.messages,
            "send_p50_ms": json_num(self.send_p50),
            "send_p99_ms": json_num(self.send_p99),
            "delivery_p50_ms": json_num(self.delivery_p50),
            "delivery_p99_ms": json_num(self.delivery_p99),
            "errors": self.errors,
            "error_examples": self.error_examples,
            "login_storm": self.extras.logins.as_ref().map(|s| json!({
                "rss_mib": json_num(self.logins_peak_rss),
                "hwm_before_mib": json_num(self.logins_hwm.0),
                "hwm_after_mib": json_num(self.logins_hwm.1),
                "elapsed_s": json_num(s.elapsed.as_secs_f64()),
                "forbidden": s.forbidden,
                "limited": s.limited,
                "other": s.other,
                "failed": s.failed,
            })),
            "idle_conns": self.extras.conns_opened.map(|opened| json!({
                "opened": opened,
                "max_fds": self.conns_max_fds,
            })),
            "node_exit": self.node_exit,
            "targets": targets,
        })
    }
}

fn fmt_f(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".to_owned()
    }
}

fn bands(marks: &[(Phase, f64)], x_max: f64) -> Vec<Band> {
    let mut out = Vec::new();
    for (i, (phase, from)) in marks.iter().enumerate() {
        let to = marks.get(i + 1).map_or(x_max, |m| m.1);
        let color = match phase {
            Phase::Load => "#f4b6b6",
            Phase::Setup => "#e6e6e6",
            Phase::Logins => "#d9c4ec",
            Phase::Conns => "#c6e5c6",
            _ => continue,
        };
        out.push(Band {
            from: *from,
            to,
            label: phase.name().to_owned(),
            color,
        });
    }
    out
}

fn chart(args: &SoakArgs, report: &Report, samples: &[Sample], marks: &[(Phase, f64)]) -> String {
    let x_max = samples.last().map_or(1.0, |s| s.t);
    let line =
        |label: &str, color: &'static str, dashed: bool, f: &dyn Fn(&Sample) -> f64| Series {
            label: label.to_owned(),
            color,
            dashed,
            points: samples.iter().map(|s| (s.t, f(s))).collect(),
        };
    let target = |value: f64, label: &str, color: &'static str| Target {
        value,
        label: label.to_owned(),
        color,
    };
    let panels = [
        Panel {
            title: "Node memory and write-ahead log".into(),
            y_label: "MiB".into(),
            series: vec![
                line("RSS (VmRSS)", "#1f77b4", false, &|s| s.rss_mib),
                line("RSS high-water (VmHWM)", "#9ecae1", true, &|s| s.hwm_mib),
                line("of it anonymous", "#6baed6", false, &|s| s.anon_mib),
                line("WAL file", "#ff7f0e", false, &|s| s.wal_mib),
                line("database file", "#7f7f7f", false, &|s| s.db_mib),
            ],
            targets: vec![
                target(TARGET_LOAD_RSS, "RSS load ≤ 96", "#c0392b"),
                target(TARGET_MAX_WAL, "WAL ≤ 64", "#d35400"),
                target(TARGET_REST_RSS, "RSS rest ≤ 48", "#c0392b"),
                target(TARGET_IDLE_RSS, "RSS idle ≤ 24", "#c0392b"),
            ],
        },
        Panel {
            title: "Latency per interval".into(),
            y_label: "ms".into(),
            series: vec![
                line("send p50", "#2ca02c", false, &|s| s.send_p50_ms),
                line("send p99", "#d62728", false, &|s| s.send_p99_ms),
                line("send → /sync p99", "#9467bd", true, &|s| {
                    s.delivery_p99_ms
                }),
            ],
            targets: Vec::new(),
        },
        Panel {
            title: "Node descriptors and threads".into(),
            y_label: "count".into(),
            series: vec![
                line("open descriptors", "#8c564b", false, &|s| s.fds as f64),
                line("threads", "#17becf", false, &|s| s.threads as f64),
            ],
            targets: Vec::new(),
        },
    ];
    let subtitle = format!(
        "{} build; {} /sync clients, {} senders{}, load {} s, rest {} s; {} messages; sampled every {} s from /proc/<pid> of the node",
        report.profile,
        args.sync_clients,
        args.senders,
        if args.rate > 0.0 {
            format!(" at {}/s each", args.rate)
        } else {
            String::new()
        },
        args.load_secs,
        args.rest_secs,
        report.messages,
        args.interval_secs
    );
    plot::svg(
        "warren bench soak",
        &subtitle,
        x_max,
        &bands(marks, x_max),
        &panels,
    )
}

fn write_outputs(
    out: &Path,
    args: &SoakArgs,
    report: &Report,
    samples: &[Sample],
    marks: &[(Phase, f64)],
    lines: &[String],
) -> anyhow::Result<()> {
    let write = |name: &str, text: &str| -> anyhow::Result<PathBuf> {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    };
    let mut csv = String::from(CSV_HEADER);
    csv.push('\n');
    for s in samples {
        let _ = writeln!(csv, "{}", s.csv());
    }
    let mut files = vec![write("samples.csv", &csv)?];
    let doc = json!({
        "profile": report.profile,
        "params": report.params,
        "phases": marks.iter().map(|(p, t)| json!({"phase": p.name(), "from_s": json_num(*t)})).collect::<Vec<_>>(),
        "samples": samples.iter().map(Sample::json).collect::<Vec<_>>(),
        "summary": report.json(),
    });
    files.push(write("soak.json", &format!("{doc:#}\n"))?);
    files.push(write("soak.svg", &chart(args, report, samples, marks))?);
    let mut table = lines.join("\n");
    table.push('\n');
    files.push(write("table.txt", &table)?);
    files.push(out.join("node.log"));
    let mut tail = vec![String::new()];
    tail.extend(files.iter().map(|f| format!("wrote: {}", f.display())));
    output::stdout_lines(&tail).context("could not write to stdout")
}
