//! `POST /rooms/{roomId}/upgrade`: replace a room with a new one of another version, as
//! Synapse does.
//!
//! The new room's create event names its `predecessor`; the state Synapse copies
//! (join rules, name, topic, avatar, guest access, history visibility, encryption,
//! server ACL, related groups, space children and parents, power levels, bans) is
//! re-sent by the upgrading user; local aliases, the canonical alias and the directory
//! listing move to the new room; the old room gets an `m.room.tombstone` pointing at the
//! new one and its power levels are raised so ordinary users can no longer talk or
//! invite. Everything happens in one write transaction: a failure leaves no half-made
//! room behind.

use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use super::append::append_event;
use super::create_event::new_room_id;
use super::new_room::{Create, NewRoom, state_event};
use super::power::power_levels;
use crate::error::Error;
use crate::events::rules_for;
use crate::server::Server;
use crate::storage::{self, StateMap};

/// State copied with the empty state key.
const COPIED: &[&str] = &[
    "m.room.join_rules",
    "m.room.name",
    "m.room.topic",
    "m.room.history_visibility",
    "m.room.guest_access",
    "m.room.avatar",
    "m.room.encryption",
    "m.room.server_acl",
    "m.room.related_groups",
];

/// State copied whatever its state key.
const COPIED_ANY_KEY: &[&str] = &["m.space.child", "m.space.parent"];

/// Create-event fields that belong to the old room and are not carried over.
const NOT_CARRIED: &[&str] = &[
    "creator",
    "room_version",
    "predecessor",
    "additional_creators",
];

fn content_of(c: &Connection, event_id: &str) -> Result<Value, Error> {
    Ok(match storage::get_event_any(c, event_id)? {
        Some(e) => serde_json::from_str::<Value>(&e.json)?["content"].take(),
        None => Value::Null,
    })
}

