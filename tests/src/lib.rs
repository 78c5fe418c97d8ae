//! Shared helpers for Warren's end-to-end tests.
//!
//! The tests under `tests/tests/` start real [`Node`]s in-process (each on its own
//! temporary data directory, client API on `127.0.0.1:0`) and talk to them the way real
//! clients do: through `matrix-sdk` (in-memory stores) or through raw HTTP. Tests that
//! need no real client start nodes that bind no socket ([`start_unbound_node`]) and call
//! their client API in-process ([`InProcessApi`], [`InProcessUser`]).
//!
//! Rules these helpers follow, so that tests built on them stay deterministic:
//! - every wait is on a condition with a deadline ([`wait_until`], [`sync_until`]); a
//!   sleep is only ever the pause between two checks of a condition;
//! - nothing here panics on what comes from outside the process: failures are returned as
//!   `anyhow` errors with enough context to see what the node did; the tests decide.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail, ensure};
use matrix_sdk::Client;
use matrix_sdk::config::{RequestConfig, SyncSettings};
use matrix_sdk::room::MessagesOptions;
use matrix_sdk::ruma::api::client::account::register;
use matrix_sdk::ruma::api::client::uiaa;
use matrix_sdk::ruma::serde::Raw;
use matrix_sdk::ruma::{RoomId, UInt};
use matrix_sdk::sync::SyncResponse;
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use warren_core::{Config, Node};

pub use in_process::{InProcessApi, InProcessUser, start_unbound_node, start_unbound_node_with};
pub use warren_core;

mod in_process;
pub mod sim;

/// Default deadline for anything a test waits on.
pub const WAIT: Duration = Duration::from_secs(20);

/// Upper bound of one `/sync` long-poll inside [`sync_until`]. The server answers earlier
/// as soon as there is something new, so this only bounds how long an idle poll lasts.
const SYNC_LONG_POLL: Duration = Duration::from_secs(5);

/// Timeout of one ordinary (non-sync) HTTP request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);

/// Pause between two checks of a condition in [`wait_until`].
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Guard against a server whose pagination never ends.
const MAX_PAGES: usize = 1_000;

// ---------------------------------------------------------------------------------------
// Nodes
// ---------------------------------------------------------------------------------------

/// A node configuration for tests: the given data directory and the client API on
/// `127.0.0.1` with a port chosen by the OS. Everything else is the default.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config::new(data_dir.to_path_buf());
    config.client_addr = SocketAddr::from((Ipv4Addr::LOCALHOST, 0));
    config
}

/// Starts a node on `data_dir` with [`test_config`].
pub async fn start_node(data_dir: &Path) -> anyhow::Result<Node> {
    start_node_with(test_config(data_dir)).await
}

/// Starts a node with the given configuration, failing if start-up takes longer than
/// [`WAIT`].
pub async fn start_node_with(config: Config) -> anyhow::Result<Node> {
    let data_dir = config.data_dir.clone();
    start_with(&data_dir, Node::start(config)).await
}

/// Awaits a node's start on `data_dir`, failing if it takes longer than [`WAIT`].
async fn start_with<N>(
    data_dir: &Path,
    start: impl Future<Output = Result<N, warren_core::error::StartError>>,
) -> anyhow::Result<N> {
    match tokio::time::timeout(WAIT, start).await {
        Ok(Ok(node)) => Ok(node),
        Ok(Err(err)) => Err(anyhow!(
            "node on {} failed to start: {err}",
            data_dir.display()
        )),
        Err(_) => bail!(
            "node on {} did not start within {WAIT:?}",
            data_dir.display()
        ),
    }
}

/// A node with a real libp2p transport attached, listening on loopback only.
pub struct FederatedNode {
    pub node: Node,
    pub p2p: warren_p2p::P2p,
}

impl FederatedNode {
    /// The node's server name.
    pub fn name(&self) -> String {
        self.node.server_name().to_owned()
    }

    /// Stop the transport, then the node.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.p2p.shutdown().await;
        shutdown_node(self.node).await
    }
}

