//! Node → appservice: one durable, ordered transaction stream per appservice.
//!
//! Each appservice follows the node's event stream from its own stored position (as
//! Synapse's appservice stream handler does), so nothing is written on the send path:
//! after each commit the sender reads what is new, keeps what the appservice is
//! interested in (its users' rooms, its room and alias namespaces, its users as senders
//! or members), adds ephemeral data (MSC2409) and device data (MSC3202/MSC4203) when
//! the registration asks, and stores the result as the pending transaction before the
//! first attempt. The pending transaction is resent as it is, with the same id, until
//! the appservice answers 2xx; only then does the position move. So a transaction id
//! always names the same content, and an appservice that was down gets every
//! transaction it missed, in order, once. Bounds: one pending transaction per
//! appservice of at most [`MAX_EVENTS`] events, [`MAX_EPHEMERAL`] ephemeral events and
//! [`MAX_TO_DEVICE`] to-device messages (a larger stretch is split over several
//! transactions; ephemeral data past the cap is dropped, as later receipts supersede
//! it); retries back off with full jitter up to [`BACKOFF_CAP`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use rusqlite::Connection;
use serde_json::{Map, Value, json};
use tokio::task::JoinHandle;

use super::Registered;
use crate::error::Error;
use crate::events::{ClientEventOptions, client_event};
use crate::server::Server;
use crate::storage::{self, now_ms};

/// Most timeline events in one transaction.
pub const MAX_EVENTS: usize = 100;
/// Most ephemeral events (receipts, typing, presence) in one transaction.
pub const MAX_EPHEMERAL: usize = 500;
/// Most to-device messages in one transaction.
pub const MAX_TO_DEVICE: usize = 100;
/// Longest wait between attempts while an appservice fails.
pub const BACKOFF_CAP: Duration = Duration::from_secs(30);
/// First retry delay ceiling; doubled per failure up to [`BACKOFF_CAP`].
const BACKOFF_BASE: Duration = Duration::from_millis(250);
/// How long an appservice has to answer a transaction.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Looked again without a wake-up (writes that bypass the notifier).
const RESCAN: Duration = Duration::from_secs(30);

/// Start a sender for each appservice that has a URL.
pub fn start(server: &Arc<Server>) -> Vec<JoinHandle<()>> {
    let client = match super::query::client(REQUEST_TIMEOUT) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the appservice HTTP client");
            return Vec::new();
        }
    };
    server
        .appservices
        .all()
        .iter()
        .filter(|a| a.url.is_some())
        .map(|a| tokio::spawn(run(server.clone(), a.clone(), client.clone())))
        .collect()
}

async fn run(server: Arc<Server>, a: Arc<Registered>, client: reqwest::Client) {
    let mut changes = server.notifier.subscribe();
    let mut failures: u32 = 0;
    let start = server.notifier.current().pos;
    while let Err(e) = server.write(|tx| storage::ensure_appservice_stream(tx, &a.id, start)) {
        tracing::warn!(appservice = %a.id, error = %e, "cannot start the appservice stream");
        tokio::time::sleep(RESCAN).await;
    }
    loop {
        let next = crate::server::off_the_reactor(|| next_transaction(&server, &a));
        let (txn, up_to, typing, body) = match next {
            Ok(Some(t)) => t,
            Ok(None) => {
                tokio::select! {
                    _ = changes.changed() => {}
                    () = a.wake.notified() => {}
                    () = tokio::time::sleep(RESCAN) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(appservice = %a.id, error = %e, "cannot build a transaction");
                tokio::time::sleep(RESCAN).await;
                continue;
            }
        };
        match put_transaction(&client, &a, txn, body).await {
            Ok(()) => {
                failures = 0;
                {
                    let mut d = a.delivery.lock();
                    d.last_error = None;
                    d.failures = 0;
                    d.last_success_ms = Some(now_ms());
                }
                let id = a.id.clone();
                if let Err(e) =
                    server.write(|tx| storage::advance_appservice(tx, &id, up_to, typing))
                {
                    tracing::warn!(appservice = %a.id, error = %e, "cannot record a delivery");
                }
            }
            Err(why) => {
                failures = failures.saturating_add(1);
                {
                    let mut d = a.delivery.lock();
                    d.last_error = Some(why.clone());
                    d.failures = failures;
                }
                tracing::info!(appservice = %a.id, txn, error = %why, failures, "transaction not delivered; will retry");
                let ceiling = BACKOFF_BASE
                    .saturating_mul(1u32 << failures.min(16))
                    .min(BACKOFF_CAP);
                let wait = rand::thread_rng().gen_range(Duration::ZERO..=ceiling);
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    // A ping that reached it: try again at once.
                    () = a.wake.notified() => {}
                }
            }
        }
    }
}

