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

use super::{invite_state, receipt_event, sync_opts};
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

/// The request body.
#[derive(Deserialize, Default)]
pub struct Request {
    /// Names the connection; one client may run several (the room list, notifications).
    #[serde(default)]
    pub conn_id: Option<String>,
    /// Echoed in the response.
    #[serde(default)]
    pub txn_id: Option<String>,
    /// Named lists.
    #[serde(default)]
    pub lists: BTreeMap<String, ListRequest>,
    /// Rooms wanted whatever their place in the lists.
    #[serde(default)]
    pub room_subscriptions: BTreeMap<String, RoomDetails>,
    /// Extensions.
    #[serde(default)]
    pub extensions: Extensions,
}

/// One list.
#[derive(Deserialize, Default)]
pub struct ListRequest {
    /// Inclusive index ranges into the sorted, filtered rooms.
    #[serde(default)]
    pub ranges: Vec<(u64, u64)>,
    /// What to send for each room.
    #[serde(flatten)]
    pub details: RoomDetails,
    /// Which rooms are in the list.
    #[serde(default)]
    pub filters: Option<ListFilters>,
}

/// `required_state` and `timeline_limit`.
#[derive(Deserialize, Default, Clone)]
pub struct RoomDetails {
    /// `[type, state_key]` pairs; `*` wildcards, `$ME`, `$LAZY`.
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    /// Timeline events to send.
    #[serde(default)]
    pub timeline_limit: u64,
}

/// List filters (the simple ones).
#[derive(Deserialize, Default)]
pub struct ListFilters {
    /// Only rooms in (true) or not in (false) `m.direct`.
    pub is_dm: Option<bool>,
    /// Only invites (true) or no invites (false).
    pub is_invite: Option<bool>,
    /// Only encrypted (true) or unencrypted (false) rooms.
    pub is_encrypted: Option<bool>,
}

/// The extensions asked for.
#[derive(Deserialize, Default)]
pub struct Extensions {
    /// To-device messages.
    #[serde(default)]
    pub to_device: ToDeviceExt,
    /// Device lists and key counts.
    #[serde(default)]
    pub e2ee: Toggle,
    /// Global and room account data.
    #[serde(default)]
    pub account_data: RoomsExt,
    /// Read receipts.
    #[serde(default)]
    pub receipts: RoomsExt,
    /// Typing notifications.
    #[serde(default)]
    pub typing: RoomsExt,
}

/// `{"enabled": bool}`.
#[derive(Deserialize, Default)]
pub struct Toggle {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The to-device extension.
#[derive(Deserialize, Default)]
pub struct ToDeviceExt {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The previous `next_batch`: everything up to it was received and may be deleted.
    #[serde(default)]
    pub since: Option<String>,
}

/// An extension that applies to some of the rooms: by list name and by room id, `*` for
/// all (the default for both, as in Synapse).
#[derive(Deserialize, Default)]
pub struct RoomsExt {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// List names, or `*`.
    #[serde(default)]
    pub lists: Option<Vec<String>>,
    /// Subscribed room ids, or `*`.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

impl RoomsExt {
    fn on(&self) -> bool {
        self.enabled == Some(true)
    }
}

/// What was sent of one room on a connection.
#[derive(Clone, Debug)]
struct RoomSent {
    /// The timeline was sent up to here.
    pos: StreamPosition,
    /// The membership the room was sent with: a change (invite → join, a rejoin) sends
    /// the room afresh.
    membership: String,
    /// The `required_state` it was sent with; a new one sends the state again. Shared
    /// between the rooms of a list, so a connection's memory grows with its rooms only
    /// by a few words each.
    required_state: Arc<BTreeSet<(String, String)>>,
    /// Members already sent for `$LAZY`.
    lazy: HashSet<String>,
}

/// One response's view of the connection.
#[derive(Clone, Default)]
struct Snapshot {
    /// The stream and typing position the response was computed at; `None` before the
    /// first response.
    token: Option<SyncToken>,
    rooms: HashMap<String, RoomSent>,
    counts: BTreeMap<String, usize>,
    /// Each joined room's bump stamp at `token`: a room unchanged since is not looked up
    /// again (the lists order every room the user is in, on every request).
    bumps: HashMap<String, StreamPosition>,
}

struct ConnState {
    last_used: Instant,
    /// Recent snapshots by `pos`: the newest, and the one before it (the client may retry
    /// a request whose response it never got).
    snapshots: Vec<(u64, Arc<Snapshot>)>,
}

/// All sliding sync connections of this node.
pub struct Connections {
    conns: Mutex<HashMap<(String, String, String), ConnState>>,
    next_pos: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        // Positions start from the clock so a `pos` issued before a restart is never
        // mistaken for one issued after.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Connections {
            conns: Mutex::new(HashMap::new()),
            next_pos: AtomicU64::new(start),
        }
    }
}

