//! `/sync` v3, and simplified sliding sync (MSC4186) in [`sliding`].
//!
//! A response is computed at the newest committed position `now`: for each room the
//! user is in, the events in `(since, now]`, the state they need, ephemeral data and
//! account data. With nothing to say and a `timeout`, the call waits on the notifier (no
//! polling) and recomputes when a commit or typing change lands. The work per call is
//! bounded by the user's rooms and the timeline limit, never by room history.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::e2ee;
use crate::error::Error;
use crate::events::{ClientEvent, stripped_state};
use crate::requester::Requester;
use crate::rooms::filter::RoomEventFilter;
use crate::rooms::state_at::state_at;
use crate::rooms::visibility::{Visibility, visibility_for, visible_events};
use crate::server::Server;
use crate::storage::{self, StateMap, StoredEvent};
use crate::streams::SyncToken;

mod body;
pub mod initial_cache;
pub mod room_cache;
pub mod sliding;

mod filter;
mod joined;
mod other_rooms;

pub use body::SyncBody;
use body::{Events, RoomSection, Rooms, Timeline};
use filter::room_allowed;
pub use filter::{EventFilter, Filter, RoomFilter};
pub(crate) use joined::timeline_events;
use joined::{echoes, joined_room, raw_timeline_events, rendered, state_section};
pub(crate) use other_rooms::invite_state;
use other_rooms::{knock_state, left_room};
#[cfg(test)]
mod room_cache_tests;
#[cfg(test)]
mod wake_tests;

/// Most events one room's timeline looks at, visible or not, per timeline event asked
/// for: an initial sync over many rooms stays cheap; the client pages on from
/// `prev_batch` when hidden history cut the search short.
const SCAN_PER_EVENT: usize = 5;

/// What `/sync` and sliding sync keep between requests, in memory, each bounded.
pub struct SyncState {
    /// The last initial `/sync` answers (see [`initial_cache`]).
    pub initial: initial_cache::InitialSyncCache,
    /// Rooms as initial syncs last showed them (see [`room_cache`]).
    pub rooms: room_cache::RoomSectionCache,
    /// Sliding sync connections (what each client connection already has).
    pub sliding: sliding::Connections,
    /// Rooms as the first response of a sliding sync connection last showed them (see
    /// [`sliding::CachedRoom`]).
    pub sliding_rooms: room_cache::RoomCache<sliding::CachedRoom>,
}

/// Rooms kept for sliding sync's first responses at most, and their JSON text in all:
/// half of what `/sync` keeps ([`room_cache::MAX_ENTRIES`], [`room_cache::MAX_BYTES`]),
/// so the two together stay within 12 MiB.
pub const SLIDING_ROOMS_KEPT: (usize, usize) = (1024, 4 * 1024 * 1024);

impl Default for SyncState {
    fn default() -> Self {
        SyncState {
            initial: Default::default(),
            rooms: Default::default(),
            sliding: Default::default(),
            sliding_rooms: room_cache::RoomCache::with_bounds(
                SLIDING_ROOMS_KEPT.0,
                SLIDING_ROOMS_KEPT.1,
            ),
        }
    }
}

/// The longest a `/sync` may wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// Parsed `/sync` parameters.
pub struct SyncParams {
    /// Where the client is.
    pub since: Option<SyncToken>,
    /// Long-poll duration.
    pub timeout: Duration,
    /// Effective filter.
    pub filter: Filter,
    /// Return full state for every room.
    pub full_state: bool,
}