/// `PUT {url}/_matrix/app/v1/transactions/{txn}` with the `hs_token`.
async fn put_transaction(
    client: &reqwest::Client,
    a: &Registered,
    txn: i64,
    body: String,
) -> Result<(), String> {
    let Some(url) = &a.url else {
        return Err("the appservice has no url".into());
    };
    let res = client
        .put(format!("{url}/_matrix/app/v1/transactions/{txn}"))
        .bearer_auth(&a.hs_token)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(|e| super::query::describe(&e))?;
    if res.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", res.status()))
    }
}

/// The transaction to send next: the pending one, or a new one built from what
/// happened since the appservice's position (`None`: nothing of interest, the position
/// has moved on).
fn next_transaction(
    server: &Server,
    a: &Registered,
) -> Result<Option<(i64, i64, u64, String)>, Error> {
    let now = server.notifier.current();
    let st = server.db.read(|c| storage::appservice_stream(c, &a.id))?;
    if let Some((txn, up_to, body)) = st.pending {
        return Ok(Some((txn, up_to, st.typing_serial, body)));
    }
    // Typing changes alone concern only an appservice that takes ephemeral events.
    let typing_changed = a.receive_ephemeral && st.typing_serial != now.typing;
    if st.pos >= now.pos && !typing_changed {
        return Ok(None);
    }
    let built = server
        .db
        .read(|c| build(c, server, a, st.pos, now.pos, st.typing_serial))?;
    let Built {
        up_to,
        typing_serial,
        body,
    } = built;
    let id = a.id.clone();
    match body {
        None => {
            server.write(|tx| storage::advance_appservice(tx, &id, up_to, typing_serial))?;
            Ok(None)
        }
        Some(body) => {
            let text = serde_json::to_string(&body)?;
            let txn = server.write(|tx| {
                storage::set_appservice_pending(tx, &id, up_to, typing_serial, &text)
            })?;
            Ok(Some((txn, up_to, typing_serial, text)))
        }
    }
}

struct Built {
    up_to: i64,
    typing_serial: u64,
    /// `None` when nothing in the range concerns the appservice.
    body: Option<Value>,
}

/// What an appservice is interested in, worked out once per room and user per batch.
struct Interest<'a> {
    a: &'a Registered,
    rooms: HashMap<String, bool>,
}

impl<'a> Interest<'a> {
    fn new(a: &'a Registered) -> Self {
        Interest {
            a,
            rooms: HashMap::new(),
        }
    }

    /// The room matches its room namespace, has an alias in its alias namespace, or
    /// one of its users is a member (joined or invited).
    fn room(&mut self, c: &Connection, room_id: &str) -> Result<bool, Error> {
        if let Some(known) = self.rooms.get(room_id) {
            return Ok(*known);
        }
        let a = self.a;
        let mut yes = a.is_room_in_namespace(room_id);
        if !yes && !a.aliases.is_empty() {
            let mut aliases = storage::room_aliases(c, room_id)?;
            if let Some(ev) =
                storage::current_state_event(c, room_id, "m.room.canonical_alias", "")?
                    .map(|id| storage::get_state_event(c, &id))
                    .transpose()?
                    .flatten()
            {
                let pdu: Value = serde_json::from_str(&ev.json).unwrap_or_default();
                let content = &pdu["content"];
                aliases.extend(content["alias"].as_str().map(str::to_owned));
                if let Some(alt) = content["alt_aliases"].as_array() {
                    aliases.extend(alt.iter().filter_map(|v| v.as_str().map(str::to_owned)));
                }
            }
            yes = aliases.iter().any(|al| a.is_alias_in_namespace(al));
        }
        if !yes {
            for membership in ["join", "invite"] {
                if storage::room_members(c, room_id, membership)?
                    .iter()
                    .any(|u| a.is_user_in_namespace(u))
                {
                    yes = true;
                    break;
                }
            }
        }
        self.rooms.insert(room_id.to_owned(), yes);
        Ok(yes)
    }

