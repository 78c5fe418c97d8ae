//! Reading power levels for decisions the auth rules leave to the server
//! (applying redactions, notification counts).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;

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

/// The events power levels were parsed from: the create event and the power levels
/// event (if any), each with whether it is redacted. Event ids are content hashes, so a
/// key always stands for the same content, on any node.
type Key = Vec<(String, String, bool)>;

/// Parsed power levels by the events they came from. Push evaluation reads them on every
/// send; parsing them again cost more than a tenth of a send. Nothing to invalidate: a
/// new power levels event is a new key, and the room's current entries are looked up
/// (without their JSON) every time. Bounded: cleared when it holds [`CACHE_BYTES`] of
/// the event JSON its entries were parsed from (the parsed values take a few times
/// that) or [`CACHE_ENTRIES`] entries; power levels bigger than [`CACHE_MAX_ENTRY`] are
/// parsed every time. One per process: a key names the same content on any node.
static CACHE: LazyLock<Mutex<Cache>> = LazyLock::new(Default::default);
const CACHE_ENTRIES: usize = 1024;
const CACHE_BYTES: usize = 1 << 20;
const CACHE_MAX_ENTRY: usize = 128 << 10;

#[derive(Default)]
struct Cache {
    entries: HashMap<Key, (Arc<PowerLevels>, usize)>,
    bytes: usize,
}

/// Power levels from the room's current state (parsed once per set of events, see
/// [`CACHE`]).
pub fn power_levels(c: &Connection, room_id: &str) -> Result<Arc<PowerLevels>, Error> {
    const KEYS: [(&str, &str); 2] = [("m.room.create", ""), ("m.room.power_levels", "")];
    let mut key = storage::current_state_refs(c, room_id, &KEYS)?;
    key.sort();
    if let Some((hit, _)) = CACHE.lock().entries.get(&key) {
        return Ok(hit.clone());
    }
    let (levels, bytes) = read_power_levels(c, room_id)?;
    let levels = Arc::new(levels);
    CACHE.lock().keep(key, levels.clone(), bytes);
    Ok(levels)
}

impl Cache {
    /// Keep `levels`, parsed from `bytes` of JSON, within the bounds: too big to keep,
    /// or cleared first when full.
    fn keep(&mut self, key: Key, levels: Arc<PowerLevels>, bytes: usize) {
        if bytes > CACHE_MAX_ENTRY {
            return;
        }
        if self.entries.len() >= CACHE_ENTRIES || self.bytes + bytes > CACHE_BYTES {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += bytes;
        // Two readers that missed at once both insert: count the entry once.
        if let Some((_, replaced)) = self.entries.insert(key, (levels, bytes)) {
            self.bytes -= replaced;
        }
    }
}

/// Power levels read and parsed from the room's current state, with the size of the
/// JSON they came from.
fn read_power_levels(c: &Connection, room_id: &str) -> Result<(PowerLevels, usize), Error> {
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
    let bytes = entries
        .iter()
        .filter_map(|e| e.row.as_ref())
        .map(|(json, _)| json.len())
        .sum();
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
    Ok((
        PowerLevels {
            content,
            creators,
            creators_infinite,
        },
        bytes,
    ))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::json;

    use super::{CACHE_BYTES, CACHE_ENTRIES, CACHE_MAX_ENTRY, Cache, PowerLevels, power_levels};
    use crate::rooms::{CreateRoom, append_event};
    use crate::test_support::{ev, node, room_with};

    /// The cached levels follow the room: a new power levels event, and its redaction
    /// (which keeps `users` but drops `notifications`), show at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cached_power_levels_follow_new_and_redacted_events() {
        let (_dir, node) = node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        let room = room_with(&server, &alice, &[], CreateRoom::default());
        let read = || server.db.read(|c| power_levels(c, &room)).expect("levels");
        assert_eq!(read().user_level(&bob), 0);
        assert_eq!(read().notification_level("room"), 50);
        let content = json!({"users": {bob.clone(): 40},
                             "notifications": {"room": 20}});
        let pl = ev(&alice, "m.room.power_levels", Some(""), content);
        let pl_id = server
            .write(|c| append_event(c, &server, &room, pl, None))
            .expect("power levels")
            .event_id;
        assert_eq!(read().user_level(&bob), 40);
        assert_eq!(read().notification_level("room"), 20);
        let mut redaction = ev(&alice, "m.room.redaction", None, json!({}));
        redaction.redacts = Some(pl_id);
        server
            .write(|c| append_event(c, &server, &room, redaction, None))
            .expect("redaction");
        assert_eq!(read().user_level(&bob), 40, "redaction keeps users");
        assert_eq!(
            read().notification_level("room"),
            50,
            "redaction drops notifications"
        );
    }

    fn key(i: usize) -> Vec<(String, String, bool)> {
        vec![("m.room.create".into(), format!("$e{i}"), false)]
    }

    /// The cache is bounded in entries and in bytes (cleared when either is reached),
    /// keeps nothing too big, and counts an entry kept twice once.
    #[test]
    fn the_cache_is_bounded_in_entries_and_bytes() {
        let levels = Arc::new(PowerLevels::default());
        let mut cache = Cache::default();
        for i in 0..CACHE_ENTRIES {
            cache.keep(key(i), levels.clone(), 10);
        }
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        cache.keep(key(CACHE_ENTRIES), levels.clone(), 10);
        assert_eq!(
            (cache.entries.len(), cache.bytes),
            (1, 10),
            "cleared when full"
        );

        cache.keep(key(0), levels.clone(), 10);
        assert_eq!(cache.bytes, 20, "counted once");
        cache.keep(key(1), levels.clone(), CACHE_MAX_ENTRY + 1);
        assert!(!cache.entries.contains_key(&key(1)), "too big to keep");

        let mut cache = Cache::default();
        let n = CACHE_BYTES / CACHE_MAX_ENTRY;
        for i in 0..=n {
            cache.keep(key(i), levels.clone(), CACHE_MAX_ENTRY);
            assert!(cache.bytes <= CACHE_BYTES);
        }
        assert_eq!(cache.entries.len(), 1, "cleared when the bytes ran out");
    }
}