/// P2P settings for tests: QUIC on loopback, no mDNS, DHT server, short timeouts.
pub fn test_p2p_config() -> warren_p2p::P2pConfig {
    warren_p2p::P2pConfig {
        listen: vec![
            "/ip4/127.0.0.1/udp/0/quic-v1"
                .parse()
                .unwrap_or_else(|_| warren_p2p::Multiaddr::empty()),
        ],
        mdns: false,
        dht_mode: warren_p2p::DhtMode::Server,
        connect_timeout: Duration::from_secs(5),
        ..warren_p2p::P2pConfig::default()
    }
}

/// Start a node on `data_dir` with a P2P transport attached.
pub async fn start_federated_node(data_dir: &Path) -> anyhow::Result<FederatedNode> {
    let node = start_node(data_dir).await?;
    let p2p = warren_p2p::P2p::attach(&node, test_p2p_config()).await?;
    p2p.wait_listening(WAIT).await?;
    Ok(FederatedNode { node, p2p })
}

/// Two nodes started by `start` (e.g. [`start_federated_node`]) on fresh data
/// directories, `a` connected to `b`: the directories of `a` and `b`, then the nodes.
/// Keep the directories bound (`_da`, not `_`) for as long as the nodes run; a node
/// restarted on one of them keeps its identity and data.
pub async fn connected_nodes<F>(
    start: F,
) -> anyhow::Result<(TempDir, TempDir, FederatedNode, FederatedNode)>
where
    F: AsyncFn(&Path) -> anyhow::Result<FederatedNode>,
{
    let (da, db) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = start(da.path()).await?;
    let b = start(db.path()).await?;
    connect_nodes(&a, &b).await?;
    Ok((da, db, a, b))
}

/// Connect `a` to `b` directly.
pub async fn connect_nodes(a: &FederatedNode, b: &FederatedNode) -> anyhow::Result<()> {
    let addr = b
        .p2p
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .context("node b has no listen address")?;
    a.p2p.dial(addr).await?;
    // The dial returns once `a` holds the connection; `b` may register it a moment
    // later. Requests either way need both sides to know it.
    let (a_name, b_name) = (a.name(), b.name());
    wait_until(WAIT, "both nodes see the connection", async || {
        let knows = |peers: Vec<warren_p2p::PeerInfo>, name: &str| {
            peers.iter().any(|p| p.server_name.as_deref() == Some(name))
        };
        Ok(knows(a.p2p.peers().await?, &b_name) && knows(b.p2p.peers().await?, &a_name))
    })
    .await
}

/// Shuts a node down, failing if that takes longer than [`WAIT`].
pub async fn shutdown_node<L>(node: Node<L>) -> anyhow::Result<()> {
    match tokio::time::timeout(WAIT, node.shutdown()).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) => Err(anyhow!("node shutdown failed: {err}")),
        Err(_) => bail!("node did not shut down within {WAIT:?}"),
    }
}

/// The socket address of a node's client API, parsed from [`Node::client_url`].
pub fn client_socket_addr(node: &Node) -> anyhow::Result<SocketAddr> {
    let url = node.client_url();
    let authority = url
        .strip_prefix("http://")
        .with_context(|| format!("client URL {url:?} is not plain http://"))?;
    authority
        .trim_end_matches('/')
        .parse()
        .with_context(|| format!("client URL {url:?} does not end in IP:port"))
}

// ---------------------------------------------------------------------------------------
// Waiting
// ---------------------------------------------------------------------------------------

/// Checks `condition` until it returns `Ok(true)`, failing after `timeout` (or at once if
/// the condition returns an error). `what` says what was awaited, for the error message.
///
/// Between two checks it pauses briefly; the outcome depends only on the condition.
pub async fn wait_until<F>(timeout: Duration, what: &str, mut condition: F) -> anyhow::Result<()>
where
    F: AsyncFnMut() -> anyhow::Result<bool>,
{
    let deadline = Instant::now() + timeout;
    let mut checks = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, condition()).await {
            Ok(Ok(true)) => return Ok(()),
            Ok(Ok(false)) => checks += 1,
            Ok(Err(err)) => return Err(err.context(format!("while waiting until {what}"))),
            Err(_) => bail!("timed out after {timeout:?} ({checks} checks) waiting until {what}"),
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} ({checks} checks) waiting until {what}");
        }
        tokio::time::sleep(POLL_INTERVAL.min(deadline.saturating_duration_since(Instant::now())))
            .await;
    }
}

