//! The start of a new room, shared by `/createRoom` and room upgrades: the create event,
//! the creator's join, then the rest of the initial state (power levels first), each
//! sent by the creator.

use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use super::append::{Appended, append_event};
use super::create_event::append_create;
use crate::error::Error;
use crate::events::NewEvent;
use crate::server::Server;

/// A room being given its initial state by its creator.
pub(super) struct NewRoom<'a> {
    c: &'a Connection,
    server: &'a Server,
    /// The creator, who sends every event of the initial state.
    creator: &'a str,
    /// The new room's id.
    pub(super) room_id: String,
}

/// What a new room's create event says.
pub(super) struct Create<'a> {
    /// The room version.
    pub(super) version: &'a str,
    /// Its rules.
    pub(super) rules: &'a RoomVersionRules,
    /// The content, without `room_version` and `creator` (added here).
    pub(super) content: Map<String, Value>,
    /// Published in the directory.
    pub(super) is_public: bool,
    /// The room id chosen ahead (before v12; else a random one, or from v12 the create
    /// event's).
    pub(super) room_id: Option<String>,
}

impl<'a> NewRoom<'a> {
    /// The create event (with `room_version`, and `creator` in the versions that name
    /// it there), then the creator joins with the content any join of theirs carries.
    pub(super) fn start(
        c: &'a Connection,
        server: &'a Server,
        creator: &'a str,
        create: Create<'_>,
    ) -> Result<Self, Error> {
        let mut content = create.content;
        content.insert("room_version".into(), json!(create.version));
        if !create.rules.authorization.use_room_create_sender {
            content.insert("creator".into(), json!(creator));
        }
        let room_id = append_create(
            c,
            server,
            create.version,
            state_event(creator, "m.room.create", "", Value::Object(content)),
            create.is_public,
            create.room_id,
        )?;
        let room = NewRoom {
            c,
            server,
            creator,
            room_id,
        };
        let member = Value::Object(super::join_content(c, creator, Map::new())?);
        room.send("m.room.member", creator, member)?;
        Ok(room)
    }

    /// The creator.
    pub(super) fn creator(&self) -> &str {
        self.creator
    }

    /// A state event from the creator in the new room.
    pub(super) fn send(
        &self,
        kind: &str,
        state_key: &str,
        content: Value,
    ) -> Result<Appended, Error> {
        append_event(
            self.c,
            self.server,
            &self.room_id,
            state_event(self.creator, kind, state_key, content),
            None,
        )
    }
}

/// A state event sent by `sender`.
pub(super) fn state_event(sender: &str, kind: &str, state_key: &str, content: Value) -> NewEvent {
    NewEvent {
        kind: kind.to_owned(),
        state_key: Some(state_key.to_owned()),
        content,
        sender: sender.to_owned(),
        redacts: None,
    }
}
