//! Simplified sliding sync (MSC4186, `org.matrix.simplified_msc3575`): the sync Element X
//! and matrix-sdk-ui's `RoomListService` use.
//!
//! The client names lists (a filter and ranges over the user's rooms sorted by recency) and
//! room subscriptions; the answer carries, for the rooms in range, what changed since the
//! connection's previous response, plus the list counts and the extensions (to-device,
//! E2EE, account data, receipts, typing).
//!
//! "What the client already has" is per-connection state kept in memory, keyed by
//! (user, device, `conn_id`): for each room sent, the position its timeline was sent up
//! to, the membership it was sent with, the `required_state` it was sent with and which
//! lazy members. Each response is a new immutable snapshot named by its `pos`; a request
//! names the snapshot it builds on, so a retried request (the response was lost) simply
//! recomputes from the same snapshot. Positions the node no longer holds (a restart,
//! eviction, a connection reset) answer `400 M_UNKNOWN_POS` and the client starts over,
//! as the MSC says. Requests are not sticky: clients send the whole configuration each
//! time.
//!
//! Cost per request: one index probe per bump type for each of the user's rooms (to sort
//! them), then per room in range the events since its last sent position (at most the
//! timeline limit) and point lookups of the state asked for. Nothing walks room history.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{invite_state, receipt_event, room_cache, sync_opts};
use crate::e2ee;
use crate::error::Error;
use crate::events::client_event;
use crate::requester::Requester;
use crate::rooms::visibility::{visibility_for, visible_events};
use crate::server::Server;
use crate::storage::{self, StoredEvent};
use crate::streams::{StreamPosition, SyncToken};

/// The longest a request may wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest timeline a room may ask for.
const MAX_TIMELINE_LIMIT: usize = 100;
/// Connections kept in memory; the least recently used is dropped beyond this (its client
/// gets `M_UNKNOWN_POS` and starts over).
const MAX_CONNECTIONS: usize = 512;
/// Connections one user may hold: beyond this their own least recently used one goes, so
/// one user opening many cannot push everyone else's out.
const MAX_USER_CONNECTIONS: usize = 16;
/// A connection unused this long is dropped when a new one starts (its client gets
/// `M_UNKNOWN_POS` and starts over), so abandoned connections do not sit in memory.
const CONNECTION_TTL: Duration = Duration::from_secs(30 * 60);
/// Members remembered per room of a connection as already sent for `$LAZY`; past it the
/// set starts afresh (members are sent again, which is harmless).
const MAX_LAZY_MEMBERS: usize = 1000;
/// Longest accepted `conn_id` (matrix-sdk uses at most 16 characters).
const MAX_CONN_ID: usize = 64;
/// Ranges, lists, subscriptions and `required_state` entries per request, so one request
/// cannot ask for unbounded work.
const MAX_ITEMS: usize = 64;
/// Heroes sent for an unnamed room.
const MAX_HEROES: usize = 5;

/// Event types that move a room up the list (Synapse's `bump_event_types`): messages and
/// calls, not state churn such as profile changes.
pub const BUMP_EVENT_TYPES: &[&str] = &[
    "m.room.create",
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.call.invite",
    "m.poll.start",
    "m.beacon_info",
];

mod build;
mod connections;
mod extensions;
mod request;
mod rooms;

use build::{Candidate, RoomConfig, build};
pub use connections::Connections;
use connections::{RoomSent, Snapshot};
#[cfg(test)]
mod cache_tests;
pub use request::*;
pub use rooms::CachedRoom;
use rooms::{invited_room, joined_room, left_room};

/// Parsed query parameters.
pub struct Params {
    /// The snapshot to build on.
    pub pos: Option<String>,
    /// Long-poll duration.
    pub timeout: Duration,
}

/// Run one sliding sync request, waiting up to the timeout when there is nothing new.
pub async fn sync(
    server: Arc<Server>,
    caller: Requester,
    params: Params,
    req: Request,
) -> Result<Value, Error> {
    let conn_id = req.conn_id.clone().unwrap_or_default();
    if conn_id.len() > MAX_CONN_ID {
        return Err(Error::InvalidParam("conn_id is too long".into()));
    }
    let too_many = req.lists.len() > MAX_ITEMS
        || req.room_subscriptions.len() > MAX_ITEMS
        || req
            .lists
            .values()
            .any(|l| l.ranges.len() > MAX_ITEMS || l.details.required_state.len() > MAX_ITEMS)
        || req
            .room_subscriptions
            .values()
            .any(|s| s.required_state.len() > MAX_ITEMS);
    if too_many {
        return Err(Error::InvalidParam(format!(
            "at most {MAX_ITEMS} lists, subscriptions, ranges and required_state entries"
        )));
    }
    for l in req.lists.values() {
        if l.ranges.iter().any(|(a, b)| a > b) {
            return Err(Error::InvalidParam(
                "a range must be [start, end] with start <= end".into(),
            ));
        }
    }
    let to_device_since = match &req.extensions.to_device.since {
        Some(s) => Some(
            s.parse::<StreamPosition>()
                .ok()
                .filter(|p| *p >= 0)
                .ok_or_else(|| Error::InvalidParam(format!("invalid to_device since token {s}")))?,
        ),
        None => None,
    };
    let key = (caller.user_id.clone(), caller.device_id.clone(), conn_id);
    let prev = server.sync.sliding.start(&key, params.pos.as_deref())?;
    // Sending `since` says everything up to it arrived: delete it from the inbox.
    if req.extensions.to_device.enabled == Some(true)
        && let Some(since) = to_device_since
    {
        e2ee::to_device::acknowledge(&server, &caller, &SyncToken::at(since))?;
    }
    let deadline = Instant::now() + params.timeout.min(MAX_TIMEOUT);
    let req = Arc::new(req);
    // Registered before the first position is read: a change committed after it wakes
    // this call, even while it is still building.
    let waiter = server.notifier.waiter(&caller.user_id);
    // Woken by a change, the build is a small delta: it runs on this worker (its other
    // tasks handed on) rather than on the blocking pool and back, two thread wake-ups
    // on the way from a commit to the answer (as `/sync` does).
    let mut woken = false;
    loop {
        let now = server.notifier.current();
        let (body, snap, has_data) = if woken {
            crate::server::off_the_reactor(|| {
                server
                    .db
                    .read_tx(|c| build(c, &server, &caller, &req, &prev, now, to_device_since))
            })?
        } else {
            let server = server.clone();
            let caller = caller.clone();
            let req = req.clone();
            let prev = prev.clone();
            tokio::task::spawn_blocking(move || {
                server
                    .db
                    .read_tx(|c| build(c, &server, &caller, &req, &prev, now, to_device_since))
            })
            .await
            .map_err(Error::internal)??
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        let done = has_data || prev.token.is_none() || remaining.is_zero();
        if !done {
            // From here on only what concerns the user or their rooms (the joined rooms
            // the build just ordered) wakes the call.
            waiter.narrow(snap.bumps.keys().cloned().collect());
        }
        if done
            || tokio::time::timeout(remaining, waiter.notified())
                .await
                .is_err()
        {
            let pos = server.sync.sliding.store(key, params.pos.as_deref(), snap);
            let mut body = body;
            body["pos"] = json!(pos.to_string());
            if let Some(txn) = &req.txn_id {
                body["txn_id"] = json!(txn);
            }
            return Ok(body);
        }
        woken = true;
    }
}