type ConnKey = (String, String, String);

impl Connections {
    /// The snapshot a request builds on: empty without `pos` (a new connection replaces
    /// any old one of that name), else the named one.
    fn start(&self, key: &ConnKey, pos: Option<&str>) -> Result<Arc<Snapshot>, Error> {
        let mut conns = self.conns.lock();
        let Some(pos) = pos else {
            conns.remove(key);
            return Ok(Arc::new(Snapshot::default()));
        };
        let unknown = || Error::UnknownPos(pos.to_owned());
        let n: u64 = pos.parse().map_err(|_| unknown())?;
        let conn = conns.get_mut(key).ok_or_else(unknown)?;
        conn.last_used = Instant::now();
        let snap = conn
            .snapshots
            .iter()
            .find(|(p, _)| *p == n)
            .map(|(_, s)| s.clone())
            .ok_or_else(unknown)?;
        // Using `n` acknowledges it: anything older can no longer be asked for.
        conn.snapshots.retain(|(p, _)| *p >= n);
        Ok(snap)
    }

    /// Keep a response's snapshot, built on the one named `base`, and name it.
    fn store(&self, key: ConnKey, base: Option<&str>, snap: Snapshot) -> u64 {
        let pos = self.next_pos.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns.lock();
        if !conns.contains_key(&key) {
            conns.retain(|_, c| c.last_used.elapsed() < CONNECTION_TTL);
            let users = conns.keys().filter(|k| k.0 == key.0).count();
            let evict = if users >= MAX_USER_CONNECTIONS {
                conns
                    .iter()
                    .filter(|(k, _)| k.0 == key.0)
                    .min_by_key(|(_, c)| c.last_used)
            } else if conns.len() >= MAX_CONNECTIONS {
                conns.iter().min_by_key(|(_, c)| c.last_used)
            } else {
                None
            };
            if let Some(oldest) = evict.map(|(k, _)| k.clone()) {
                conns.remove(&oldest);
            }
        }
        let conn = conns.entry(key).or_insert_with(|| ConnState {
            last_used: Instant::now(),
            snapshots: Vec::new(),
        });
        conn.last_used = Instant::now();
        conn.snapshots.push((pos, Arc::new(snap)));
        // The snapshot this response was built on (the client retries it if the response
        // is lost) and the newest two; older ones go.
        let base: Option<u64> = base.and_then(|b| b.parse().ok());
        while conn.snapshots.len() > 3 {
            let Some(i) = conn.snapshots.iter().position(|(p, _)| Some(*p) != base) else {
                break;
            };
            conn.snapshots.remove(i);
        }
        pos
    }
}

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
    let prev = server.sliding.start(&key, params.pos.as_deref())?;
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
    loop {
        let now = server.notifier.current();
        let (body, snap, has_data) = {
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
            let pos = server.sliding.store(key, params.pos.as_deref(), snap);
            let mut body = body;
            body["pos"] = json!(pos.to_string());
            if let Some(txn) = &req.txn_id {
                body["txn_id"] = json!(txn);
            }
            return Ok(body);
        }
    }
}

/// What to send for one room: the union of the configurations that selected it.
#[derive(Default, Clone)]
struct RoomConfig {
    timeline_limit: usize,
    required_state: Arc<BTreeSet<(String, String)>>,
}

impl RoomConfig {
    fn merge(&mut self, d: &RoomDetails, me: &str) {
        self.timeline_limit = self
            .timeline_limit
            .max((d.timeline_limit as usize).min(MAX_TIMELINE_LIMIT));
        for (ty, sk) in &d.required_state {
            let sk = if sk == "$ME" { me } else { sk.as_str() };
            Arc::make_mut(&mut self.required_state).insert((ty.clone(), sk.to_owned()));
        }
    }

    fn lazy(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY")
    }

    /// Whether `(ty, sk)` is asked for (other than through `$LAZY`).
    fn wants(&self, ty: &str, sk: &str) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "*" || t == ty) && (k == "*" || k == sk))
    }
}

