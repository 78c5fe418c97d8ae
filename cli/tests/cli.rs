//! End-to-end tests of the `warren` binary: spawn it, read its stable stdout lines, talk
//! HTTP to it, signal it. No fixed sleeps: every wait has a deadline.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Generous: debug builds on a loaded 2-core CI machine.
const DEADLINE: Duration = Duration::from_secs(60);

fn warren() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_warren"));
    // The tests' own environment must not leak into the node.
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

fn output(cmd: &mut Command) -> std::process::Output {
    match cmd.output() {
        Ok(out) => out,
        Err(e) => panic!("cannot run warren: {e}"),
    }
}

fn is_lower_hex_64(s: &str) -> bool {
    s.len() == 64 && s.chars().all(|c| matches!(c, '0'..='9' | 'a'..='f'))
}

/// Failures must be one clean line: `error: …`, no panic, no backtrace, no Debug dump.
fn assert_clean_error(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "expected one `error:` line, stderr was:\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!stderr.contains("backtrace"), "{stderr}");
    assert!(!stderr.contains("Backtrace"), "{stderr}");
    errors[0].to_owned()
}

fn id_json(data_dir: &Path) -> serde_json::Value {
    let out = output(
        warren()
            .arg("id")
            .arg("--json")
            .arg("--data-dir")
            .arg(data_dir),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "warren id failed: {}\n{stdout}{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    match serde_json::from_str(&stdout) {
        Ok(value) => value,
        Err(e) => panic!("`warren id --json` printed invalid JSON ({e}): {stdout}"),
    }
}

/// A `warren run` child with its stdout lines arriving on a channel and stderr collected.
struct RunningNode {
    child: Child,
    stdout: Receiver<String>,
    stdout_seen: Vec<String>,
    stderr: Arc<Mutex<String>>,
}

impl RunningNode {
    fn start(data_dir: &Path, client_addr: &str) -> RunningNode {
        let mut cmd = warren();
        cmd.arg("run")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--client-addr")
            .arg(client_addr);
        RunningNode::start_with(cmd)
    }

    fn start_with(mut cmd: Command) -> RunningNode {
        let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
            Ok(child) => child,
            Err(e) => panic!("cannot start warren run: {e}"),
        };
        let (tx, stdout) = mpsc::channel();
        if let Some(out) = child.stdout.take() {
            thread::spawn(move || {
                for line in BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let stderr = Arc::new(Mutex::new(String::new()));
        if let Some(mut err) = child.stderr.take() {
            let sink = Arc::clone(&stderr);
            thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let text = String::from_utf8_lossy(&buf[..n]).into_owned();
                    sink.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_str(&text);
                }
            });
        }
        RunningNode {
            child,
            stdout,
            stdout_seen: Vec::new(),
            stderr,
        }
    }

    fn stderr(&self) -> String {
        self.stderr
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Read stdout until a line starts with `prefix`; return the rest of that line.
    fn wait_for_line(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => {
                    let found = line.strip_prefix(prefix).map(str::to_owned);
                    self.stdout_seen.push(line);
                    if let Some(rest) = found {
                        return rest;
                    }
                }
                Err(RecvTimeoutError::Timeout) => panic!(
                    "no `{prefix}` line within {DEADLINE:?}; stdout so far: {:?}\nstderr:\n{}",
                    self.stdout_seen,
                    self.stderr()
                ),
                Err(RecvTimeoutError::Disconnected) => panic!(
                    "warren exited before printing `{prefix}`; stdout: {:?}\nstderr:\n{}",
                    self.stdout_seen,
                    self.stderr()
                ),
            }
        }
    }

    fn client_url(&mut self) -> String {
        self.wait_for_line("client API: ")
    }

    #[cfg(unix)]
    fn terminate(&self) {
        let pid = self.child.id().to_string();
        match Command::new("kill").args(["-TERM", &pid]).status() {
            Ok(status) if status.success() => {}
            other => panic!("kill -TERM {pid} failed: {other:?}"),
        }
    }

    fn wait(&mut self) -> ExitStatus {
        match wait_with_deadline(&mut self.child) {
            Some(status) => status,
            None => panic!(
                "warren did not exit within {DEADLINE:?}; stderr:\n{}",
                self.stderr()
            ),
        }
    }
}

