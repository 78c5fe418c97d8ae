//! The local admin API behind `warren status`, `peers`, `connect`, `user …` and `rooms`.
//!
//! Served on the client listener under `/_warren/admin/v1/`, authorised by a random
//! token the node keeps in `<data_dir>/admin.token` (mode 0600): whoever can read the
//! data directory can manage the node, nobody else. The node also writes the URL it
//! serves on to `<data_dir>/admin.url`, so management commands find it from
//! `--data-dir` alone.

use std::path::Path;
use std::sync::Arc;

use axum::extract::{Path as UrlPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::account::valid_localpart;
use crate::error::Error;
use crate::password::hash_password;
use crate::server::Server;
use crate::storage;

/// Token file in the data directory.
pub const TOKEN_FILE: &str = "admin.token";
/// File holding the client API URL of the running node.
pub const URL_FILE: &str = "admin.url";

/// Read the admin token, creating a random one on first use.
pub fn load_or_create_token(data_dir: &Path) -> std::io::Result<String> {
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::read_to_string(&path) {
        Ok(t) if t.trim().len() >= 32 => return Ok(t.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let token = crate::rooms::random_string(48);
    crate::identity::write_private(&path, token.as_bytes())?;
    Ok(token)
}

/// Record where the node serves, for management commands.
pub fn write_url(data_dir: &Path, url: &str) -> std::io::Result<()> {
    crate::identity::write_private(&data_dir.join(URL_FILE), url.as_bytes())
}

/// The admin routes, with their token check.
pub fn routes(server: Arc<Server>) -> Router<Arc<Server>> {
    Router::new()
        .route("/_warren/admin/v1/status", get(status))
        .route("/_warren/admin/v1/peers", get(peers))
        .route("/_warren/admin/v1/connect", post(connect))
        .route("/_warren/admin/v1/users", get(list_users).post(add_user))
        .route(
            "/_warren/admin/v1/users/{user_id}/password",
            post(set_password),
        )
        .route(
            "/_warren/admin/v1/users/{user_id}/deactivate",
            post(deactivate),
        )
        .route("/_warren/admin/v1/rooms", get(rooms))
        .route("/_warren/admin/v1/reports", get(reports))
        .route("/_warren/admin/v1/metrics", get(metrics))
        .route("/_warren/admin/v1/appservices", get(appservices))
        .route(
            "/_warren/admin/v1/mailboxes",
            get(mailboxes).post(add_mailbox),
        )
        .route(
            "/_warren/admin/v1/mailboxes/{server_name}",
            axum::routing::delete(remove_mailbox),
        )
        .route_layer(axum::middleware::from_fn_with_state(server, require_admin))
}

async fn require_admin(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let ok = match (given, server.admin_token.get()) {
        (Some(g), Some(t)) => constant_time_eq(g.as_bytes(), t.as_bytes()),
        _ => false,
    };
    if ok {
        next.run(request).await
    } else {
        Error::Forbidden("admin token required (see admin.token in the data directory)".into())
            .into_response()
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn status(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    let (users, rooms, queue) = server.db.read(|c| {
        let users = storage::list_users(c)?.len();
        let rooms = storage::list_rooms(c)?.len();
        let mut queue = serde_json::Map::new();
        for d in storage::outbox_destinations(c)? {
            queue.insert(d.clone(), json!(storage::outbox_depth(c, &d)?));
        }
        Ok((users, rooms, queue))
    })?;
    let peers = match server.transport() {
        Some(t) => t.peers().await.len(),
        None => 0,
    };
    Ok(Json(json!({
        "server_name": server.server_name(),
        "version": env!("CARGO_PKG_VERSION"),
        "uptime_s": server.started.elapsed().as_secs(),
        "users": users,
        "rooms": rooms,
        "peers": peers,
        "federation": server.transport().is_some(),
        "outbound_queue": queue,
        "database_bytes": server.db.size_bytes()?,
        "appservices": crate::appservice::report(&server)?,
    })))
}

/// Registered application services with their queue position and last error.
async fn appservices(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    Ok(Json(
        json!({"appservices": crate::appservice::report(&server)?}),
    ))
}

async fn mailboxes(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    Ok(Json(crate::mailbox::report(&server)?))
}

#[derive(Deserialize)]
struct MailboxBody {
    /// A server name or a multiaddr.
    mailbox: String,
}

async fn add_mailbox(
    State(server): State<Arc<Server>>,
    Json(body): Json<MailboxBody>,
) -> Result<Json<Value>, Error> {
    let name = crate::mailbox::record::add(&server, &body.mailbox).await?;
    Ok(Json(json!({ "added": name })))
}

async fn remove_mailbox(
    State(server): State<Arc<Server>>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, Error> {
    if !crate::mailbox::record::remove(&server, &name)? {
        return Err(Error::NotFound(format!(
            "{name} is not a mailbox of this node"
        )));
    }
    Ok(Json(json!({ "removed": name })))
}

/// Connected peers, then peers known from the address book but not connected, each
/// with when it was last seen (ms since the epoch).
async fn peers(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    let connected = match server.transport() {
        Some(t) => t.peers().await,
        None => Vec::new(),
    };
    let book = server.db.read(|c| storage::recent_peer_addresses(c, 512))?;
    let last_seen = |peer: &str| {
        book.iter()
            .filter(|r| r.peer_id == peer)
            .map(|r| r.last_seen_ts)
            .max()
    };
    let mut out: Vec<Value> = Vec::new();
    for p in &connected {
        let mut v = serde_json::to_value(p)?;
        v["last_seen_ts"] = json!(storage::now_ms());
        out.push(v);
    }
    let mut known: Vec<&str> = Vec::new();
    for row in &book {
        if connected.iter().any(|p| p.peer_id == row.peer_id)
            || known.contains(&row.peer_id.as_str())
        {
            continue;
        }
        known.push(&row.peer_id);
        let addresses: Vec<&str> = book
            .iter()
            .filter(|r| r.peer_id == row.peer_id)
            .map(|r| r.address.as_str())
            .collect();
        out.push(json!({
            "peer_id": row.peer_id,
            "server_name": null,
            "addresses": addresses,
            "connection": "disconnected",
            "rtt_ms": null,
            "last_seen_ts": last_seen(&row.peer_id),
        }));
    }
    Ok(Json(json!({ "peers": out })))
}

#[derive(Deserialize)]
struct ConnectBody {
    address: String,
}

async fn connect(
    State(server): State<Arc<Server>>,
    Json(body): Json<ConnectBody>,
) -> Result<Json<Value>, Error> {
    let transport = server
        .transport()
        .ok_or_else(|| Error::RemoteServer("this node has no P2P transport".into()))?;
    let server_name = transport
        .connect(&body.address)
        .await
        .map_err(|e| Error::RemoteServer(e.to_string()))?;
    Ok(Json(json!({ "connected": server_name })))
}

async fn list_users(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    let users = server.db.read(storage::list_users)?;
    let users: Vec<Value> = users
        .into_iter()
        .map(|(user_id, admin, deactivated)| {
            json!({ "user_id": user_id, "admin": admin, "deactivated": deactivated })
        })
        .collect();
    Ok(Json(json!({ "users": users })))
}

#[derive(Deserialize)]
struct NewUser {
    localpart: String,
    password: String,
    #[serde(default)]
    admin: bool,
}

async fn add_user(
    State(server): State<Arc<Server>>,
    Json(body): Json<NewUser>,
) -> Result<Json<Value>, Error> {
    let localpart = body.localpart.to_lowercase();
    if !valid_localpart(&localpart) {
        return Err(Error::InvalidUsername(
            "user names may contain only a-z, 0-9 and ._=-/+".into(),
        ));
    }
    if body.password.is_empty() {
        return Err(Error::InvalidParam("the password must not be empty".into()));
    }
    let user_id = server.user_id(&localpart);
    let hash = hash_password(body.password).await?;
    crate::account::register(&server, &user_id, &localpart, Some(&hash), body.admin, None)?;
    Ok(Json(json!({ "user_id": user_id })))
}

/// A user id, or a localpart of this server.
fn local_user(server: &Server, who: &str) -> Result<String, Error> {
    let user_id = if who.starts_with('@') {
        who.to_owned()
    } else {
        server.user_id(who)
    };
    let exists = server.db.read(|c| storage::user_exists(c, &user_id))?;
    if !server.is_local_user(&user_id) || !exists {
        return Err(Error::NotFound(format!("no user {user_id} on this node")));
    }
    Ok(user_id)
}

#[derive(Deserialize)]
struct NewPassword {
    password: String,
}

async fn set_password(
    State(server): State<Arc<Server>>,
    UrlPath(who): UrlPath<String>,
    Json(body): Json<NewPassword>,
) -> Result<Json<Value>, Error> {
    let user_id = local_user(&server, &who)?;
    if body.password.is_empty() {
        return Err(Error::InvalidParam("the password must not be empty".into()));
    }
    let hash = hash_password(body.password).await?;
    crate::account::set_password(&server, &user_id, &hash, None)?;
    Ok(Json(json!({ "user_id": user_id })))
}

async fn deactivate(
    State(server): State<Arc<Server>>,
    UrlPath(who): UrlPath<String>,
) -> Result<Json<Value>, Error> {
    let user_id = local_user(&server, &who)?;
    crate::account::deactivate(&server, &user_id, false).await?;
    Ok(Json(json!({ "user_id": user_id, "deactivated": true })))
}

async fn rooms(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    let rooms = server.db.read(|c| {
        let mut out = Vec::new();
        for (room_id, joined) in storage::list_rooms(c)? {
            let name = storage::current_state_event(c, &room_id, "m.room.name", "")?
                .and_then(|id| storage::get_event(c, &id).ok().flatten())
                .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
                .and_then(|v| v["content"]["name"].as_str().map(str::to_owned));
            let servers = storage::joined_servers(c, &room_id)?;
            let mut queued = serde_json::Map::new();
            for s in servers.iter().filter(|s| *s != server.server_name()) {
                queued.insert(s.clone(), json!(storage::outbox_depth(c, s)?));
            }
            // The DAG's tips: after a partition heals, nodes sharing the room should
            // report the same set (and one, once a new event merges the branches).
            let extremities: Vec<String> = storage::forward_extremities(c, &room_id)?
                .into_iter()
                .map(|(id, _)| id)
                .collect();
            out.push(json!({
                "room_id": room_id,
                "name": name,
                "joined_members": joined,
                "servers": servers,
                "outbound_queue": queued,
                "forward_extremities": extremities,
            }));
        }
        Ok(out)
    })?;
    Ok(Json(json!({ "rooms": rooms })))
}

#[derive(Deserialize)]
struct ReportsQuery {
    from: Option<i64>,
    limit: Option<usize>,
}

/// `GET /_warren/admin/v1/reports?from=&limit=`: reports of events and rooms, newest
/// first; `next_token` continues the list.
async fn reports(
    State(server): State<Arc<Server>>,
    axum::extract::Query(q): axum::extract::Query<ReportsQuery>,
) -> Result<Json<Value>, Error> {
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let rows = server
        .db
        .read(|c| storage::list_reports(c, q.from, limit))?;
    let next = (rows.len() == limit)
        .then(|| rows.last().map(|r| r.id))
        .flatten();
    let reports: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            json!({
                "id": r.id,
                "received_ts": r.received_ts,
                "room_id": r.room_id,
                "event_id": r.event_id,
                "user_id": r.user_id,
                "reason": r.reason,
                "score": r.score,
            })
        })
        .collect();
    let mut body = json!({ "reports": reports });
    if let Some(n) = next {
        body["next_token"] = json!(n);
    }
    Ok(Json(body))
}

/// Prometheus text exposition format 0.0.4 (see [`crate::metrics`]).
async fn metrics(State(server): State<Arc<Server>>) -> Result<Response, Error> {
    let body = crate::metrics::render(&server).await?;
    Ok((
        [(http::header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        body,
    )
        .into_response())
}
