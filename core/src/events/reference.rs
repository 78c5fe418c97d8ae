//! References to other events in a PDU's `prev_events` and `auth_events`.
//!
//! Room versions 1 and 2 (event format v1) write each reference as a pair
//! `[event_id, {"sha256": <reference hash of that event>}]`, because their event ids
//! (`$random:server`) say nothing about the event's content. From room version 3 the id
//! is the reference hash itself, and a reference is the bare id. Every reader of these
//! lists goes through this module, so every path handles both formats.

use ruma::room_version_rules::EventFormatRules;
use ruma::{EventId, OwnedEventId};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

/// One entry of `prev_events` or `auth_events`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventReference {
    /// The referenced event's id.
    pub event_id: String,
    /// Its hashes (`{"sha256": …}`), written only in the v1 event format. `None` when
    /// the reference came as a bare id; an event of format v1 then gets an empty map.
    pub hashes: Option<Value>,
}

impl EventReference {
    /// A reference by id alone (room versions 3 on, where the id is the hash).
    pub fn id(event_id: impl Into<String>) -> EventReference {
        EventReference {
            event_id: event_id.into(),
            hashes: None,
        }
    }

    /// References by id alone, one per id (room versions 3 on).
    pub fn ids<S: AsRef<str>>(ids: &[S]) -> Vec<EventReference> {
        ids.iter()
            .map(|id| EventReference::id(id.as_ref()))
            .collect()
    }

    /// A reference with the referenced event's reference hash (room versions 1 and 2).
    pub fn with_hash(event_id: impl Into<String>, sha256: String) -> EventReference {
        EventReference {
            event_id: event_id.into(),
            hashes: Some(json!({ "sha256": sha256 })),
        }
    }

    /// One entry, in whichever format it is written; `None` for anything else.
    pub fn parse(entry: &Value) -> Option<EventReference> {
        match entry {
            Value::String(id) => Some(EventReference::id(id.clone())),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(id), hashes @ Value::Object(_)] => Some(EventReference {
                    event_id: id.clone(),
                    hashes: Some(hashes.clone()),
                }),
                _ => None,
            },
            _ => None,
        }
    }

    /// The entry as the room version writes it.
    pub fn to_json(&self, format: &EventFormatRules) -> Value {
        if uses_pairs(format) {
            json!([
                self.event_id,
                self.hashes.clone().unwrap_or_else(|| json!({}))
            ])
        } else {
            Value::String(self.event_id.clone())
        }
    }
}

/// Whether the room version writes references as `[id, hashes]` pairs: exactly the
/// versions whose PDUs carry their own `event_id` (event format v1, room versions 1–2).
pub fn uses_pairs(format: &EventFormatRules) -> bool {
    format.require_event_id
}

/// A whole list as the room version writes it.
pub fn references_json(refs: &[EventReference], format: &EventFormatRules) -> Value {
    Value::Array(refs.iter().map(|r| r.to_json(format)).collect())
}

/// The event ids of `pdu[field]` (`prev_events` or `auth_events`), in either format;
/// entries of neither form are skipped. For stored PDUs, already checked on receipt.
pub fn reference_ids(pdu: &Value, field: &str) -> Vec<String> {
    pdu.get(field)
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(EventReference::parse)
        .map(|r| r.event_id)
        .collect()
}

/// [`reference_ids`] of a stored PDU's JSON text (empty when it does not parse).
pub fn reference_ids_in(json: &str, field: &str) -> Vec<String> {
    serde_json::from_str::<Value>(json)
        .map(|v| reference_ids(&v, field))
        .unwrap_or_default()
}

/// The entries of `pdu[field]`, strictly: every entry in the room version's format (bare
/// ids from version 3, `[id, {"sha256": string}]` pairs in versions 1 and 2), at most
/// `max` of them. `Err` says what is wrong; a received PDU that fails is dropped.
pub fn parse_references(
    pdu: &Value,
    field: &str,
    format: &EventFormatRules,
    max: usize,
) -> Result<Vec<EventReference>, String> {
    let list = pdu
        .get(field)
        .and_then(Value::as_array)
        .ok_or_else(|| format!("`{field}` is not a list"))?;
    if list.len() > max {
        return Err(format!("`{field}` has {} entries, over {max}", list.len()));
    }
    list.iter()
        .map(|entry| {
            let parsed = EventReference::parse(entry)
                .filter(|r| r.hashes.is_some() == uses_pairs(format))
                .filter(|r| {
                    // A pair's hash, when there is one, is a string (nobody checks it: the
                    // referenced event is verified on its own when fetched).
                    r.hashes
                        .as_ref()
                        .is_none_or(|h| h.get("sha256").is_none_or(Value::is_string))
                });
            parsed.ok_or_else(|| {
                let expected = if uses_pairs(format) {
                    "[event id, hashes] pairs"
                } else {
                    "event ids"
                };
                format!("`{field}` holds {entry}, not {expected}")
            })
        })
        .collect()
}

