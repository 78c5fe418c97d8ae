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

pub use body::SyncBody;
use body::{Events, RoomSection, Rooms, Timeline};
#[cfg(test)]
mod room_cache_tests;
#[cfg(test)]
mod wake_tests;

/// Most events one room's timeline looks at, visible or not, per timeline event asked
/// for: an initial sync over many rooms stays cheap; the client pages on from
/// `prev_batch` when hidden history cut the search short.
const SCAN_PER_EVENT: usize = 5;

/// What `/sync` and sliding sync keep between requests, in memory, each bounded.
#[derive(Default)]
pub struct SyncState {
    /// The last initial `/sync` answers (see [`initial_cache`]).
    pub initial: initial_cache::InitialSyncCache,
    /// Rooms as initial syncs last showed them (see [`room_cache`]).
    pub rooms: room_cache::RoomSectionCache,
    /// Sliding sync connections (what each client connection already has).
    pub sliding: sliding::Connections,
}

/// The longest a `/sync` may wait.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// A sync filter (the parts that change what is returned).
#[derive(Deserialize, Default, Clone)]
pub struct Filter {
    /// Room filters.
    #[serde(default)]
    pub room: RoomFilter,
    /// Global account data filter.
    #[serde(default)]
    pub account_data: EventFilter,
    /// Presence filter.
    #[serde(default)]
    pub presence: EventFilter,
    /// Field restrictions (accepted; the full events are returned).
    #[serde(default)]
    pub event_fields: Option<Vec<String>>,
    /// `client` or `federation` (accepted; client format is returned).
    #[serde(default)]
    pub event_format: Option<String>,
}

impl Filter {
    /// Check what serde cannot: room lists hold room ids and sender lists user ids
    /// (`400 M_BAD_JSON` otherwise, as Synapse's filter schema answers).
    pub fn validate(&self) -> Result<(), Error> {
        let check = |list: &[String], key: &str, what: &str, ok: fn(&str) -> bool| match list
            .iter()
            .find(|v| !ok(v))
        {
            Some(bad) => Err(Error::BadJson(format!(
                "filter: {key} must hold {what}, not {bad:?}"
            ))),
            None => Ok(()),
        };
        let rooms = |list: &[String], key: &str| {
            check(list, key, "room ids", |r| ruma::RoomId::parse(r).is_ok())
        };
        let users = |list: &[String], key: &str| {
            check(list, key, "user ids", |u| ruma::UserId::parse(u).is_ok())
        };
        let room = &self.room;
        rooms(room.rooms.as_deref().unwrap_or_default(), "room.rooms")?;
        rooms(&room.not_rooms, "room.not_rooms")?;
        for (name, f) in [
            ("timeline", &room.timeline),
            ("state", &room.state),
            ("ephemeral", &room.ephemeral),
        ] {
            users(
                f.senders.as_deref().unwrap_or_default(),
                &format!("room.{name}.senders"),
            )?;
            users(&f.not_senders, &format!("room.{name}.not_senders"))?;
        }
        Ok(())
    }
}

/// Filter on non-room events.
#[derive(Deserialize, Default, Clone)]
pub struct EventFilter {
    /// Maximum count.
    pub limit: Option<usize>,
    /// Allowed types.
    pub types: Option<Vec<String>>,
    /// Excluded types.
    #[serde(default)]
    pub not_types: Vec<String>,
}

impl EventFilter {
    fn allows(&self, ty: &str) -> bool {
        let m = |p: &String| {
            p.strip_suffix('*')
                .map_or(p == ty, |pre| ty.starts_with(pre))
        };
        !self.not_types.iter().any(m) && self.types.as_ref().is_none_or(|t| t.iter().any(m))
    }
}