/// Run `/sync`, waiting up to the timeout for something to return.
pub async fn sync(
    server: Arc<Server>,
    caller: Requester,
    params: SyncParams,
) -> Result<SyncBody, Error> {
    let deadline = Instant::now() + params.timeout.min(MAX_TIMEOUT);
    // Syncing with `since` acknowledges the to-device messages delivered up to it.
    if let Some(since) = &params.since {
        e2ee::to_device::acknowledge(&server, &caller, since)?;
    }
    // Registered before the first position is read: a change committed after it wakes
    // this call, even while it is still building.
    let waiter = server.notifier.waiter(&caller.user_id);
    // Whether the call was woken by a change: then the build is a small delta (what one
    // commit or a few touched), run on this worker rather than handed to the blocking
    // pool and back, two thread wake-ups that were a good part of the wake latency.
    let mut woken = false;
    loop {
        let now = server.notifier.current();
        let waiting = !deadline.saturating_duration_since(Instant::now()).is_zero();
        // A `since` equal to the current token (stream position, typing serial, to-device
        // inbox delivered) leaves nothing for `build` to find: everything it returns has a
        // later position or typing serial. A long-poll that starts there (the usual next
        // request after a sync) waits at once instead of building an empty answer.
        let nothing_new = params.since == Some(now) && !params.full_state;
        let rooms = if !(waiting && nothing_new) {
            let built = build_at(&server, &caller, &params, now, woken).await?;
            if built.has_data || params.since.is_none() || params.full_state {
                return Ok(built.body);
            }
            if deadline.saturating_duration_since(Instant::now()).is_zero() {
                return Ok(built.body);
            }
            built.rooms
        } else {
            server
                .db
                .read(|c| joined_rooms(c, &caller.user_id, &params.filter))?
        };
        // From here on only what concerns the user or their rooms wakes the call.
        waiter.narrow(rooms);
        let remaining = deadline.saturating_duration_since(Instant::now());
        if tokio::time::timeout(remaining, waiter.notified())
            .await
            .is_err()
        {
            // Time is up with nothing new: the answer at the token reached now.
            let now = server.notifier.current();
            return Ok(build_at(&server, &caller, &params, now, false).await?.body);
        }
        woken = true;
    }
}

/// The rooms the user is joined to that the filter lets through: what a waiting `/sync`
/// is woken for, besides the user's own data.
fn joined_rooms(c: &Connection, user_id: &str, filter: &Filter) -> Result<Vec<String>, Error> {
    Ok(storage::user_memberships(c, user_id)?
        .into_iter()
        .filter(|(room, membership, _, _)| membership == "join" && room_allowed(&filter.room, room))
        .map(|(room, ..)| room)
        .collect())
}

/// One built response.
struct Built {
    body: SyncBody,
    /// Whether it carries anything.
    has_data: bool,
    /// The joined rooms it looked at.
    rooms: Vec<String>,
}

/// [`build`] at `now` in one read transaction: on a blocking thread, or, for the small
/// delta a woken long-poll builds (`delta`), on this worker with its other tasks handed
/// on (`off_the_reactor`), so the answer does not wait for two thread wake-ups.
async fn build_at(
    server: &Arc<Server>,
    caller: &Requester,
    params: &SyncParams,
    now: SyncToken,
    delta: bool,
) -> Result<Built, Error> {
    let since = params.since;
    let full_state = params.full_state;
    if delta {
        let filter = &params.filter;
        return crate::server::off_the_reactor(|| {
            server
                .db
                .read_tx(|c| build(c, server, caller, since, now, filter, full_state))
        });
    }
    let server = server.clone();
    let caller = caller.clone();
    let filter = params.filter.clone();
    tokio::task::spawn_blocking(move || {
        server
            .db
            .read_tx(|c| build(c, &server, &caller, since, now, &filter, full_state))
    })
    .await
    .map_err(Error::internal)?
}

/// Run `/sync` and serialise the answer. An initial sync (no `since`) is answered from
/// [`initial_cache`] when the same device asked the same thing and nothing changed since;
/// `filter_key` is the filter exactly as the client gave it.
pub async fn sync_serialized(
    server: Arc<Server>,
    caller: Requester,
    params: SyncParams,
    filter_key: &str,
) -> Result<bytes::Bytes, Error> {
    if params.since.is_some() {
        return Ok(sync(server, caller, params).await?.to_bytes()?);
    }
    let key = initial_cache::Key {
        user_id: caller.user_id.clone(),
        device_id: caller.device_id.clone(),
        filter: filter_key.to_owned(),
        full_state: params.full_state,
    };
    // The write generation first, then the token: a write that lands in between is
    // either in the snapshot built below or makes this entry unservable (see `Built`).
    let built = initial_cache::Built {
        writes: server.db.write_generation(),
        token: server.notifier.current(),
    };
    if let Some(body) = server.sync.initial.get(&key, built) {
        return Ok(body);
    }
    let body = build_at(&server, &caller, &params, built.token, false)
        .await?
        .body
        .to_bytes()?;
    server.sync.initial.put(key, built, body.clone());
    Ok(body)
}

