//! Knocking (room versions 7+): asking to be invited into a room whose join rule is
//! `knock` or `knock_restricted`.
//!
//! A knock on a room this node is in is an ordinary local event (the auth rules decide).
//! A knock on a room of another node goes through `make_knock`/`send_knock`
//! ([`knock_remote`]); the resident answers with stripped room state, which this node
//! keeps with the knock (an outlier) for `/sync`'s `rooms.knock`. The resident side
//! ([`check_knock_allowed`], [`knock_room_state`]) is used by the federation handlers.

use std::sync::Arc;

use ruma::api::federation::membership::create_knock_event;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::remote_join::{candidates, invite_room_state, make_membership, outlier};
use crate::error::Error;
use crate::events::{Pdu, rules_for};
use crate::federation::client::{execute, parse_id};
use crate::server::Server;
use crate::storage::{self, next_stream_position};

/// Key in a remote knock's `unsigned` naming the server the knock went through (the
/// server to rescind it through).
pub const KNOCK_VIA: &str = "io.warren.knock_via";
/// Most stripped-state entries kept from a `send_knock` answer.
const MAX_KNOCK_STATE: usize = 50;

/// The room's join rule from its current state (`invite` when it has none).
pub fn join_rule(c: &Connection, room_id: &str) -> Result<String, Error> {
    Ok(
        storage::current_state_event(c, room_id, "m.room.join_rules", "")?
            .and_then(|id| storage::get_event_any(c, &id).ok().flatten())
            .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
            .and_then(|v| v["content"]["join_rule"].as_str().map(str::to_owned))
            .unwrap_or_else(|| "invite".into()),
    )
}

/// Whether `user_id`, whose membership is `current`, may knock on the local room
/// `room_id`: the room version supports knocking, the join rule is `knock` (or
/// `knock_restricted` where the version has it), and the user is not joined, invited or
/// banned. The auth rules check the same when the event is authorised; this gives a
/// clear answer before any event is built.
pub fn check_knock_allowed(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    current: Option<&str>,
) -> Result<(), Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Err(Error::NotFound(format!("room {room_id} is not known here")));
    };
    let (_, rules) = rules_for(&version)?;
    if !rules.authorization.knocking {
        return Err(Error::IncompatibleRoomVersion(version));
    }
    match join_rule(c, room_id)?.as_str() {
        "knock" => {}
        "knock_restricted" if rules.authorization.knock_restricted_join_rule => {}
        other => {
            return Err(Error::Forbidden(format!(
                "the room's join rule is {other:?}; it does not accept knocks"
            )));
        }
    }
    match current {
        Some("ban") => Err(Error::Forbidden(format!(
            "{user_id} is banned from {room_id}"
        ))),
        Some("join") => Err(Error::Forbidden(format!(
            "{user_id} is already in {room_id}"
        ))),
        Some("invite") => Err(Error::Forbidden(format!(
            "{user_id} is already invited to {room_id}"
        ))),
        _ => Ok(()),
    }
}

/// The stripped state a knocking user's server gets (`send_knock`'s
/// `knock_room_state`): the room events an invite carries (no member event: there is
/// no inviter; the empty state key names none).
pub fn knock_room_state(c: &Connection, room_id: &str) -> Result<Vec<Value>, Error> {
    invite_room_state(c, room_id, "")
}