/// A room the user has a current membership in.
struct Candidate {
    room_id: String,
    membership: String,
    event_id: String,
    mpos: StreamPosition,
    bump: StreamPosition,
}

/// Build one response from `prev` at `now`: body (without `pos`), the new snapshot and
/// whether it carries anything.
fn build(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    req: &Request,
    prev: &Snapshot,
    now: SyncToken,
    to_device_since: Option<StreamPosition>,
) -> Result<(Value, Snapshot, bool), Error> {
    let me = caller.user_id.as_str();
    let memberships = storage::user_memberships(c, me)?;
    let direct = direct_rooms(c, me)?;

    // The rooms the lists range over, newest bump first.
    let mut candidates = Vec::new();
    let mut left = Vec::new();
    let changes = server.db.room_changes();
    let mut bumps = HashMap::new();
    for (room_id, membership, event_id, mpos) in memberships {
        let bump = match membership.as_str() {
            "join" => {
                let known = prev
                    .token
                    .filter(|t| !changes.changed_since(&room_id, t.pos))
                    .and_then(|_| prev.bumps.get(&room_id).copied());
                let bump = match known {
                    Some(b) => b,
                    None => storage::newest_of_types(c, &room_id, BUMP_EVENT_TYPES, now.pos)?
                        .unwrap_or(mpos),
                };
                bumps.insert(room_id.clone(), bump);
                bump
            }
            "invite" | "knock" => mpos,
            _ => {
                left.push((room_id, membership, mpos));
                continue;
            }
        };
        candidates.push(Candidate {
            room_id,
            membership,
            event_id,
            mpos,
            bump,
        });
    }
    candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));

    let mut selected: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut list_rooms: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    let mut lists = Map::new();
    let mut counts = BTreeMap::new();
    let mut encrypted: HashMap<String, bool> = HashMap::new();
    for (name, list) in &req.lists {
        let mut matching = Vec::new();
        for cand in &candidates {
            if list_allows(c, list.filters.as_ref(), cand, &direct, &mut encrypted)? {
                matching.push(cand);
            }
        }
        // Overlapping ranges name a room once: each is merged once per list.
        let mut indices = std::collections::BTreeSet::new();
        if let Some(last) = matching.len().checked_sub(1) {
            for (start, end) in &list.ranges {
                let start = usize::try_from(*start).unwrap_or(usize::MAX);
                let end = usize::try_from((*end).min(last as u64)).unwrap_or(last);
                indices.extend(start..=end);
            }
        }
        let mut in_range = Vec::new();
        for i in indices {
            let Some(cand) = matching.get(i) else { break };
            selected
                .entry(cand.room_id.clone())
                .or_default()
                .merge(&list.details, me);
            in_range.push(cand.room_id.clone());
        }
        list_rooms.insert(name.as_str(), in_range);
        counts.insert(name.clone(), matching.len());
        lists.insert(name.clone(), json!({"count": matching.len()}));
    }
    let by_id: HashMap<&str, &Candidate> =
        candidates.iter().map(|c| (c.room_id.as_str(), c)).collect();
    let mut subscribed = Vec::new();
    for (room_id, details) in &req.room_subscriptions {
        // Only rooms the user is in or invited to; anything else is silently ignored.
        if by_id.contains_key(room_id.as_str()) {
            selected
                .entry(room_id.clone())
                .or_default()
                .merge(details, me);
            subscribed.push(room_id.clone());
        }
    }

    // Rooms selected the same way share one `required_state` set.
    let mut interned: Vec<Arc<BTreeSet<(String, String)>>> = Vec::new();
    for cfg in selected.values_mut() {
        match interned.iter().find(|a| **a == cfg.required_state) {
            Some(a) => cfg.required_state = a.clone(),
            None => interned.push(cfg.required_state.clone()),
        }
    }

    let mut next = Snapshot {
        token: Some(now),
        rooms: prev.rooms.clone(),
        counts: counts.clone(),
        bumps,
    };
    let mut rooms = Map::new();
    let mut initial_rooms = HashSet::new();
    for (room_id, cfg) in &selected {
        let Some(cand) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = prev
            .rooms
            .get(room_id)
            .filter(|s| s.membership == cand.membership);
        let update = match cand.membership.as_str() {
            // Sent before with the same state asked for, and unchanged since (the
            // writer's record of changed rooms): nothing to send, nothing to look up.
            "join"
                if sent.is_some_and(|s| {
                    s.required_state == cfg.required_state && !changes.changed_since(room_id, s.pos)
                }) =>
            {
                None
            }
            "join" => joined_room(c, caller, cand, cfg, sent, now, &direct)?,
            _ => invited_room(c, cand, cfg, sent)?,
        };
        if sent.is_none() {
            initial_rooms.insert(room_id.clone());
        }
        if let Some((body, record)) = update {
            rooms.insert(room_id.clone(), body);
            next.rooms.insert(room_id.clone(), record);
        }
    }
    // Rooms the client was sent and has since left: the timeline up to the leave, so the
    // client sees its own membership change.
    for (room_id, membership, mpos) in left {
        if let Some(sent) = prev.rooms.get(&room_id)
            && sent.membership != membership
        {
            let (body, record) = left_room(c, caller, &room_id, &membership, mpos, sent)?;
            rooms.insert(room_id.clone(), body);
            next.rooms.insert(room_id, record);
        }
    }

    let mut has_data = !rooms.is_empty() || prev.counts != counts;

    // The rooms the per-room extensions apply to.
    let ext_rooms = |ext: &RoomsExt| -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        let all_lists = ext
            .lists
            .as_ref()
            .is_none_or(|l| l.iter().any(|n| n == "*"));
        for (name, ids) in &list_rooms {
            if all_lists || ext.lists.iter().flatten().any(|n| n == name) {
                out.extend(ids.iter().cloned());
            }
        }
        let all_subs = ext
            .rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|n| n == "*"));
        for id in &subscribed {
            if all_subs || ext.rooms.iter().flatten().any(|n| n == id) {
                out.insert(id.clone());
            }
        }
        out
    };

    let mut extensions = Map::new();
    let since_pos = prev.token.map(|t| t.pos);
    if req.extensions.to_device.enabled == Some(true) {
        let from = to_device_since.unwrap_or(0).min(now.pos);
        let delivery = e2ee::to_device::for_sync(c, caller, from, now.pos)?;
        has_data |= !delivery.events.is_empty();
        extensions.insert(
            "to_device".into(),
            json!({
                "next_batch": delivery.delivered_up_to.unwrap_or(now.pos).to_string(),
                "events": delivery.events,
            }),
        );
    }
    if req.extensions.e2ee.enabled == Some(true) {
        let device_lists = match since_pos {
            Some(p) => e2ee::device_lists::changes(c, me, p, now.pos)?,
            None => Default::default(),
        };
        has_data |= !device_lists.is_empty();
        extensions.insert(
            "e2ee".into(),
            json!({
                "device_lists": {"changed": device_lists.changed, "left": device_lists.left},
                "device_one_time_keys_count":
                    e2ee::keys::one_time_key_counts(c, me, &caller.device_id)?,
                "device_unused_fallback_key_types":
                    storage::unused_fallback_key_types(c, me, &caller.device_id)?,
            }),
        );
    }
    if req.extensions.account_data.on() {
        let wanted = ext_rooms(&req.extensions.account_data);
        let (global, by_room) = account_data(c, me, since_pos, now, &wanted, &initial_rooms)?;
        has_data |= !global.is_empty() || !by_room.is_empty();
        extensions.insert(
            "account_data".into(),
            json!({"global": global, "rooms": by_room}),
        );
    }
    if req.extensions.receipts.on() {
        let mut by_room = Map::new();
        for room_id in ext_rooms(&req.extensions.receipts) {
            let receipts = if initial_rooms.contains(&room_id) {
                storage::receipts_since(c, &room_id, 0, now.pos)?
            } else {
                storage::receipts_since(c, &room_id, since_pos.unwrap_or(0), now.pos)?
            };
            if let Some(ev) = receipt_event(&receipts, me) {
                by_room.insert(room_id, ev);
            }
        }
        has_data |= !by_room.is_empty();
        extensions.insert("receipts".into(), json!({"rooms": by_room}));
    }
    if req.extensions.typing.on() {
        let mut by_room = Map::new();
        let since_typing = prev.token.map(|t| t.typing).unwrap_or(0);
        for room_id in ext_rooms(&req.extensions.typing) {
            let fresh = initial_rooms.contains(&room_id);
            if let Some(users) = server.notifier.typing_since(&room_id, since_typing, fresh)
                && !(fresh && users.is_empty())
            {
                by_room.insert(
                    room_id,
                    json!({"type": "m.typing", "content": {"user_ids": users}}),
                );
            }
        }
        has_data |= !by_room.is_empty();
        extensions.insert("typing".into(), json!({"rooms": by_room}));
    }

    let body = json!({
        "lists": lists,
        "rooms": rooms,
        "extensions": extensions,
    });
    Ok((body, next, has_data))
}

