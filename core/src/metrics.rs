//! Prometheus metrics: counters kept in memory, gauges computed when scraped.
//!
//! Served by the admin API at `GET /_warren/admin/v1/metrics` in the Prometheus text
//! exposition format 0.0.4 (see `docs/operations.md` for every name and label).
//!
//! Counting costs a request a short lock on a bounded map, looked up by the template's
//! `&str` (no allocation once its series exist); an event persisted costs one atomic add. Counters are per
//! process: a process normally runs one node (tests that start several share them).
//!
//! Label sets are bounded: `endpoint` is the matched route template (never the raw
//! path), `unmatched` for paths no route knows; `method` is one of seven names or
//! `other`; `status` is a number below 1000. On top of that, at most about
//! [`MAX_SERIES`] request series and as many histograms exist (2 × [`MAX_SERIES`] in
//! all); a request that would need a new one past that is counted under
//! `endpoint="overflow"`.
//! The federation queue reports at most [`MAX_QUEUE_DESTINATIONS`] destinations.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Upper bounds (seconds) of the request duration histogram's buckets.
pub const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// At most this many `warren_http_requests_total` series (and as many histograms).
pub const MAX_SERIES: usize = 2000;
/// At most this many destinations in `warren_federation_queue_depth` (the largest).
pub const MAX_QUEUE_DESTINATIONS: usize = 50;
/// The endpoint label of a request no route matched.
pub const UNMATCHED: &str = "unmatched";
/// The endpoint label once [`MAX_SERIES`] is reached.
pub const OVERFLOW: &str = "overflow";
/// The `Content-Type` of a scrape.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Which API served a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Api {
    /// `/_matrix/client`, media, well-known: the client listener.
    Client,
    /// The federation listener.
    Federation,
    /// `/_warren/admin/v1/…`.
    Admin,
}

impl Api {
    fn as_str(self) -> &'static str {
        match self {
            Api::Client => "client",
            Api::Federation => "federation",
            Api::Admin => "admin",
        }
    }
}

#[derive(Clone, Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, seconds: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if seconds <= *le {
                self.buckets[i] += 1;
            }
        }
        self.count += 1;
        self.sum += seconds;
    }
}

/// One route template's series.
#[derive(Default)]
struct Endpoint {
    requests: HashMap<(Api, &'static str, u16), u64>,
    durations: HashMap<Api, Histogram>,
}

#[derive(Default)]
struct Http {
    /// By route template: a lookup by `&str`, so counting allocates only for a new
    /// series.
    endpoints: HashMap<String, Endpoint>,
    /// Request series and histograms, in all.
    series: usize,
}

static HTTP: LazyLock<Mutex<Http>> = LazyLock::new(|| Mutex::new(Http::default()));
static EVENTS_LOCAL: AtomicU64 = AtomicU64::new(0);
static SENDS_PREBUILT: AtomicU64 = AtomicU64::new(0);
static SENDS_REBUILT: AtomicU64 = AtomicU64::new(0);
static RECEIVED_LINEAR: AtomicU64 = AtomicU64::new(0);
static RECEIVED_AHEAD: AtomicU64 = AtomicU64::new(0);
static RECEIVED_IN_WRITE: AtomicU64 = AtomicU64::new(0);
static EVENTS_REMOTE: AtomicU64 = AtomicU64::new(0);

fn method_label(method: &http::Method) -> &'static str {
    match *method {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::HEAD => "HEAD",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}

impl Http {
    /// Whether the series exist already (a new one is allowed below the bound).
    fn has(&self, endpoint: &str, api: Api, method: &'static str, status: u16) -> bool {
        self.endpoints.get(endpoint).is_some_and(|e| {
            e.requests.contains_key(&(api, method, status)) && e.durations.contains_key(&api)
        })
    }