/// Runs `client.sync_once` (continuing from the client's last sync token, long-polling)
/// until `done` returns `Ok(true)` for a response, and returns that response. Every
/// response is processed by the client as usual before `done` sees it, so `done` may also
/// look at the client's rooms.
///
/// Because each call continues from the previous token, a condition about something that
/// happened after the client's last sync is seen in exactly one of these responses.
pub async fn sync_until<F>(
    client: &Client,
    timeout: Duration,
    what: &str,
    mut done: F,
) -> anyhow::Result<SyncResponse>
where
    F: FnMut(&SyncResponse) -> anyhow::Result<bool>,
{
    let deadline = Instant::now() + timeout;
    let who = client
        .user_id()
        .map_or_else(|| "<logged out>".to_owned(), |u| u.to_string());
    let mut syncs = 0u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            bail!("timed out after {timeout:?} ({syncs} syncs by {who}) waiting until {what}");
        }
        let settings = SyncSettings::default().timeout(remaining.min(SYNC_LONG_POLL));
        let response = match tokio::time::timeout(remaining, client.sync_once(settings)).await {
            Ok(result) => result
                .with_context(|| format!("/sync by {who} failed while waiting until {what}"))?,
            Err(_) => {
                bail!("timed out after {timeout:?} ({syncs} syncs by {who}) waiting until {what}")
            }
        };
        syncs += 1;
        if done(&response).with_context(|| format!("checking whether {what}"))? {
            return Ok(response);
        }
    }
}

// ---------------------------------------------------------------------------------------
// matrix-sdk clients
// ---------------------------------------------------------------------------------------

/// A logged-out matrix-sdk client for `homeserver_url`, with in-memory stores, no retries
/// (a failure shows up as a failure, not as a delay) and no proxy.
pub async fn new_client(homeserver_url: &str) -> anyhow::Result<Client> {
    let http = matrix_sdk::reqwest::Client::builder()
        .no_proxy()
        .build()
        .context("building the HTTP client for matrix-sdk")?;
    Client::builder()
        .homeserver_url(homeserver_url)
        .http_client(http)
        .request_config(
            RequestConfig::new()
                .timeout(REQUEST_TIMEOUT)
                .disable_retry(),
        )
        .build()
        .await
        .with_context(|| format!("building a matrix-sdk client for {homeserver_url}"))
}

