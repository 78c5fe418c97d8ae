//! Room endpoints: create, send, state, redact, event, context, messages, members.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P, Q, Requester};
use crate::error::Error;
use crate::events::{ClientEventOptions, client_event};
use crate::relations;
use crate::room_writes;
use crate::rooms::filter::RoomEventFilter;
use crate::rooms::state_at::state_at;
use crate::rooms::visibility::{visibility_for, visible_events};
use crate::rooms::{self, CreateRoom};
use crate::server::Server;
use crate::storage::{self, StoredEvent};
use crate::streams::PageToken;

/// Most events `timestamp_to_event` looks at for one the caller may see.
const NEAR_TS_SCAN: usize = 200;

/// Most events one `/messages` call looks at, visible or not.
const SCAN_BUDGET: usize = 1000;

/// Most backfill calls (one federation batch each, see `rooms::backfill`) one
/// `/messages` call makes when it pages past the oldest event stored here.
const MAX_BACKFILL_CALLS: usize = 2;

type JsonResult = Result<Json<Value>, Error>;

pub fn opts(caller: &Requester) -> ClientEventOptions<'_> {
    caller.event_options()
}

#[derive(Deserialize)]
pub(super) struct CreateRoomBody {
    visibility: Option<String>,
    room_alias_name: Option<String>,
    name: Option<String>,
    topic: Option<String>,
    #[serde(default)]
    invite: Vec<String>,
    room_version: Option<String>,
    creation_content: Option<Value>,
    #[serde(default)]
    initial_state: Vec<InitialState>,
    preset: Option<String>,
    #[serde(default)]
    is_direct: bool,
    power_level_content_override: Option<Value>,
}

#[derive(Deserialize)]
pub(super) struct InitialState {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    state_key: String,
    content: Value,
}

/// `POST /createRoom`.
pub(super) async fn create_room(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<CreateRoomBody>,
) -> JsonResult {
    if let Some(local) = &body.room_alias_name {
        let alias = format!("#{local}:{}", server.server_name());
        super::directory::check_alias_namespace(&server, &caller, &alias)?;
    }
    let public = match body.visibility.as_deref() {
        None | Some("private") => false,
        Some("public") => true,
        Some(other) => return Err(Error::BadJson(format!("unknown visibility {other}"))),
    };
    let req = CreateRoom {
        preset: body.preset,
        public,
        name: body.name,
        topic: body.topic,
        alias_localpart: body.room_alias_name,
        invite: body.invite,
        is_direct: body.is_direct,
        creation_content: body.creation_content,
        initial_state: body
            .initial_state
            .into_iter()
            .map(|s| (s.kind, s.state_key, s.content))
            .collect(),
        power_level_content_override: body.power_level_content_override,
        room_version: body.room_version,
    };
    let room_id = room_writes::create_room(&server, &caller, req).await?;
    Ok(Json(json!({"room_id": room_id})))
}

/// The query parameters of sends and state: `ts`, with which an application service
/// sets the event's `origin_server_ts` (a bridged message keeps its original time), and
/// MSC4140's delay, which makes it a delayed event.
#[derive(Deserialize)]
pub(super) struct TsQuery {
    ts: Option<i64>,
    #[serde(rename = "org.matrix.msc4140.delay")]
    delay: Option<u64>,
}

impl TsQuery {
    /// The timestamp to use, honoured for application services only.
    fn for_caller(&self, caller: &Requester) -> Option<i64> {
        caller.appservice.as_ref().and(self.ts).filter(|t| *t >= 0)
    }
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
pub(super) async fn send_message(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, txn_id)): P<(String, String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    if let Some(delay) = ts.delay {
        return super::delayed_events::schedule(
            &server,
            super::delayed_events::Schedule {
                user_id: &caller.user_id,
                device_id: &caller.device_id,
                txn_id: Some(&txn_id),
                room_id: &room_id,
                kind: &kind,
                state_key: None,
                content: &content,
                delay_ms: delay,
            },
        );
    }
    let ts = ts.for_caller(&caller);
    let event_id =
        room_writes::send_message(&server, &caller, &room_id, kind, content, &txn_id, ts)?;
    Ok(Json(json!({"event_id": event_id})))
}

/// `PUT /rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(super) async fn put_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, state_key)): P<(String, String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    if let Some(delay) = ts.delay {
        return super::delayed_events::schedule(
            &server,
            super::delayed_events::Schedule {
                user_id: &caller.user_id,
                device_id: &caller.device_id,
                txn_id: None,
                room_id: &room_id,
                kind: &kind,
                state_key: Some(&state_key),
                content: &content,
                delay_ms: delay,
            },
        );
    }
    let ts = ts.for_caller(&caller);
    put_state_inner(server, caller, room_id, kind, state_key, content, ts).await
}

