//! Management commands: talk to the running node's admin API, found through the data
//! directory (`admin.url` and `admin.token`, written by `warren run`).

use std::path::Path;

use anyhow::{Context as _, anyhow, bail};
use serde_json::{Value, json};
use warren_core::admin::{TOKEN_FILE, URL_FILE};

use crate::output;

/// One request to the admin API; the JSON answer or a one-line error.
async fn call(
    data_dir: &Path,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> anyhow::Result<Value> {
    let url = std::fs::read_to_string(data_dir.join(URL_FILE)).with_context(|| {
        format!(
            "no running node found for {} (start one with `warren run`)",
            data_dir.display()
        )
    })?;
    let token = std::fs::read_to_string(data_dir.join(TOKEN_FILE))
        .with_context(|| format!("cannot read the admin token in {}", data_dir.display()))?;
    let client = reqwest::Client::new();
    let mut request = client
        .request(method, format!("{}/_warren/admin/v1/{path}", url.trim()))
        .bearer_auth(token.trim());
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.map_err(|e| {
        anyhow!(
            "the node for {} is not running or not answering at {} ({e})",
            data_dir.display(),
            url.trim()
        )
    })?;
    let status = response.status();
    let answer: Value = response.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        let message = answer["error"].as_str().unwrap_or("no message");
        bail!("the node refused: {message} (HTTP {status})");
    }
    Ok(answer)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")
}

fn print(lines: Vec<String>) -> anyhow::Result<()> {
    output::stdout_lines(&lines).context("could not write to stdout")
}

fn get(data_dir: &Path, path: &str) -> anyhow::Result<Value> {
    runtime()?.block_on(call(data_dir, reqwest::Method::GET, path, None))
}

fn post(data_dir: &Path, path: &str, body: Value) -> anyhow::Result<Value> {
    runtime()?.block_on(call(data_dir, reqwest::Method::POST, path, Some(body)))
}

fn delete(data_dir: &Path, path: &str) -> anyhow::Result<Value> {
    runtime()?.block_on(call(data_dir, reqwest::Method::DELETE, path, None))
}

/// `warren status`.
pub fn status(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let s = get(data_dir, "status")?;
    if json_out {
        return print(vec![s.to_string()]);
    }
    let mut lines = vec![
        format!("server name: {}", s["server_name"].as_str().unwrap_or("?")),
        format!("version: {}", s["version"].as_str().unwrap_or("?")),
        format!("uptime: {}s", s["uptime_s"]),
        format!("users: {}", s["users"]),
        format!("rooms: {}", s["rooms"]),
        format!("peers: {}", s["peers"]),
        format!("database: {} bytes", s["database_bytes"]),
    ];
    match s["outbound_queue"].as_object() {
        Some(q) if !q.is_empty() => {
            for (dest, depth) in q {
                lines.push(format!("queued for {dest}: {depth}"));
            }
        }
        _ => lines.push("outbound queue: empty".into()),
    }
    for a in s["appservices"].as_array().into_iter().flatten() {
        lines.push(appservice_line(a));
    }
    print(lines)
}

/// One appservice: id, how far behind, and the last error if its deliveries fail.
fn appservice_line(a: &Value) -> String {
    let id = a["id"].as_str().unwrap_or("?");
    let behind = a["events_behind"].as_i64().unwrap_or(0);
    match (a["url"].as_str(), a["last_error"].as_str()) {
        (None, _) => format!("appservice {id}: no url (takes no transactions)"),
        (Some(_), Some(e)) => format!(
            "appservice {id}: {behind} events behind, failing ({} attempts): {e}",
            a["failures"]
        ),
        (Some(_), None) => format!("appservice {id}: {behind} events behind"),
    }
}

