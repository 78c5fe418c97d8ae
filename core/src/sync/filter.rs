//! The `/sync` filter: the parts that change what is returned.

use super::*;

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
    pub(super) fn allows(&self, ty: &str) -> bool {
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

pub(super) fn room_allowed(f: &RoomFilter, room_id: &str) -> bool {
    !f.not_rooms.iter().any(|r| r == room_id)
        && f.rooms
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == room_id))
}
