//! A minimal Matrix client over raw HTTP (reqwest, keep-alive): just what the benchmark
//! needs, with every failure turned into a one-line error naming the request.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

/// Timeout of one request; a `/sync` long-poll asks for at most 30 s, so this is longer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A logged-in session (one access token, one connection pool).
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pub user_id: String,
    txn: AtomicU64,
    /// Makes transaction ids unique across runs that log in to the same device-less user.
    txn_prefix: String,
}

/// A plain HTTP client: no proxy (the nodes are on loopback), keep-alive.
pub fn http_client() -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .context("could not build the HTTP client")
}

/// Percent-encodes one URL path segment or query value.
pub fn encode(segment: &str) -> String {
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

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

async fn answer(
    what: &str,
    response: Result<reqwest::Response, reqwest::Error>,
) -> anyhow::Result<(u16, Value)> {
    let response = response.with_context(|| format!("{what}: no answer"))?;
    let status = response.status().as_u16();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    Ok((status, body))
}

impl Client {
    fn new(base: &str, user_id: &str, token: &str) -> anyhow::Result<Client> {
        Ok(Client {
            http: http_client()?,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            user_id: user_id.to_owned(),
            txn: AtomicU64::new(0),
            txn_prefix: format!("b{:x}", nanos()),
        })
    }

    /// A session for a token the caller already has, sharing the connection pool `http`
    /// (many short-lived sessions need not each open their own connections).
    pub fn with_token(http: &reqwest::Client, base: &str, user_id: &str, token: &str) -> Client {
        Client {
            http: http.clone(),
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            user_id: user_id.to_owned(),
            txn: AtomicU64::new(0),
            txn_prefix: format!("b{:x}", nanos()),
        }
    }

    fn from_login(base: &str, what: &str, body: &Value) -> anyhow::Result<Client> {
        let user_id = body["user_id"]
            .as_str()
            .with_context(|| format!("{what}: no user_id in {body}"))?;
        let token = body["access_token"]
            .as_str()
            .with_context(|| format!("{what}: no access_token in {body}"))?;
        Client::new(base, user_id, token)
    }

    /// Register `localpart` (completing the `m.login.dummy` stage if asked for one).
    pub async fn register(base: &str, localpart: &str, password: &str) -> anyhow::Result<Client> {
        let http = http_client()?;
        let url = format!("{}/_matrix/client/v3/register", base.trim_end_matches('/'));
        let mut body = json!({
            "username": localpart,
            "password": password,
            "initial_device_display_name": "warren bench",
        });
        let what = format!("registering {localpart} at {base}");
        let (status, first) = answer(&what, http.post(&url).json(&body).send().await).await?;
        if status == 200 {
            return Client::from_login(base, &what, &first);
        }
        if status != 401 {
            bail!("{what}: HTTP {status}: {first}");
        }
        let mut auth = json!({"type": "m.login.dummy"});
        if let Some(session) = first.get("session") {
            auth["session"] = session.clone();
        }
        body["auth"] = auth;
        let (status, done) = answer(&what, http.post(&url).json(&body).send().await).await?;
        if status != 200 {
            bail!("{what} (m.login.dummy): HTTP {status}: {done}");
        }
        Client::from_login(base, &what, &done)
    }

    /// Log in with a password (a new device).
    pub async fn login(base: &str, user: &str, password: &str) -> anyhow::Result<Client> {
        let http = http_client()?;
        let url = format!("{}/_matrix/client/v3/login", base.trim_end_matches('/'));
        let body = json!({
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
            "initial_device_display_name": "warren bench",
        });
        let what = format!("logging in {user} at {base}");
        let (status, done) = answer(&what, http.post(&url).json(&body).send().await).await?;
        if status != 200 {
            bail!("{what}: HTTP {status}: {done}");
        }
        Client::from_login(base, &what, &done)
    }

    /// One authenticated request under `/_matrix/client/v3`; the JSON answer of a 200.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let mut request = self
            .http
            .request(
                method.clone(),
                format!("{}/_matrix/client/v3{path}", self.base),
            )
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        let what = format!("{method} {path}");
        let (status, answer) = answer(&what, request.send().await).await?;
        if status != 200 {
            bail!("{what}: HTTP {status}: {answer}");
        }
        Ok(answer)
    }

    pub async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let answer = self
            .call(reqwest::Method::POST, "/createRoom", Some(&body))
            .await?;
        Ok(answer["room_id"]
            .as_str()
            .with_context(|| format!("createRoom: no room_id in {answer}"))?
            .to_owned())
    }

    /// `POST /join/{room}`, with `?server_name=` if `via` is given.
    pub async fn join(&self, room: &str, via: Option<&str>) -> anyhow::Result<()> {
        let mut path = format!("/join/{}", encode(room));
        if let Some(via) = via {
            path.push_str(&format!("?server_name={}", encode(via)));
        }
        self.call(reqwest::Method::POST, &path, Some(&json!({})))
            .await?;
        Ok(())
    }

    /// Invite `user` to `room`.
    pub async fn invite(&self, room: &str, user: &str) -> anyhow::Result<()> {
        let path = format!("/rooms/{}/invite", encode(room));
        self.call(
            reqwest::Method::POST,
            &path,
            Some(&json!({"user_id": user})),
        )
        .await?;
        Ok(())
    }

    /// Send one `m.room.message`; returns its event id.
    pub async fn send(&self, room: &str, text: &str) -> anyhow::Result<String> {
        self.send_content(room, &json!({"msgtype": "m.text", "body": text}))
            .await
    }

    /// Send one `m.room.message` with the given content; returns its event id.
    pub async fn send_content(&self, room: &str, body: &Value) -> anyhow::Result<String> {
        let n = self.txn.fetch_add(1, Ordering::Relaxed);
        let path = format!(
            "/rooms/{}/send/m.room.message/{}{n}",
            encode(room),
            self.txn_prefix
        );
        let answer = self.call(reqwest::Method::PUT, &path, Some(body)).await?;
        Ok(answer["event_id"]
            .as_str()
            .with_context(|| format!("send: no event_id in {answer}"))?
            .to_owned())
    }

    /// `GET /sync`, optionally from `since` and with an inline filter.
    pub async fn sync(
        &self,
        since: Option<&str>,
        timeout_ms: u64,
        filter: Option<&str>,
    ) -> anyhow::Result<Value> {
        let mut path = format!("/sync?timeout={timeout_ms}");
        if let Some(since) = since {
            path.push_str(&format!("&since={}", encode(since)));
        }
        if let Some(filter) = filter {
            path.push_str(&format!("&filter={}", encode(filter)));
        }
        self.call(reqwest::Method::GET, &path, None).await
    }

    /// `GET /_matrix/client/versions` (no authentication, no work on the server).
    pub async fn versions(&self) -> anyhow::Result<()> {
        versions(&self.http, &self.base).await
    }
}

/// `GET /_matrix/client/versions` on `base`.
pub async fn versions(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let url = format!("{}/_matrix/client/versions", base.trim_end_matches('/'));
    let response = http
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    if !response.status().is_success() {
        bail!("GET {url}: HTTP {}", response.status());
    }
    // Read the body so the connection goes back to the pool.
    response
        .bytes()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok(())
}
