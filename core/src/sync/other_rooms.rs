//! The sections of rooms the user is invited to, has knocked on or has left.

use super::*;

pub(crate) fn invite_state(
    c: &Connection,
    room_id: &str,
    invite_event_id: &str,
) -> Result<Vec<Value>, Error> {
    membership_state(c, room_id, invite_event_id, "invite_room_state")
}

/// `rooms.knock.*.knock_state`: the room's stripped state and the user's knock.
pub(super) fn knock_state(
    c: &Connection,
    room_id: &str,
    knock_event_id: &str,
) -> Result<Vec<Value>, Error> {
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

pub(super) fn left_room(
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