/// Filter on rooms.
#[derive(Deserialize, Default, Clone)]
pub struct RoomFilter {
    /// Only these rooms.
    pub rooms: Option<Vec<String>>,
    /// Not these rooms.
    #[serde(default)]
    pub not_rooms: Vec<String>,
    /// Include rooms the user left in an initial sync.
    #[serde(default)]
    pub include_leave: bool,
    /// Timeline events.
    #[serde(default)]
    pub timeline: RoomEventFilter,
    /// State events (and `lazy_load_members`).
    #[serde(default)]
    pub state: RoomEventFilter,
    /// Typing and receipts.
    #[serde(default)]
    pub ephemeral: RoomEventFilter,
    /// Room account data.
    #[serde(default)]
    pub account_data: EventFilter,
}

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
    loop {
        let now = server.notifier.current();
        let waiting = !deadline.saturating_duration_since(Instant::now()).is_zero();
        // A `since` equal to the current token (stream position, typing serial, to-device
        // inbox delivered) leaves nothing for `build` to find: everything it returns has a
        // later position or typing serial. A long-poll that starts there (the usual next
        // request after a sync) waits at once instead of building an empty answer.
        let nothing_new = params.since == Some(now) && !params.full_state;
        let rooms = if !(waiting && nothing_new) {
            let built = build_at(&server, &caller, &params, now).await?;
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
            return Ok(build_at(&server, &caller, &params, now).await?.body);
        }
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

/// [`build`] at `now` on a blocking thread, in one read transaction.
async fn build_at(
    server: &Arc<Server>,
    caller: &Requester,
    params: &SyncParams,
    now: SyncToken,
) -> Result<Built, Error> {
    let server = server.clone();
    let caller = caller.clone();
    let filter = params.filter.clone();
    let since = params.since;
    let full_state = params.full_state;
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
    let body = build_at(&server, &caller, &params, built.token)
        .await?
        .body
        .to_bytes()?;
    server.sync.initial.put(key, built, body.clone());
    Ok(body)
}

fn room_allowed(f: &RoomFilter, room_id: &str) -> bool {
    !f.not_rooms.iter().any(|r| r == room_id)
        && f.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room_id))
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
                if let Some(room) =
                    joined_room(c, server, caller, &room_id, since, now, filter, full, data)?
                {
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

/// The joined-room section; `None` when the room has nothing new for an incremental sync.
#[allow(clippy::too_many_arguments)]
fn joined_room(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    room_id: &str,
    since: Option<SyncToken>,
    now: SyncToken,
    filter: &Filter,
    full: bool,
    room_data: Vec<(String, String)>,
) -> Result<Option<(RoomSection, bool)>, Error> {
    let since_pos = if full {
        0
    } else {
        since.map(|s| s.pos).unwrap_or(0)
    };
    let shown = if since.is_none() {
        // An initial sync: the room as this user last saw it, if its events are the same.
        let key = room_cache::Key {
            user_id: caller.user_id.clone(),
            room_id: room_id.to_owned(),
            filters: serde_json::to_string(&(&filter.room.timeline, &filter.room.state))?,
        };
        let (newest, oldest) = storage::room_span(c, room_id, now.pos)?;
        let span = room_cache::Span { newest, oldest };
        match server.sync.rooms.get(&key, span, &caller.device_id) {
            Some(section) => Shown {
                has_events: !section.timeline.is_empty() || !section.state.is_empty(),
                members_changed: true,
                section,
            },
            None => {
                let (shown, echoes) = shown(c, caller, room_id, since_pos, now, filter, full)?;
                server
                    .sync
                    .rooms
                    .put(key, span, echoes, shown.section.clone());
                shown
            }
        }
    } else {
        shown(c, caller, room_id, since_pos, now, filter, full)?.0
    };

    let typing_users = if filter.room.ephemeral.limit == Some(0) {
        None
    } else {
        server.notifier.typing_since(
            room_id,
            since.map(|s| s.typing).unwrap_or(0),
            since.is_none(),
        )
    };
    let receipts = storage::receipts_since(
        c,
        room_id,
        if since.is_some() { since_pos } else { 0 },
        now.pos,
    )?;

    let mut ephemeral = Vec::new();
    if let Some(users) = &typing_users {
        ephemeral.push(json!({"type": "m.typing", "content": {"user_ids": users}}));
    }
    if let Some(r) = receipt_event(&receipts, &caller.user_id) {
        ephemeral.push(r);
    }
    let has_data = shown.has_events || !ephemeral.is_empty() || !room_data.is_empty();
    if !has_data && since.is_some() && !full {
        return Ok(None);
    }
    let (notifications, highlights) = storage::unread_counts(c, room_id, &caller.user_id)?;
    let mut account_data = Vec::new();
    for (ty, content) in room_data {
        account_data.push(json!({"type": ty, "content": serde_json::from_str::<Value>(&content)?}));
    }
    let mut rest = Map::new();
    rest.insert("ephemeral".into(), json!({"events": ephemeral}));
    rest.insert("account_data".into(), json!({"events": account_data}));
    rest.insert(
        "unread_notifications".into(),
        json!({"notification_count": notifications, "highlight_count": highlights}),
    );
    // The summary only changes with membership; clients keep the last one they saw, so
    // an incremental sync whose timeline holds no member event leaves it out (as Synapse
    // does) instead of counting the members on every wake-up.
    if shown.members_changed {
        rest.insert("summary".into(), summary(c, room_id, &caller.user_id)?);
    }
    let section = shown.section;
    let body = RoomSection {
        timeline: Timeline {
            events: section.timeline,
            limited: section.limited,
            prev_batch: section.prev_batch,
        },
        state: Events {
            events: section.state,
        },
        rest,
    };
    Ok(Some((body, has_data)))
}

/// A room's rendered timeline and state, and what the rest of its section needs to know
/// of them.
struct Shown {
    section: room_cache::Section,
    /// Whether the timeline or the state holds an event.
    has_events: bool,
    /// Whether the summary is due (see its use).
    members_changed: bool,
}

/// Build a room's timeline (the newest events the user may see, after `since_pos`) and
/// state (full at the start of the timeline when `full`, the delta since `since_pos` when
/// the timeline is limited, nothing otherwise: it is in the timeline), rendered; with
/// the devices the rendering echoes transaction ids to (see [`room_cache`]).
#[allow(clippy::too_many_arguments)]
fn shown(
    c: &Connection,
    caller: &Requester,
    room_id: &str,
    since_pos: i64,
    now: SyncToken,
    filter: &Filter,
    full: bool,
) -> Result<(Shown, room_cache::Echoes), Error> {
    let limit = filter.room.timeline.limit.unwrap_or(10).clamp(1, 100);
    // A room seen for the first time may show events from before the user joined: those
    // are judged by history visibility. After the join, everything is visible.
    let vis = if full {
        Some(visibility_for(c, room_id, &caller.user_id)?)
    } else {
        None
    };
    // Newest first, then reversed; take one extra to learn whether the timeline is limited.
    let mut fetched = Vec::new();
    let mut cursor = now.pos;
    let mut exhausted = false;
    let mut examined = 0usize;
    // Bounded like `/messages`: a long stretch of hidden history ends the search early
    // and marks the timeline limited, so the client paginates on from `prev_batch`.
    let scan_budget = (limit + 1) * SCAN_PER_EVENT;
    while fetched.len() <= limit && !exhausted && examined < scan_budget {
        let page = storage::room_events(c, room_id, since_pos, cursor, limit + 1, true)?;
        exhausted = page.len() < limit + 1;
        for e in page {
            examined += 1;
            cursor = e.stream_ordering - 1;
            let visible = match &vis {
                Some(v) => v.allows(c, &e)?,
                None => true,
            };
            if visible && filter.room.timeline.allows(&e) {
                fetched.push(e);
                if fetched.len() > limit {
                    break;
                }
            }
        }
    }
    // A room joined over federation has history before its first event here (on other
    // servers, or backfilled already): the timeline is limited, and `prev_batch` leads
    // `/messages` back into it (backfilling as it goes).
    let limited =
        fetched.len() > limit || !exhausted || (full && storage::has_earlier_history(c, room_id)?);
    fetched.truncate(limit);
    fetched.reverse();
    let timeline: Vec<StoredEvent> = fetched;

    let timeline_start = timeline
        .first()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(now.pos);
    let state_events: Vec<StoredEvent> = if full || limited {
        let start_state = state_at(c, room_id, timeline_start)?;
        let wanted: StateMap = if full {
            start_state
        } else {
            let before = state_at(c, room_id, since_pos)?;
            start_state
                .into_iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .collect()
        };
        state_section(c, wanted, &timeline, caller, filter)?
    } else {
        Vec::new()
    };
    let members_changed = full
        || limited
        || timeline.iter().any(|e| e.kind == "m.room.member")
        || state_events.iter().any(|e| e.kind == "m.room.member");
    let echoes = echoes(timeline.iter().chain(&state_events), caller);
    let events = match vis {
        Some(vis) => {
            crate::relations::render_raw_in_room(c, &timeline, sync_opts(caller), Some(&vis))?
        }
        None => raw_timeline_events(c, room_id, &timeline, caller)?,
    };
    let shown = Shown {
        has_events: !timeline.is_empty() || !state_events.is_empty(),
        members_changed,
        section: room_cache::Section {
            timeline: events,
            limited,
            prev_batch: SyncToken::at(timeline_start).to_string(),
            state: rendered(&state_events, caller).events,
        },
    };
    Ok((shown, echoes))
}

/// The caller's devices whose transaction ids `events` carry: a rendering of them
/// echoes them to those devices only (see [`room_cache`]).
fn echoes<'a>(
    events: impl Iterator<Item = &'a StoredEvent>,
    caller: &Requester,
) -> room_cache::Echoes {
    let mut senders: Vec<String> = Vec::new();
    for e in events {
        if e.sender == caller.user_id
            && e.txn_id.is_some()
            && let Some(d) = &e.txn_device
            && !senders.contains(d)
        {
            senders.push(d.clone());
        }
    }
    room_cache::Echoes {
        device: senders
            .contains(&caller.device_id)
            .then(|| caller.device_id.clone()),
        senders,
    }
}

