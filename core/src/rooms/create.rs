//! `/createRoom`: the create event, the creator's join, power levels, presets,
//! initial state, name, topic, alias and invites, in the order the spec gives.

use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use super::new_room::{Create, NewRoom};
use crate::error::Error;
use crate::events::rules_for;
use crate::server::Server;
use crate::storage;

/// A parsed `/createRoom` request.
#[derive(Clone, Debug, Default)]
pub struct CreateRoom {
    /// `private_chat`, `trusted_private_chat` or `public_chat`.
    pub preset: Option<String>,
    /// Published in the directory.
    pub public: bool,
    /// `m.room.name`.
    pub name: Option<String>,
    /// `m.room.topic`.
    pub topic: Option<String>,
    /// Local alias localpart.
    pub alias_localpart: Option<String>,
    /// Users to invite.
    pub invite: Vec<String>,
    /// Mark the invites as direct chats.
    pub is_direct: bool,
    /// Extra `m.room.create` content.
    pub creation_content: Option<Value>,
    /// Extra state: (type, state_key, content).
    pub initial_state: Vec<(String, String, Value)>,
    /// Merged over the default power levels.
    pub power_level_content_override: Option<Value>,
    /// Requested room version.
    pub room_version: Option<String>,
}

/// Create a room and return its id.
pub fn create_room(
    c: &Connection,
    server: &Server,
    creator: &str,
    req: CreateRoom,
) -> Result<String, Error> {
    let version = req
        .room_version
        .clone()
        .unwrap_or_else(|| server.config.default_room_version.clone());
    let (_, rules) = rules_for(&version)?;
    let alias = new_alias(c, server, &req)?;
    let preset = preset_of(&req)?;

    // 1. m.room.create, 2. the creator joins.
    let content = match &req.creation_content {
        Some(Value::Object(o)) => o.clone(),
        Some(_) => return Err(Error::BadJson("creation_content must be an object".into())),
        None => Map::new(),
    };
    let create = Create {
        version: &version,
        rules: &rules,
        content,
        is_public: req.public,
        room_id: None,
    };
    let room = NewRoom::start(c, server, creator, create)?;

    // 3. Power levels (creators are implicit from v12 and must not be listed).
    let power = default_power_levels(&rules, creator, &preset, &req);
    room.send("m.room.power_levels", "", power)?;

    // 4. Canonical alias.
    if let Some(alias) = &alias {
        storage::insert_alias(c, alias, &room.room_id, creator)?;
        room.send("m.room.canonical_alias", "", json!({"alias": alias}))?;
    }

    // 5. Preset state, unless initial_state overrides it.
    send_preset_state(&room, &preset, &req)?;

    // 6. initial_state, then name and topic.
    send_initial_state(&room, &req)?;

    // 7. Invites.
    for invitee in &req.invite {
        let mut content = json!({"membership": "invite"});
        if req.is_direct {
            content["is_direct"] = json!(true);
        }
        room.send("m.room.member", invitee, content)?;
    }
    Ok(room.room_id)
}

/// The alias `room_alias_name` asks for, when it is valid and free.
fn new_alias(c: &Connection, server: &Server, req: &CreateRoom) -> Result<Option<String>, Error> {
    let Some(local) = &req.alias_localpart else {
        return Ok(None);
    };
    if local.is_empty() || local.contains(':') || local.contains(char::is_whitespace) {
        return Err(Error::InvalidParam(
            "room_alias_name is not a valid alias localpart".into(),
        ));
    }
    let alias = format!("#{local}:{}", server.server_name());
    if storage::alias_room(c, &alias)?.is_some() {
        return Err(Error::RoomInUse(format!("alias {alias} already exists")));
    }
    Ok(Some(alias))
}

/// The preset asked for, else the one `visibility` implies.
fn preset_of(req: &CreateRoom) -> Result<String, Error> {
    let preset = req.preset.clone().unwrap_or_else(|| {
        if req.public {
            "public_chat".into()
        } else {
            "private_chat".into()
        }
    });
    if !matches!(
        preset.as_str(),
        "private_chat" | "trusted_private_chat" | "public_chat"
    ) {
        return Err(Error::BadJson(format!("unknown preset {preset}")));
    }
    Ok(preset)
}

/// The power levels of a new room, with `power_level_content_override` merged over.
fn default_power_levels(
    rules: &RoomVersionRules,
    creator: &str,
    preset: &str,
    req: &CreateRoom,
) -> Value {
    let mut users = serde_json::Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(creator.to_owned(), json!(100));
    }
    if preset == "trusted_private_chat" {
        for invitee in &req.invite {
            users.insert(invitee.clone(), json!(100));
        }
    }
    let mut power = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": 0,
        "notifications": {"room": 50},
    });
    if let Some(Value::Object(over)) = &req.power_level_content_override {
        for (k, v) in over {
            power[k] = v.clone();
        }
    }
    power
}

/// The join rules, history visibility and guest access the preset gives, each unless
/// `initial_state` sets it.
fn send_preset_state(room: &NewRoom<'_>, preset: &str, req: &CreateRoom) -> Result<(), Error> {
    let overridden = |ty: &str| {
        req.initial_state
            .iter()
            .any(|(t, sk, _)| t == ty && sk.is_empty())
    };
    let join_rule = if preset == "public_chat" {
        "public"
    } else {
        "invite"
    };
    let mut preset_state = vec![
        ("m.room.join_rules", json!({"join_rule": join_rule})),
        (
            "m.room.history_visibility",
            json!({"history_visibility": "shared"}),
        ),
    ];
    if preset != "public_chat" {
        preset_state.push(("m.room.guest_access", json!({"guest_access": "can_join"})));
    }
    for (ty, content) in preset_state {
        if !overridden(ty) {
            room.send(ty, "", content)?;
        }
    }
    Ok(())
}

/// `initial_state` (never a create or member event), then the name and topic.
fn send_initial_state(room: &NewRoom<'_>, req: &CreateRoom) -> Result<(), Error> {
    for (ty, sk, content) in &req.initial_state {
        if ty == "m.room.create" || ty == "m.room.member" {
            return Err(Error::BadJson(format!(
                "{ty} cannot be set through initial_state"
            )));
        }
        room.send(ty, sk, content.clone())?;
    }
    if let Some(name) = &req.name {
        room.send("m.room.name", "", json!({"name": name}))?;
    }
    if let Some(topic) = &req.topic {
        let mut content = json!({ "topic": topic });
        add_rich_topic(&mut content);
        room.send("m.room.topic", "", content)?;
    }
    Ok(())
}

/// `m.room.topic` content with a plain `topic` and no `m.topic` gains the rich form
/// (MSC3765, spec v1.15): `m.topic: {"m.text": [{"mimetype": "text/plain", "body": topic}]}`.
/// Used by `createRoom` and state PUTs, so clients reading either form agree.
pub fn add_rich_topic(content: &mut Value) {
    if content.get("m.topic").is_some() {
        return;
    }
    let Some(topic) = content
        .get("topic")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return;
    };
    content["m.topic"] = json!({"m.text": [{"mimetype": "text/plain", "body": topic}]});
}
