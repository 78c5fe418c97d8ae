//! Checks 1–3 on receipt of a PDU, which need no database: format and size, the event
//! id, signatures, content hash. Also what an id already stored here says about a PDU
//! in room versions 1 and 2, where ids are the sender's choice.

use std::collections::BTreeMap;

use ruma::CanonicalJsonValue;
use ruma::canonical_json::redact;
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Base64;
use ruma::signatures::{
    PublicKeyMap, Verified, required_server_signatures_to_verify_event, verify_event,
};
use ruma::state_res;
use serde_json::Value;

use super::{MAX_PDU_BYTES, Outcome};
use crate::events::Pdu;
use crate::identity::{KEY_ID, public_key_from_server_name};

/// A PDU that passed the format and signature checks.
#[derive(Clone, Debug)]
pub(in crate::rooms) struct Checked {
    pub(in crate::rooms) event_id: String,
    /// The JSON to store (redacted when the content hash did not match; no `unsigned`).
    pub(in crate::rooms) json: String,
    pub(in crate::rooms) pdu: Pdu,
}

pub(in crate::rooms) type Dropped = (Option<String>, String);

/// Checks 1–3: format, event id, signatures, content hash. Needs no database.
///
/// A room version 12 create event carries no `room_id`: it is accepted when the room id
/// is the one its event id names.
pub(in crate::rooms) fn check_pdu(
    value: Value,
    room_id: &str,
    rules: &RoomVersionRules,
) -> Result<Checked, Dropped> {
    let drop = |reason: String| (None, reason);
    if !value.is_object() {
        return Err(drop("PDU is not a JSON object".into()));
    }
    let mut object = match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        Ok(_) => return Err(drop("PDU is not a JSON object".into())),
        Err(e) => return Err(drop(format!("PDU is not canonical JSON: {e}"))),
    };
    // Servers add `unsigned` in transit; it is not ours to keep (nor signed).
    object.remove("unsigned");
    let size = serde_json::to_vec(&object)
        .map(|v| v.len())
        .unwrap_or(usize::MAX);
    if size > MAX_PDU_BYTES {
        return Err(drop(format!("PDU is {size} bytes, over {MAX_PDU_BYTES}")));
    }
    state_res::check_pdu_format(&object, &rules.event_format)
        .map_err(|e| drop(format!("bad PDU format: {e}")))?;
    let v12_create = rules.authorization.room_create_event_id_as_room_id
        && matches!(object.get("type"), Some(CanonicalJsonValue::String(t)) if t == "m.room.create")
        && !object.contains_key("room_id");
    match object.get("room_id") {
        Some(CanonicalJsonValue::String(r)) if r == room_id => {}
        None if v12_create => {}
        _ => return Err(drop(format!("PDU is not for room {room_id}"))),
    }
    let event_id = crate::events::event_id_of(&object, rules).map_err(drop)?;
    if rules.event_format.require_event_id {
        check_own_event_id(&object, &event_id).map_err(drop)?;
    }
    if v12_create && crate::events::room_id_from_create_event_id(&event_id) != room_id {
        return Err(drop(format!(
            "create event {event_id} does not name room {room_id}"
        )));
    }
    let dropped = |reason: String| (Some(event_id.clone()), reason);
    check_reference_format(&object, rules).map_err(dropped)?;

    // Signatures: every server the room version requires, keys from the server names.
    let servers = required_server_signatures_to_verify_event(&object, &rules.signatures)
        .map_err(|e| dropped(format!("cannot tell who must sign: {e}")))?;
    let mut keys = PublicKeyMap::new();
    for server in &servers {
        let Some(key) = public_key_from_server_name(server.as_str()) else {
            return Err(dropped(format!(
                "{server} is not a P2P server name (64 hex characters)"
            )));
        };
        let mut set = BTreeMap::new();
        set.insert(KEY_ID.to_owned(), Base64::new(key.to_vec()));
        keys.insert(server.to_string(), set);
    }
    let verified =
        verify_event(&keys, &object, rules).map_err(|e| dropped(format!("bad signature: {e}")))?;
    if verified == Verified::Signatures {
        // The content hash does not match: keep only what the signatures cover.
        tracing::info!(%event_id, "received event fails its content hash; storing it redacted");
        object = redact(object, &rules.redaction, None)
            .map_err(|e| dropped(format!("cannot redact: {e}")))?;
    }
    let json = serde_json::to_string(&object).map_err(|e| dropped(e.to_string()))?;
    let pdu = Pdu::from_json(&event_id, &json).map_err(|e| dropped(e.to_string()))?;
    Ok(Checked {
        event_id,
        json,
        pdu,
    })
}

/// Room versions 1 and 2: an event's own id must name its sender's server, which then
/// signs it (the signature check requires the id's server and the sender's), so no
/// server can mint ids in another's name.
fn check_own_event_id(object: &ruma::CanonicalJsonObject, event_id: &str) -> Result<(), String> {
    let sender = match object.get("sender") {
        Some(CanonicalJsonValue::String(s)) => s.as_str(),
        _ => return Err("the PDU has no sender".into()),
    };
    let id_server = event_id.split_once(':').map(|(_, s)| s);
    let sender_server = sender.split_once(':').map(|(_, s)| s);
    if id_server.is_none() || id_server != sender_server {
        return Err(format!(
            "event id {event_id} is not of the sender's server ({sender})"
        ));
    }
    Ok(())
}

/// `prev_events` and `auth_events` in the room version's format (bare ids, or
/// `[id, hashes]` pairs in versions 1 and 2), within the spec's bounds.
fn check_reference_format(
    object: &ruma::CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<(), String> {
    for field in ["prev_events", "auth_events"] {
        let mut lists = serde_json::Map::new();
        if let Some(list) = object.get(field) {
            lists.insert(
                field.to_owned(),
                serde_json::to_value(list).map_err(|e| e.to_string())?,
            );
        }
        // (The lengths were bounded by `check_pdu_format`.)
        crate::events::parse_references(
            &Value::Object(lists),
            field,
            &rules.event_format,
            usize::MAX,
        )?;
    }
    Ok(())
}

/// Room versions 1 and 2: whether the stored event `stored_json` is another event than
/// `ev` under the same id. Ids there are chosen by the sending server, not computed from
/// the content, so a server could reuse one; the first event stays (as in Synapse), and
/// nothing built on it changes under anyone's feet. Later versions' ids are hashes of
/// the content, so a stored event with the id is always the same one.
pub(super) fn is_another_event(rules: &RoomVersionRules, stored_json: &str, ev: &Checked) -> bool {
    if !rules.event_format.require_event_id {
        return false;
    }
    // The reference hash ignores signatures and survives redaction: a copy redacted on
    // either side (or signed by more servers) is still the same event.
    let hash = |json: &str| {
        serde_json::from_str::<ruma::CanonicalJsonObject>(json)
            .ok()
            .and_then(|o| ruma::signatures::reference_hash(&o, rules).ok())
    };
    hash(stored_json) != hash(&ev.json)
}

pub(super) fn another_event(event_id: String) -> Outcome {
    tracing::info!(%event_id, "refused a received event reusing the id of another");
    Outcome::Rejected {
        event_id: Some(event_id),
        reason: "the event id is taken by another event here".into(),
    }
}
