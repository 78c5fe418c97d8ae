//! The client-server event format, built from a stored PDU.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
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

/// The fields of a PDU the client format keeps, as the JSON text they are stored as.
/// Parsing only these skips the rest (signatures, hashes, auth and prev events), and
/// nothing is unescaped or copied: the answer writes the same text back.
#[derive(Deserialize, Default)]
struct ClientFields<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<&'a RawValue>,
    #[serde(borrow)]
    content: Option<&'a RawValue>,
    #[serde(borrow)]
    sender: Option<&'a RawValue>,
    #[serde(borrow)]
    origin_server_ts: Option<&'a RawValue>,
    #[serde(borrow)]
    state_key: Option<&'a RawValue>,
    #[serde(borrow)]
    redacts: Option<&'a RawValue>,
}

/// `content.redacts`, where v11 and later keep the target of a redaction.
#[derive(Deserialize)]
struct RedactsInContent<'a> {
    #[serde(borrow)]
    redacts: Option<&'a RawValue>,
}

/// A stored event on its way to a client (`ClientEvent` / `ClientEventWithoutRoomID`):
/// the PDU's fields as stored, and `unsigned`, which callers may add to (bundled
/// aggregations, the viewer's membership) before finishing it as text or as a value.
#[derive(Serialize)]
pub struct ClientEvent<'a> {
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a RawValue>,
    content: &'a RawValue,
    event_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    room_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sender: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    origin_server_ts: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_key: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    redacts: Option<&'a RawValue>,
    /// What the server adds: `age`, `transaction_id`, `prev_content`, `m.relations`…
    pub unsigned: Map<String, Value>,
}

/// `{}`, for a PDU without content.
fn empty_object<'a>() -> &'a RawValue {
    serde_json::from_str("{}").expect("an empty object is JSON")
}

impl<'a> ClientEvent<'a> {
    /// Read the client fields of `e`; it borrows the stored JSON.
    pub fn new(e: &'a StoredEvent, opts: ClientEventOptions<'_>) -> ClientEvent<'a> {
        let pdu: ClientFields<'a> = serde_json::from_str(&e.json).unwrap_or_default();
        // From v11 `redacts` lives in content; clients still look for it at the top level.
        let redacts = pdu.redacts.or_else(|| {
            (e.kind == "m.room.redaction")
                .then_some(pdu.content)
                .flatten()
                .and_then(|c| serde_json::from_str::<RedactsInContent<'a>>(c.get()).ok())
                .and_then(|c| c.redacts)
        });
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
        ClientEvent {
            kind: pdu.kind,
            content: pdu.content.unwrap_or_else(empty_object),
            event_id: &e.event_id,
            room_id: opts.include_room_id.then_some(e.room_id.as_str()),
            sender: pdu.sender,
            origin_server_ts: pdu.origin_server_ts,
            state_key: pdu.state_key,
            redacts,
            unsigned,
        }
    }

    /// The event as JSON text, ready to be placed in an answer as it is.
    pub fn to_raw(&self) -> Box<RawValue> {
        serde_json::value::to_raw_value(self).unwrap_or_else(|_| empty_object().to_owned())
    }

    /// The event as a JSON value, for answers that are still built as values.
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).unwrap_or_else(|_| Value::Object(Map::new()))
    }
}

/// Render a stored event in the client format (`ClientEvent` / `ClientEventWithoutRoomID`).
pub fn client_event(e: &StoredEvent, opts: ClientEventOptions<'_>) -> Value {
    ClientEvent::new(e, opts).to_value()
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
