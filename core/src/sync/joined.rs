//! A joined room's section: its timeline and state (kept between initial syncs, see
//! [`super::room_cache`]), ephemeral events, account data, counts and summary.

use super::*;

/// The joined-room section; `None` when the room has nothing new for an incremental sync.
#[allow(clippy::too_many_arguments)]
pub(super) fn joined_room(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    room_id: &str,
    since: Option<SyncToken>,
    now: SyncToken,
    filter: &Filter,
    filters_key: &str,
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
            filters: filters_key.to_owned(),
        };
        let (newest, oldest) = storage::room_span(c, room_id, now.pos)?;
        let span = room_cache::Span { newest, oldest };
        match server.sync.rooms.get(&key, span, &caller.device_id) {
            Some(section) => Shown {
                has_events: !section.timeline.is_empty() || !section.state.is_empty(),
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
    let section = shown.section;
    if let Some(summary) = section.summary {
        rest.insert("summary".into(), summary);
    }
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
    // The summary only changes with membership; clients keep the last one they saw, so
    // an incremental sync whose timeline holds no member event leaves it out (as Synapse
    // does) instead of counting the members on every wake-up.
    let summary = if members_changed {
        Some(summary(c, room_id, &caller.user_id)?)
    } else {
        None
    };
    let shown = Shown {
        has_events: !timeline.is_empty() || !state_events.is_empty(),
        section: room_cache::Section {
            timeline: events,
            limited,
            prev_batch: SyncToken::at(timeline_start).to_string(),
            state: rendered(&state_events, caller).events,
            summary,
        },
    };
    Ok((shown, echoes))
}

/// The caller's devices whose transaction ids `events` carry: a rendering of them
/// echoes them to those devices only (see [`room_cache`]).
pub(super) fn echoes<'a>(
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
pub(super) fn raw_timeline_events(
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
pub(super) fn rendered(events: &[StoredEvent], caller: &Requester) -> Events {
    Events {
        events: events
            .iter()
            .map(|e| ClientEvent::new(e, sync_opts(caller)).to_raw())
            .collect(),
    }
}

/// The `state` section's events for `wanted`: members only as lazy loading asks, none
/// already in the timeline, only the types the state filter allows.
pub(super) fn state_section(
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
