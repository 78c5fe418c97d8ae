//! History visibility: which part of a room's timeline a user may read.
//!
//! A simplification of the spec's per-event rule: the room's *current*
//! `m.room.history_visibility` decides. Members of `shared`/`world_readable` rooms see
//! the whole history; `joined`/`invited` rooms show history from the user's membership
//! on. A user who left sees history up to their leave.

use rusqlite::Connection;
use serde_json::Value;

use crate::error::Error;
use crate::storage;

/// The readable window of stream positions `(min, max]`.
#[derive(Clone, Copy, Debug)]
pub struct Visibility {
    min: i64,
    max: i64,
}

impl Visibility {
    /// Whether an event at `pos` is readable.
    pub fn allows(&self, pos: i64) -> bool {
        pos > self.min && pos <= self.max
    }
    /// Lower bound (exclusive).
    pub fn min_pos(&self) -> i64 {
        self.min
    }
    /// Upper bound (inclusive).
    pub fn max_pos(&self) -> i64 {
        self.max
    }
}

/// Work out what `user_id` may read of `room_id`.
pub fn visibility_for(c: &Connection, room_id: &str, user_id: &str) -> Result<Visibility, Error> {
    let Some((membership, _, pos)) = storage::membership(c, room_id, user_id)? else {
        return Err(Error::Forbidden(format!(
            "you are not a member of {room_id}"
        )));
    };
    let history = match storage::current_state_event(c, room_id, "m.room.history_visibility", "")? {
        Some(id) => storage::get_state_event(c, &id)?
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .and_then(|v| {
                v["content"]["history_visibility"]
                    .as_str()
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| "shared".into()),
        None => "shared".into(),
    };
    let full_history = matches!(history.as_str(), "shared" | "world_readable");
    match membership.as_str() {
        "join" => Ok(Visibility {
            min: if full_history { 0 } else { pos - 1 },
            max: i64::MAX,
        }),
        "leave" | "ban" => Ok(Visibility { min: 0, max: pos }),
        "invite" if history == "invited" || history == "world_readable" => Ok(Visibility {
            min: pos - 1,
            max: pos,
        }),
        _ => Err(Error::Forbidden(format!(
            "you are not a member of {room_id}"
        ))),
    }
}