    fn record(&mut self, endpoint: &str, api: Api, method: &'static str, status: u16, s: f64) {
        let full = self.series + 2 > 2 * MAX_SERIES;
        let endpoint = if full && !self.has(endpoint, api, method, status) {
            OVERFLOW
        } else {
            endpoint
        };
        if !self.endpoints.contains_key(endpoint) {
            self.endpoints
                .insert(endpoint.to_owned(), Endpoint::default());
        }
        let Some(e) = self.endpoints.get_mut(endpoint) else {
            return;
        };
        let mut added = 0;
        *e.requests.entry((api, method, status)).or_insert_with(|| {
            added += 1;
            0
        }) += 1;
        e.durations
            .entry(api)
            .or_insert_with(|| {
                added += 1;
                Histogram::default()
            })
            .observe(s);
        self.series += added;
    }
}

/// Count one request: `endpoint` is the matched route template, `None` when no route
/// matched.
pub fn record_request(
    api: Api,
    endpoint: Option<&str>,
    method: &http::Method,
    status: u16,
    elapsed: Duration,
) {
    let endpoint = endpoint.unwrap_or(UNMATCHED);
    let method = method_label(method);
    let status = status.min(999);
    let seconds = elapsed.as_secs_f64();
    HTTP.lock()
        .unwrap_or_else(|e| e.into_inner())
        .record(endpoint, api, method, status, seconds);
}

/// Count an event written to the database: `local` when this node created it.
pub fn event_persisted(local: bool) {
    let counter = if local { &EVENTS_LOCAL } else { &EVENTS_REMOTE };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// How a received event's state was worked out (see `rooms::receive`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReceivedState {
    /// It extends the room's current state: checked by point lookups, nothing resolved.
    Linear,
    /// Its state was resolved on a read snapshot before the write.
    ResolvedAhead,
    /// Its state was resolved inside the write.
    ResolvedInWrite,
}

/// Count a received event that reached the state checks, by how its state was had.
pub fn received_state(path: ReceivedState) {
    let counter = match path {
        ReceivedState::Linear => &RECEIVED_LINEAR,
        ReceivedState::ResolvedAhead => &RECEIVED_AHEAD,
        ReceivedState::ResolvedInWrite => &RECEIVED_IN_WRITE,
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Received events that reached the state checks so far: (extending the current
/// state, resolved ahead of the write, resolved in the write).
pub fn received_states() -> (u64, u64, u64) {
    (
        RECEIVED_LINEAR.load(Ordering::Relaxed),
        RECEIVED_AHEAD.load(Ordering::Relaxed),
        RECEIVED_IN_WRITE.load(Ordering::Relaxed),
    )
}

/// Count a send whose event was built ahead of its write (`rooms::prebuild`): `used`
/// when the write took it, else the room had moved on and the write built it again.
pub fn send_prebuilt(used: bool) {
    let counter = if used {
        &SENDS_PREBUILT
    } else {
        &SENDS_REBUILT
    };
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Sends built ahead of their write so far: (taken by the write, built again).
pub fn sends_prebuilt() -> (u64, u64) {
    (
        SENDS_PREBUILT.load(Ordering::Relaxed),
        SENDS_REBUILT.load(Ordering::Relaxed),
    )
}

/// Writes the text exposition format.
#[derive(Default)]
pub struct Encoder {
    out: String,
}

/// A metric's kind, for its `# TYPE` line.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, count and sum.
    Histogram,
}

impl Encoder {
    /// The `# HELP` and `# TYPE` lines of a metric family.
    pub fn family(&mut self, name: &str, help: &str, kind: Kind) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        };
        let help = help.replace('\\', "\\\\").replace('\n', "\\n");
        let _ = writeln!(self.out, "# HELP {name} {help}");
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A counter family with one label, a sample per (label value, counter).
    pub fn counters(&mut self, name: &str, help: &str, label: &str, each: &[(&str, &AtomicU64)]) {
        self.family(name, help, Kind::Counter);
        for (value, counter) in each {
            self.sample(
                name,
                &[(label, value)],
                counter.load(Ordering::Relaxed) as f64,
            );
        }
    }

    /// One sample line.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                self.out.push_str(k);
                self.out.push_str("=\"");
                for ch in v.chars() {
                    match ch {
                        '\\' => self.out.push_str("\\\\"),
                        '"' => self.out.push_str("\\\""),
                        '\n' => self.out.push_str("\\n"),
                        c => self.out.push(c),
                    }
                }
                self.out.push('"');
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&format_value(value));
        self.out.push('\n');
    }

    /// The text written so far.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value as Prometheus writes it: integers without a fraction, `+Inf`, `NaN`.
pub fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

type RequestKey = (Api, String, &'static str, u16);

fn encode_http(enc: &mut Encoder) {
    let (mut requests, mut durations) = {
        let http = HTTP.lock().unwrap_or_else(|e| e.into_inner());
        let mut requests: Vec<(RequestKey, u64)> = Vec::new();
        let mut durations: Vec<((Api, String), Histogram)> = Vec::new();
        for (endpoint, e) in &http.endpoints {
            for ((api, method, status), n) in &e.requests {
                requests.push(((*api, endpoint.clone(), method, *status), *n));
            }
            for (api, h) in &e.durations {
                durations.push(((*api, endpoint.clone()), h.clone()));
            }
        }
        (requests, durations)
    };
    requests.sort_by(|a, b| a.0.cmp(&b.0));
    durations.sort_by(|a, b| a.0.cmp(&b.0));
    enc.family(
        "warren_http_requests_total",
        "HTTP requests answered, by API, route template, method and status.",
        Kind::Counter,
    );
    for ((api, endpoint, method, status), n) in &requests {
        enc.sample(
            "warren_http_requests_total",
            &[
                ("api", api.as_str()),
                ("endpoint", endpoint),
                ("method", method),
                ("status", &status.to_string()),
            ],
            *n as f64,
        );
    }
    enc.family(
        "warren_http_request_duration_seconds",
        "Time to answer HTTP requests, by API and route template.",
        Kind::Histogram,
    );
    for ((api, endpoint), h) in &durations {
        let name = "warren_http_request_duration_seconds";
        for (le, n) in BUCKETS.iter().zip(h.buckets) {
            let le = format_value(*le);
            enc.sample(
                &format!("{name}_bucket"),
                &[("api", api.as_str()), ("endpoint", endpoint), ("le", &le)],
                n as f64,
            );
        }
        enc.sample(
            &format!("{name}_bucket"),
            &[
                ("api", api.as_str()),
                ("endpoint", endpoint),
                ("le", "+Inf"),
            ],
            h.count as f64,
        );
        let labels = [("api", api.as_str()), ("endpoint", endpoint.as_str())];
        enc.sample(&format!("{name}_sum"), &labels, h.sum);
        enc.sample(&format!("{name}_count"), &labels, h.count as f64);
    }
}

/// Resident memory from `/proc/self/status` (Linux only).
fn resident_memory_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Everything, as one scrape answer.
pub async fn render(server: &Server) -> Result<String, Error> {
    let (depths, destinations) = server
        .db
        .read(|c| storage::outbox_largest_depths(c, MAX_QUEUE_DESTINATIONS))?;
    let peers = match server.transport() {
        Some(t) => t.peers().await.len(),
        None => 0,
    };
    let db_path = server.config.database_path();
    let db_bytes = std::fs::metadata(&db_path).map_or(0, |m| m.len());
    let mut wal = db_path.into_os_string();
    wal.push("-wal");
    let wal_bytes = std::fs::metadata(&wal).map_or(0, |m| m.len());

    let mut enc = Encoder::default();
    encode_http(&mut enc);
    enc.counters(
        "warren_events_persisted_total",
        "Events written to the database: created here (local) or received (remote).",
        "origin",
        &[("local", &EVENTS_LOCAL), ("remote", &EVENTS_REMOTE)],
    );
    enc.counters(
        "warren_sends_built_ahead_total",
        "Local sends whose event was built before its write: used by the write, or built again because the room had moved on.",
        "outcome",
        &[("used", &SENDS_PREBUILT), ("rebuilt", &SENDS_REBUILT)],
    );
    enc.counters(
        "warren_received_events_state_total",
        "Received events that reached the state checks: extending the room's current state (checked by point lookups), resolved on a read snapshot before the write, or resolved in the write.",
        "path",
        &[
            ("linear", &RECEIVED_LINEAR),
            ("ahead", &RECEIVED_AHEAD),
            ("in_write", &RECEIVED_IN_WRITE),
        ],
    );
    let writer = server.db.writer_stats();
    let writer_counters: [(&str, &str, f64); 3] = [
        (
            "warren_writer_writes_total",
            "Writes run by the single writer.",
            writer.writes as f64,
        ),
        (
            "warren_writer_commits_total",
            "Transactions the single writer committed (a batch of writes each).",
            writer.commits as f64,
        ),
        (
            "warren_writer_busy_seconds_total",
            "Time the single writer was held by a write, a commit or a WAL-restarting checkpoint: its rate is how close the node is to its write throughput.",
            writer.busy_ns as f64 / 1e9,
        ),
    ];
    for (name, help, value) in writer_counters {
        enc.family(name, help, Kind::Counter);
        enc.sample(name, &[], value);
    }
    enc.family(
        "warren_federation_queue_depth",
        "Rows queued for a destination (the 50 largest queues only).",
        Kind::Gauge,
    );
    for (destination, depth) in &depths {
        enc.sample(
            "warren_federation_queue_depth",
            &[("destination", destination)],
            *depth as f64,
        );
    }
    let gauges: [(&str, &str, f64); 5] = [
        (
            "warren_federation_queue_destinations",
            "Destinations with anything queued.",
            destinations as f64,
        ),
        (
            "warren_peers_connected",
            "Peers the transport is connected to.",
            peers as f64,
        ),
        (
            "warren_database_bytes",
            "Size of the database file.",
            db_bytes as f64,
        ),
        (
            "warren_wal_bytes",
            "Size of the database's write-ahead log.",
            wal_bytes as f64,
        ),
        (
            "warren_uptime_seconds",
            "Seconds since the node started.",
            server.started.elapsed().as_secs_f64(),
        ),
    ];
    for (name, help, value) in gauges {
        enc.family(name, help, Kind::Gauge);
        enc.sample(name, &[], value);
    }
    if let Some(rss) = resident_memory_bytes() {
        enc.family(
            "warren_process_resident_memory_bytes",
            "Resident memory of the process (Linux only).",
            Kind::Gauge,
        );
        enc.sample("warren_process_resident_memory_bytes", &[], rss as f64);
    }
    Ok(enc.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_are_escaped_and_values_formatted() {
        let mut enc = Encoder::default();
        enc.family("x_total", "A help\nline.", Kind::Counter);
        enc.sample("x_total", &[("a", "q\"b\\c\nd"), ("b", "")], 3.0);
        enc.sample("y", &[], 0.25);
        enc.sample("z", &[], f64::INFINITY);
        assert_eq!(
            enc.finish(),
            "# HELP x_total A help\\nline.\n# TYPE x_total counter\n\
             x_total{a=\"q\\\"b\\\\c\\nd\",b=\"\"} 3\ny 0.25\nz +Inf\n"
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let mut h = Histogram::default();
        h.observe(0.003);
        h.observe(0.2);
        h.observe(100.0);
        assert_eq!(h.buckets[0], 1);
        assert_eq!(h.buckets[5], 2); // le=0.25
        assert_eq!(h.buckets[BUCKETS.len() - 1], 2);
        assert_eq!(h.count, 3);
        assert!(h.buckets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn methods_outside_the_known_set_share_one_label() {
        assert_eq!(method_label(&http::Method::GET), "GET");
        let odd = http::Method::from_bytes(b"BREW").expect("method");
        assert_eq!(method_label(&odd), "other");
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn series_past_the_bound_go_to_overflow() {
        let mut http = Http::default();
        for i in 0..MAX_SERIES + 10 {
            http.record(&format!("/r/{i}"), Api::Client, "GET", 200, 0.01);
        }
        assert!(http.series <= 2 * MAX_SERIES + 2, "{}", http.series);
        assert!(http.endpoints.len() <= MAX_SERIES + 1);
        let overflow = http.endpoints.get(OVERFLOW).expect("overflow");
        assert_eq!(overflow.requests[&(Api::Client, "GET", 200)], 10);
        // An existing series still counts under its own template.
        http.record("/r/0", Api::Client, "GET", 200, 0.01);
        assert_eq!(
            http.endpoints["/r/0"].requests[&(Api::Client, "GET", 200)],
            2
        );
    }
}
