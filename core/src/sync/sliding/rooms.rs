//! One room's part of a response: joined, invited or left.

use super::*;

/// A joined room as a connection's first response showed it: what a new connection of
/// the same user (an app restarted, another device) is shown of the room while its
/// events are the same, kept in [`crate::sync::SyncState::sliding_rooms`] under the
/// same rules as the rooms of initial `/sync`s ([`room_cache`]). Only the per-request
/// parts (unread counts, `bump_stamp`, `is_dm`) are added fresh.
#[derive(Clone)]
pub struct CachedRoom {
    /// The room's response without its per-request fields, as JSON text: a value tree
    /// would take several times its size in memory, and parsing it back costs a
    /// fraction of building it.
    body: Arc<str>,
    /// The members sent for `$LAZY`.
    lazy: HashSet<String>,
    /// Where the timeline ended when history visibility ended it before the token.
    capped_at: Option<StreamPosition>,
}

impl room_cache::Cached for CachedRoom {
    fn bytes(&self) -> usize {
        self.body.len()
    }
}

/// A joined room's update, `None` when the client has it all already.
#[allow(clippy::too_many_arguments)]
pub(super) fn joined_room(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    cand: &Candidate,
    cfg: &RoomConfig,
    sent: Option<&RoomSent>,
    now: SyncToken,
    direct: &HashSet<String>,
) -> Result<Option<(Value, RoomSent)>, Error> {
    let me = caller.user_id.as_str();
    let room_id = cand.room_id.as_str();
    let (mut body, record, num_live) = match sent {
        None => {
            let (body, record) = first_time(c, server, caller, cand, cfg, now)?;
            (body, record, 0)
        }
        Some(_) => match room_part(c, caller, cand, cfg, sent, now)? {
            Some((part, record, _)) => (part.body, record, part.num_live),
            None => return Ok(None),
        },
    };
    let (notifications, highlights) = storage::unread_counts(c, room_id, me)?;
    let extra = json!({
        "num_live": num_live,
        "notification_count": notifications,
        "highlight_count": highlights,
        "bump_stamp": cand.bump,
        "is_dm": direct.contains(room_id),
    });
    merge(&mut body, extra);
    if sent.is_none() {
        body["initial"] = json!(true);
    }
    Ok(Some((body, record)))
}

/// A room new to the connection: as the user's last connection was shown it, if its
/// events are the same (see [`CachedRoom`]), else built and kept.
fn first_time(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    cand: &Candidate,
    cfg: &RoomConfig,
    now: SyncToken,
) -> Result<(Value, RoomSent), Error> {
    let key = room_cache::Key {
        user_id: caller.user_id.clone(),
        room_id: cand.room_id.clone(),
        // Apart from `/sync`'s keys, which are filters as JSON.
        filters: format!("sliding {} {:?}", cfg.timeline_limit, cfg.required_state),
    };
    let (newest, oldest) = storage::room_span(c, &cand.room_id, now.pos)?;
    let span = room_cache::Span { newest, oldest };
    let cached = server.sync.sliding_rooms.get(&key, span, &caller.device_id);
    let (body, room) = match cached {
        Some(room) => (serde_json::from_str(&room.body)?, room),
        None => {
            let Some((part, _, echoes)) = room_part(c, caller, cand, cfg, None, now)? else {
                return Err(Error::internal(
                    "a room new to the connection built nothing",
                ));
            };
            let room = CachedRoom {
                body: serde_json::to_string(&part.body)?.into(),
                lazy: part.lazy,
                capped_at: part.capped_at,
            };
            server
                .sync
                .sliding_rooms
                .put(key, span, echoes, room.clone());
            (part.body, room)
        }
    };
    let record = RoomSent {
        pos: room.capped_at.unwrap_or(now.pos),
        membership: cand.membership.clone(),
        required_state: cfg.required_state.clone(),
        lazy: room.lazy,
    };
    Ok((body, record))
}

/// A joined room's part of a response that does not depend on the request.
struct RoomPart {
    /// The room's response without its per-request fields.
    body: Value,
    /// The members sent for `$LAZY`.
    lazy: HashSet<String>,
    /// Where the timeline ended when history visibility ended it before the token.
    capped_at: Option<StreamPosition>,
    num_live: usize,
}

/// Build a joined room's [`RoomPart`], with what the connection records of it and the
/// devices its timeline echoes transaction ids to.
fn room_part(
    c: &Connection,
    caller: &Requester,
    cand: &Candidate,
    cfg: &RoomConfig,
    sent: Option<&RoomSent>,
    now: SyncToken,
) -> Result<Option<(RoomPart, RoomSent, room_cache::Echoes)>, Error> {
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
    let (joined, invited) = storage::member_counts(c, room_id)?;
    let start = timeline
        .first()
        .map(|e| e.stream_ordering - 1)
        .unwrap_or(upper);
    let echoes = crate::sync::echoes(timeline.iter(), caller);
    let extra = json!({
        "timeline": crate::relations::render_in_room(c, &timeline, sync_opts(caller), &vis)?,
        "required_state": required_state,
        "prev_batch": SyncToken::at(start).to_string(),
        "limited": limited,
        "joined_count": joined,
        "invited_count": invited,
    });
    merge(&mut body, extra);
    let record = RoomSent {
        pos: upper,
        membership: cand.membership.clone(),
        required_state: cfg.required_state.clone(),
        lazy: lazy.clone(),
    };
    let part = RoomPart {
        body,
        lazy,
        capped_at: (upper < now.pos).then_some(upper),
        num_live: if sent.is_some() { timeline.len() } else { 0 },
    };
    Ok(Some((part, record, echoes)))
}

/// An invite (or knock): the stripped state, once.
pub(super) fn invited_room(
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
pub(super) fn left_room(
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
            "timeline": crate::sync::timeline_events(c, room_id, &events, caller)?,
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