/// Most member events walked back to find a user's membership at a sync token; a user
/// whose membership changed more often since is treated as newly joined (full state,
/// which is always correct, only larger).
const MAX_MEMBERSHIP_WALK: usize = 64;

/// Whether the user was joined at stream position `pos` and stayed joined since: walks
/// back from the member event `event_id` (the user's current one) through
/// `unsigned.replaces_state`. A leave (or any other membership) since `pos` followed by
/// a join makes the room newly joined again, as in Synapse.
fn joined_throughout(c: &Connection, event_id: &str, pos: i64) -> Result<bool, Error> {
    let mut next = Some(event_id.to_owned());
    for _ in 0..MAX_MEMBERSHIP_WALK {
        let Some(id) = next.take() else {
            return Ok(false);
        };
        let Some(ev) = storage::get_state_event(c, &id)? else {
            return Ok(false);
        };
        let json: Value = serde_json::from_str(&ev.json)?;
        if json["content"]["membership"] != "join" {
            return Ok(false);
        }
        if ev.stream_ordering <= pos {
            return Ok(true);
        }
        next = ev
            .unsigned
            .as_deref()
            .and_then(|u| serde_json::from_str::<Value>(u).ok())
            .and_then(|u| u["replaces_state"].as_str().map(str::to_owned));
    }
    Ok(false)
}