/// Knock on a room of another node through the first of `via` that accepts: sign the
/// `make_knock` template, `send_knock` it, keep the signed knock as an outlier with the
/// stripped state the resident sent, and record the membership `knock`. Returns the
/// knock's event id.
pub async fn knock_remote(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    reason: Option<&str>,
    via: Vec<String>,
) -> Result<String, Error> {
    let via = candidates(server, via);
    if via.is_empty() {
        return Err(Error::NotFound(format!(
            "room {room_id} is not known here and no server to knock through was given"
        )));
    }
    let mut last = None;
    for dest in via {
        match knock_via(server, room_id, user_id, reason, &dest).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "remote knock failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("cannot knock on {room_id}"))))
}

/// A member content with just the reason, if any.
fn reason_content(reason: Option<&str>) -> serde_json::Map<String, serde_json::Value> {
    let mut content = serde_json::Map::new();
    if let Some(r) = reason {
        content.insert("reason".into(), serde_json::Value::from(r));
    }
    content
}

async fn knock_via(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    reason: Option<&str>,
    dest: &str,
) -> Result<String, Error> {
    let (version, event_id, object) = make_membership(
        server,
        dest,
        room_id,
        user_id,
        "knock",
        reason_content(reason),
    )
    .await?;
    let (_, rules) = rules_for(&version)?;
    if !rules.authorization.knocking {
        return Err(Error::IncompatibleRoomVersion(version));
    }
    let request = create_knock_event::v1::Request::new(
        parse_id(room_id)?,
        parse_id(&event_id)?,
        serde_json::value::to_raw_value(&object)?,
    );
    let answer = execute(server, dest, request).await?;
    let answer = json!({ "knock_room_state": answer.knock_room_state });
    // Stripped state is shown to the user as the resident describes the room; keep only
    // objects with the stripped-state fields, and not too many.
    let stripped: Vec<Value> = answer["knock_room_state"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|v| v["type"].is_string() && v["state_key"].is_string() && v["content"].is_object())
        .take(MAX_KNOCK_STATE)
        .cloned()
        .collect();
    let json = serde_json::to_string(&object)?;
    let pdu = Pdu::from_json(&event_id, &json)?;
    let unsigned = json!({ "knock_room_state": stripped, KNOCK_VIA: dest }).to_string();
    server.write(|c| {
        if storage::get_event_any(c, &event_id)?.is_none() {
            storage::insert_event(c, &outlier(&pdu, room_id, json.clone(), Some(unsigned), c)?)?;
        }
        let current = storage::membership(c, room_id, user_id)?.map(|(m, _, _)| m);
        if !matches!(
            current.as_deref(),
            Some("join") | Some("invite") | Some("ban")
        ) {
            let pos = next_stream_position(c)?;
            super::set_membership(c, room_id, user_id, "knock", &event_id, pos)?;
        }
        Ok(())
    })?;
    tracing::info!(%room_id, %dest, %event_id, "knocked on a room over federation");
    Ok(event_id)
}

/// The room version named by the stripped `m.room.create` kept with a pending remote
/// knock or invite.
fn stripped_room_version(unsigned: &Value) -> Option<String> {
    ["knock_room_state", "invite_room_state"]
        .iter()
        .flat_map(|k| unsigned[*k].as_array().into_iter().flatten())
        .find(|e| e["type"] == "m.room.create")
        .and_then(|e| e["content"]["room_version"].as_str().map(str::to_owned))
}

/// An out-of-band membership change: the resident refused a local user's knock (or
/// withdrew an invite) on a room this node is not in, and sent the `leave` (or `ban`)
/// to this server through `/send`. Returns `None` when the PDU is not that case (the
/// ordinary receipt path then handles it).
///
/// Accepted only from the server the knock went through or the invite came from, with a
/// sender of that server, for a user whose membership here is that pending knock or
/// invite, and only once the PDU passes the format, hash and signature checks of the
/// room version named by the stripped state kept with it. It is kept as an outlier and
/// the membership changes; nothing else about the room is learnt from it.
pub fn receive_out_of_band_membership(
    server: &Server,
    origin: &str,
    room_id: &str,
    pdu: &Value,
) -> Result<Option<String>, Error> {
    if pdu["type"] != "m.room.member" {
        return Ok(None);
    }
    let (Some(target), Some(membership), Some(sender)) = (
        pdu["state_key"].as_str(),
        pdu["content"]["membership"].as_str(),
        pdu["sender"].as_str(),
    ) else {
        return Ok(None);
    };
    if !matches!(membership, "leave" | "ban")
        || !server.is_local_user(target)
        || sender.rsplit_once(':').map(|(_, s)| s) != Some(origin)
    {
        return Ok(None);
    }
    let version = server.db.read(|c| {
        // Rooms with a joined local user take the normal path; a room known here but
        // left by every local user has stale state, so it counts as not joined.
        let local_member = storage::room_members(c, room_id, "join")?
            .iter()
            .any(|u| server.is_local_user(u));
        if local_member {
            return Ok(None);
        }
        if super::membership_server(c, room_id, target)?.as_deref() != Some(origin) {
            return Ok(None);
        }
        let Some((_, event_id, _)) = storage::membership(c, room_id, target)? else {
            return Ok(None);
        };
        Ok(storage::get_event_any(c, &event_id)?
            .and_then(|e| e.unsigned)
            .and_then(|u| serde_json::from_str::<Value>(&u).ok())
            .and_then(|u| stripped_room_version(&u)))
    })?;
    let Some(version) = version else {
        return Ok(None);
    };
    let (_, rules) = rules_for(&version)?;
    let checked = super::receive::check_pdu(pdu.clone(), room_id, &rules)
        .map_err(|(_, reason)| Error::Forbidden(format!("membership refused: {reason}")))?;
    let event_id = checked.event_id.clone();
    server.write(|c| {
        let current = storage::membership(c, room_id, target)?.map(|(m, _, _)| m);
        if !matches!(current.as_deref(), Some("knock") | Some("invite")) {
            return Ok(());
        }
        if storage::get_event_any(c, &event_id)?.is_none() {
            storage::insert_event(
                c,
                &outlier(&checked.pdu, room_id, checked.json.clone(), None, c)?,
            )?;
        }
        let pos = next_stream_position(c)?;
        super::set_membership(c, room_id, target, membership, &event_id, pos)
    })?;
    tracing::info!(%room_id, %target, %origin, membership, "out-of-band membership change");
    Ok(Some(event_id))
}
