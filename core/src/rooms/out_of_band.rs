//! An "out-of-band" leave: rejecting an invite, or rescinding a knock, when the server
//! it came through cannot be reached (or refuses).
//!
//! This node is not in the room, so a leave can only travel through another server
//! (`make_leave` / `send_leave`). When none answers, the user must still be able to get
//! rid of the invite, and a deactivated account must not keep it pending forever. As
//! Synapse does (`_generate_local_out_of_band_leave`), the node signs a leave event that
//! follows the invite or knock (its only prev and auth event), keeps it as an outlier
//! (it is not part of the room's DAG here and is sent to no one), and records the
//! membership as `leave`, so `/sync` moves the room to `leave`.

use serde_json::{Value, json};

use super::append::references;
use super::remote_join::outlier;
use crate::error::Error;
use crate::events::{NewEvent, Pdu, build_pdu, rules_for};
use crate::server::Server;
use crate::storage::{self, StoredEvent, next_stream_position, now_ms};

/// Leave `room_id` locally for `user_id`, whose membership is a pending invite or knock.
/// Returns the leave event's id.
pub fn leave_out_of_band(
    server: &Server,
    room_id: &str,
    user_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    server.write(|c| {
        let (membership, prior_id) = match storage::membership(c, room_id, user_id)? {
            Some((m, id, _)) if m == "invite" || m == "knock" => (m, id),
            _ => {
                return Err(Error::Forbidden(format!(
                    "{user_id} has no pending invite or knock in {room_id}"
                )));
            }
        };
        let prior = storage::get_event_any(c, &prior_id)?
            .ok_or_else(|| Error::internal(format!("the {membership} {prior_id} is not stored")))?;
        let version = room_version(c, room_id, &prior, &server.config.default_room_version)?;
        let (_, rules) = rules_for(&version)?;
        let mut content = json!({ "membership": "leave" });
        if let Some(reason) = reason {
            content["reason"] = Value::String(reason);
        }
        let ev = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(user_id.to_owned()),
            content,
            sender: user_id.to_owned(),
            redacts: None,
        };
        let refs = references(c, &rules, vec![prior_id])?;
        let (event_id, object) = build_pdu(
            &server.identity,
            &rules,
            Some(room_id),
            &ev,
            &refs,
            &refs,
            prior.depth + 1,
            now_ms(),
        )?;
        let json = serde_json::to_string(&object)?;
        let pdu = Pdu::from_json(&event_id, &json)?;
        storage::insert_event(c, &outlier(&pdu, room_id, json, None, c)?)?;
        let pos = next_stream_position(c)?;
        super::set_membership(c, room_id, user_id, "leave", &event_id, pos)?;
        Ok(event_id)
    })
}

/// The room's version as far as this node knows it: from the room itself if it knows
/// the room, else from the create event in the stripped state that came with the invite
/// or knock, else the node's default (the leave is kept here only, so its format
/// matters to no one else).
fn room_version(
    c: &rusqlite::Connection,
    room_id: &str,
    prior: &StoredEvent,
    default: &str,
) -> Result<String, Error> {
    if let Some((version, _)) = storage::room_info(c, room_id)? {
        return Ok(version);
    }
    let unsigned: Value = prior
        .unsigned
        .as_deref()
        .and_then(|u| serde_json::from_str(u).ok())
        .unwrap_or(Value::Null);
    for key in ["invite_room_state", "knock_room_state"] {
        let Some(state) = unsigned[key].as_array() else {
            continue;
        };
        if let Some(create) = state.iter().find(|e| e["type"] == "m.room.create") {
            // A create event without `room_version` is version 1 (the spec).
            let version = create["content"]["room_version"].as_str().unwrap_or("1");
            if crate::events::SUPPORTED_ROOM_VERSIONS.contains(&version) {
                return Ok(version.to_owned());
            }
        }
    }
    Ok(default.to_owned())
}