impl Drop for RunningNode {
    fn drop(&mut self) {
        // Only reached with a live child when a test has already failed.
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_with_deadline(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + DEADLINE;
    while Instant::now() < deadline {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("cannot wait for warren: {e}"),
        }
    }
    None
}

/// Run a command to completion within the deadline, collecting stdout and stderr.
fn finish(mut cmd: Command) -> (ExitStatus, String, String) {
    let mut child = match cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn() {
        Ok(child) => child,
        Err(e) => panic!("cannot start warren: {e}"),
    };
    let out = read_all(child.stdout.take());
    let err = read_all(child.stderr.take());
    let Some(status) = wait_with_deadline(&mut child) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("warren did not exit within {DEADLINE:?}");
    };
    let out = out.join().unwrap_or_default();
    let err = err.join().unwrap_or_default();
    (status, out, err)
}

/// Drain a pipe on its own thread so the child never blocks on a full pipe.
fn read_all<R: std::io::Read + Send + 'static>(pipe: Option<R>) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut pipe) = pipe {
            let _ = pipe.read_to_string(&mut text);
        }
        text
    })
}

/// Minimal HTTP/1.1 GET over a std TcpStream; returns (status code, body-ish text).
fn http_get(base_url: &str, path: &str) -> (u16, String) {
    let Some(authority) = base_url.strip_prefix("http://") else {
        panic!("client URL is not http://…: {base_url}");
    };
    let authority = authority.trim_end_matches('/');
    let mut stream = match TcpStream::connect(authority) {
        Ok(stream) => stream,
        Err(e) => panic!("cannot connect to {authority}: {e}"),
    };
    let timeouts = [
        stream.set_read_timeout(Some(DEADLINE)),
        stream.set_write_timeout(Some(DEADLINE)),
    ];
    assert!(timeouts.iter().all(Result::is_ok));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream.write_all(request.as_bytes()) {
        panic!("cannot send the request: {e}");
    }
    let mut response = Vec::new();
    if let Err(e) = stream.read_to_end(&mut response) {
        panic!("cannot read the response: {e}");
    }
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok());
    let Some(status) = status else {
        panic!("not an HTTP response: {response:?}");
    };
    (status, response)
}

#[test]
fn help_teaches_the_commands() {
    let out = output(warren().arg("--help"));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in ["run", "id", "--data-dir", "server name", "127.0.0.1:8008"] {
        assert!(help.contains(word), "--help lacks {word:?}:\n{help}");
    }
    let out = output(warren().args(["run", "--help"]));
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for word in [
        "--client-addr",
        "WARREN_CLIENT_ADDR",
        "client API:",
        "SIGTERM",
    ] {
        assert!(help.contains(word), "run --help lacks {word:?}:\n{help}");
    }
}

#[test]
fn id_json_is_stable_and_well_formed() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let first = id_json(&data_dir);
    let second = id_json(&data_dir);
    assert_eq!(
        first, second,
        "the identity must persist across invocations"
    );

    let Some(server_name) = first["server_name"].as_str() else {
        panic!("no server_name string in {first}");
    };
    assert!(is_lower_hex_64(server_name), "{server_name}");
    let Some(peer_id) = first["peer_id"].as_str() else {
        panic!("no peer_id string in {first}");
    };
    assert!(peer_id.starts_with("12D3KooW"), "{peer_id}");

    let key = data_dir.join(warren_core::identity::KEY_FILE);
    assert!(key.is_file(), "{} was not created", key.display());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = match std::fs::metadata(&key) {
            Ok(meta) => meta.permissions().mode() & 0o777,
            Err(e) => panic!("cannot stat the key: {e}"),
        };
        assert_eq!(mode, 0o600, "signing key must be private");
    }

    // The human form says the same thing.
    let out = output(warren().arg("id").arg("--data-dir").arg(&data_dir));
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("server name: {server_name}\n")),
        "{text}"
    );
    assert!(text.contains(&format!("peer id: {peer_id}\n")), "{text}");

    // And the environment variable is honoured.
    let out = output(
        warren()
            .args(["id", "--json"])
            .env("WARREN_DATA_DIR", &data_dir),
    );
    assert!(out.status.success());
    let via_env: serde_json::Value = match serde_json::from_slice(&out.stdout) {
        Ok(value) => value,
        Err(e) => panic!("invalid JSON: {e}"),
    };
    assert_eq!(via_env["server_name"], first["server_name"]);
}

