//! Delivery to http pushers: `POST {data.url}` in the push gateway format
//! (`/_matrix/push/v1/notify`), from the durable `push_queue`.
//!
//! Rows are written in the notification's own transaction (never a network call on the
//! send path) and deleted once the gateway answered. One task per pusher with queued
//! rows sends them oldest first, one request each; a failure is retried with full-jitter
//! exponential backoff, and while a pusher fails its queue is kept within
//! [`crate::config::PushConfig`] (rows and age, oldest dropped first: the newest
//! notifications and the current badge are what a phone needs). A pushkey the gateway
//! lists in `rejected` removes that pusher, as Synapse does. Rows survive restarts.
//!
//! The HTTP client is bounded: connect and request timeouts, no redirects, answers read
//! up to [`MAX_RESPONSE_BYTES`]. `http://` is allowed (an ntfy or UnifiedPush server on
//! the LAN), private addresses included.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, PusherKey, QueuedPush, now_ms};

/// First retry delay ceiling; doubled per failure up to the configured cap.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// How often the queue is rescanned without a wake-up (writes that bypass
/// `Server::write`, rows left from before a restart).
const RESCAN: Duration = Duration::from_secs(30);
/// A pusher's task ends after this long with nothing to send.
const IDLE_EXIT: Duration = Duration::from_secs(600);
/// Most bytes of a gateway's answer read (it is a short JSON object).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;
/// Connecting to a gateway gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

struct PusherTask {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The deliverer is aborted at shutdown; its pushers' tasks go with it.
impl Drop for PusherTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the deliverer: it sends whatever the queue holds, rows from before a restart
/// included, and is woken after each write that queued rows.
pub fn start(server: Arc<Server>) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Built when a pusher first has something queued, not at start: building it
        // loads and parses the system's root certificates, memory (and code) a node
        // without http pushers never needs (docs/performance.md, "Memory").
        let mut client = LazyClient::default();
        let mut tasks: HashMap<PusherKey, PusherTask> = HashMap::new();
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                () = server.push_wake.notified() => {}
                _ = rescan.tick() => {}
            }
            wake_all(&server, &mut client, &mut tasks);
        }
    })
}

/// The gateway client, built on first use.
#[derive(Default)]
struct LazyClient {
    client: Option<reqwest::Client>,
    /// Building it failed already (said once in the log, not at every rescan).
    failed: bool,
}

impl LazyClient {
    fn get(&mut self, config: &crate::config::PushConfig) -> Option<reqwest::Client> {
        if self.client.is_none() {
            match client(config) {
                Ok(c) => self.client = Some(c),
                Err(e) => {
                    if !self.failed {
                        tracing::error!(error = %e, "cannot build the push HTTP client; pushes stay queued");
                    }
                    self.failed = true;
                }
            }
        }
        self.client.clone()
    }
}

/// The bounded HTTP client for gateways.
fn client(config: &crate::config::PushConfig) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT.min(config.request_timeout))
        .timeout(config.request_timeout)
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(1)
        .user_agent(concat!("warren/", env!("CARGO_PKG_VERSION")))
        .build()
}

fn wake_all(
    server: &Arc<Server>,
    client: &mut LazyClient,
    tasks: &mut HashMap<PusherKey, PusherTask>,
) {
    let pending = match server.db.read(storage::push_queue_pushers) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the push queue");
            return;
        }
    };
    tasks.retain(|_, t| !t.task.is_finished());
    if pending.is_empty() {
        return;
    }
    let Some(client) = client.get(&server.config.push) else {
        return;
    };
    for key in pending {
        let t = tasks.entry(key.clone()).or_insert_with(|| {
            let wake = Arc::new(Notify::new());
            let task = tokio::spawn(pusher_task(
                server.clone(),
                client.clone(),
                key,
                wake.clone(),
            ));
            PusherTask { wake, task }
        });
        t.wake.notify_one();
    }
}

/// How one attempt went.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// The gateway took it; these pushkeys were rejected.
    Sent { rejected: Vec<String> },
    /// It cannot be delivered, now or later (bad URL, a 4xx answer): drop the row.
    Refused(String),
    /// Try again later (network error, timeout, 5xx, 429).
    Retry(String),
}