/// `warren appservice list`.
pub fn appservice_list(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let answer = get(data_dir, "appservices")?;
    let list = answer["appservices"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if json_out {
        return print(vec![Value::Array(list).to_string()]);
    }
    if list.is_empty() {
        return print(vec!["no application services registered".into()]);
    }
    let mut lines = Vec::new();
    for a in &list {
        lines.push(appservice_line(a));
        lines.push(format!("  file: {}", a["file"].as_str().unwrap_or("?")));
        lines.push(format!("  url: {}", a["url"].as_str().unwrap_or("(none)")));
        lines.push(format!("  sender: {}", a["sender"].as_str().unwrap_or("?")));
        for kind in ["users", "aliases", "rooms"] {
            let regexes: Vec<&str> = a["namespaces"][kind]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            if !regexes.is_empty() {
                lines.push(format!("  {kind}: {}", regexes.join(", ")));
            }
        }
    }
    print(lines)
}

/// `warren peers`.
pub fn peers(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let answer = get(data_dir, "peers")?;
    let peers = answer["peers"].as_array().cloned().unwrap_or_default();
    if json_out {
        return print(vec![Value::Array(peers).to_string()]);
    }
    if peers.is_empty() {
        return print(vec!["no peers connected".into()]);
    }
    let mut lines = vec![format!(
        "{:<54} {:<12} {:>8} {:>10}  {}",
        "PEER ID", "LINK", "RTT", "LAST SEEN", "SERVER NAME / ADDRESSES"
    )];
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    for p in peers {
        let rtt = p["rtt_ms"]
            .as_f64()
            .map_or("-".to_owned(), |ms| format!("{ms:.1}ms"));
        let seen = p["last_seen_ts"]
            .as_i64()
            .map_or("-".to_owned(), |ts| ago(now - ts));
        lines.push(format!(
            "{:<54} {:<12} {:>8} {:>10}  {}",
            p["peer_id"].as_str().unwrap_or("?"),
            link(&p),
            rtt,
            seen,
            p["server_name"].as_str().unwrap_or("-"),
        ));
        for a in p["addresses"].as_array().into_iter().flatten() {
            lines.push(format!("{:<89}{}", "", a.as_str().unwrap_or("?")));
        }
    }
    print(lines)
}

/// `warren mailbox add`.
pub fn mailbox_add(data_dir: &Path, mailbox: &str) -> anyhow::Result<()> {
    let answer = post(data_dir, "mailboxes", json!({ "mailbox": mailbox }))?;
    print(vec![format!(
        "mailbox added: {}",
        answer["added"].as_str().unwrap_or("?")
    )])
}

/// `warren mailbox remove`.
pub fn mailbox_remove(data_dir: &Path, server_name: &str) -> anyhow::Result<()> {
    let answer = delete(data_dir, &format!("mailboxes/{server_name}"))?;
    print(vec![format!(
        "mailbox removed: {}",
        answer["removed"].as_str().unwrap_or("?")
    )])
}

/// `warren mailbox list`.
pub fn mailbox_list(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let answer = get(data_dir, "mailboxes")?;
    if json_out {
        return print(vec![answer.to_string()]);
    }
    let mut lines = Vec::new();
    let mine = answer["mailboxes"].as_array().cloned().unwrap_or_default();
    if mine.is_empty() {
        lines.push("no mailboxes: mail for this node waits until it is online".to_owned());
    } else {
        lines.push("mailboxes of this node:".to_owned());
        for m in &mine {
            let address = m["address"].as_str().unwrap_or("");
            lines.push(
                format!("  {} {address}", m["server_name"].as_str().unwrap_or("?"))
                    .trim_end()
                    .to_owned(),
            );
        }
    }
    if answer["serving"].as_bool() == Some(false) {
        lines.push("holding mail for others: off".to_owned());
    }
    for h in answer["holding"].as_array().into_iter().flatten() {
        lines.push(format!(
            "holding for {}: {} deposits, {} bytes",
            h["owner"].as_str().unwrap_or("?"),
            h["deposits"].as_i64().unwrap_or(0),
            h["bytes"].as_i64().unwrap_or(0)
        ));
    }
    print(lines)
}

/// `warren connect <multiaddr>`.
pub fn connect(data_dir: &Path, address: &str) -> anyhow::Result<()> {
    let answer = post(data_dir, "connect", json!({ "address": address }))?;
    print(vec![format!(
        "connected: {}",
        answer["connected"].as_str().unwrap_or("?")
    )])
}

/// `warren user add`.
pub fn user_add(
    data_dir: &Path,
    localpart: &str,
    password: &str,
    admin: bool,
) -> anyhow::Result<()> {
    let body = json!({ "localpart": localpart, "password": password, "admin": admin });
    let answer = post(data_dir, "users", body)?;
    print(vec![format!(
        "created: {}",
        answer["user_id"].as_str().unwrap_or("?")
    )])
}

/// `warren user list`.
pub fn user_list(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let answer = get(data_dir, "users")?;
    let users = answer["users"].as_array().cloned().unwrap_or_default();
    if json_out {
        return print(vec![Value::Array(users).to_string()]);
    }
    let lines = users
        .iter()
        .map(|u| {
            let mut flags = Vec::new();
            if u["admin"].as_bool() == Some(true) {
                flags.push("admin");
            }
            if u["deactivated"].as_bool() == Some(true) {
                flags.push("deactivated");
            }
            format!(
                "{} {}",
                u["user_id"].as_str().unwrap_or("?"),
                flags.join(",")
            )
            .trim_end()
            .to_owned()
        })
        .collect();
    print(lines)
}

/// `warren user passwd`.
pub fn user_passwd(data_dir: &Path, user: &str, password: &str) -> anyhow::Result<()> {
    let path = format!("users/{}/password", encode(user));
    let answer = post(data_dir, &path, json!({ "password": password }))?;
    print(vec![format!(
        "password changed: {}",
        answer["user_id"].as_str().unwrap_or("?")
    )])
}

/// `warren user deactivate`.
pub fn user_deactivate(data_dir: &Path, user: &str) -> anyhow::Result<()> {
    let path = format!("users/{}/deactivate", encode(user));
    let answer = post(data_dir, &path, json!({}))?;
    print(vec![format!(
        "deactivated: {}",
        answer["user_id"].as_str().unwrap_or("?")
    )])
}

/// `warren rooms`.
pub fn rooms(data_dir: &Path, json_out: bool) -> anyhow::Result<()> {
    let answer = get(data_dir, "rooms")?;
    let rooms = answer["rooms"].as_array().cloned().unwrap_or_default();
    if json_out {
        return print(vec![Value::Array(rooms).to_string()]);
    }
    if rooms.is_empty() {
        return print(vec!["no rooms".into()]);
    }
    let mut lines = Vec::new();
    for r in rooms {
        let servers = r["servers"].as_array().map_or(0, Vec::len);
        let queued: i64 = r["outbound_queue"]
            .as_object()
            .map_or(0, |q| q.values().filter_map(Value::as_i64).sum());
        lines.push(format!(
            "{}  {}  members: {}  servers: {}  queued: {}",
            r["room_id"].as_str().unwrap_or("?"),
            r["name"].as_str().unwrap_or("(no name)"),
            r["joined_members"],
            servers,
            queued
        ));
    }
    print(lines)
}

/// "now", "42s ago", "5m ago", "3h ago", "2d ago".
fn ago(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    match s {
        0..=4 => "now".into(),
        5..=119 => format!("{s}s ago"),
        120..=7199 => format!("{}m ago", s / 60),
        7200..=172_799 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86_400),
    }
}

/// Percent-encode a path segment (user ids contain `@` and `:`).
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The LINK column: `direct` or `relayed`, with what requests run over when known
/// (`direct/quic`, `direct/tcp`, `relayed`).
fn link(p: &Value) -> String {
    let connection = p["connection"].as_str().unwrap_or("?");
    match p["transport"].as_str() {
        Some(t) if connection == "direct" => format!("{connection}/{t}"),
        _ => connection.to_owned(),
    }
}