/// `PUT /rooms/{roomId}/state/{eventType}` (empty state key).
pub(super) async fn put_state_empty(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind)): P<(String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    if let Some(delay) = ts.delay {
        return super::delayed_events::schedule(
            &server,
            super::delayed_events::Schedule {
                user_id: &caller.user_id,
                device_id: &caller.device_id,
                txn_id: None,
                room_id: &room_id,
                kind: &kind,
                state_key: Some(""),
                content: &content,
                delay_ms: delay,
            },
        );
    }
    let ts = ts.for_caller(&caller);
    put_state_inner(server, caller, room_id, kind, String::new(), content, ts).await
}

async fn put_state_inner(
    server: Arc<Server>,
    caller: Requester,
    room_id: String,
    kind: String,
    state_key: String,
    content: Value,
    ts: Option<i64>,
) -> JsonResult {
    let event_id =
        room_writes::put_state(&server, &caller, &room_id, kind, state_key, content, ts).await?;
    Ok(Json(json!({"event_id": event_id})))
}

#[derive(Deserialize)]
pub(super) struct FormatQuery {
    format: Option<String>,
}

/// `GET /rooms/{roomId}/state/{eventType}/{stateKey}`.
pub(super) async fn get_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, state_key)): P<(String, String, String)>,
    Q(q): Q<FormatQuery>,
) -> JsonResult {
    get_state_inner(
        &server,
        &caller,
        &room_id,
        &kind,
        &state_key,
        q.format.as_deref(),
    )
}

/// `GET /rooms/{roomId}/state/{eventType}` (empty state key).
pub(super) async fn get_state_empty(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind)): P<(String, String)>,
    Q(q): Q<FormatQuery>,
) -> JsonResult {
    get_state_inner(&server, &caller, &room_id, &kind, "", q.format.as_deref())
}

fn get_state_inner(
    server: &Server,
    caller: &Requester,
    room_id: &str,
    kind: &str,
    state_key: &str,
    format: Option<&str>,
) -> JsonResult {
    let ev = server.db.read_tx(|c| {
        let state = visible_state(c, room_id, &caller.user_id)?;
        match state.get(&(kind.to_owned(), state_key.to_owned())) {
            Some(id) => storage::get_state_event(c, id),
            None => Ok(None),
        }
    })?;
    let ev = ev.ok_or_else(|| Error::NotFound("state event not found".into()))?;
    let full = client_event(&ev, opts(caller));
    if format == Some("event") {
        Ok(Json(full))
    } else {
        Ok(Json(full["content"].clone()))
    }
}

/// The state a user may see: current state while joined, the state when they left otherwise.
pub(super) fn visible_state(
    c: &rusqlite::Connection,
    room_id: &str,
    user_id: &str,
) -> Result<storage::StateMap, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, _, _)) if m == "join" => storage::current_state(c, room_id),
        Some((m, _, pos)) if m == "leave" || m == "ban" => state_at(c, room_id, pos),
        _ => Err(Error::Forbidden(format!(
            "you are not a member of {room_id}"
        ))),
    }
}

/// `GET /rooms/{roomId}/state`.
pub(super) async fn get_all_state(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    let events = server.db.read_tx(|c| {
        let state = visible_state(c, &room_id, &caller.user_id)?;
        let mut out = Vec::with_capacity(state.len());
        for id in state.values() {
            if let Some(ev) = storage::get_state_event(c, id)? {
                out.push(client_event(&ev, opts(&caller)));
            }
        }
        Ok(out)
    })?;
    Ok(Json(Value::Array(events)))
}

#[derive(Deserialize)]
pub(super) struct RedactBody {
    reason: Option<String>,
}

/// `PUT /rooms/{roomId}/redact/{eventId}/{txnId}`.
pub(super) async fn redact(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id, txn_id)): P<(String, String, String)>,
    Body(body): Body<RedactBody>,
) -> JsonResult {
    let event_id = room_writes::redact(&server, &caller, &room_id, event_id, body.reason, &txn_id)?;
    Ok(Json(json!({"event_id": event_id})))
}