async fn pusher_task(
    server: Arc<Server>,
    client: reqwest::Client,
    key: PusherKey,
    wake: Arc<Notify>,
) {
    let mut failures: u32 = 0;
    loop {
        let head = server.db.read(|c| {
            let Some(row) = storage::push_queue_head(c, &key)? else {
                return Ok(None);
            };
            let body = notify_body(c, &key, &row)?;
            Ok(Some((row, body)))
        });
        let (row, body) = match head {
            Ok(Some(x)) => x,
            Ok(None) => {
                tokio::select! {
                    () = wake.notified() => continue,
                    () = tokio::time::sleep(IDLE_EXIT) => return,
                }
            }
            Err(e) => {
                tracing::warn!(user = %key.user_id, error = %e, "cannot read the push queue");
                tokio::time::sleep(BACKOFF_BASE).await;
                continue;
            }
        };
        let outcome = match body {
            Some((url, body)) => post(&client, &url, &body).await,
            None => Outcome::Refused("the event or the pusher's URL is gone".into()),
        };
        match outcome {
            Outcome::Sent { rejected } => {
                failures = 0;
                if rejected.contains(&key.pushkey) {
                    tracing::info!(user = %key.user_id, app_id = %key.app_id,
                        "push gateway rejected the pushkey; pusher removed");
                    let removed = server.write(|c| {
                        storage::delete_pusher(c, &key.user_id, &key.app_id, &key.pushkey)
                    });
                    if let Err(e) = removed {
                        tracing::warn!(error = %e, "cannot remove a rejected pusher");
                    }
                    return;
                }
                forget(&server, row.id);
            }
            Outcome::Refused(why) => {
                tracing::info!(user = %key.user_id, app_id = %key.app_id, %why,
                    "push not deliverable; dropped");
                forget(&server, row.id);
            }
            Outcome::Retry(why) => {
                failures = failures.saturating_add(1);
                trim(&server, &key);
                let delay = backoff(failures, server.config.push.backoff_cap);
                tracing::info!(user = %key.user_id, app_id = %key.app_id, %why,
                    retry_in = ?delay, "push gateway failed");
                tokio::time::sleep(delay).await;
            }
        }
    }
}

fn forget(server: &Server, id: i64) {
    if let Err(e) = server.db.write(|c| storage::delete_queued_push(c, id)) {
        tracing::warn!(error = %e, "cannot clear a delivered push");
    }
}

/// Keep a failing pusher's queue within its bounds.
fn trim(server: &Server, key: &PusherKey) {
    let limits = &server.config.push;
    let older_than = now_ms()
        .saturating_sub(i64::try_from(limits.queue_max_age.as_millis()).unwrap_or(i64::MAX));
    match server
        .db
        .write(|c| storage::trim_push_queue(c, key, limits.queue_rows, older_than))
    {
        Ok(0) => {}
        Ok(dropped) => tracing::info!(user = %key.user_id, app_id = %key.app_id, dropped,
            "push queue over its bounds for a failing gateway; oldest dropped"),
        Err(e) => tracing::warn!(error = %e, "cannot trim the push queue"),
    }
}

/// Full jitter: a uniform delay up to `min(cap, base · 2^(failures-1))`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(cap);
    let ms = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// POST one notification; read at most [`MAX_RESPONSE_BYTES`] of the answer.
async fn post(client: &reqwest::Client, url: &str, body: &Value) -> Outcome {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Outcome::Refused(format!("not an http(s) URL: {url}"));
    }
    let mut response = match client.post(url).json(body).send().await {
        Ok(r) => r,
        Err(e) if e.is_builder() => return Outcome::Refused(format!("bad URL: {e}")),
        Err(e) => return Outcome::Retry(e.to_string()),
    };
    let status = response.status();
    let mut answer = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if answer.len() + chunk.len() > MAX_RESPONSE_BYTES {
                    break;
                }
                answer.extend_from_slice(&chunk);
            }
            Ok(None) => break,
            Err(e) => {
                if status.is_success() {
                    // Taken, but the answer was cut: nothing to reject.
                    return Outcome::Sent {
                        rejected: Vec::new(),
                    };
                }
                return Outcome::Retry(e.to_string());
            }
        }
    }
    if status.is_success() {
        return Outcome::Sent {
            rejected: rejected(&answer),
        };
    }
    let code = status.as_u16();
    if status.is_client_error() && code != 408 && code != 429 {
        Outcome::Refused(format!("gateway answered {status}"))
    } else {
        Outcome::Retry(format!("gateway answered {status}"))
    }
}