#[cfg(unix)]
#[test]
fn run_serves_the_client_api_and_stops_on_sigterm() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let expected = id_json(&data_dir);

    let mut node = RunningNode::start(&data_dir, "127.0.0.1:0");
    let url = node.client_url();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert!(
        !url.ends_with(":0"),
        "port 0 must be resolved to the real port: {url}"
    );
    for (prefix, key) in [("server name: ", "server_name"), ("peer id: ", "peer_id")] {
        let line = node.stdout_seen.iter().find_map(|l| l.strip_prefix(prefix));
        assert_eq!(
            line,
            expected[key].as_str(),
            "stdout: {:?}",
            node.stdout_seen
        );
    }

    let (status, response) = http_get(&url, "/_matrix/client/versions");
    assert_eq!(status, 200, "{response}");
    assert!(response.contains("versions"), "{response}");

    // Every P2P listen address is printed, dialable as is: it ends in our peer id.
    let peer_suffix = format!("/p2p/{}", expected["peer_id"].as_str().unwrap_or("?"));
    let listens: Vec<&str> = node
        .stdout_seen
        .iter()
        .filter_map(|l| l.strip_prefix("p2p listen: "))
        .collect();
    assert!(!listens.is_empty(), "stdout: {:?}", node.stdout_seen);
    for addr in &listens {
        assert!(
            addr.ends_with(&peer_suffix),
            "{addr} must end in {peer_suffix}"
        );
    }

    node.terminate();
    let status = node.wait();
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        node.stderr()
    );
    node.wait_for_line("stopped");
}

#[cfg(unix)]
#[test]
fn second_node_on_the_same_data_dir_is_refused() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let mut first = RunningNode::start(&data_dir, "127.0.0.1:0");
    let url = first.client_url();

    let mut second = warren();
    second
        .arg("run")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--client-addr", "127.0.0.1:0"]);
    let (status, stdout, stderr) = finish(second);
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = assert_clean_error(&stderr);
    assert!(line.contains("in use"), "{line}");
    assert!(!stdout.contains("client API:"), "{stdout}");

    // The first node is unharmed.
    let (code, response) = http_get(&url, "/_matrix/client/versions");
    assert_eq!(code, 200, "{response}");
    first.terminate();
    let status = first.wait();
    assert!(
        status.success(),
        "exit {status}; stderr:\n{}",
        first.stderr()
    );
}

#[test]
fn busy_client_port_is_reported() {
    let holder = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => panic!("cannot bind a test port: {e}"),
    };
    let addr = match holder.local_addr() {
        Ok(addr) => addr.to_string(),
        Err(e) => panic!("no local address: {e}"),
    };
    let dir = tempdir();
    let mut cmd = warren();
    cmd.arg("run")
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .args(["--client-addr", &addr]);
    let (status, stdout, stderr) = finish(cmd);
    assert_eq!(
        status.code(),
        Some(1),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    let line = assert_clean_error(&stderr);
    assert!(line.contains(&addr), "the error should name {addr}: {line}");
    drop(holder);
}

#[test]
fn bad_p2p_flags_are_clean_errors() {
    let holder = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(e) => panic!("cannot bind a test port: {e}"),
    };
    let port = match holder.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => panic!("no local address: {e}"),
    };
    let cases: [(&[&str], &str); 2] = [
        (&["--bootstrap", "/ip4/127.0.0.1/tcp/4001"], "/p2p/"),
        (
            &["--p2p-listen", &format!("/ip4/127.0.0.1/tcp/{port}")],
            "listen",
        ),
    ];
    for (args, expect) in cases {
        let dir = tempdir();
        let mut cmd = warren();
        cmd.arg("run")
            .arg("--data-dir")
            .arg(dir.path().join("node"))
            .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
            .args(args);
        let (status, stdout, stderr) = finish(cmd);
        assert_eq!(
            status.code(),
            Some(1),
            "{args:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
        let line = assert_clean_error(&stderr);
        assert!(
            line.contains(expect),
            "{args:?}: the error should mention {expect}: {line}"
        );
    }
    drop(holder);
}

#[test]
fn bad_log_level_is_a_clean_error() {
    let dir = tempdir();
    let (status, _, stderr) = {
        let mut cmd = warren();
        cmd.args(["id", "--log-level", "verbose", "--data-dir"])
            .arg(dir.path());
        finish(cmd)
    };
    assert_eq!(status.code(), Some(1));
    let line = assert_clean_error(&stderr);
    assert!(line.contains("--log-level"), "{line}");
}

