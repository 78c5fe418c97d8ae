//! The extensions' parts of a response: to-device, E2EE, account data, receipts, typing.

use super::build::Selection;
use super::*;

/// The extensions the request enabled; `has_data` is set when one carries something.
#[allow(clippy::too_many_arguments)]
pub(super) fn build(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    req: &Request,
    prev: &Snapshot,
    now: SyncToken,
    to_device_since: Option<StreamPosition>,
    selection: &Selection,
    initial_rooms: &HashSet<String>,
    has_data: &mut bool,
) -> Result<Map<String, Value>, Error> {
    let me = caller.user_id.as_str();
    let ext_rooms = |ext: &RoomsExt| rooms_of(ext, selection);
    let mut extensions = Map::new();
    let since_pos = prev.token.map(|t| t.pos);
    if req.extensions.to_device.enabled == Some(true) {
        let from = to_device_since.unwrap_or(0).min(now.pos);
        let delivery = e2ee::to_device::for_sync(c, caller, from, now.pos)?;
        *has_data |= !delivery.events.is_empty();
        extensions.insert(
            "to_device".into(),
            json!({
                "next_batch": delivery.delivered_up_to.unwrap_or(now.pos).to_string(),
                "events": delivery.events,
            }),
        );
    }
    if req.extensions.e2ee.enabled == Some(true) {
        extensions.insert(
            "e2ee".into(),
            e2ee_ext(c, caller, since_pos, now, has_data)?,
        );
    }
    if req.extensions.account_data.on() {
        let wanted = ext_rooms(&req.extensions.account_data);
        let (global, by_room) = account_data(c, me, since_pos, now, &wanted, initial_rooms)?;
        *has_data |= !global.is_empty() || !by_room.is_empty();
        extensions.insert(
            "account_data".into(),
            json!({"global": global, "rooms": by_room}),
        );
    }
    if req.extensions.receipts.on() {
        let mut by_room = Map::new();
        for room_id in ext_rooms(&req.extensions.receipts) {
            let from = if initial_rooms.contains(&room_id) {
                0
            } else {
                since_pos.unwrap_or(0)
            };
            let receipts = storage::receipts_since(c, &room_id, from, now.pos)?;
            if let Some(ev) = receipt_event(&receipts, me) {
                by_room.insert(room_id, ev);
            }
        }
        *has_data |= !by_room.is_empty();
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
        *has_data |= !by_room.is_empty();
        extensions.insert("typing".into(), json!({"rooms": by_room}));
    }
    Ok(extensions)
}

/// The rooms a per-room extension applies to: those in range of the lists it names and
/// the subscriptions it names (`*` or nothing: all).
fn rooms_of(ext: &RoomsExt, selection: &Selection) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let all_lists = ext
        .lists
        .as_ref()
        .is_none_or(|l| l.iter().any(|n| n == "*"));
    for (name, ids) in &selection.list_rooms {
        if all_lists || ext.lists.iter().flatten().any(|n| n == name) {
            out.extend(ids.iter().cloned());
        }
    }
    let all_subs = ext
        .rooms
        .as_ref()
        .is_none_or(|r| r.iter().any(|n| n == "*"));
    for id in &selection.subscribed {
        if all_subs || ext.rooms.iter().flatten().any(|n| n == id) {
            out.insert(id.clone());
        }
    }
    out
}

/// The E2EE extension: device list changes since the previous response, key counts.
fn e2ee_ext(
    c: &Connection,
    caller: &Requester,
    since_pos: Option<StreamPosition>,
    now: SyncToken,
    has_data: &mut bool,
) -> Result<Value, Error> {
    let me = caller.user_id.as_str();
    let device_lists = match since_pos {
        Some(p) => e2ee::device_lists::changes(c, me, p, now.pos)?,
        None => Default::default(),
    };
    *has_data |= !device_lists.is_empty();
    Ok(json!({
        "device_lists": {"changed": device_lists.changed, "left": device_lists.left},
        "device_one_time_keys_count":
            e2ee::keys::one_time_key_counts(c, me, &caller.device_id)?,
        "device_unused_fallback_key_types":
            storage::unused_fallback_key_types(c, me, &caller.device_id)?,
    }))
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