/// The pushkeys in a gateway's `{"rejected": [...]}`.
fn rejected(answer: &[u8]) -> Vec<String> {
    serde_json::from_slice::<Value>(answer)
        .ok()
        .and_then(|v| {
            v.get("rejected").and_then(Value::as_array).map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect()
            })
        })
        .unwrap_or_default()
}

/// The URL and body of a queued push; `None` if its event is gone or the pusher has no
/// URL (the row is then dropped).
fn notify_body(
    c: &rusqlite::Connection,
    key: &PusherKey,
    row: &QueuedPush,
) -> Result<Option<(String, Value)>, Error> {
    let pusher: Value = serde_json::from_str(&row.pusher)?;
    let Some(url) = pusher["data"]["url"].as_str().map(str::to_owned) else {
        return Ok(None);
    };
    let Some(ev) = storage::get_event(c, &row.event_id)? else {
        return Ok(None);
    };
    let event: Value = serde_json::from_str(&ev.json)?;
    let full = pusher["data"]["format"].as_str() != Some("event_id_only");
    let (room_name, sender_display_name) = if full {
        let name = super::display_name(c, &row.room_id, &ev.sender)?;
        (
            super::room_name(c, &row.room_id)?,
            (!name.is_empty()).then_some(name),
        )
    } else {
        (None, None)
    };
    let push = Push {
        event_id: &row.event_id,
        room_id: &row.room_id,
        user_id: &key.user_id,
        app_id: &key.app_id,
        pushkey: &key.pushkey,
        pushkey_ts_ms: row.pusher_ts,
        pusher: &pusher,
        event: &event,
        actions: serde_json::from_str(&row.actions).unwrap_or_default(),
        unread: storage::total_unread(c, &key.user_id)?,
        room_name,
        sender_display_name,
    };
    Ok(Some((url, push.body())))
}

/// Everything a notify request is made of.
struct Push<'a> {
    /// The event's id (PDUs of current room versions do not carry it).
    event_id: &'a str,
    room_id: &'a str,
    user_id: &'a str,
    app_id: &'a str,
    pushkey: &'a str,
    pushkey_ts_ms: i64,
    /// The pusher as stored.
    pusher: &'a Value,
    /// The event (PDU JSON).
    event: &'a Value,
    /// The push actions.
    actions: Vec<Value>,
    /// The badge: unread notifications across the user's rooms.
    unread: i64,
    room_name: Option<String>,
    sender_display_name: Option<String>,
}