/// Registers `localpart` with `password` and returns the logged-in client.
///
/// Registration is user-interactive: the first request (without `auth`) is answered with
/// 401 and the flows; the helper checks that `[m.login.dummy]` is one of them and
/// completes it with the session the server gave.
pub async fn register_client(
    homeserver_url: &str,
    localpart: &str,
    password: &str,
) -> anyhow::Result<Client> {
    let client = new_client(homeserver_url).await?;
    let mut request = register::v3::Request::new();
    request.username = Some(localpart.to_owned());
    request.password = Some(password.to_owned());
    request.initial_device_display_name = Some(format!("warren-tests {localpart}"));

    match client.matrix_auth().register(request.clone()).await {
        // The server registered us without asking for a stage: accept that too.
        Ok(_) => {}
        Err(err) => {
            let Some(info) = err.as_uiaa_response() else {
                return Err(anyhow::Error::new(err).context(format!(
                    "registering {localpart:?}: expected 401 with UIAA flows"
                )));
            };
            ensure!(
                info.flows
                    .iter()
                    .any(|flow| matches!(flow.stages.as_slice(), [uiaa::AuthType::Dummy])),
                "registering {localpart:?}: the server offers no [m.login.dummy] flow: {:?}",
                info.flows
                    .iter()
                    .map(|f| f.stages.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                    .collect::<Vec<_>>()
            );
            let mut dummy = uiaa::Dummy::new();
            dummy.session = info.session.clone();
            request.auth = Some(uiaa::AuthData::Dummy(dummy));
            client
                .matrix_auth()
                .register(request)
                .await
                .with_context(|| format!("registering {localpart:?} with m.login.dummy"))?;
        }
    }

    let user_id = client
        .user_id()
        .with_context(|| format!("registered {localpart:?} but the client is not logged in"))?;
    ensure!(
        user_id.localpart() == localpart,
        "registered {localpart:?} but got user id {user_id}"
    );
    Ok(client)
}

/// Logs `localpart` in with `password` (a new device) and returns the client.
pub async fn login_client(
    homeserver_url: &str,
    localpart: &str,
    password: &str,
) -> anyhow::Result<Client> {
    let client = new_client(homeserver_url).await?;
    client
        .matrix_auth()
        .login_username(localpart, password)
        .initial_device_display_name(&format!("warren-tests {localpart} (login)"))
        .send()
        .await
        .with_context(|| format!("password login of {localpart:?}"))?;
    ensure!(
        client.user_id().is_some(),
        "logged in {localpart:?} but the client has no user id"
    );
    Ok(client)
}

/// An event as plain JSON.
pub fn raw_json<T>(raw: &Raw<T>) -> anyhow::Result<Value> {
    serde_json::from_str(raw.json().get()).context("event is not valid JSON")
}

/// The timeline events of `room_id` in a sync response (joined rooms), as JSON.
pub fn timeline_json(response: &SyncResponse, room_id: &RoomId) -> anyhow::Result<Vec<Value>> {
    match response.rooms.joined.get(room_id) {
        Some(room) => room
            .timeline
            .events
            .iter()
            .map(|ev| raw_json(ev.raw()))
            .collect(),
        None => Ok(Vec::new()),
    }
}

/// The ephemeral events (typing, receipts) of `room_id` in a sync response, as JSON.
pub fn ephemeral_json(response: &SyncResponse, room_id: &RoomId) -> anyhow::Result<Vec<Value>> {
    match response.rooms.joined.get(room_id) {
        Some(room) => room.ephemeral.iter().map(raw_json).collect(),
        None => Ok(Vec::new()),
    }
}

/// Pages backwards through the whole visible history of `room` with `/messages`,
/// `page_size` events at a time, following each `end` token until the server omits it
/// (or returns an empty chunk). Returns the events oldest first.
///
/// Fails if the server hands out the same token twice in a row or returns the same event
/// twice.
pub async fn history_backwards(
    room: &matrix_sdk::Room,
    page_size: u32,
) -> anyhow::Result<Vec<Value>> {
    let mut from: Option<String> = None;
    let mut newest_first: Vec<Value> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for page_no in 0..MAX_PAGES {
        let mut options = MessagesOptions::backward();
        options.from = from.clone();
        options.limit = UInt::from(page_size);
        let page = room
            .messages(options)
            .await
            .with_context(|| format!("GET /messages, page {page_no} (from {from:?})"))?;
        ensure!(
            page.chunk.len() <= page_size as usize,
            "page {page_no} has {} events, more than the limit {page_size}",
            page.chunk.len()
        );
        for event in &page.chunk {
            let json = raw_json(event.raw())?;
            let id = json["event_id"].as_str().unwrap_or_default().to_owned();
            ensure!(
                seen.insert(id.clone()),
                "event {id:?} returned twice (page {page_no})"
            );
            newest_first.push(json);
        }
        match page.end {
            Some(end) if !page.chunk.is_empty() => {
                ensure!(
                    from.as_deref() != Some(end.as_str()),
                    "page {page_no}: `end` token {end:?} did not advance"
                );
                from = Some(end);
            }
            _ => {
                newest_first.reverse();
                return Ok(newest_first);
            }
        }
    }
    bail!("history did not end after {MAX_PAGES} pages of {page_size}")
}

/// `content.body` of an `m.room.message` event, if it is one.
pub fn message_body(event: &Value) -> Option<&str> {
    if event["type"] != "m.room.message" {
        return None;
    }
    event["content"]["body"].as_str()
}

// ---------------------------------------------------------------------------------------
// Raw HTTP
// ---------------------------------------------------------------------------------------

/// A plain reqwest client for raw requests to a node (no proxy, request timeout).
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("building the raw HTTP client")
}

