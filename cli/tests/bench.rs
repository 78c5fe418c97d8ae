//! `warren bench --quick`: every measurement runs once at tiny sizes, and the JSON
//! report has every figure as a number. Not a performance test: nothing is compared with
//! a budget here.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Generous for a debug build on a loaded 2-core machine; a quick run takes seconds.
const DEADLINE: Duration = Duration::from_secs(60);

/// Every figure the report promises.
const FIGURES: &[&str] = &[
    "sequential_sends_per_s",
    "send_p50_ms",
    "send_p99_ms",
    "concurrent_sends_one_room_per_s",
    "concurrent_sends_ten_rooms_per_s",
    "sync_wake_p50_ms",
    "sync_wake_p99_ms",
    "sync_wake_small_room_p50_ms",
    "initial_sync_ms",
    "initial_sync_same_device_ms",
    "initial_sync_1000_rooms_ms",
    "versions_sequential_per_s",
    "versions_concurrent_per_s",
    "federation_p50_ms",
    "federation_p99_ms",
    "federation_relay_p50_ms",
    "federation_relay_p99_ms",
    "join_remote_p50_ms",
    "join_100_members_ms",
    "join_1000_members_ms",
    "startup_ms",
    "rss_idle_mib",
    "rss_after_mib",
    "db_bytes_per_10k_messages",
    "binary_bytes",
];

/// The client-API figures, the ones `--against` measures on the other server too.
const CLIENT_FIGURES: usize = 13;

fn warren() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    for var in ["WARREN_DATA_DIR", "WARREN_CLIENT_ADDR", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd.stdin(Stdio::null());
    cmd
}

fn tempdir() -> tempfile::TempDir {
    match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    }
}

/// Run the command to completion, killing it after [`DEADLINE`].
fn run_with_deadline(mut cmd: Command) -> Output {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) => panic!("cannot run warren: {e}"),
    };
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(Ok(output)) => output,
        Ok(Err(e)) => panic!("waiting for warren bench failed: {e}"),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("warren bench did not finish within {DEADLINE:?}");
        }
    }
}

fn bench_json(extra: &[&str]) -> Value {
    let home = tempdir();
    let mut cmd = warren();
    cmd.args(["bench", "--quick", "--json", "--data-dir"])
        .arg(home.path())
        .args(extra);
    let started = Instant::now();
    let out = run_with_deadline(cmd);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "warren bench failed ({}) after {:?}:\n{stdout}\n{stderr}",
        out.status,
        started.elapsed()
    );
    assert_eq!(
        stdout.lines().count(),
        1,
        "one JSON line expected: {stdout}"
    );
    match serde_json::from_str(&stdout) {
        Ok(value) => value,
        Err(e) => panic!("invalid JSON ({e}): {stdout}"),
    }
}

fn assert_number(figures: &Value, key: &str) {
    let value = &figures[key];
    assert!(
        value.as_f64().is_some_and(f64::is_finite),
        "figure {key} is not a number: {value} in {figures}"
    );
}

#[test]
fn quick_json_has_every_figure_as_a_number() {
    let report = bench_json(&[]);
    let figures = &report["figures"];
    for key in FIGURES {
        assert_number(figures, key);
    }
    assert!(figures["sequential_sends_per_s"].as_f64() > Some(0.0));
    for key in [
        "federation_p50_ms",
        "federation_relay_p50_ms",
        "join_remote_p50_ms",
        "join_100_members_ms",
        "join_1000_members_ms",
    ] {
        assert!(figures[key].as_f64() > Some(0.0), "{key}: {figures}");
    }
    // The mobile library is measured where it is built next to the binary; otherwise the
    // figure is left out (figures stay all numbers) and a note says how to build it.
    match figures.get("mobile_cdylib_bytes") {
        Some(bytes) => assert!(bytes.as_f64() > Some(0.0), "{figures}"),
        None => {
            let note = report["notes"]["mobile_cdylib_bytes"]
                .as_str()
                .unwrap_or("");
            assert!(
                note.contains("cargo build --release -p warren-mobile"),
                "no mobile_cdylib_bytes and no note saying why: {report}"
            );
        }
    }
    assert!(report["notes"].is_object(), "{report}");
    assert!(figures["rss_idle_mib"].as_f64() > Some(0.0), "{figures}");
    assert!(matches!(
        report["profile"].as_str(),
        Some("debug" | "release")
    ));
    assert_eq!(report["quick"], true);
    let budgets = report["budgets"].as_array().cloned().unwrap_or_default();
    assert_eq!(budgets.len(), 9, "{report}");
    for b in budgets {
        assert!(b["pass"].is_boolean(), "{b}");
        assert!(FIGURES.contains(&b["figure"].as_str().unwrap_or("")), "{b}");
    }
    assert!(report["against"].is_null());
    // Node A's writer per phase: every send phase ran writes, each share is a percentage.
    let writer = report["writer"].as_array().cloned().unwrap_or_default();
    let phase = |name: &str| {
        writer
            .iter()
            .find(|p| p["phase"].as_str().is_some_and(|n| n.starts_with(name)))
            .cloned()
            .unwrap_or_else(|| panic!("no writer figures for {name}: {report}"))
    };
    for name in [
        "sequential sends",
        "concurrent sends, 10 clients in 10 rooms",
    ] {
        let p = phase(name);
        assert!(p["writes"].as_u64() > Some(0), "{p}");
        assert!(p["commits"].as_u64() > Some(0), "{p}");
        let busy = p["busy_pct"].as_f64().unwrap_or(-1.0);
        assert!((0.0..=100.0).contains(&busy), "{p}");
    }
}

/// A `warren run` child on a temporary directory; killed when dropped.
struct OtherNode {
    child: Child,
    _dir: tempfile::TempDir,
    url: String,
}

impl OtherNode {
    fn start() -> OtherNode {
        let dir = tempdir();
        let mut cmd = warren();
        cmd.args(["run", "--client-addr", "127.0.0.1:0", "--no-mdns"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1"])
            .args(["--log-level", "warn", "--data-dir"])
            .arg(dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot run warren: {e}"),
        };
        let Some(stdout) = child.stdout.take() else {
            panic!("no stdout");
        };
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("client API: ") {
                    let _ = tx.send(url.to_owned());
                }
            }
        });
        let url = match rx.recv_timeout(DEADLINE) {
            Ok(url) => url,
            Err(_) => {
                let _ = child.kill();
                panic!("warren run printed no `client API:` line");
            }
        };
        OtherNode {
            child,
            _dir: dir,
            url,
        }
    }
}

impl Drop for OtherNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn against_another_node_prints_both_columns_and_ratios() {
    let other = OtherNode::start();
    let report = bench_json(&["--against", &other.url]);
    let against = &report["against"];
    assert_eq!(against["url"], other.url.as_str(), "{report}");
    let theirs = against["figures"].as_object().cloned().unwrap_or_default();
    assert_eq!(theirs.len(), CLIENT_FIGURES, "{against}");
    for key in theirs.keys() {
        assert_number(&against["figures"], key);
        assert_number(&against["ratio_warren_to_other"], key);
    }
}
