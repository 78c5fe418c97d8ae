//! The client-server event format, built from a stored PDU.

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::storage::StoredEvent;

/// How to render an event for one client.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientEventOptions<'a> {
    /// The requesting user and device, to echo `transaction_id` to the sender's device.
    pub viewer: Option<(&'a str, &'a str)>,
    /// `/sync` omits `room_id` inside room sections; everything else includes it.
    pub include_room_id: bool,
    /// Now, for `unsigned.age`.
    pub now_ms: i64,
}

/// The fields of a PDU the client format keeps. Parsing only these skips the rest
/// (signatures, hashes, auth and prev events) without building them, and moves
/// `content` into the answer instead of copying it.
#[derive(Deserialize, Default)]
struct ClientFields {
    #[serde(rename = "type")]
    kind: Option<Value>,
    content: Option<Value>,
    sender: Option<Value>,
    origin_server_ts: Option<Value>,
    state_key: Option<Value>,
    redacts: Option<Value>,
}

/// Render a stored event in the client format (`ClientEvent` / `ClientEventWithoutRoomID`).
pub fn client_event(e: &StoredEvent, opts: ClientEventOptions<'_>) -> Value {
    let pdu: ClientFields = serde_json::from_str(&e.json).unwrap_or_default();
    let mut out = Map::new();
    // From v11 `redacts` lives in content; clients still look for it at the top level.
    let redacts = pdu.redacts.or_else(|| {
        (e.kind == "m.room.redaction")
            .then(|| pdu.content.as_ref().and_then(|c| c.get("redacts")).cloned())
            .flatten()
    });
    for (field, value) in [
        ("type", pdu.kind),
        ("sender", pdu.sender),
        ("origin_server_ts", pdu.origin_server_ts),
        ("state_key", pdu.state_key),
        ("redacts", redacts),
    ] {
        if let Some(v) = value {
            out.insert(field.to_owned(), v);
        }
    }
    out.insert(
        "content".to_owned(),
        pdu.content.unwrap_or_else(|| Value::Object(Map::new())),
    );
    out.insert("event_id".to_owned(), Value::String(e.event_id.clone()));
    if opts.include_room_id {
        out.insert("room_id".to_owned(), Value::String(e.room_id.clone()));
    }
    let mut unsigned: Map<String, Value> = e
        .unsigned
        .as_deref()
        .and_then(|u| serde_json::from_str(u).ok())
        .unwrap_or_default();
    unsigned.insert(
        "age".to_owned(),
        Value::from((opts.now_ms - e.origin_server_ts).max(0)),
    );
    if let (Some((user, device)), Some(txn_device), Some(txn_id)) =
        (opts.viewer, &e.txn_device, &e.txn_id)
        && user == e.sender
        && device == txn_device
    {
        unsigned.insert("transaction_id".to_owned(), Value::String(txn_id.clone()));
    }
    out.insert("unsigned".to_owned(), Value::Object(unsigned));
    Value::Object(out)
}

/// Stripped state for invites and knocks: type, state_key, content, sender.
pub fn stripped_state(e: &StoredEvent) -> Value {
    let pdu: Map<String, Value> = serde_json::from_str(&e.json).unwrap_or_default();
    let mut out = Map::new();
    for field in ["type", "state_key", "content", "sender"] {
        if let Some(v) = pdu.get(field) {
            out.insert(field.to_owned(), v.clone());
        }
    }
    Value::Object(out)
}