/// What registration returns.
#[derive(Clone, Debug)]
pub struct Session {
    pub user_id: String,
    pub access_token: String,
}

/// Registers `localpart` with raw HTTP: `POST /register` without `auth` (expecting 401
/// with a `[m.login.dummy]` flow), then again with `m.login.dummy` and the session.
pub async fn register_raw(
    http: &reqwest::Client,
    base_url: &str,
    localpart: &str,
    password: &str,
) -> anyhow::Result<Session> {
    let url = format!("{base_url}/_matrix/client/v3/register");
    register_with(localpart, password, async |body| {
        let response = http
            .post(&url)
            .json(body)
            .send()
            .await
            .context("POST /register")?;
        let status = response.status().as_u16();
        let answer: Value = response
            .json()
            .await
            .context("POST /register: body is not JSON")?;
        Ok((status, answer))
    })
    .await
}

/// The registration flow of [`register_raw`] over `post`, which sends one `POST
/// /register` body and returns the status and the JSON answer.
async fn register_with<F>(localpart: &str, password: &str, mut post: F) -> anyhow::Result<Session>
where
    F: AsyncFnMut(&Value) -> anyhow::Result<(u16, Value)>,
{
    let mut body = json!({ "username": localpart, "password": password });
    let (status, first) = post(&body).await?;
    let done = if status == 200 {
        first
    } else {
        ensure!(
            status == 401,
            "POST /register without auth: expected 401, got {status}: {first}"
        );
        let offers_dummy = first["flows"].as_array().is_some_and(|flows| {
            flows
                .iter()
                .any(|flow| flow["stages"] == json!(["m.login.dummy"]))
        });
        ensure!(
            offers_dummy,
            "POST /register: no [m.login.dummy] flow in {first}"
        );
        let mut auth = json!({ "type": "m.login.dummy" });
        if let Some(session) = first.get("session") {
            auth["session"] = session.clone();
        }
        body["auth"] = auth;
        let (status, second) = post(&body).await.context("POST /register (dummy)")?;
        ensure!(
            status == 200,
            "POST /register with m.login.dummy: got {status}: {second}"
        );
        second
    };
    let user_id = done["user_id"]
        .as_str()
        .with_context(|| format!("no user_id in {done}"))?;
    let access_token = done["access_token"]
        .as_str()
        .with_context(|| format!("no access_token in {done}"))?;
    Ok(Session {
        user_id: user_id.to_owned(),
        access_token: access_token.to_owned(),
    })
}

/// Percent-encodes one URL path segment (everything but RFC 3986 unreserved characters).
pub fn path_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for byte in segment.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A Matrix error response: its status and its `errcode` / `error` strings.
#[derive(Clone, Debug)]
pub struct MatrixError {
    pub status: u16,
    pub errcode: String,
    pub error: String,
    pub body: Value,
}

/// Checks that a response is a Matrix error — `Content-Type: application/json` and a JSON
/// object with string `errcode` and `error` — and returns it. The status is not checked.
pub fn parse_matrix_error(
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> anyhow::Result<MatrixError> {
    let text = String::from_utf8_lossy(body);
    ensure!(
        content_type.is_some_and(|ct| ct.to_ascii_lowercase().starts_with("application/json")),
        "status {status}: error response has Content-Type {content_type:?}, not application/json: {text}"
    );
    let json: Value = serde_json::from_slice(body)
        .with_context(|| format!("status {status}: error body is not JSON: {text}"))?;
    let errcode = json["errcode"]
        .as_str()
        .with_context(|| format!("status {status}: no string `errcode` in {json}"))?
        .to_owned();
    let error = json["error"]
        .as_str()
        .with_context(|| format!("status {status}: no string `error` in {json}"))?
        .to_owned();
    Ok(MatrixError {
        status,
        errcode,
        error,
        body: json,
    })
}

/// [`parse_matrix_error`] for a reqwest response.
pub async fn matrix_error(response: reqwest::Response) -> anyhow::Result<MatrixError> {
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body = response.bytes().await.context("reading the error body")?;
    parse_matrix_error(status, content_type.as_deref(), &body)
}

/// How [`raw_upload`] frames the request body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `Content-Length: <len>` up front.
    ContentLength,
    /// `Transfer-Encoding: chunked`, so the server only learns the size by reading.
    Chunked,
}