/// Rooms named in the user's `m.direct` account data.
fn direct_rooms(c: &Connection, me: &str) -> Result<HashSet<String>, Error> {
    let Some(raw) = storage::account_data(c, me, "", "m.direct")? else {
        return Ok(HashSet::new());
    };
    let content: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

fn list_allows(
    c: &Connection,
    filters: Option<&ListFilters>,
    cand: &Candidate,
    direct: &HashSet<String>,
    encrypted: &mut HashMap<String, bool>,
) -> Result<bool, Error> {
    let Some(f) = filters else {
        return Ok(true);
    };
    if f.is_invite
        .is_some_and(|want| want != (cand.membership == "invite"))
    {
        return Ok(false);
    }
    if f.is_dm
        .is_some_and(|want| want != direct.contains(&cand.room_id))
    {
        return Ok(false);
    }
    if let Some(want) = f.is_encrypted {
        let is = match encrypted.get(&cand.room_id) {
            Some(v) => *v,
            None => {
                let v = storage::current_state_event(c, &cand.room_id, "m.room.encryption", "")?
                    .is_some();
                encrypted.insert(cand.room_id.clone(), v);
                v
            }
        };
        if is != want {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A joined room's update, `None` when the client has it all already.
fn joined_room(
    c: &Connection,
    caller: &Requester,
    cand: &Candidate,
    cfg: &RoomConfig,
    sent: Option<&RoomSent>,
    now: SyncToken,
    direct: &HashSet<String>,
) -> Result<Option<(Value, RoomSent)>, Error> {
    let me = caller.user_id.as_str();
    let room_id = cand.room_id.as_str();
    // Most rooms in range have not changed since they were sent: find that out first,
    // with two index lookups.
    let config_changed = sent.is_some_and(|s| s.required_state != cfg.required_state);
    if let Some(s) = sent {
        let new_events = storage::has_events_between(c, room_id, s.pos, now.pos)?;
        // Reading moves the unread counts; the client wants those too.
        let read = !new_events
            && storage::receipts_since(c, room_id, s.pos, now.pos)?
                .iter()
                .any(|r| r.user_id == me);
        if !new_events && !config_changed && !read {
            return Ok(None);
        }
    }
    let vis = visibility_for(c, room_id, me)?;
    let upper = now.pos.min(vis.max_pos());
    let from = sent.map(|s| s.pos).unwrap_or(0).max(vis.min_pos());
    let limit = cfg.timeline_limit;
    let mut timeline = if limit > 0 {
        storage::room_events(c, room_id, from, upper, limit + 1, true)?
    } else {
        Vec::new()
    };
    let limited = timeline.len() > limit
        || (limit == 0
            && storage::last_event_at(c, room_id, upper)?
                .is_some_and(|e| e.stream_ordering > from))
        // A room new to the client with history before its first event here (joined
        // over federation): `prev_batch` leads `/messages` into the backfill.
        || (sent.is_none() && limit > 0 && storage::has_earlier_history(c, room_id)?);
    timeline.truncate(limit);
    timeline.reverse();
    // Events from before the user could see the room are judged per event.
    let timeline = visible_events(c, &vis, timeline)?;

    // Required state: everything asked for when the room is new to the client or asked
    // for differently; after a gap wider than the timeline, the entries that changed in
    // it; otherwise state changes are in the timeline.
    let mut lazy = sent.map(|s| s.lazy.clone()).unwrap_or_default();
    let mut state_ids: BTreeSet<String> = BTreeSet::new();
    if sent.is_none() || config_changed {
        lazy.clear();
        let mut whole_state_done = false;
        for (ty, sk) in cfg.required_state.iter() {
            match (ty.as_str(), sk.as_str()) {
                (_, "$LAZY") => {}
                // Every `*` type entry is answered by one pass over the state.
                ("*", _) if whole_state_done => {}
                ("*", _) => {
                    whole_state_done = true;
                    for ((t, k), id) in storage::current_state(c, room_id)? {
                        if cfg.wants(&t, &k) {
                            state_ids.insert(id);
                        }
                    }
                }
                (ty, "*") => {
                    for (_, id) in storage::current_state_of_type(c, room_id, ty)? {
                        state_ids.insert(id);
                    }
                }
                (ty, sk) => {
                    if let Some(id) = storage::current_state_event(c, room_id, ty, sk)? {
                        state_ids.insert(id);
                    }
                }
            }
        }
    } else if limited && let Some(s) = sent {
        for (ty, sk) in storage::state_keys_between(c, room_id, s.pos, upper)? {
            let lazily = ty == "m.room.member" && lazy.contains(&sk);
            if (cfg.wants(&ty, &sk) || lazily)
                && let Some(id) = storage::current_state_event(c, room_id, &ty, &sk)?
            {
                state_ids.insert(id);
            }
        }
    }
    if lazy.len() > MAX_LAZY_MEMBERS {
        lazy.clear();
    }
    if cfg.lazy() {
        // The senders of the timeline, and the user, once each per connection.
        let senders: BTreeSet<&str> = timeline
            .iter()
            .map(|e| e.sender.as_str())
            .chain([me])
            .collect();
        for s in senders {
            if !lazy.contains(s)
                && let Some(id) = storage::current_state_event(c, room_id, "m.room.member", s)?
            {
                state_ids.insert(id);
                lazy.insert(s.to_owned());
            }
        }
    }
    let mut required_state = Vec::new();
    for id in &state_ids {
        if let Some(ev) = storage::get_state_event(c, id)? {
            required_state.push(client_event(&ev, sync_opts(caller)));
        }
    }

    let mut body = room_meta(c, me, room_id)?;
    let (notifications, highlights) = storage::unread_counts(c, room_id, me)?;
    let (joined, invited) = storage::member_counts(c, room_id)?;
    let start = timeline
        .first()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(upper);
    let extra = json!({
        "timeline": crate::relations::render_in_room(c, &timeline, sync_opts(caller), &vis)?,
        "required_state": required_state,
        "prev_batch": SyncToken::at(start).to_string(),
        "limited": limited,
        "num_live": if sent.is_some() { timeline.len() } else { 0 },
        "joined_count": joined,
        "invited_count": invited,
        "notification_count": notifications,
        "highlight_count": highlights,
        "bump_stamp": cand.bump,
        "is_dm": direct.contains(room_id),
    });
    merge(&mut body, extra);
    if sent.is_none() {
        body["initial"] = json!(true);
    }
    Ok(Some((
        body,
        RoomSent {
            pos: upper,
            membership: cand.membership.clone(),
            required_state: cfg.required_state.clone(),
            lazy,
        },
    )))
}

/// An invite (or knock): the stripped state, once.
fn invited_room(
    c: &Connection,
    cand: &Candidate,
    cfg: &RoomConfig,
    sent: Option<&RoomSent>,
) -> Result<Option<(Value, RoomSent)>, Error> {
    if sent.is_some() {
        return Ok(None);
    }
    let state = if cand.membership == "invite" {
        invite_state(c, &cand.room_id, &cand.event_id)?
    } else {
        Vec::new()
    };
    let mut body = json!({
        "initial": true,
        "bump_stamp": cand.bump,
    });
    if cand.membership == "invite" {
        body["invite_state"] = json!(state);
    }
    Ok(Some((
        body,
        RoomSent {
            pos: cand.mpos,
            membership: cand.membership.clone(),
            required_state: cfg.required_state.clone(),
            lazy: HashSet::new(),
        },
    )))
}

/// A room the user left (or was kicked or banned from) since it was last sent: the
/// timeline up to the leave, and the user's own membership.
fn left_room(
    c: &Connection,
    caller: &Requester,
    room_id: &str,
    membership: &str,
    mpos: StreamPosition,
    sent: &RoomSent,
) -> Result<(Value, RoomSent), Error> {
    const LIMIT: usize = 10;
    let mut events: Vec<StoredEvent> = if sent.membership == "join" {
        let events = storage::room_events(c, room_id, sent.pos, mpos, LIMIT + 1, true)?;
        match visibility_for(c, room_id, &caller.user_id) {
            Ok(vis) => visible_events(c, &vis, events)?,
            Err(Error::Forbidden(_)) => Vec::new(),
            Err(e) => return Err(e),
        }
    } else {
        Vec::new()
    };
    let limited = events.len() > LIMIT;
    events.truncate(LIMIT);
    events.reverse();
    let mut required_state = Vec::new();
    if let Some(id) = storage::current_state_event(c, room_id, "m.room.member", &caller.user_id)?
        && let Some(ev) = storage::get_state_event(c, &id)?
    {
        required_state.push(client_event(&ev, sync_opts(caller)));
    }
    let start = events
        .first()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(mpos);
    Ok((
        json!({
            "timeline": super::timeline_events(c, room_id, &events, caller)?,
            "required_state": required_state,
            "prev_batch": SyncToken::at(start).to_string(),
            "limited": limited,
            "bump_stamp": mpos,
        }),
        RoomSent {
            pos: mpos,
            membership: membership.to_owned(),
            required_state: Default::default(),
            lazy: HashSet::new(),
        },
    ))
}

/// `name`, `avatar` and, for unnamed rooms, `heroes`.
fn room_meta(c: &Connection, me: &str, room_id: &str) -> Result<Value, Error> {
    let mut body = json!({});
    let content = |ty: &str, sk: &str| -> Result<Option<Value>, Error> {
        Ok(match storage::current_state_event(c, room_id, ty, sk)? {
            Some(id) => storage::get_state_event(c, &id)?
                .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
                .map(|mut v| v["content"].take()),
            None => None,
        })
    };
    let name = content("m.room.name", "")?
        .and_then(|c| c["name"].as_str().map(str::to_owned))
        .filter(|n| !n.is_empty());
    if let Some(avatar) = content("m.room.avatar", "")? {
        // A removed avatar is `null`, so the client drops the one it has.
        body["avatar"] = avatar["url"]
            .as_str()
            .filter(|u| !u.is_empty())
            .map_or(Value::Null, |u| json!(u));
    }
    match name {
        Some(n) => body["name"] = json!(n),
        None => {
            let mut heroes = Vec::new();
            for user in storage::first_members(c, room_id, me, MAX_HEROES)? {
                let mut hero = json!({"user_id": user});
                if let Some(m) = content("m.room.member", &user)? {
                    if let Some(n) = m["displayname"].as_str() {
                        hero["displayname"] = json!(n);
                    }
                    if let Some(a) = m["avatar_url"].as_str() {
                        hero["avatar_url"] = json!(a);
                    }
                }
                heroes.push(hero);
            }
            body["heroes"] = json!(heroes);
        }
    }
    Ok(body)
}

fn merge(into: &mut Value, from: Value) {
    if let (Some(into), Value::Object(from)) = (into.as_object_mut(), from) {
        into.extend(from);
    }
}

type RoomAccountData = Map<String, Value>;

/// Global account data changed since the connection's last response (all of it, and the
/// push rules, on the first), and room account data for the rooms the extension covers:
/// all of it for rooms new to the client, changes otherwise.
fn account_data(
    c: &Connection,
    me: &str,
    since: Option<StreamPosition>,
    now: SyncToken,
    rooms: &BTreeSet<String>,
    initial_rooms: &HashSet<String>,
) -> Result<(Vec<Value>, RoomAccountData), Error> {
    let mut global = Vec::new();
    let mut by_room: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    let changed = storage::account_data_since(c, me, since.unwrap_or(0), now.pos)?;
    let needs_all = since.is_some() && rooms.iter().any(|r| initial_rooms.contains(r));
    let all = if needs_all {
        storage::account_data_since(c, me, 0, now.pos)?
    } else {
        Vec::new()
    };
    for (room, ty, content) in &changed {
        let content: Value = serde_json::from_str(content)?;
        if room.is_empty() {
            global.push(json!({"type": ty, "content": content}));
        } else if rooms.contains(room) && !(needs_all && initial_rooms.contains(room)) {
            by_room
                .entry(room.clone())
                .or_default()
                .push(json!({"type": ty, "content": content}));
        }
    }
    for (room, ty, content) in &all {
        if !room.is_empty() && rooms.contains(room) && initial_rooms.contains(room) {
            by_room
                .entry(room.clone())
                .or_default()
                .push(json!({"type": ty, "content": serde_json::from_str::<Value>(content)?}));
        }
    }
    if since.is_none() && !global.iter().any(|e| e["type"] == crate::push::PUSH_RULES) {
        global.push(json!({
            "type": crate::push::PUSH_RULES,
            "content": crate::push::rules_json(c, me)?,
        }));
    }
    let by_room = by_room.into_iter().map(|(k, v)| (k, json!(v))).collect();
    Ok((global, by_room))
}
