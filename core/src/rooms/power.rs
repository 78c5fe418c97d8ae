//! Reading power levels for decisions the auth rules leave to the server
//! (applying redactions, notification counts).

use std::collections::HashSet;

use rusqlite::Connection;
use serde_json::Value;

use crate::error::Error;
use crate::storage;

/// The parts of `m.room.power_levels` (and the creators) a server decision needs.
#[derive(Clone, Debug, Default)]
pub struct PowerLevels {
    content: Value,
    creators: HashSet<String>,
    creators_infinite: bool,
}

impl PowerLevels {
    /// A user's power (`i64::MAX` for v12 creators).
    pub fn user_level(&self, user_id: &str) -> i64 {
        if self.creators_infinite && self.creators.contains(user_id) {
            return i64::MAX;
        }
        if self.content.is_null() {
            // No power levels event: the creator has 100, everyone else 0.
            return if self.creators.contains(user_id) {
                100
            } else {
                0
            };
        }
        level(&self.content["users"][user_id])
            .or_else(|| level(&self.content["users_default"]))
            .unwrap_or(0)
    }

    /// Level needed to notify with a key of `notifications` (`room`: `@room`), default 50.
    pub fn notification_level(&self, key: &str) -> i64 {
        level(&self.content["notifications"][key]).unwrap_or(50)
    }

    /// Level needed to send an event of type `kind` (`events`, then `state_default`
    /// or `events_default`; with no power levels event, 0 as the auth rules say).
    pub fn event_level(&self, kind: &str, is_state: bool) -> i64 {
        if self.content.is_null() {
            return 0;
        }
        level(&self.content["events"][kind]).unwrap_or_else(|| {
            if is_state {
                level(&self.content["state_default"]).unwrap_or(50)
            } else {
                level(&self.content["events_default"]).unwrap_or(0)
            }
        })
    }

    /// `state_default` (50 when unset, 0 with no power levels event).
    pub fn state_default(&self) -> i64 {
        if self.content.is_null() {
            return 0;
        }
        level(&self.content["state_default"]).unwrap_or(50)
    }

    /// A named threshold such as `redact`, `kick`, `ban` (default 50) or `invite` (0).
    pub fn threshold(&self, name: &str) -> i64 {
        let default = if name == "invite" { 0 } else { 50 };
        level(&self.content[name]).unwrap_or(default)
    }
}

/// A power level: an integer, or (room versions before 10) a string holding one.
fn level(v: &Value) -> Option<i64> {
    v.as_i64()
        .or_else(|| v.as_str().and_then(|s| s.trim().parse::<i64>().ok()))
}

/// Rewrite string levels (allowed before room version 10) as integers, in place, so the
/// content can be copied into a room of any version.
pub(crate) fn integer_levels(content: &mut Value) {
    let Some(obj) = content.as_object_mut() else {
        return;
    };
    for (key, v) in obj.iter_mut() {
        match key.as_str() {
            "users" | "events" | "notifications" => {
                if let Some(map) = v.as_object_mut() {
                    for inner in map.values_mut() {
                        if let (true, Some(n)) = (inner.is_string(), level(inner)) {
                            *inner = Value::from(n);
                        }
                    }
                }
            }
            _ => {
                if let (true, Some(n)) = (v.is_string(), level(v)) {
                    *v = Value::from(n);
                }
            }
        }
    }
}

/// Power levels from the room's current state.
pub fn power_levels(c: &Connection, room_id: &str) -> Result<PowerLevels, Error> {
    // Both events in one statement (push evaluation reads them on every send). Current
    // state may hold an event that is not in the timeline (a fork built on a
    // soft-failed event); authority follows the state, not the timeline.
    let entries = storage::current_state_events(
        c,
        room_id,
        &[("m.room.create", ""), ("m.room.power_levels", "")],
    )?;
    let content_of = |ty: &str| -> Result<Option<(Value, String)>, Error> {
        let Some((json, _)) = entries
            .iter()
            .find(|e| e.kind == ty)
            .and_then(|e| e.row.as_ref())
        else {
            return Ok(None);
        };
        let mut v: Value = serde_json::from_str(json)?;
        let sender = v["sender"].as_str().unwrap_or_default().to_owned();
        Ok(Some((v["content"].take(), sender)))
    };
    let mut creators = HashSet::new();
    let mut creators_infinite = false;
    if let Some((create, sender)) = content_of("m.room.create")? {
        creators_infinite = create["room_version"].as_str() == Some("12");
        creators.insert(sender);
        if let Some(extra) = create["additional_creators"].as_array() {
            creators.extend(extra.iter().filter_map(|u| u.as_str().map(str::to_owned)));
        }
    }
    let content = content_of("m.room.power_levels")?
        .map(|(c, _)| c)
        .unwrap_or(Value::Null);
    Ok(PowerLevels {
        content,
        creators,
        creators_infinite,
    })
}