/// A response read off a raw connection.
#[derive(Clone, Debug)]
pub struct RawResponse {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Sends one HTTP/1.1 request with a (large) body over a fresh TCP connection and reads the
/// response, while still sending: a server that rejects an oversized body may answer (and
/// close) before the body is complete, which an ordinary client can report as a broken
/// pipe instead of the response. Writing stops as soon as the server has closed its side or
/// refuses more bytes.
pub async fn raw_upload(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    framing: Framing,
) -> anyhow::Result<RawResponse> {
    tokio::time::timeout(
        WAIT,
        raw_upload_inner(addr, method, path, headers, body, framing),
    )
    .await
    .map_err(|_| anyhow!("{method} {path}: no complete response within {WAIT:?}"))?
}

async fn raw_upload_inner(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    framing: Framing,
) -> anyhow::Result<RawResponse> {
    let stream = TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    let (mut rd, mut wr) = stream.into_split();

    let mut reader = tokio::spawn(async move {
        let mut received = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => received.extend_from_slice(&buf[..n]),
                // A reset after the response arrived still leaves us the response.
                Err(err) if received.is_empty() => return Err(err),
                Err(_) => break,
            }
        }
        Ok(received)
    });

    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    match framing {
        Framing::ContentLength => head.push_str(&format!("Content-Length: {}\r\n", body.len())),
        Framing::Chunked => head.push_str("Transfer-Encoding: chunked\r\n"),
    }
    head.push_str("\r\n");

    let send = async {
        wr.write_all(head.as_bytes()).await?;
        for chunk in body.chunks(64 * 1024) {
            match framing {
                Framing::ContentLength => wr.write_all(chunk).await?,
                Framing::Chunked => {
                    wr.write_all(format!("{:X}\r\n", chunk.len()).as_bytes())
                        .await?;
                    wr.write_all(chunk).await?;
                    wr.write_all(b"\r\n").await?;
                }
            }
        }
        if framing == Framing::Chunked {
            wr.write_all(b"0\r\n\r\n").await?;
        }
        wr.flush().await?;
        Ok::<(), std::io::Error>(())
    };

    // Either the whole request went out (or the server stopped taking it: a write error),
    // and then we wait for the response; or the server answered and closed first.
    let finished_early = tokio::select! {
        received = &mut reader => Some(received),
        _sent = send => None,
    };
    let received = match finished_early {
        Some(received) => received,
        None => (&mut reader).await,
    };
    drop(wr);
    let received = received
        .context("reader task failed")?
        .with_context(|| format!("{method} {path}: reading the response"))?;
    parse_raw_response(&received)
        .with_context(|| format!("{method} {path}: parsing {} response bytes", received.len()))
}