/// `GET /rooms/{roomId}/event/{eventId}`.
pub(super) async fn get_event(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
) -> JsonResult {
    let ev = server.db.read_tx(|c| {
        // The spec's 404 for "not found or you may not read it": the same answer either
        // way, so nobody learns which events exist in a room they cannot see.
        let hidden = || Error::NotFound("event not found".into());
        let vis = visibility_for(c, &room_id, &caller.user_id).map_err(|e| match e {
            Error::Forbidden(_) => hidden(),
            other => other,
        })?;
        let ev = match storage::get_event(c, &event_id)? {
            Some(e) if vis.allows(c, &e)? => e,
            _ => return Err(Error::NotFound("event not found".into())),
        };
        let mut rendered = relations::render_in_room(c, &[ev], opts(&caller), &vis)?;
        Ok(rendered.pop().unwrap_or_default())
    })?;
    Ok(Json(ev))
}

#[derive(Deserialize)]
pub(super) struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<usize>,
    filter: Option<String>,
}

fn parse_token(t: &str) -> Result<i64, Error> {
    PageToken::parse(t)
        .map(|t| t.0)
        .ok_or_else(|| Error::InvalidParam(format!("invalid pagination token {t}")))
}

/// Members whose state a lazy-loading client needs for these events.
pub fn lazy_members(
    c: &rusqlite::Connection,
    state: &storage::StateMap,
    events: &[StoredEvent],
    caller: &Requester,
) -> Result<Vec<Value>, Error> {
    let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    senders.sort();
    senders.dedup();
    let mut out = Vec::new();
    for s in senders {
        if let Some(id) = state.get(&("m.room.member".to_owned(), s.to_owned()))
            && let Some(ev) = storage::get_state_event(c, id)?
        {
            out.push(client_event(&ev, opts(caller)));
        }
    }
    Ok(out)
}

/// `GET /rooms/{roomId}/messages`.
pub(super) async fn messages(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<MessagesQuery>,
) -> JsonResult {
    let backwards = match q.dir.as_deref() {
        Some("b") | None => true,
        Some("f") => false,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "dir must be b or f, not {other}"
            )));
        }
    };
    let filter: RoomEventFilter = match &q.filter {
        Some(f) => {
            serde_json::from_str(f).map_err(|e| Error::BadJson(format!("invalid filter: {e}")))?
        }
        None => RoomEventFilter::default(),
    };
    let limit = q.limit.or(filter.limit).unwrap_or(10).clamp(1, 1000);
    let current = server.notifier.current().pos;
    let from = match &q.from {
        Some(t) => parse_token(t)?,
        None if backwards => current,
        None => i64::MIN,
    };
    let to = q.to.as_deref().map(parse_token).transpose()?;
    let mut page = Page {
        out: Vec::new(),
        cursor: from,
        examined: 0,
        exhausted: false,
    };
    let mut backfill_calls = 0;
    let mut backfill_stalled = false;
    loop {
        server.db.read_tx(|c| {
            let vis = visibility_for(c, &room_id, &caller.user_id)?;
            page.fill(c, &room_id, &vis, &filter, limit, backwards, to, current)
        })?;
        // Paging back past the oldest event stored here: ask another server of the room
        // for older history (bounded), then go on.
        if !backwards
            || !page.exhausted
            || page.out.len() >= limit
            || page.examined >= SCAN_BUDGET
            || to.is_some()
            || backfill_calls >= MAX_BACKFILL_CALLS
        {
            break;
        }
        if !server
            .db
            .read(|c| storage::has_backfill_extremities(c, &room_id))?
        {
            break;
        }
        backfill_calls += 1;
        // Our own failure while storing history must not cost the client what is here.
        let done = match rooms::backfill::backfill(&server, &room_id).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(%room_id, error = %e, "backfill failed");
                rooms::backfill::Backfilled::default()
            }
        };
        if done.added == 0 {
            backfill_stalled = true;
            break;
        }
        page.exhausted = false;
    }
    let (chunk, end, state) = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        let out = &page.out;
        // More may come: a full page or a search cut short, or (backwards) history that
        // backfilling may still fetch. When backfilling brought nothing (no server could
        // be reached, or none had more), an empty page ends without `end`, so a client
        // does not spin on empty pages; paging again later tries again.
        let gap = backwards
            && page.exhausted
            && to.is_none()
            && storage::has_backfill_extremities(c, &room_id)?
            && !(backfill_stalled && out.is_empty());
        let more = !page.exhausted || out.len() == limit || gap;
        let end = more.then(|| PageToken::at(page.cursor).to_string());
        let state = if filter.lazy_load_members {
            lazy_members(c, &storage::current_state(c, &room_id)?, out, &caller)?
        } else {
            Vec::new()
        };
        let chunk = relations::render_in_room(c, out, opts(&caller), &vis)?;
        Ok((chunk, end, state))
    })?;
    let start = q
        .from
        .clone()
        .unwrap_or_else(|| PageToken::at(from).to_string());
    let mut body = json!({
        "start": start,
        "chunk": chunk,
    });
    if let Some(end) = end {
        body["end"] = json!(end);
    }
    if !state.is_empty() {
        body["state"] = json!(state);
    }
    Ok(Json(body))
}