/// A local user who joins a room that replaced another gets their push rules for the
/// old room copied (Synapse's `copy_user_state_if_room_upgrade`): members of the old
/// room on other nodes, or who were not joined when it was upgraded, were not covered
/// by the copy the upgrade itself makes. Rules already there are left alone.
pub fn copy_rules_from_predecessor(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<(), Error> {
    let Some(create) = storage::current_state_event(c, room_id, "m.room.create", "")? else {
        return Ok(());
    };
    let content = content_of(c, &create)?;
    let Some(old_room) = content["predecessor"]["room_id"].as_str() else {
        return Ok(());
    };
    if old_room == room_id {
        return Ok(());
    }
    crate::push::copy_room_rules(c, user_id, old_room, room_id)
}

/// Upgrade `old_room` to `new_version` on behalf of `user`; returns the new room's id.
/// `additional_creators` is only used by room versions with explicit creators (v12).
pub fn upgrade_room(
    c: &Connection,
    server: &Server,
    user: &str,
    old_room: &str,
    new_version: &str,
    additional_creators: &[String],
) -> Result<String, Error> {
    let (_, rules) = rules_for(new_version)?;
    let old_version = check_may_upgrade(c, user, old_room)?;
    let (_, old_rules) = rules_for(&old_version)?;
    let explicit_creators = rules.authorization.explicitly_privilege_room_creators;
    let creators = creators_of(user, explicit_creators, additional_creators)?;

    let state = storage::current_state(c, old_room)?;
    let get = |ty: &str| state.get(&(ty.to_owned(), String::new()));
    let old_create = match get("m.room.create") {
        Some(id) => content_of(c, id)?,
        None => return Err(Error::internal("the old room has no create event")),
    };
    let power = carried_power(
        c,
        &state,
        &old_create,
        &old_rules,
        explicit_creators,
        &creators,
    )?;
    let tombstone = |new_room: &str| {
        state_event(
            user,
            "m.room.tombstone",
            "",
            json!({"body": "This room has been replaced", "replacement_room": new_room}),
        )
    };

    // 1. Before v12 the new room's id is chosen here, so the tombstone can go first and
    //    the predecessor can name it (`event_id` is required there); a v12 room is named
    //    after its create event, so its predecessor names only the room.
    let mut predecessor = json!({ "room_id": old_room });
    let chosen_id = if rules.authorization.room_create_event_id_as_room_id {
        None
    } else {
        let id = new_room_id(server);
        let t = append_event(c, server, old_room, tombstone(&id), None)?;
        predecessor["event_id"] = json!(t.event_id);
        Some(id)
    };

    // 2. The create event; 3. the upgrading user joins, with the content any join of
    //    theirs carries.
    let mut content = carried_create(&old_create);
    content.insert("predecessor".into(), predecessor);
    if explicit_creators && creators.len() > 1 {
        content.insert("additional_creators".into(), json!(creators[1..]));
    }
    let is_public = storage::room_is_public(c, old_room)?.unwrap_or(false);
    let create = Create {
        version: new_version,
        rules: &rules,
        content,
        is_public,
        room_id: chosen_id,
    };
    let room = NewRoom::start(c, server, user, create)?;
    let new_room = room.room_id.clone();

    // 4. Power levels, 5. the copied state and bans.
    copy_state(c, &room, &state, old_room, power, !explicit_creators)?;

    // 6. Aliases and the directory listing move to the new room.
    let alias = get("m.room.canonical_alias");
    move_aliases(c, server, &room, old_room, alias, is_public)?;

    // 6b. Each local member's push rules for the old room now also cover the new one
    // (Synapse's `transfer_room_state_on_room_upgrade`).
    for member in storage::joined_local_members(c, old_room)? {
        crate::push::copy_room_rules(c, &member, old_room, &new_room)?;
    }

    // 7. The tombstone (v12: now that the new room has its id).
    if rules.authorization.room_create_event_id_as_room_id {
        append_event(c, server, old_room, tombstone(&new_room), None)?;
    }

    // 8. Nobody but moderators may talk or invite in the old room any more.
    restrict_old_room(c, server, user, old_room, get("m.room.power_levels"))?;
    Ok(new_room)
}

/// `user` may upgrade `old_room`: it is known here, they are joined and may send its
/// tombstone. Returns its version.
fn check_may_upgrade(c: &Connection, user: &str, old_room: &str) -> Result<String, Error> {
    let Some((old_version, _)) = storage::room_info(c, old_room)? else {
        return Err(Error::NotFound(format!(
            "room {old_room} is not known here"
        )));
    };
    if storage::membership(c, old_room, user)?.map(|(m, _, _)| m) != Some("join".into()) {
        return Err(Error::Forbidden(format!("you are not in {old_room}")));
    }
    let old_power = power_levels(c, old_room)?;
    if old_power.user_level(user) < old_power.event_level("m.room.tombstone", true) {
        return Err(Error::Forbidden(
            "you do not have the power to upgrade this room (m.room.tombstone)".into(),
        ));
    }
    Ok(old_version)
}

/// The new room's creators: the upgrading user, then (with explicit creators) the valid
/// `additional_creators`, each once.
fn creators_of(
    user: &str,
    explicit_creators: bool,
    additional_creators: &[String],
) -> Result<Vec<String>, Error> {
    let mut creators: Vec<String> = vec![user.to_owned()];
    if explicit_creators {
        for extra in additional_creators {
            ruma::UserId::parse(extra).map_err(|_| {
                Error::InvalidParam(format!("{extra} in additional_creators is not a user id"))
            })?;
            if !creators.contains(extra) {
                creators.push(extra.clone());
            }
        }
    }
    Ok(creators)
}

/// The old room's power levels as the new room takes them: integers, the old room's
/// implicit creators (v12) who are not creators of the new room with an explicit level,
/// and (with explicit creators) no creator listed.
fn carried_power(
    c: &Connection,
    state: &StateMap,
    old_create: &Value,
    old_rules: &RoomVersionRules,
    explicit_creators: bool,
    creators: &[String],
) -> Result<Value, Error> {
    let mut power = match state.get(&("m.room.power_levels".to_owned(), String::new())) {
        Some(id) => content_of(c, id)?,
        None => Value::Null,
    };
    if !power.is_object() {
        power = json!({});
    }
    // Room versions before 10 allow levels written as strings; later ones do not.
    super::power::integer_levels(&mut power);
    // The old room's implicit creators (v12) who are not creators of the new room keep
    // their power as an explicit level.
    if old_rules.authorization.explicitly_privilege_room_creators {
        let mut old_creators = vec![old_create_sender(c, state)?];
        old_creators.extend(
            old_create["additional_creators"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|u| u.as_str().map(str::to_owned)),
        );
        for u in old_creators.into_iter().filter(|u| !u.is_empty()) {
            if !(explicit_creators && creators.contains(&u)) {
                power["users"][u] = json!(100);
            }
        }
    }
    // Creators must not be listed in v12 power levels.
    if explicit_creators && let Some(users) = power["users"].as_object_mut() {
        for u in creators {
            users.remove(u);
        }
    }
    Ok(power)
}

/// The old create event's content without what belongs to the old room.
fn carried_create(old_create: &Value) -> Map<String, Value> {
    let mut create = Map::new();
    if let Value::Object(o) = old_create {
        for (k, v) in o {
            if !NOT_CARRIED.contains(&k.as_str()) {
                create.insert(k.clone(), v.clone());
            }
        }
    }
    create
}

/// Steps 4 and 5: the power levels, then the copied state and bans. Copying state needs
/// the power to send it; a user below that gets it for the copy and the old levels are
/// restored afterwards (as Synapse does), unless creators are explicit (`may_raise`
/// false: they have every power).
fn copy_state(
    c: &Connection,
    room: &NewRoom<'_>,
    state: &StateMap,
    old_room: &str,
    power: Value,
    may_raise: bool,
) -> Result<(), Error> {
    let to_copy = state_to_copy(c, state, old_room, &room.room_id)?;
    let bans = bans_of(c, state)?;
    let needed = power_to_copy(&power, &to_copy, !bans.is_empty());
    let level = |key: &str, default: i64| power[key].as_i64().unwrap_or(default);
    let own = power["users"][room.creator()]
        .as_i64()
        .unwrap_or(level("users_default", 0));
    let raise = may_raise && own < needed;
    let mut first_power = power.clone();
    if raise {
        first_power["users"][room.creator()] = json!(needed);
    }
    room.send("m.room.power_levels", "", first_power)?;
    for (ty, sk, content) in to_copy {
        room.send(&ty, &sk, content)?;
    }
    for (target, ban) in bans {
        room.send("m.room.member", &target, ban)?;
    }
    if raise {
        room.send("m.room.power_levels", "", power)?;
    }
    Ok(())
}

/// The state the new room takes from the old one (join rules retargeted at the new
/// room).
fn state_to_copy(
    c: &Connection,
    state: &StateMap,
    old_room: &str,
    new_room: &str,
) -> Result<Vec<(String, String, Value)>, Error> {
    let mut to_copy = Vec::new();
    for ((ty, sk), id) in state {
        let copied = (sk.is_empty() && COPIED.contains(&ty.as_str()))
            || COPIED_ANY_KEY.contains(&ty.as_str());
        if copied {
            let mut content = content_of(c, id)?;
            if ty == "m.room.join_rules" {
                retarget_allow(&mut content, old_room, new_room);
            }
            if content.is_object() {
                to_copy.push((ty.clone(), sk.clone(), content));
            }
        }
    }
    Ok(to_copy)
}

/// The old room's bans, with their reasons: (user, member content).
fn bans_of(c: &Connection, state: &StateMap) -> Result<Vec<(String, Value)>, Error> {
    let mut bans = Vec::new();
    for ((ty, sk), id) in state {
        if ty == "m.room.member" {
            let content = content_of(c, id)?;
            if content["membership"] == "ban" {
                let mut ban = json!({"membership": "ban"});
                if let Some(r) = content["reason"].as_str() {
                    ban["reason"] = json!(r);
                }
                bans.push((sk.clone(), ban));
            }
        }
    }
    Ok(bans)
}

/// The level needed to send the power levels, the copied state and (`bans`) the bans.
fn power_to_copy(power: &Value, to_copy: &[(String, String, Value)], bans: bool) -> i64 {
    let level = |key: &str, default: i64| power[key].as_i64().unwrap_or(default);
    let mut needed = level("state_default", 50).max(
        power["events"]["m.room.power_levels"]
            .as_i64()
            .unwrap_or(100),
    );
    for (ty, _, _) in to_copy {
        needed = needed.max(
            power["events"][ty.as_str()]
                .as_i64()
                .unwrap_or(level("state_default", 50)),
        );
    }
    if bans {
        needed = needed.max(level("ban", 50));
    }
    needed
}

/// Step 6: local aliases, the canonical alias and the directory listing move to the new
/// room. `canonical_alias` is the old room's canonical alias event.
fn move_aliases(
    c: &Connection,
    server: &Server,
    room: &NewRoom<'_>,
    old_room: &str,
    canonical_alias: Option<&String>,
    is_public: bool,
) -> Result<(), Error> {
    storage::move_aliases(c, old_room, &room.room_id)?;
    if let Some(id) = canonical_alias {
        let alias = content_of(c, id)?;
        if alias.get("alias").is_some() || alias.get("alt_aliases").is_some() {
            room.send("m.room.canonical_alias", "", alias)?;
            // Best effort: the upgrader may lack the power in the old room.
            allow_forbidden(append_event(
                c,
                server,
                old_room,
                state_event(room.creator(), "m.room.canonical_alias", "", json!({})),
                None,
            ))?;
        }
    }
    if is_public {
        storage::set_room_public(c, old_room, false)?;
    }
    Ok(())
}

/// Step 8: raise the old room's `events_default` and `invite` so that only moderators
/// may talk or invite (best effort). `power_levels` is its power levels event.
fn restrict_old_room(
    c: &Connection,
    server: &Server,
    user: &str,
    old_room: &str,
    power_levels: Option<&String>,
) -> Result<(), Error> {
    let old_content = match power_levels {
        Some(id) => content_of(c, id)?,
        None => Value::Null,
    };
    if !old_content.is_object() {
        return Ok(());
    }
    let mut restricted = old_content.clone();
    let limit = (old_content["events_default"].as_i64().unwrap_or(0) + 1).max(50);
    let mut changed = false;
    for key in ["events_default", "invite"] {
        if restricted[key].as_i64().unwrap_or(0) < limit {
            restricted[key] = json!(limit);
            changed = true;
        }
    }
    if changed {
        allow_forbidden(append_event(
            c,
            server,
            old_room,
            state_event(user, "m.room.power_levels", "", restricted),
            None,
        ))?;
    }
    Ok(())
}

/// The sender of the room's create event.
fn old_create_sender(c: &Connection, state: &StateMap) -> Result<String, Error> {
    Ok(
        match state.get(&("m.room.create".to_owned(), String::new())) {
            Some(id) => storage::get_event_any(c, id)?
                .map(|e| e.sender)
                .unwrap_or_default(),
            None => String::new(),
        },
    )
}

/// A restricted join rule that lets in members of the old room lets in members of the
/// new one instead.
fn retarget_allow(content: &mut Value, old_room: &str, new_room: &str) {
    if let Some(allow) = content["allow"].as_array_mut() {
        for a in allow {
            if a["room_id"] == old_room {
                a["room_id"] = json!(new_room);
            }
        }
    }
}

/// Ignore an auth failure of an optional event; anything else is an error.
fn allow_forbidden<T>(r: Result<T, Error>) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(Error::Forbidden(reason)) => {
            tracing::info!(%reason, "room upgrade: skipped an event the user may not send");
            Ok(())
        }
        Err(e) => Err(e),
    }
}