fn parse_raw_response(bytes: &[u8]) -> anyhow::Result<RawResponse> {
    let head_end = bytes
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("no complete response head (the server closed without answering?)")?;
    let head = std::str::from_utf8(&bytes[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().context("empty response")?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .with_context(|| format!("bad status line {status_line:?}"))?
        .parse()
        .with_context(|| format!("bad status line {status_line:?}"))?;
    let mut headers = Vec::new();
    for line in lines {
        let (name, value) = line
            .split_once(':')
            .with_context(|| format!("bad header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let mut response = RawResponse {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &bytes[head_end + 4..];
    let chunked = response
        .header("transfer-encoding")
        .is_some_and(|te| te.to_ascii_lowercase().contains("chunked"));
    response.body = if chunked {
        decode_chunked(rest)?
    } else if let Some(len) = response.header("content-length") {
        let len: usize = len
            .parse()
            .with_context(|| format!("bad Content-Length {len:?}"))?;
        ensure!(
            rest.len() >= len,
            "body truncated: {} of {len} bytes",
            rest.len()
        );
        rest[..len].to_vec()
    } else {
        rest.to_vec()
    };
    Ok(response)
}

fn decode_chunked(mut rest: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut body = Vec::new();
    loop {
        let line_end = rest
            .windows(2)
            .position(|w| w == b"\r\n")
            .context("truncated chunk size line")?;
        let size_line = std::str::from_utf8(&rest[..line_end]).context("chunk size not UTF-8")?;
        let size_hex = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_hex, 16)
            .with_context(|| format!("bad chunk size {size_line:?}"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(body);
        }
        ensure!(rest.len() >= size + 2, "truncated chunk of {size} bytes");
        body.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

/// Deterministic pseudo-random bytes (xorshift64*), for "garbage" request bodies that are
/// the same on every run.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.max(1);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let word = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.truncate(len);
    out
}

// ---------------------------------------------------------------------------------------
// A user driven with raw HTTP
// ---------------------------------------------------------------------------------------

/// A registered user and the client-API base URL they talk to, for tests that check the
/// wire format exactly (matrix-sdk would hide it).
pub struct RawUser {
    pub base: String,
    pub session: Session,
}

impl RawUser {
    /// Registers `localpart` on the node at `base` (see [`register_raw`]).
    pub async fn register(base: String, localpart: &str) -> anyhow::Result<RawUser> {
        let session = register_raw(&http_client()?, &base, localpart, "secret-password").await?;
        Ok(RawUser { base, session })
    }

    /// `@localpart:server`.
    pub fn id(&self) -> &str {
        &self.session.user_id
    }

    /// One request under `/_matrix/client/v3` with the user's token: the status and the
    /// JSON body (`null` when the body is not JSON). A `null` request body is sent as
    /// JSON `null`, which GET handlers ignore.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        let response = http_client()?
            .request(
                method.clone(),
                format!("{}/_matrix/client/v3{path}", self.base),
            )
            .bearer_auth(&self.session.access_token)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("{method} {path}"))?;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        Ok((status, body))
    }

    /// A request that must answer 200: its JSON body.
    pub async fn ok(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), path, body).await?;
        ensure!(status == 200, "{method} {path}: {status} {answer}");
        Ok(answer)
    }

    /// `POST` that must answer 200.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.ok(reqwest::Method::POST, path, body).await
    }

    /// `POST /createRoom`: the new room's id.
    pub async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let answer = self.post("/createRoom", body).await?;
        Ok(answer["room_id"].as_str().context("room_id")?.to_owned())
    }

    /// `PUT` that must answer 200.
    pub async fn put(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        self.ok(reqwest::Method::PUT, path, body).await
    }

    /// Sends a text message to `room` (a new transaction id each time).
    pub async fn say(&self, room: &str, body: &str) -> anyhow::Result<()> {
        let txn = format!(
            "t{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_nanos()
        );
        self.put(
            &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
            json!({"msgtype": "m.text", "body": body}),
        )
        .await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunked_bodies_decode() {
        let decoded = decode_chunked(b"4\r\nWiki\r\n5;ext=1\r\npedia\r\n0\r\n\r\n").expect("valid");
        assert_eq!(decoded, b"Wikipedia");
        assert!(decode_chunked(b"4\r\nWi").is_err());
    }

    #[test]
    fn raw_responses_parse() {
        let bytes = b"HTTP/1.1 413 Payload Too Large\r\ncontent-type: application/json\r\n\
content-length: 2\r\n\r\n{}trailing";
        let response = parse_raw_response(bytes).expect("valid");
        assert_eq!(response.status, 413);
        assert_eq!(response.header("Content-Type"), Some("application/json"));
        assert_eq!(response.body, b"{}");
        assert!(parse_raw_response(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(path_segment("!abc:3f9a"), "%21abc%3A3f9a");
        assert_eq!(path_segment("m.room.name"), "m.room.name");
    }

    #[test]
    fn garbage_is_deterministic_and_not_json() {
        let a = pseudo_random_bytes(0x5EED, 512);
        assert_eq!(a, pseudo_random_bytes(0x5EED, 512));
        assert_eq!(a.len(), 512);
        assert!(serde_json::from_slice::<Value>(&a).is_err());
    }
}