/// The users `user_id` ignores (`m.ignored_user_list` account data).
fn ignored_users(c: &Connection, user_id: &str) -> Result<Vec<String>, Error> {
    let Some(raw) = storage::account_data(c, user_id, "", "m.ignored_user_list")? else {
        return Ok(Vec::new());
    };
    let v: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Ok(v["ignored_users"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default())
}

/// Whether the invite `event_id` was sent by one of `ignored`.
fn invited_by_ignored(c: &Connection, event_id: &str, ignored: &[String]) -> Result<bool, Error> {
    if ignored.is_empty() {
        return Ok(false);
    }
    Ok(storage::get_state_event(c, event_id)?.is_some_and(|e| ignored.contains(&e.sender)))
}

/// Whether nothing a joined room's section shows changed in `(since, now]`: no event,
/// receipt or unread count (the writer's record of changed rooms), no typing change and
/// none of the user's account data for the room. Such a room is left out of an
/// incremental sync without a query.
fn quiet_since(
    server: &Server,
    room_id: &str,
    since: SyncToken,
    room_data: &[(String, String, String)],
) -> bool {
    !server.db.room_changes().changed_since(room_id, since.pos)
        && !room_data.iter().any(|(r, _, _)| r == room_id)
        && server
            .notifier
            .typing_since(room_id, since.typing, false)
            .is_none()
}

/// Build one response at `now`.
fn build(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    since: Option<SyncToken>,
    now: SyncToken,
    filter: &Filter,
    full_state: bool,
) -> Result<Built, Error> {
    // A token from the future (e.g. a database restored from backup) is treated as initial.
    let since = since.filter(|s| s.pos <= now.pos);
    let since_pos = since.map(|s| s.pos).unwrap_or(0);
    let mut rooms = Rooms::default();
    let mut has_data = false;
    let mut joined = Vec::new();

    // The user's account data changed since `since`, global and per room, read once.
    let (global_data, room_data): (Vec<_>, Vec<_>) =
        storage::account_data_since(c, &caller.user_id, since_pos, now.pos)?
            .into_iter()
            .partition(|(room, _, _)| room.is_empty());
    let ignored = ignored_users(c, &caller.user_id)?;
    // What the rooms kept between initial syncs are kept under (`room_cache::Key`); only
    // an initial sync uses it.
    let filters_key = match since {
        None => serde_json::to_string(&(&filter.room.timeline, &filter.room.state))?,
        Some(_) => String::new(),
    };
    for (room_id, membership, event_id, mpos) in storage::user_memberships(c, &caller.user_id)? {
        if !room_allowed(&filter.room, &room_id) {
            continue;
        }
        let changed = mpos > since_pos;
        match membership.as_str() {
            "join" => {
                joined.push(room_id.clone());
                if let Some(s) = since
                    && !full_state
                    && quiet_since(server, &room_id, s, &room_data)
                {
                    continue;
                }
                // Only a real transition into `join` since `since` is a new join; a
                // display name change or a repeated join is an ordinary timeline event.
                let newly =
                    since.is_none() || (changed && !joined_throughout(c, &event_id, since_pos)?);
                let full = full_state || newly;
                // A room seen whole for the first time in an incremental sync shows all
                // of its account data, not only what changed since `since`.
                let data = if full && since.is_some() {
                    storage::account_data_since(c, &caller.user_id, 0, now.pos)?
                } else {
                    Vec::new()
                };
                let data = if full && since.is_some() {
                    &data
                } else {
                    &room_data
                };
                let data: Vec<(String, String)> = data
                    .iter()
                    .filter(|(r, ty, _)| r == &room_id && filter.room.account_data.allows(ty))
                    .map(|(_, ty, content)| (ty.clone(), content.clone()))
                    .collect();
                if let Some(room) = joined_room(
                    c,
                    server,
                    caller,
                    &room_id,
                    since,
                    now,
                    filter,
                    &filters_key,
                    full,
                    data,
                )? {
                    has_data |= room.1;
                    rooms.join.insert(room_id, room.0);
                }
            }
            "invite" if since.is_none() || changed => {
                // An invite from someone the user ignores is not shown (the spec's
                // "Ignoring users").
                if invited_by_ignored(c, &event_id, &ignored)? {
                    continue;
                }
                rooms.invite.insert(
                    room_id.clone(),
                    json!({"invite_state": {"events": invite_state(c, &room_id, &event_id)?}}),
                );
                has_data = true;
            }
            "knock" if since.is_none() || changed => {
                rooms.knock.insert(
                    room_id.clone(),
                    json!({"knock_state": {"events": knock_state(c, &room_id, &event_id)?}}),
                );
                has_data = true;
            }
            "leave" | "ban"
                if (since.is_some() && changed)
                    || (since.is_none() && filter.room.include_leave) =>
            {
                rooms.leave.insert(
                    room_id.clone(),
                    left_room(c, caller, &room_id, since_pos, mpos, filter)?,
                );
                has_data = true;
            }
            _ => {}
        }
    }

    let mut account_data = Vec::new();
    for (_, ty, content) in global_data {
        if filter.account_data.allows(&ty) {
            account_data
                .push(json!({"type": ty, "content": serde_json::from_str::<Value>(&content)?}));
        }
    }
    // Push rules are account data clients expect from the first sync, defaults or not.
    if since.is_none()
        && filter.account_data.allows(crate::push::PUSH_RULES)
        && !account_data
            .iter()
            .any(|e| e["type"] == crate::push::PUSH_RULES)
    {
        account_data.push(json!({
            "type": crate::push::PUSH_RULES,
            "content": crate::push::rules_json(c, &caller.user_id)?,
        }));
    }
    has_data |= !account_data.is_empty();

    let presence = if filter.presence.allows("m.presence") {
        crate::presence::for_sync(
            c,
            &caller.user_id,
            since_pos,
            now.pos,
            filter.presence.limit,
        )?
    } else {
        Vec::new()
    };
    has_data |= !presence.is_empty();

    let keys = e2ee_sections(c, caller, since, now)?;
    has_data |= keys.has_data;
    let next_batch = SyncToken {
        to_device: keys.to_device_up_to,
        ..now
    };
    let rest = Map::from_iter([
        ("account_data".into(), json!({"events": account_data})),
        ("presence".into(), json!({"events": presence})),
        ("to_device".into(), json!({"events": keys.to_device})),
        (
            "device_lists".into(),
            json!({"changed": keys.device_lists.changed, "left": keys.device_lists.left}),
        ),
        (
            "device_one_time_keys_count".into(),
            keys.one_time_key_counts,
        ),
        (
            "device_unused_fallback_key_types".into(),
            json!(keys.unused_fallback_key_types),
        ),
    ]);
    let body = SyncBody {
        next_batch: next_batch.to_string(),
        rooms,
        rest,
    };
    Ok(Built {
        body,
        has_data,
        rooms: joined,
    })
}

/// The end-to-end encryption parts of a sync response.
struct E2eeSections {
    to_device: Vec<Value>,
    /// Set when the to-device inbox was only partly delivered.
    to_device_up_to: Option<i64>,
    device_lists: e2ee::device_lists::DeviceListChanges,
    one_time_key_counts: Value,
    unused_fallback_key_types: Vec<String>,
    has_data: bool,
}

/// To-device messages after the acknowledged inbox position, device-list changes since
/// `since` (incremental syncs only: an initial sync fetches every key anyway), and the
/// device's key counts, which are always present so clients know when to upload more.
fn e2ee_sections(
    c: &Connection,
    caller: &Requester,
    since: Option<SyncToken>,
    now: SyncToken,
) -> Result<E2eeSections, Error> {
    let inbox_from = since.map(|s| s.to_device_pos()).unwrap_or(0);
    let delivery = e2ee::to_device::for_sync(c, caller, inbox_from, now.pos)?;
    let device_lists = match since {
        Some(s) => e2ee::device_lists::changes(c, &caller.user_id, s.pos, now.pos)?,
        None => Default::default(),
    };
    Ok(E2eeSections {
        has_data: !delivery.events.is_empty() || !device_lists.is_empty(),
        to_device: delivery.events,
        to_device_up_to: delivery.delivered_up_to,
        device_lists,
        one_time_key_counts: e2ee::keys::one_time_key_counts(
            c,
            &caller.user_id,
            &caller.device_id,
        )?,
        unused_fallback_key_types: storage::unused_fallback_key_types(
            c,
            &caller.user_id,
            &caller.device_id,
        )?,
    })
}

/// The state events `ids`, in that order, read in one statement.
fn event_list(
    c: &Connection,
    ids: impl Iterator<Item = String>,
) -> Result<Vec<StoredEvent>, Error> {
    let ids: Vec<String> = ids.collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut found: std::collections::HashMap<String, StoredEvent> =
        storage::get_state_events(c, &refs)?
            .into_iter()
            .map(|e| (e.event_id.clone(), e))
            .collect();
    Ok(ids.iter().filter_map(|id| found.remove(id)).collect())
}

pub(crate) fn sync_opts(caller: &Requester) -> crate::events::ClientEventOptions<'_> {
    crate::events::ClientEventOptions {
        include_room_id: false,
        ..caller.event_options()
    }
}

pub(crate) fn receipt_event(receipts: &[storage::Receipt], me: &str) -> Option<Value> {
    let mut content: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for r in receipts {
        if r.receipt_type == "m.read.private" && r.user_id != me {
            continue;
        }
        let mut info = json!({"ts": r.ts});
        if !r.thread_id.is_empty() {
            info["thread_id"] = json!(r.thread_id);
        }
        let by_type = content.entry(r.event_id.clone()).or_default();
        let users = by_type
            .entry(r.receipt_type.clone())
            .or_insert_with(|| json!({}));
        users[&r.user_id] = info;
    }
    (!content.is_empty()).then(|| json!({"type": "m.receipt", "content": content}))
}

fn summary(c: &Connection, room_id: &str, me: &str) -> Result<Value, Error> {
    let (joined, invited) = storage::member_counts(c, room_id)?;
    let mut heroes = storage::some_room_members(c, room_id, "join", me, 5)?;
    if heroes.len() < 5 {
        heroes.extend(storage::some_room_members(
            c,
            room_id,
            "invite",
            me,
            5 - heroes.len(),
        )?);
    }
    Ok(
        json!({"m.joined_member_count": joined, "m.invited_member_count": invited, "m.heroes": heroes}),
    )
}