/// Serde: a list of references in either format, as event ids (for [`super::Pdu`]).
pub(super) fn deserialize_ids<'de, D>(deserializer: D) -> Result<Vec<OwnedEventId>, D::Error>
where
    D: Deserializer<'de>,
{
    Ok(Vec::<AnyReference>::deserialize(deserializer)?
        .into_iter()
        .map(|r| r.0)
        .collect())
}

/// One reference in either format, read straight from the input (an untagged enum
/// would buffer every entry first, and [`super::Pdu`] is parsed on every auth check).
struct AnyReference(OwnedEventId);

impl<'de> Deserialize<'de> for AnyReference {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = AnyReference;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an event id or an [event id, hashes] pair")
            }

            fn visit_str<E: serde::de::Error>(self, id: &str) -> Result<AnyReference, E> {
                EventId::parse(id).map(AnyReference).map_err(E::custom)
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<AnyReference, A::Error> {
                use serde::de::Error;
                let id: OwnedEventId = seq
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(0, &self))?;
                seq.next_element::<serde::de::IgnoredAny>()?
                    .ok_or_else(|| A::Error::invalid_length(1, &self))?;
                if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
                    return Err(A::Error::invalid_length(3, &self));
                }
                Ok(AnyReference(id))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::rules_for;

    fn format(version: &str) -> EventFormatRules {
        rules_for(version).expect("rules").1.event_format
    }

    #[test]
    fn both_formats_read_as_ids() {
        let v1 = json!({
            "prev_events": [["$a:x", {"sha256": "aGFzaA"}], ["$b:y", {}]],
            "auth_events": [["$c:x", {"sha256": "aGFzaA"}]],
        });
        assert_eq!(reference_ids(&v1, "prev_events"), ["$a:x", "$b:y"]);
        assert_eq!(reference_ids(&v1, "auth_events"), ["$c:x"]);
        let v3 = json!({"prev_events": ["$abc", "$def"]});
        assert_eq!(reference_ids(&v3, "prev_events"), ["$abc", "$def"]);
        // Anything else is skipped, a missing field is empty.
        let odd = json!({"prev_events": [1, ["$a"], ["$b", "x"], null, "$ok"]});
        assert_eq!(reference_ids(&odd, "prev_events"), ["$ok"]);
        assert!(reference_ids(&odd, "auth_events").is_empty());
    }

    #[test]
    fn strict_parsing_wants_the_room_versions_format() {
        let pairs = json!({"prev_events": [["$a:x", {"sha256": "aGFzaA"}]]});
        let ids = json!({"prev_events": ["$abc"]});
        let parsed = parse_references(&pairs, "prev_events", &format("1"), 20).expect("v1");
        assert_eq!(parsed[0].event_id, "$a:x");
        assert!(parse_references(&ids, "prev_events", &format("2"), 20).is_err());
        assert!(parse_references(&pairs, "prev_events", &format("3"), 20).is_err());
        assert!(parse_references(&ids, "prev_events", &format("12"), 20).is_ok());
        let bad_hash = json!({"prev_events": [["$a:x", {"sha256": 5}]]});
        assert!(parse_references(&bad_hash, "prev_events", &format("1"), 20).is_err());
        assert!(parse_references(&ids, "prev_events", &format("12"), 0).is_err());
        assert!(parse_references(&json!({}), "prev_events", &format("12"), 20).is_err());
    }

    #[test]
    fn references_are_written_as_the_version_says() {
        let r = EventReference::with_hash("$a:x", "aGFzaA".into());
        assert_eq!(
            references_json(std::slice::from_ref(&r), &format("2")),
            json!([["$a:x", {"sha256": "aGFzaA"}]])
        );
        assert_eq!(
            references_json(&[EventReference::id("$a")], &format("4")),
            json!(["$a"])
        );
        // Round trip through the parser.
        assert_eq!(EventReference::parse(&r.to_json(&format("1"))), Some(r));
    }

    #[test]
    fn the_pdu_type_reads_both_formats() {
        #[derive(Deserialize)]
        struct T {
            #[serde(deserialize_with = "deserialize_ids")]
            prev_events: Vec<OwnedEventId>,
        }
        let t: T = serde_json::from_value(json!({"prev_events": [["$a:x", {"sha256": "h"}]]}))
            .expect("pairs");
        assert_eq!(t.prev_events[0].as_str(), "$a:x");
        let t: T = serde_json::from_value(json!({"prev_events": ["$abc"]})).expect("ids");
        assert_eq!(t.prev_events[0].as_str(), "$abc");
        for bad in [
            json!([5]),
            json!(["not an id"]),
            json!([["$a:x"]]),
            json!([["$a:x", {}, 3]]),
        ] {
            assert!(
                serde_json::from_value::<T>(json!({ "prev_events": bad })).is_err(),
                "{bad}"
            );
        }
        // Parsed from text as well (borrowed strings).
        let t: T = serde_json::from_str(r#"{"prev_events": [["$a:x", {"sha256": "h"}], "$b"]}"#)
            .expect("text");
        assert_eq!(t.prev_events.len(), 2);
    }
}