/// Run `warren <args> --data-dir <dir>` to completion; (exit code, stdout, stderr).
fn manage(data_dir: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let mut cmd = warren();
    cmd.args(args).arg("--data-dir").arg(data_dir);
    let (status, stdout, stderr) = finish(cmd);
    (status.code(), stdout, stderr)
}

#[cfg(unix)]
#[test]
fn management_commands_drive_a_running_node() {
    let dir = tempdir();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let start = |d: &Path| {
        let mut child = warren();
        child
            .arg("run")
            .arg("--data-dir")
            .arg(d)
            .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        RunningNode::start_with(child)
    };
    let mut a = start(&a_dir);
    a.client_url();
    let a_addr = a
        .stdout_seen
        .iter()
        .find_map(|l| l.strip_prefix("p2p listen: "))
        .map(str::to_owned)
        .unwrap_or_default();
    let a_peer = id_json(&a_dir)["peer_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut b = start(&b_dir);
    b.client_url();

    let (code, out, err) = manage(&b_dir, &["connect", &a_addr]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("connected: "), "{out}");
    let (code, out, err) = manage(&b_dir, &["peers", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let peers: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let first = &peers[0];
    assert_eq!(first["peer_id"], a_peer.as_str(), "{out}");
    assert!(
        first["server_name"].is_string() && first["addresses"].is_array(),
        "{out}"
    );

    // B names A as its mailbox (by address), lists it, and drops it again.
    let a_name = id_json(&a_dir)["server_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let (code, out, err) = manage(&b_dir, &["mailbox", "add", &a_addr]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), format!("mailbox added: {a_name}"));
    let (code, out, err) = manage(&b_dir, &["mailbox", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    assert_eq!(
        list["mailboxes"][0]["server_name"],
        a_name.as_str(),
        "{out}"
    );
    assert_eq!(list["mailboxes"][0]["address"], a_addr.as_str(), "{out}");
    let (code, _, err) = manage(&b_dir, &["mailbox", "add", "not-a-node"]);
    assert_eq!(code, Some(1));
    assert_clean_error(&err);
    let (code, out, err) = manage(&b_dir, &["mailbox", "remove", &a_name]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = manage(&b_dir, &["mailbox", "remove", &a_name]);
    assert_eq!(code, Some(1));
    assert!(assert_clean_error(&err).contains("not a mailbox"), "{err}");
    let (code, out, _) = manage(&b_dir, &["mailbox", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.starts_with("no mailboxes"), "{out}");

    let (code, out, err) = manage(&a_dir, &["user", "add", "alice", "--password", "pw-1"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, _, err) = manage(&a_dir, &["user", "add", "alice", "--password", "pw-1"]);
    assert_eq!(code, Some(1));
    assert_clean_error(&err);
    let (_, out, _) = manage(&a_dir, &["user", "list", "--json"]);
    assert!(out.contains("@alice:"), "{out}");
    let (code, _, err) = manage(&a_dir, &["user", "passwd", "alice", "--password", "pw-2"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, out, _) = manage(&a_dir, &["status", "--json"]);
    let status: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    assert_eq!(status["users"], 1, "{out}");
    assert_eq!(status["peers"], 1, "{out}");
    let (code, out, _) = manage(&a_dir, &["rooms"]);
    assert_eq!((code, out.trim()), (Some(0), "no rooms"));
    let (code, _, err) = manage(&a_dir, &["user", "deactivate", "alice"]);
    assert_eq!(code, Some(0), "{err}");

    a.terminate();
    a.wait();
    let (code, _, err) = manage(&a_dir, &["status"]);
    assert_eq!(code, Some(1));
    let line = assert_clean_error(&err);
    assert!(line.contains("not running"), "{line}");
    let (code, _, err) = manage(&dir.path().join("nothing-here"), &["peers"]);
    assert_eq!(code, Some(1));
    assert!(assert_clean_error(&err).contains("no running node"));
    b.terminate();
    b.wait();
}

#[cfg(unix)]
#[test]
fn config_file_is_created_checked_and_overridden() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");

    // First run writes the commented template, which checks out.
    let mut node = RunningNode::start(&data_dir, "127.0.0.1:0");
    node.client_url();
    node.terminate();
    node.wait();
    let path = data_dir.join("warren.toml");
    let template = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(template.contains("# client_addr"), "{template}");
    let (code, out, err) = manage(&data_dir, &["config", "check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.starts_with("ok: "), "{out}");

    // Unknown keys and bad values are named, by `config check` and by `run`.
    for (text, expect) in [
        ("colour = \"blue\"\n", "colour"),
        ("registration = \"sometimes\"\n", "sometimes"),
        (
            "[p2p]\nbootstrap = [\"/ip4/127.0.0.1/tcp/1\"]\n",
            "p2p.bootstrap",
        ),
    ] {
        let _ = std::fs::write(&path, text);
        let (code, _, err) = manage(&data_dir, &["config", "check"]);
        assert_eq!(code, Some(1), "{text}");
        let line = assert_clean_error(&err);
        assert!(line.contains(expect), "{text}: {line}");
        let (code, _, err) = manage(&data_dir, &["run"]);
        assert_eq!(code, Some(1), "{text}");
        assert!(assert_clean_error(&err).contains(expect));
    }

    // The file's address is busy; the environment overrides it.
    let holder = match TcpListener::bind("127.0.0.1:0") {
        Ok(l) => l,
        Err(e) => panic!("cannot bind a test port: {e}"),
    };
    let busy = holder
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let _ = std::fs::write(
        &path,
        format!(
            "client_addr = \"{busy}\"\n[p2p]\nmdns = false\nlisten = [\"/ip4/127.0.0.1/tcp/0\"]\n"
        ),
    );
    let (code, _, err) = manage(&data_dir, &["run"]);
    assert_eq!(code, Some(1));
    assert!(assert_clean_error(&err).contains(&busy));
    let mut cmd = warren();
    cmd.arg("run").arg("--data-dir").arg(&data_dir);
    cmd.env("WARREN_CLIENT_ADDR", "127.0.0.1:0");
    let mut node = RunningNode::start_with(cmd);
    let url = node.client_url();
    assert!(!url.ends_with(&busy), "{url}");
    let listens: Vec<&String> = node
        .stdout_seen
        .iter()
        .filter(|l| l.starts_with("p2p listen: "))
        .collect();
    assert!(
        listens.iter().all(|l| l.contains("/ip4/127.0.0.1/tcp/")),
        "the file's p2p.listen applies: {listens:?}"
    );
    node.terminate();
    node.wait();
    drop(holder);
}

#[cfg(unix)]
#[test]
fn requests_are_logged_with_ids_and_never_with_tokens() {
    let dir = tempdir();
    let mut cmd = warren();
    cmd.arg("run")
        .arg("--data-dir")
        .arg(dir.path().join("node"))
        .args([
            "--client-addr",
            "127.0.0.1:0",
            "--no-mdns",
            "--log-level",
            "debug",
        ])
        .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
    let mut node = RunningNode::start_with(cmd);
    let url = node.client_url();
    let secret = "syt_SECRET_TOKEN_VALUE";
    let (status, response) = http_get(
        &url,
        &format!("/_matrix/client/v3/account/whoami?access_token={secret}"),
    );
    assert_eq!(status, 401, "{response}");
    let id = response
        .lines()
        .find_map(|l| l.strip_prefix("x-request-id: "))
        .map(str::trim)
        .unwrap_or_else(|| panic!("no x-request-id header: {response}"))
        .to_owned();
    node.terminate();
    node.wait();
    let log = node.stderr();
    assert!(
        log.lines()
            .any(|l| l.contains("request failed") && l.contains(&format!("id={id}"))),
        "the failed request is logged with its id {id}:\n{log}"
    );
    assert!(log.contains("/_matrix/client/v3/account/whoami"), "{log}");
    assert!(
        !log.contains(secret),
        "an access token reached the log:\n{log}"
    );
}

/// A JSON request over plain HTTP/1.1; (status, parsed body).
fn http_json(
    base_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> (u16, serde_json::Value) {
    match try_http_json(base_url, method, path, token, body) {
        Some(answer) => answer,
        None => panic!("cannot connect to {base_url}"),
    }
}

/// [`http_json`], or `None` when the server cannot be reached.
fn try_http_json(
    base_url: &str,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &serde_json::Value,
) -> Option<(u16, serde_json::Value)> {
    let authority = base_url.trim_start_matches("http://").trim_end_matches('/');
    let mut stream = TcpStream::connect(authority).ok()?;
    let _ = stream.set_read_timeout(Some(DEADLINE));
    let body = body.to_string();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n{auth}\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response);
    let response = String::from_utf8_lossy(&response).into_owned();
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let json = response
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    Some((status, json))
}

/// `warren user add` then `/login`; the access token.
fn user_token(data_dir: &Path, url: &str, localpart: &str) -> String {
    let (code, out, err) = manage(
        data_dir,
        &["user", "add", localpart, "--password", "pw-secret"],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (status, body) = http_json(
        url,
        "POST",
        "/_matrix/client/v3/login",
        None,
        &serde_json::json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": localpart},
            "password": "pw-secret",
        }),
    );
    assert_eq!(status, 200, "{body}");
    body["access_token"].as_str().unwrap_or_default().to_owned()
}

#[cfg(unix)]
#[test]
fn two_processes_connected_with_warren_connect_let_users_chat() {
    let dir = tempdir();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    let start = |d: &Path| {
        let mut cmd = warren();
        cmd.arg("run")
            .arg("--data-dir")
            .arg(d)
            .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/udp/0/quic-v1"]);
        RunningNode::start_with(cmd)
    };
    let mut a = start(&a_dir);
    let a_url = a.client_url();
    let a_addr = a
        .stdout_seen
        .iter()
        .find_map(|l| l.strip_prefix("p2p listen: "))
        .map(str::to_owned)
        .unwrap_or_default();
    let a_name = id_json(&a_dir)["server_name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let mut b = start(&b_dir);
    let b_url = b.client_url();
    let (code, out, err) = manage(&b_dir, &["connect", &a_addr]);
    assert_eq!(code, Some(0), "{out}{err}");

    let alice = user_token(&a_dir, &a_url, "alice");
    let bob = user_token(&b_dir, &b_url, "bob");
    let (status, room) = http_json(
        &a_url,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&alice),
        &serde_json::json!({"preset": "public_chat", "name": "cli chat"}),
    );
    assert_eq!(status, 200, "{room}");
    let room_id = room["room_id"].as_str().unwrap_or_default().to_owned();
    let enc = |s: &str| s.replace('!', "%21").replace(':', "%3A");
    let (status, joined) = http_json(
        &b_url,
        "POST",
        &format!(
            "/_matrix/client/v3/join/{}?server_name={a_name}",
            enc(&room_id)
        ),
        Some(&bob),
        &serde_json::json!({}),
    );
    assert_eq!(status, 200, "{joined}");
    let (status, sent) = http_json(
        &a_url,
        "PUT",
        &format!(
            "/_matrix/client/v3/rooms/{}/send/m.room.message/t1",
            enc(&room_id)
        ),
        Some(&alice),
        &serde_json::json!({"msgtype": "m.text", "body": "hello over warren connect"}),
    );
    assert_eq!(status, 200, "{sent}");

    // Bob's /sync gets it (long-poll until it does, with a deadline).
    let deadline = Instant::now() + DEADLINE;
    let mut since = String::new();
    loop {
        assert!(Instant::now() < deadline, "bob never received the message");
        let path = if since.is_empty() {
            "/_matrix/client/v3/sync?timeout=2000".to_owned()
        } else {
            format!("/_matrix/client/v3/sync?timeout=2000&since={since}")
        };
        let (status, sync) = http_json(&b_url, "GET", &path, Some(&bob), &serde_json::json!({}));
        assert_eq!(status, 200, "{sync}");
        since = sync["next_batch"].as_str().unwrap_or_default().to_owned();
        let events = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
        if events.as_array().is_some_and(|evs| {
            evs.iter()
                .any(|e| e["content"]["body"] == "hello over warren connect")
        }) {
            break;
        }
    }
    a.terminate();
    b.terminate();
    a.wait();
    b.wait();
}

#[cfg(unix)]
#[test]
fn sigterm_while_clients_send_loses_no_acknowledged_event() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let start = || {
        let mut cmd = warren();
        cmd.arg("run")
            .arg("--data-dir")
            .arg(&data_dir)
            .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
            .args(["--p2p-listen", "/ip4/127.0.0.1/tcp/0"]);
        RunningNode::start_with(cmd)
    };
    let mut node = start();
    let url = node.client_url();
    let token = user_token(&data_dir, &url, "alice");
    let (_, room) = http_json(
        &url,
        "POST",
        "/_matrix/client/v3/createRoom",
        Some(&token),
        &serde_json::json!({}),
    );
    let room_id = room["room_id"]
        .as_str()
        .unwrap_or_default()
        .replace('!', "%21")
        .replace(':', "%3A");

    // Two clients send as fast as they can; the node is told to stop in the middle.
    let acked = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let senders: Vec<_> = (0..2)
        .map(|c| {
            let (url, token, room_id) = (url.clone(), token.clone(), room_id.clone());
            let acked = Arc::clone(&acked);
            thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..100_000 {
                    let Some((status, body)) = try_http_json(
                        &url,
                        "PUT",
                        &format!("/_matrix/client/v3/rooms/{room_id}/send/m.room.message/c{c}t{i}"),
                        Some(&token),
                        &serde_json::json!({"msgtype": "m.text", "body": format!("{c}/{i}")}),
                    ) else {
                        break;
                    };
                    match (status, body["event_id"].as_str()) {
                        (200, Some(id)) => {
                            acknowledged.push(id.to_owned());
                            acked.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        }
                        _ => break,
                    }
                }
                acknowledged
            })
        })
        .collect();
    // Stop once sends are flowing (a few acknowledged), never before.
    let deadline = Instant::now() + DEADLINE;
    while acked.load(std::sync::atomic::Ordering::Relaxed) < 20 {
        assert!(Instant::now() < deadline, "sends never got going");
        thread::sleep(Duration::from_millis(5));
    }
    node.terminate();
    let status = node.wait();
    assert!(status.success(), "exit {status}:\n{}", node.stderr());
    let acknowledged: Vec<String> = senders
        .into_iter()
        .flat_map(|s| s.join().unwrap_or_default())
        .collect();
    assert!(
        !acknowledged.is_empty(),
        "no send was acknowledged before the stop"
    );

    let mut node = start();
    let url = node.client_url();
    for id in &acknowledged {
        let (status, body) = http_json(
            &url,
            "GET",
            &format!(
                "/_matrix/client/v3/rooms/{room_id}/event/{}",
                id.replace('$', "%24")
            ),
            Some(&token),
            &serde_json::json!({}),
        );
        assert_eq!(
            status, 200,
            "acknowledged event {id} is gone after the restart: {body}"
        );
    }
    node.terminate();
    node.wait();
}

#[test]
fn unreadable_key_and_newer_database_are_clean_errors() {
    // A key file of the wrong size.
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let _ = std::fs::create_dir_all(&data_dir);
    let _ = std::fs::write(data_dir.join("signing.key"), b"short");
    let (code, _, err) = manage(
        &data_dir,
        &["run", "--client-addr", "127.0.0.1:0", "--no-mdns"],
    );
    assert_eq!(code, Some(1));
    let line = assert_clean_error(&err);
    assert!(
        line.contains("signing.key"),
        "the error should name the key file: {line}"
    );

    // A database written by a newer version.
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    let _ = std::fs::create_dir_all(&data_dir);
    match rusqlite::Connection::open(data_dir.join("warren.db")) {
        Ok(c) => {
            if let Err(e) = c.pragma_update(None, "user_version", 9999) {
                panic!("cannot set user_version: {e}");
            }
        }
        Err(e) => panic!("cannot create the database: {e}"),
    }
    let (code, _, err) = manage(
        &data_dir,
        &["run", "--client-addr", "127.0.0.1:0", "--no-mdns"],
    );
    assert_eq!(code, Some(1));
    let line = assert_clean_error(&err);
    assert!(
        line.contains("newer"),
        "the error should say the database is newer: {line}"
    );
}

/// `warren bench soak` at tiny sizes: the node runs as a child process, every phase
/// (including the login storm and idle connections) runs once, and the samples, the
/// chart and the summary are written. Not a measurement: nothing is compared here.
#[test]
fn bench_soak_writes_samples_chart_and_summary() {
    let dir = tempdir();
    let out = dir.path().join("soak");
    let mut cmd = warren();
    cmd.args([
        "bench",
        "soak",
        "--sync-clients",
        "2",
        "--senders",
        "1",
        "--load",
        "2",
        "--rest",
        "1",
        "--idle",
        "0.5",
        "--interval",
        "0.5",
        "--logins",
        "2",
        "--idle-conns",
        "2",
        "--hold",
        "0.5",
        "--out",
    ])
    .arg(&out);
    let (status, stdout, stderr) = finish(cmd);
    assert!(
        status.success(),
        "soak failed: {status}\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("soak summary"), "{stdout}");
    assert!(stdout.contains("RSS peak under load"), "{stdout}");

    let read = |name: &str| match std::fs::read_to_string(out.join(name)) {
        Ok(text) => text,
        Err(e) => panic!("cannot read {name}: {e}\nstdout:\n{stdout}"),
    };
    let csv = read("samples.csv");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert!(rows.len() >= 6, "too few samples:\n{csv}");
    assert!(
        rows.iter().any(|r| r.contains(",load,")),
        "no sample under load:\n{csv}"
    );
    // Every sample read the node's RSS (column 3) from /proc.
    for row in &rows {
        let rss: f64 = row
            .split(',')
            .nth(2)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(rss > 1.0, "no RSS in {row}");
    }

    let svg = read("soak.svg");
    assert!(svg.starts_with("<svg"), "{svg}");
    assert!(svg.trim_end().ends_with("</svg>"));
    assert!(svg.matches("<polyline").count() >= 3, "{svg}");

    let report: serde_json::Value = match serde_json::from_str(&read("soak.json")) {
        Ok(v) => v,
        Err(e) => panic!("soak.json is not JSON: {e}"),
    };
    let summary = &report["summary"];
    assert!(summary["messages"].as_u64().unwrap_or(0) > 0, "{summary}");
    assert!(summary["load_peak_rss_mib"].as_f64().unwrap_or(0.0) > 1.0);
    assert!(summary["login_storm"]["forbidden"].as_u64().is_some());
    assert_eq!(summary["idle_conns"]["opened"], 2);
    assert_eq!(report["samples"].as_array().map(Vec::len), Some(rows.len()));
    // The node was stopped with SIGTERM and shut down cleanly.
    assert!(
        summary["node_exit"]
            .as_str()
            .is_some_and(|s| s.contains("exit status: 0")),
        "{summary}"
    );
}

fn appservice_registration(id: &str, sender: &str, token: &str) -> String {
    format!(
        "id: {id}\nurl: null\nas_token: as-{token}\nhs_token: hs-{token}\n\
         sender_localpart: {sender}\nnamespaces:\n  users:\n  - exclusive: true\n    \
         regex: '@{id}_.*'\n"
    )
}

#[cfg(unix)]
#[test]
fn appservices_come_from_the_flag_and_the_config_file_and_are_listed() {
    let dir = tempdir();
    let data_dir = dir.path().join("node");
    std::fs::create_dir_all(&data_dir).expect("mkdir");
    std::fs::write(
        data_dir.join("one.yaml"),
        appservice_registration("one", "onebot", "1"),
    )
    .expect("write");
    std::fs::write(
        data_dir.join("warren.toml"),
        "app_service_config_files = [\"one.yaml\"]\n",
    )
    .expect("write");
    let two = dir.path().join("two.yaml");
    std::fs::write(&two, appservice_registration("two", "twobot", "2")).expect("write");

    // A bad registration: one clean line naming the file and key, and no node.
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, appservice_registration("one", "badbot", "3")).expect("write");
    let mut cmd = warren();
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
        .arg("--appservice")
        .arg(&bad);
    let (status, _, err) = finish(cmd);
    assert!(!status.success());
    let line = assert_clean_error(&err);
    assert!(
        line.contains("bad.yaml") && line.contains(": id:"),
        "{line}"
    );

    let mut cmd = warren();
    cmd.arg("run")
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--client-addr", "127.0.0.1:0", "--no-mdns"])
        .arg("--appservice")
        .arg(&two);
    let mut node = RunningNode::start_with(cmd);
    node.client_url();
    let (code, out, err) = manage(&data_dir, &["appservice", "list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let list: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_default();
    let ids: Vec<&str> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["id"].as_str())
        .collect();
    assert_eq!(ids, ["one", "two"], "{out}");
    let (code, out, _) = manage(&data_dir, &["appservice", "list"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("appservice one: no url"), "{out}");
    assert!(out.contains("users: @two_.*"), "{out}");
    let (_, out, _) = manage(&data_dir, &["status"]);
    assert!(out.contains("appservice two:"), "{out}");
    node.terminate();
    node.wait();
}
