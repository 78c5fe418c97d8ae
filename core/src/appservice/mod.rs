//! Application services: bridges and bots that act for many users (the spec's
//! Application Service API, as Synapse implements it).
//!
//! - [`registration`]: the YAML files, checked at start.
//! - Appservice → node: its `as_token` authenticates it as its sender or, with
//!   `user_id=`, as any user in its namespaces (and with `device_id=`, MSC3202, as one of
//!   their devices); see [`AppServices::by_token`] and the client API's `Auth`.
//! - Node → appservice: [`sender`], a durable ordered transaction stream per appservice
//!   that follows the node's event stream; [`query`], user and alias queries, third-party
//!   lookups and pings.

pub mod query;
pub mod registration;
pub mod sender;

use std::sync::Arc;

use parking_lot::Mutex;

pub use registration::AppService;

/// How an appservice's deliveries are going, for `warren appservice list` and status.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Delivery {
    /// The last failure, if the last attempt failed.
    pub last_error: Option<String>,
    /// When the last transaction was accepted (ms since the epoch).
    pub last_success_ms: Option<i64>,
    /// Failed attempts in a row.
    pub failures: u32,
}

/// One registered appservice and its delivery state.
#[derive(Debug)]
pub struct Registered {
    /// The registration.
    pub reg: AppService,
    /// How deliveries are going.
    pub delivery: Mutex<Delivery>,
    /// Wakes its sender (new events, a ping that found it back).
    pub wake: tokio::sync::Notify,
}

impl std::ops::Deref for Registered {
    type Target = AppService;
    fn deref(&self) -> &AppService {
        &self.reg
    }
}

/// Every registered appservice of this node.
#[derive(Debug, Default)]
pub struct AppServices {
    list: Vec<Arc<Registered>>,
}

impl AppServices {
    /// The registry of these registrations.
    pub fn new(regs: Vec<AppService>) -> AppServices {
        AppServices {
            list: regs
                .into_iter()
                .map(|reg| {
                    Arc::new(Registered {
                        reg,
                        delivery: Mutex::new(Delivery::default()),
                        wake: tokio::sync::Notify::new(),
                    })
                })
                .collect(),
        }
    }

    /// All of them, in registration order.
    pub fn all(&self) -> &[Arc<Registered>] {
        &self.list
    }

    /// Whether any is registered (most nodes have none: every hook is skipped).
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// The appservice presenting this `as_token`.
    pub fn by_token(&self, token: &str) -> Option<&Arc<Registered>> {
        // Compared in full whatever the prefix, so timing says nothing about the token.
        self.list
            .iter()
            .find(|a| constant_time_eq(a.as_token.as_bytes(), token.as_bytes()))
    }

    /// The appservice with this id.
    pub fn by_id(&self, id: &str) -> Option<&Arc<Registered>> {
        self.list.iter().find(|a| a.id == id)
    }

    /// The appservice that holds `user_id` in an exclusive namespace, if any.
    pub fn exclusive_user_owner(&self, user_id: &str) -> Option<&Arc<Registered>> {
        self.list.iter().find(|a| a.claims_user(user_id))
    }

    /// The appservice that holds `alias` in an exclusive namespace, if any.
    pub fn exclusive_alias_owner(&self, alias: &str) -> Option<&Arc<Registered>> {
        self.list.iter().find(|a| a.claims_alias(alias))
    }

    /// Whether `user_id` is an appservice's user (in some user namespace or a sender):
    /// such users are exempt from e.g. the inactive-user rules.
    pub fn is_appservice_user(&self, user_id: &str) -> bool {
        self.list.iter().any(|a| a.is_user_in_namespace(user_id))
    }

    /// Wake every appservice's sender (new events were committed).
    pub fn wake_all(&self) {
        for a in &self.list {
            a.wake.notify_one();
        }
    }
}

/// Each appservice as operators see it: registration, stream position, how many
/// events the node has committed past it (the most its queue can hold), and how its
/// deliveries go.
pub fn report(
    server: &crate::server::Server,
) -> Result<Vec<serde_json::Value>, crate::error::Error> {
    let now = server.notifier.current().pos;
    server.db.read(|c| {
        let mut out = Vec::new();
        for a in server.appservices.all() {
            let pos = crate::storage::appservice_pos(c, &a.id)?;
            let behind = match pos {
                Some(p) => crate::storage::timeline_events_after(c, p, now)?,
                None => 0,
            };
            let d = a.delivery.lock().clone();
            out.push(serde_json::json!({
                "id": a.id,
                "url": a.url,
                "sender": a.sender,
                "file": a.file.display().to_string(),
                "namespaces": {
                    "users": a.users.iter().map(|p| p.source.as_str()).collect::<Vec<_>>(),
                    "aliases": a.aliases.iter().map(|p| p.source.as_str()).collect::<Vec<_>>(),
                    "rooms": a.rooms.iter().map(|p| p.source.as_str()).collect::<Vec<_>>(),
                },
                "rate_limited": a.rate_limited,
                "receive_ephemeral": a.receive_ephemeral,
                "msc3202": a.msc3202,
                "stream_position": pos,
                "events_behind": behind,
                "last_error": d.last_error,
                "failures": d.failures,
                "last_success_ms": d.last_success_ms,
            }));
        }
        Ok(out)
    })
}

/// Create each appservice's own user (its `sender_localpart`) if it does not exist yet,
/// as Synapse does: the appservice acts as it without registering.
pub fn register_senders(server: &crate::server::Server) -> Result<(), crate::error::Error> {
    if server.appservices.is_empty() {
        return Ok(());
    }
    server.write(|tx| {
        for a in server.appservices.all() {
            if !crate::storage::user_exists(tx, &a.sender)? {
                let localpart = a
                    .sender
                    .strip_prefix('@')
                    .and_then(|s| s.split_once(':'))
                    .map_or("", |(l, _)| l);
                crate::storage::create_user(tx, &a.sender, None, false, localpart)?;
                tracing::info!(appservice = %a.id, user = %a.sender, "created the appservice's user");
            }
        }
        Ok(())
    })
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