/// Timeline events with their bundled aggregations (edits, threads, references), counted
/// over the part of the room the user may read; one set of lookups per room.
pub(crate) fn timeline_events(
    c: &Connection,
    room_id: &str,
    events: &[StoredEvent],
    caller: &Requester,
) -> Result<Vec<Value>, Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let vis = readable(c, room_id, caller)?;
    crate::relations::render(c, events, sync_opts(caller), |_| vis.as_ref())
}

/// [`timeline_events`], as JSON text.
fn raw_timeline_events(
    c: &Connection,
    room_id: &str,
    events: &[StoredEvent],
    caller: &Requester,
) -> Result<Vec<Box<RawValue>>, Error> {
    if events.is_empty() {
        return Ok(Vec::new());
    }
    let vis = readable(c, room_id, caller)?;
    crate::relations::render_raw_in_room(c, events, sync_opts(caller), vis.as_ref())
}

/// The user's view of a room, `None` if they may not read it (no aggregations then).
fn readable(
    c: &Connection,
    room_id: &str,
    caller: &Requester,
) -> Result<Option<Visibility>, Error> {
    match visibility_for(c, room_id, &caller.user_id) {
        Ok(v) => Ok(Some(v)),
        Err(Error::Forbidden(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// State events as JSON text for a room section.
fn rendered(events: &[StoredEvent], caller: &Requester) -> Events {
    Events {
        events: events
            .iter()
            .map(|e| ClientEvent::new(e, sync_opts(caller)).to_raw())
            .collect(),
    }
}

/// The `state` section's events for `wanted`: members only as lazy loading asks, none
/// already in the timeline, only the types the state filter allows.
fn state_section(
    c: &Connection,
    wanted: StateMap,
    timeline: &[StoredEvent],
    caller: &Requester,
    filter: &Filter,
) -> Result<Vec<StoredEvent>, Error> {
    let wanted = if filter.room.state.lazy_load_members {
        lazy_filter(wanted, timeline, &caller.user_id)
    } else {
        wanted
    };
    let in_timeline: std::collections::HashSet<&str> =
        timeline.iter().map(|e| e.event_id.as_str()).collect();
    let ids = wanted
        .into_values()
        .filter(|id| !in_timeline.contains(id.as_str()));
    Ok(event_list(c, ids)?
        .into_iter()
        .filter(|e| {
            filter
                .room
                .state
                .types
                .as_ref()
                .is_none_or(|ts| ts.contains(&e.kind))
        })
        .collect())
}

/// Keep non-member state, plus members who sent timeline events and the user themself.
fn lazy_filter(state: StateMap, timeline: &[StoredEvent], me: &str) -> StateMap {
    state
        .into_iter()
        .filter(|((ty, sk), _)| {
            ty != "m.room.member" || sk == me || timeline.iter().any(|e| &e.sender == sk)
        })
        .collect()
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

pub(crate) fn invite_state(
    c: &Connection,
    room_id: &str,
    invite_event_id: &str,
) -> Result<Vec<Value>, Error> {
    membership_state(c, room_id, invite_event_id, "invite_room_state")
}

/// `rooms.knock.*.knock_state`: the room's stripped state and the user's knock.
fn knock_state(c: &Connection, room_id: &str, knock_event_id: &str) -> Result<Vec<Value>, Error> {
    membership_state(c, room_id, knock_event_id, "knock_room_state")
}

/// Stripped state for a pending invite or knock (`remote_key`: where a remote server's
/// stripped state is kept in the membership event's `unsigned`).
fn membership_state(
    c: &Connection,
    room_id: &str,
    membership_event_id: &str,
    remote_key: &str,
) -> Result<Vec<Value>, Error> {
    let invite_event_id = membership_event_id;
    let mut out = Vec::new();
    // An invite or knock on a room this node is not in: the stripped state the other
    // server sent (kept in the event's `unsigned`), then the membership event.
    if let Some(ev) = storage::get_event_any(c, invite_event_id)?
        && let Some(Value::Array(state)) = ev
            .unsigned
            .as_deref()
            .and_then(|u| serde_json::from_str::<Value>(u).ok())
            .and_then(|mut u| u.get_mut(remote_key).map(Value::take))
    {
        out.extend(state.into_iter().filter(Value::is_object).take(50));
        out.push(stripped_state(&ev));
        return Ok(out);
    }
    for ty in [
        "m.room.create",
        "m.room.join_rules",
        "m.room.name",
        "m.room.avatar",
        "m.room.canonical_alias",
        "m.room.encryption",
        "m.room.topic",
    ] {
        if let Some(id) = storage::current_state_event(c, room_id, ty, "")?
            && let Some(ev) = storage::get_event(c, &id)?
        {
            out.push(stripped_state(&ev));
        }
    }
    if let Some(ev) = storage::get_event(c, invite_event_id)? {
        out.push(stripped_state(&ev));
        // The inviter's own member event lets clients show who invited.
        if ev.state_key.as_deref() != Some(ev.sender.as_str())
            && let Some(id) = storage::current_state_event(c, room_id, "m.room.member", &ev.sender)?
            && let Some(inviter) = storage::get_event(c, &id)?
        {
            out.push(stripped_state(&inviter));
        }
    }
    Ok(out)
}

fn left_room(
    c: &Connection,
    caller: &Requester,
    room_id: &str,
    since_pos: i64,
    leave_pos: i64,
    filter: &Filter,
) -> Result<RoomSection, Error> {
    let limit = filter.room.timeline.limit.unwrap_or(10).clamp(1, 100);
    let mut events = storage::room_events(c, room_id, since_pos, leave_pos, limit + 1, true)?;
    // Limited when events since `since` are left out, filtered or not.
    let limited = events.len() > limit;
    events.truncate(limit);
    let mut events = match visibility_for(c, room_id, &caller.user_id) {
        Ok(vis) => visible_events(c, &vis, events)?,
        Err(Error::Forbidden(_)) => Vec::new(),
        Err(e) => return Err(e),
    };
    events.retain(|e| filter.room.timeline.allows(e));
    events.reverse();
    let start = events
        .first()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(leave_pos);
    // As for a joined room: the full state at the timeline's start on an initial sync,
    // what changed since `since` before a limited timeline, nothing otherwise.
    let state = if since_pos == 0 || limited {
        let start_state = state_at(c, room_id, start)?;
        let wanted: StateMap = if since_pos == 0 {
            start_state
        } else {
            let before = state_at(c, room_id, since_pos)?;
            start_state
                .into_iter()
                .filter(|(k, v)| before.get(k) != Some(v))
                .collect()
        };
        state_section(c, wanted, &events, caller, filter)?
    } else {
        Vec::new()
    };
    let mut rest = Map::new();
    rest.insert("account_data".into(), json!({"events": []}));
    Ok(RoomSection {
        timeline: Timeline {
            events: raw_timeline_events(c, room_id, &events, caller)?,
            limited,
            prev_batch: SyncToken::at(start).to_string(),
        },
        state: rendered(&state, caller),
        rest,
    })
}
