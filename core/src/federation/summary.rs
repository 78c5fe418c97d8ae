//! Room summaries (the spec's `PublicRoomsChunk` / `RoomSummary`) from a room's current
//! state, for `/publicRooms` and `/hierarchy`.

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use super::visible::{current_history_visibility, current_state_content, load_pdu};
use crate::error::Error;
use crate::storage;

/// What the directory and the space hierarchy say about a room.
#[derive(Clone, Debug)]
pub struct RoomSummary {
    /// Room id.
    pub room_id: String,
    /// Members with membership `join`.
    pub num_joined_members: i64,
    /// `m.room.join_rules` `join_rule` (`invite` when unset).
    pub join_rule: String,
    /// Current history visibility is `world_readable`.
    pub world_readable: bool,
    /// The summary as JSON (`RoomSummary` fields, absent ones left out).
    pub json: Value,
}

impl RoomSummary {
    /// Text fields a `generic_search_term` is matched against.
    pub fn matches(&self, term: &str) -> bool {
        let term = term.to_lowercase();
        ["name", "topic", "canonical_alias"].iter().any(|f| {
            self.json[*f]
                .as_str()
                .is_some_and(|s| s.to_lowercase().contains(&term))
        })
    }

    /// The `m.room.create` `type`, if any.
    pub fn room_type(&self) -> Option<&str> {
        self.json["room_type"].as_str()
    }
}

/// The summary of a room known here, `None` for an unknown room.
pub fn room_summary(c: &Connection, room_id: &str) -> Result<Option<RoomSummary>, Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Ok(None);
    };
    let state = |ty: &str| current_state_content(c, room_id, ty, "");
    let text = |ty: &str, field: &str| -> Result<Option<String>, Error> {
        Ok(state(ty)?
            .and_then(|v| v[field].as_str().map(str::to_owned))
            .filter(|s| !s.is_empty()))
    };
    let join_rules = state("m.room.join_rules")?.unwrap_or(Value::Null);
    let join_rule = join_rules["join_rule"]
        .as_str()
        .unwrap_or("invite")
        .to_owned();
    let world_readable = current_history_visibility(c, room_id)? == "world_readable";
    let guest_can_join =
        text("m.room.guest_access", "guest_access")?.as_deref() == Some("can_join");
    let (num_joined_members, _) = storage::member_counts(c, room_id)?;
    let mut out = Map::new();
    out.insert("room_id".into(), json!(room_id));
    out.insert("num_joined_members".into(), json!(num_joined_members));
    out.insert("world_readable".into(), json!(world_readable));
    out.insert("guest_can_join".into(), json!(guest_can_join));
    out.insert("join_rule".into(), json!(join_rule));
    out.insert("room_version".into(), json!(version));
    for (key, value) in [
        ("name", text("m.room.name", "name")?),
        ("topic", text("m.room.topic", "topic")?),
        ("canonical_alias", text("m.room.canonical_alias", "alias")?),
        ("avatar_url", text("m.room.avatar", "url")?),
        ("encryption", text("m.room.encryption", "algorithm")?),
    ] {
        if let Some(v) = value {
            out.insert(key.into(), json!(v));
        }
    }
    if let Some(create) = storage::current_state_event(c, room_id, "m.room.create", "")?
        .map(|id| load_pdu(c, &id))
        .transpose()?
        .flatten()
        && let Some(ty) = super::visible::content(&create)["type"].as_str()
    {
        out.insert("room_type".into(), json!(ty));
    }
    if join_rule == "restricted" || join_rule == "knock_restricted" {
        let allowed: Vec<&str> = join_rules["allow"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|r| r["type"] == "m.room_membership")
                    .filter_map(|r| r["room_id"].as_str())
                    .collect()
            })
            .unwrap_or_default();
        out.insert("allowed_room_ids".into(), json!(allowed));
    }
    Ok(Some(RoomSummary {
        room_id: room_id.to_owned(),
        num_joined_members,
        join_rule,
        world_readable,
        json: Value::Object(out),
    }))
}