/// A `/messages` page being gathered, across the reads between backfill calls.
struct Page {
    out: Vec<StoredEvent>,
    /// Where the next read continues from (a position, see [`PageToken`]).
    cursor: i64,
    examined: usize,
    /// Whether the last read found no more events stored here.
    exhausted: bool,
}

impl Page {
    /// Add the events after the cursor the caller may see and the filter allows, until
    /// the page is full, the events stored here run out or the scan budget is spent.
    /// Filtered-out events still advance the cursor: a long stretch the user may not
    /// see ends the page early with an `end` token to continue from.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        c: &rusqlite::Connection,
        room_id: &str,
        vis: &crate::rooms::visibility::Visibility,
        filter: &RoomEventFilter,
        limit: usize,
        backwards: bool,
        to: Option<i64>,
        current: i64,
    ) -> Result<(), Error> {
        self.exhausted = false;
        while self.out.len() < limit && !self.exhausted && self.examined < SCAN_BUDGET {
            let (after, up_to) = if backwards {
                (to.unwrap_or(i64::MIN).max(vis.min_pos()), self.cursor)
            } else {
                (self.cursor, to.unwrap_or(current).min(vis.max_pos()))
            };
            if after >= up_to {
                break;
            }
            let page = storage::room_events(c, room_id, after, up_to, limit * 2, backwards)?;
            self.exhausted = page.len() < limit * 2;
            let related = filter.related_ids(c, &page)?;
            for e in page {
                self.examined += 1;
                self.cursor = if backwards {
                    e.stream_ordering - 1
                } else {
                    e.stream_ordering
                };
                if filter.allows(&e)
                    && related.as_ref().is_none_or(|ids| ids.contains(&e.event_id))
                    && vis.allows(c, &e)?
                {
                    self.out.push(e);
                    if self.out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

#[derive(Deserialize)]
pub(super) struct ContextQuery {
    limit: Option<usize>,
    filter: Option<String>,
}

/// `GET /rooms/{roomId}/context/{eventId}`.
pub(super) async fn context(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
    Q(q): Q<ContextQuery>,
) -> JsonResult {
    let filter: RoomEventFilter = match &q.filter {
        Some(f) => {
            serde_json::from_str(f).map_err(|e| Error::BadJson(format!("invalid filter: {e}")))?
        }
        None => RoomEventFilter::default(),
    };
    let limit = q.limit.unwrap_or(10).min(100);
    let body = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        let ev = match storage::get_event(c, &event_id)? {
            Some(e) if vis.allows(c, &e)? => e,
            _ => return Err(Error::NotFound("event not found".into())),
        };
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let before = storage::room_events(
            c,
            &room_id,
            vis.min_pos(),
            ev.stream_ordering - 1,
            before_n,
            true,
        )?;
        let before: Vec<StoredEvent> = visible_events(c, &vis, before)?
            .into_iter()
            .filter(|e| filter.allows(e))
            .collect();
        let after = storage::room_events(
            c,
            &room_id,
            ev.stream_ordering,
            vis.max_pos(),
            after_n,
            false,
        )?;
        let after: Vec<StoredEvent> = visible_events(c, &vis, after)?
            .into_iter()
            .filter(|e| filter.allows(e))
            .collect();
        let start = before
            .last()
            .map(|e| e.stream_ordering - 1)
            .unwrap_or(ev.stream_ordering - 1);
        let end = after
            .last()
            .map(|e| e.stream_ordering)
            .unwrap_or(ev.stream_ordering);
        let state_map = state_at(c, &room_id, ev.stream_ordering)?;
        let state: Vec<Value> = if filter.lazy_load_members {
            let mut all = before.clone();
            all.extend(after.iter().cloned());
            all.push(ev.clone());
            lazy_members(c, &state_map, &all, &caller)?
        } else {
            let mut v = Vec::new();
            for id in state_map.values() {
                if let Some(s) = storage::get_state_event(c, id)? {
                    v.push(client_event(&s, opts(&caller)));
                }
            }
            v
        };
        // One set of aggregation lookups for the whole answer.
        let (n_before, n_after) = (before.len(), after.len());
        let mut all = before;
        all.push(ev);
        all.extend(after);
        let mut rendered = relations::render_in_room(c, &all, opts(&caller), &vis)?;
        let events_after = rendered.split_off(n_before + 1);
        let event = rendered.pop().unwrap_or_default();
        debug_assert_eq!(events_after.len(), n_after);
        Ok(json!({
            "event": event,
            "events_before": rendered,
            "events_after": events_after,
            "start": PageToken::at(start).to_string(),
            "end": PageToken::at(end).to_string(),
            "state": state,
        }))
    })?;
    Ok(Json(body))
}

#[derive(Deserialize)]
pub(super) struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

/// `GET /rooms/{roomId}/members`.
pub(super) async fn members(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<MembersQuery>,
) -> JsonResult {
    let chunk = server.db.read_tx(|c| {
        let mut state = visible_state(c, &room_id, &caller.user_id)?;
        if let Some(at) = &q.at {
            let pos = parse_token(at)?;
            let vis = visibility_for(c, &room_id, &caller.user_id)?;
            state = state_at(c, &room_id, pos.min(vis.max_pos()))?;
        }
        let mut out = Vec::new();
        for ((ty, _), id) in state.iter() {
            if ty != "m.room.member" {
                continue;
            }
            let Some(ev) = storage::get_state_event(c, id)? else {
                continue;
            };
            let v = client_event(&ev, opts(&caller));
            let m = v["content"]["membership"].as_str().unwrap_or("");
            if q.membership.as_deref().is_some_and(|want| want != m)
                || q.not_membership.as_deref() == Some(m)
            {
                continue;
            }
            out.push(v);
        }
        Ok(out)
    })?;
    Ok(Json(json!({"chunk": chunk})))
}

/// `GET /rooms/{roomId}/joined_members`.
pub(super) async fn joined_members(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    let joined = server.db.read_tx(|c| {
        // Only current members (Synapse's rule): a user who left sees no member list.
        let membership = storage::membership(c, &room_id, &caller.user_id)?.map(|(m, _, _)| m);
        if membership.as_deref() != Some("join") {
            return Err(Error::Forbidden(
                "only current members of the room may list its joined members".into(),
            ));
        }
        let state = visible_state(c, &room_id, &caller.user_id)?;
        let mut out = serde_json::Map::new();
        for ((ty, sk), id) in state.iter() {
            if ty != "m.room.member" {
                continue;
            }
            let Some(ev) = storage::get_state_event(c, id)? else { continue };
            let v: Value = serde_json::from_str(&ev.json)?;
            if v["content"]["membership"] == "join" {
                out.insert(
                    sk.clone(),
                    json!({"display_name": v["content"]["displayname"], "avatar_url": v["content"]["avatar_url"]}),
                );
            }
        }
        Ok(out)
    })?;
    Ok(Json(json!({"joined": joined})))
}

#[derive(Deserialize)]
pub(super) struct TimestampQuery {
    ts: Option<String>,
    dir: Option<String>,
}

/// `GET /_matrix/client/v1/rooms/{roomId}/timestamp_to_event?ts=&dir=f|b`: the event
/// closest to `ts` in direction `dir` that the caller may see (by `origin_server_ts`,
/// one index lookup). Only events stored here are considered; 404 when there is none.
pub(super) async fn timestamp_to_event(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<TimestampQuery>,
) -> JsonResult {
    let ts: i64 = q
        .ts
        .as_deref()
        .ok_or_else(|| Error::MissingParam("ts is required".into()))?
        .parse()
        .map_err(|_| Error::InvalidParam("ts must be an integer (ms since the epoch)".into()))?;
    let forward = match q.dir.as_deref() {
        Some("f") => true,
        Some("b") => false,
        None => return Err(Error::MissingParam("dir is required".into())),
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "dir must be f or b, not {other:?}"
            )));
        }
    };
    let found = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        // The nearest event the caller may see, looking a bounded way past hidden ones.
        for e in storage::events_near_ts(c, &room_id, ts, forward, NEAR_TS_SCAN)? {
            if vis.allows(c, &e)? {
                return Ok(Some(e));
            }
        }
        Ok(None)
    })?;
    let ev = found.ok_or_else(|| {
        Error::NotFound(format!(
            "no event found {} {ts}",
            if forward { "from" } else { "up to" }
        ))
    })?;
    Ok(Json(
        json!({"event_id": ev.event_id, "origin_server_ts": ev.origin_server_ts}),
    ))
}