impl Push<'_> {
    /// The tweaks the actions set (`highlight` without a value means true).
    fn tweaks(&self) -> Map<String, Value> {
        let mut tweaks = Map::new();
        for a in &self.actions {
            if let Some(name) = a.get("set_tweak").and_then(Value::as_str) {
                let value = a.get("value").cloned().unwrap_or(Value::Bool(true));
                tweaks.insert(name.to_owned(), value);
            }
        }
        tweaks
    }

    /// The `POST /_matrix/push/v1/notify` body.
    fn body(&self) -> Value {
        let tweaks = self.tweaks();
        let mut data = self.pusher["data"].as_object().cloned().unwrap_or_default();
        data.remove("url");
        let event_id_only = data.get("format").and_then(Value::as_str) == Some("event_id_only");
        let kind = self.event["type"].as_str().unwrap_or_default();
        // As Synapse: encrypted events, sounds and highlights wake the device.
        let high = kind == "m.room.encrypted"
            || tweaks.contains_key("sound")
            || tweaks
                .get("highlight")
                .is_some_and(|v| v != &Value::Bool(false));
        let mut n = Map::new();
        n.insert("event_id".into(), json!(self.event_id));
        n.insert("room_id".into(), json!(self.room_id));
        n.insert("counts".into(), json!({ "unread": self.unread }));
        n.insert("prio".into(), json!(if high { "high" } else { "low" }));
        n.insert(
            "devices".into(),
            json!([{
                "app_id": self.app_id,
                "pushkey": self.pushkey,
                "pushkey_ts": self.pushkey_ts_ms / 1000,
                "data": data,
                "tweaks": tweaks,
            }]),
        );
        if !event_id_only {
            n.insert("type".into(), json!(kind));
            n.insert("sender".into(), self.event["sender"].clone());
            if let Some(name) = &self.sender_display_name {
                n.insert("sender_display_name".into(), json!(name));
            }
            if let Some(name) = &self.room_name {
                n.insert("room_name".into(), json!(name));
            }
            if let Some(content) = self.event.get("content") {
                n.insert("content".into(), content.clone());
            }
            if kind == "m.room.member" {
                n.insert(
                    "user_is_target".into(),
                    json!(self.event["state_key"].as_str() == Some(self.user_id)),
                );
            }
        }
        json!({ "notification": n })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn push<'a>(pusher: &'a Value, event: &'a Value, actions: Vec<Value>) -> Push<'a> {
        Push {
            event_id: "$e",
            room_id: "!r:x",
            user_id: "@bob:x",
            app_id: "org.example",
            pushkey: "key1",
            pushkey_ts_ms: 1_700_000_000_123,
            pusher,
            event,
            actions,
            unread: 3,
            room_name: Some("Lounge".into()),
            sender_display_name: Some("Alice".into()),
        }
    }

    fn event() -> Value {
        json!({
            "room_id": "!r:x", "type": "m.room.message",
            "sender": "@alice:x", "content": {"msgtype": "m.text", "body": "hi bob"},
        })
    }

    #[test]
    fn full_format_carries_the_event_and_the_device() {
        let pusher = json!({"data": {"url": "http://gw/_matrix/push/v1/notify", "extra": 1}});
        let event = event();
        let actions = vec![
            json!("notify"),
            json!({"set_tweak": "sound", "value": "default"}),
            json!({"set_tweak": "highlight"}),
        ];
        let body = push(&pusher, &event, actions).body();
        assert_eq!(
            body,
            json!({"notification": {
                "event_id": "$e", "room_id": "!r:x", "type": "m.room.message",
                "sender": "@alice:x", "sender_display_name": "Alice", "room_name": "Lounge",
                "content": {"msgtype": "m.text", "body": "hi bob"},
                "counts": {"unread": 3}, "prio": "high",
                "devices": [{
                    "app_id": "org.example", "pushkey": "key1", "pushkey_ts": 1_700_000_000,
                    "data": {"extra": 1},
                    "tweaks": {"sound": "default", "highlight": true},
                }],
            }})
        );
    }

    #[test]
    fn event_id_only_leaves_the_event_out() {
        let pusher = json!({"data": {"url": "https://gw/_matrix/push/v1/notify",
                                     "format": "event_id_only"}});
        let event = event();
        let body = push(&pusher, &event, vec![json!("notify")]).body();
        let n = &body["notification"];
        assert_eq!(n["event_id"], "$e");
        assert_eq!(n["room_id"], "!r:x");
        assert_eq!(n["counts"]["unread"], 3);
        assert_eq!(n["prio"], "low");
        assert_eq!(n["devices"][0]["data"], json!({"format": "event_id_only"}));
        assert_eq!(n["devices"][0]["tweaks"], json!({}));
        for absent in [
            "content",
            "sender",
            "sender_display_name",
            "room_name",
            "type",
        ] {
            assert!(n.get(absent).is_none(), "{absent} in {body}");
        }
    }

    #[test]
    fn rejected_pushkeys_are_read_from_the_answer() {
        assert_eq!(rejected(br#"{"rejected":["a","b"]}"#), vec!["a", "b"]);
        assert!(rejected(b"{}").is_empty());
        assert!(rejected(b"not json").is_empty());
    }

    #[test]
    fn backoff_is_capped() {
        let cap = Duration::from_secs(2);
        for failures in 1..40 {
            assert!(backoff(failures, cap) <= cap);
        }
        assert!(backoff(1, cap) <= BACKOFF_BASE);
    }
}