    fn event(&mut self, c: &Connection, e: &storage::StoredEvent) -> Result<bool, Error> {
        let a = self.a;
        Ok(a.is_user_in_namespace(&e.sender)
            || (e.kind == "m.room.member"
                && e.state_key
                    .as_deref()
                    .is_some_and(|u| a.is_user_in_namespace(u)))
            || self.room(c, &e.room_id)?)
    }

    /// The user is the appservice's or shares one of its rooms.
    fn user(&mut self, c: &Connection, user_id: &str) -> Result<bool, Error> {
        if self.a.is_user_in_namespace(user_id) {
            return Ok(true);
        }
        for (room_id, membership, _, _) in storage::user_memberships(c, user_id)? {
            if membership == "join" && self.room(c, &room_id)? {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

fn build(
    c: &Connection,
    server: &Server,
    a: &Registered,
    after: i64,
    now_pos: i64,
    typing_since: u64,
) -> Result<Built, Error> {
    let events = storage::timeline_events_between(c, after, now_pos, MAX_EVENTS)?;
    // A full batch ends at its last event; the rest comes in the next transaction.
    let up_to = if events.len() == MAX_EVENTS {
        events.last().map_or(now_pos, |e| e.stream_ordering)
    } else {
        now_pos
    };
    let mut interest = Interest::new(a);
    let opts = ClientEventOptions {
        viewer: None,
        include_room_id: true,
        now_ms: now_ms(),
    };
    let mut out_events = Vec::new();
    for e in &events {
        if interest.event(c, e)? {
            out_events.push(client_event(e, opts));
        }
    }
    let mut body = Map::new();
    let (typing_serial, ephemeral) = if a.receive_ephemeral {
        ephemeral(c, server, &mut interest, after, up_to, typing_since)?
    } else {
        (server.notifier.current().typing, Vec::new())
    };
    if a.msc3202 {
        device_data(c, &mut interest, after, up_to, &mut body)?;
    }
    if out_events.is_empty() && ephemeral.is_empty() && body.is_empty() {
        return Ok(Built {
            up_to,
            typing_serial,
            body: None,
        });
    }
    body.insert("events".into(), Value::Array(out_events));
    if !ephemeral.is_empty() {
        // The stable name and MSC2409's, which older appservice libraries read.
        body.insert(
            "de.sorunome.msc2409.ephemeral".into(),
            Value::Array(ephemeral.clone()),
        );
        body.insert("ephemeral".into(), Value::Array(ephemeral));
    }
    Ok(Built {
        up_to,
        typing_serial,
        body: Some(Value::Object(body)),
    })
}

/// Receipts, typing and presence the appservice may see (MSC2409).
fn ephemeral(
    c: &Connection,
    server: &Server,
    interest: &mut Interest<'_>,
    after: i64,
    up_to: i64,
    typing_since: u64,
) -> Result<(u64, Vec<Value>), Error> {
    let mut out = Vec::new();
    // Receipts, one `m.receipt` event per room.
    let mut receipts: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (room_id, r) in storage::receipts_between(c, after, up_to, MAX_EPHEMERAL)? {
        if !interest.room(c, &room_id)? {
            continue;
        }
        let mut receipt = json!({"ts": r.ts});
        if !r.thread_id.is_empty() {
            receipt["thread_id"] = Value::String(r.thread_id.clone());
        }
        let content = receipts.entry(room_id).or_default();
        let by_event = content
            .entry(r.event_id.clone())
            .or_insert_with(|| json!({}));
        by_event[&r.receipt_type][&r.user_id] = receipt;
    }
    for (room_id, content) in receipts {
        out.push(json!({"type": "m.receipt", "room_id": room_id, "content": content}));
    }
    // Typing: the rooms whose list changed.
    let (serial, typing) = server.notifier.typing_changes_since(typing_since);
    for (room_id, users) in typing {
        if interest.room(c, &room_id)? {
            out.push(
                json!({"type": "m.typing", "room_id": room_id, "content": {"user_ids": users}}),
            );
        }
    }
    // Presence of its users and of the users it shares rooms with.
    let now = now_ms();
    for p in storage::presence_between(c, after, up_to, MAX_EPHEMERAL)? {
        if !interest.user(c, &p.user_id)? {
            continue;
        }
        let mut content = json!({
            "presence": p.state,
            "last_active_ago": (now - p.last_active_ts).max(0),
            "currently_active": p.currently_active,
        });
        if let Some(msg) = p.status_msg {
            content["status_msg"] = Value::String(msg);
        }
        out.push(json!({"type": "m.presence", "sender": p.user_id, "content": content}));
    }
    out.truncate(MAX_EPHEMERAL);
    Ok((serial, out))
}

/// To-device messages for its users' devices (MSC4203), their device list changes and
/// key counts (MSC3202).
fn device_data(
    c: &Connection,
    interest: &mut Interest<'_>,
    after: i64,
    up_to: i64,
    body: &mut Map<String, Value>,
) -> Result<(), Error> {
    let a = interest.a;
    let mut to_device = Vec::new();
    let mut devices: BTreeSet<(String, String)> = BTreeSet::new();
    for m in storage::to_device_between(c, after, up_to, MAX_TO_DEVICE)? {
        if !a.is_user_in_namespace(&m.user_id) {
            continue;
        }
        let content: Value = serde_json::from_str(&m.content).unwrap_or_else(|_| json!({}));
        to_device.push(json!({
            "type": m.event_type, "sender": m.sender, "content": content,
            "to_user_id": m.user_id, "to_device_id": m.device_id,
        }));
        devices.insert((m.user_id, m.device_id));
    }
    let mut changed = BTreeSet::new();
    let mut left = BTreeSet::new();
    let users: Vec<String> = storage::users_with_devices(c)?
        .into_iter()
        .filter(|u| a.is_user_in_namespace(u))
        .collect();
    for user in &users {
        let d = crate::e2ee::device_lists::changes(c, user, after, up_to)?;
        changed.extend(d.changed);
        left.extend(d.left);
    }
    left.retain(|u| !changed.contains(u));
    // Key counts of the devices that got to-device messages (the messages that
    // establish Olm sessions follow key claims).
    let mut counts: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut fallback: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for (user, device) in &devices {
        let n = crate::e2ee::keys::one_time_key_counts(c, user, device)?;
        counts
            .entry(user.clone())
            .or_default()
            .insert(device.clone(), n);
        let types = storage::unused_fallback_key_types(c, user, device)?;
        fallback
            .entry(user.clone())
            .or_default()
            .insert(device.clone(), json!(types));
    }
    if !to_device.is_empty() {
        body.insert(
            "de.sorunome.msc2409.to_device".into(),
            Value::Array(to_device),
        );
    }
    if !changed.is_empty() || !left.is_empty() {
        body.insert(
            "org.matrix.msc3202.device_lists".into(),
            json!({"changed": changed, "left": left}),
        );
    }
    if !counts.is_empty() {
        body.insert(
            "org.matrix.msc3202.device_one_time_keys_count".into(),
            json!(counts),
        );
        body.insert(
            "org.matrix.msc3202.device_unused_fallback_key_types".into(),
            json!(fallback),
        );
    }
    Ok(())
}
