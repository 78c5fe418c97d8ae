//! Inviting across nodes: the inviting side has the invitee's server counter-sign, the
//! invitee's side receives it.

use super::*;

/// The stripped state sent along with an invite (as `/sync` shows invites).
pub(in crate::rooms) fn invite_room_state(
    c: &Connection,
    room_id: &str,
    inviter: &str,
) -> Result<Vec<Value>, Error> {
    let mut out = Vec::new();
    for (ty, sk) in [
        ("m.room.create", ""),
        ("m.room.join_rules", ""),
        ("m.room.name", ""),
        ("m.room.avatar", ""),
        ("m.room.canonical_alias", ""),
        ("m.room.encryption", ""),
        ("m.room.topic", ""),
        ("m.room.member", inviter),
    ] {
        if let Some(id) = storage::current_state_event(c, room_id, ty, sk)?
            && let Some(ev) = storage::get_state_event(c, &id)?
        {
            out.push(stripped_state(&ev));
        }
    }
    Ok(out)
}

/// Invite a user of another server: build the invite on the room's current state
/// (auth-checked), have the invitee's server counter-sign it
/// (`PUT /_matrix/federation/v2/invite`), then persist it; the outbox delivers it to
/// the room's other servers.
pub async fn invite_remote(
    server: &Arc<Server>,
    room_id: &str,
    sender: &str,
    invitee: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let dest = server_of(invitee)
        .filter(|s| public_key_from_server_name(s).is_some())
        .ok_or_else(|| Error::InvalidParam(format!("{invitee} is not on a P2P server")))?
        .to_owned();
    let mut content = json!({ "membership": "invite" });
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(invitee.to_owned()),
        content,
        sender: sender.to_owned(),
        redacts: None,
    };
    let (built, stripped) = server.db.read_tx(|c| {
        let built = build_local_event(c, server, room_id, &ev, None)?;
        let stripped = invite_room_state(c, room_id, sender)?;
        Ok((built, stripped))
    })?;
    let invite_room_state = stripped
        .iter()
        .map(|v| serde_json::from_str(&v.to_string()))
        .collect::<Result<Vec<_>, _>>()?;
    let request = create_invite::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&built.event_id)?,
        parse_id(&built.version)?,
        serde_json::value::to_raw_value(&built.object)?,
        invite_room_state,
    );
    let answer = execute(server, &dest, request).await?;
    let signed: Value = serde_json::from_str(answer.event.get())?;
    let (_, rules) = rules_for(&built.version)?;
    let checked = check_pdu(signed, room_id, &rules)
        .map_err(|(_, r)| Error::RemoteServer(format!("{dest}: counter-signed invite: {r}")))?;
    if checked.event_id != built.event_id || checked.json.len() < built.json.len() {
        return Err(Error::RemoteServer(format!(
            "{dest} answered with another event than our invite"
        )));
    }
    // The invitee's server must have signed it.
    let object: ruma::CanonicalJsonObject = serde_json::from_str(&checked.json)?;
    let redacted = ruma::canonical_json::redact(object.clone(), &rules.redaction, None)
        .map_err(|e| Error::RemoteServer(format!("cannot redact the invite: {e}")))?;
    let signers: Vec<String> = match object.get("signatures") {
        Some(CanonicalJsonValue::Object(o)) => o.keys().cloned().collect(),
        _ => Vec::new(),
    };
    if !signers.iter().any(|s| s == &dest) {
        return Err(Error::RemoteServer(format!(
            "{dest} did not sign the invite"
        )));
    }
    verify_json(
        &crate::federation::keys::key_map(signers.iter().map(String::as_str))?,
        &redacted,
    )
    .map_err(|e| Error::RemoteServer(format!("{dest}: bad signature on the invite: {e}")))?;
    let pdu = checked.pdu;
    let json = checked.json;
    server.write(|c| {
        let (version, group_before) = storage::room_info(c, room_id)?
            .ok_or_else(|| Error::NotFound(format!("room {room_id} is gone")))?;
        crate::rooms::auth::check_local_event(c, &rules, room_id, &pdu)?;
        persist(c, room_id, &version, &pdu, &json, group_before, None, None)?;
        crate::federation::outbox::enqueue_event(c, server, room_id, &pdu)
    })?;
    Ok(built.event_id)
}

/// The invitee's side of `PUT /_matrix/federation/v2/invite`: check the invite (the
/// inviting server's signature, the id, that it invites a local user), add our
/// signature, keep it as an outlier with the stripped state and record the membership
/// `invite`. Returns the doubly signed event.
pub fn receive_invite(
    server: &Server,
    origin: &str,
    room_id: &str,
    event_id: &str,
    body: &Value,
) -> Result<Value, Error> {
    let version = body["room_version"]
        .as_str()
        .ok_or_else(|| Error::MissingParam("room_version is required".into()))?;
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::IncompatibleRoomVersion(version.to_owned()));
    }
    let (_, rules) = rules_for(version)?;
    let event = body
        .get("event")
        .cloned()
        .ok_or_else(|| Error::MissingParam("event is required".into()))?;
    let checked = check_pdu(event, room_id, &rules)
        .map_err(|(_, reason)| Error::Forbidden(format!("invite refused: {reason}")))?;
    if checked.event_id != event_id {
        return Err(Error::BadJson(format!(
            "the event's id is {}, not {event_id}",
            checked.event_id
        )));
    }
    let pdu = &checked.pdu;
    let content: Value = serde_json::from_str(pdu.content.get())?;
    if pdu.kind != TimelineEventType::RoomMember || content["membership"] != "invite" {
        return Err(Error::BadJson("not an invite".into()));
    }
    if server_of(pdu.sender.as_str()) != Some(origin) {
        return Err(Error::Forbidden(format!(
            "the invite's sender is not a user of {origin}"
        )));
    }
    let invitee = pdu
        .state_key
        .clone()
        .ok_or_else(|| Error::BadJson("invite without a state_key".into()))?;
    if !server.is_local_user(&invitee) {
        return Err(Error::Forbidden(format!(
            "{invitee} is not a user of this server"
        )));
    }
    let mut object: ruma::CanonicalJsonObject = serde_json::from_str(&checked.json)?;
    sign_event(
        server.server_name(),
        server.identity.keypair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::internal(format!("cannot sign the invite: {e}")))?;
    let json = serde_json::to_string(&object)?;
    let stripped: Vec<Value> = match body.get("invite_room_state") {
        Some(Value::Array(a)) => a
            .iter()
            .filter(|v| v.is_object())
            .take(MAX_INVITE_STATE)
            .cloned()
            .collect(),
        _ => Vec::new(),
    };
    let unsigned = json!({ "invite_room_state": stripped }).to_string();
    server.write(|c| {
        if !storage::user_exists(c, &invitee)? {
            return Err(Error::NotFound(format!("no user {invitee} here")));
        }
        if storage::get_event_any(c, event_id)?.is_none() {
            storage::insert_event(c, &outlier(pdu, room_id, json.clone(), Some(unsigned), c)?)?;
        }
        let current = storage::membership(c, room_id, &invitee)?.map(|(m, _, _)| m);
        if !matches!(current.as_deref(), Some("join") | Some("ban")) {
            let pos = next_stream_position(c)?;
            crate::rooms::set_membership(c, room_id, &invitee, "invite", event_id, pos)?;
        }
        Ok(())
    })?;
    Ok(serde_json::to_value(&object)?)
}

/// The server that invited `user_id` to `room_id`, when the user has a pending invite.
pub fn inviting_server(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, event_id, _)) if m == "invite" => Ok(storage::get_event_any(c, &event_id)?
            .and_then(|e| server_of(&e.sender).map(str::to_owned))),
        _ => Ok(None),
    }
}

/// The server to leave through for a pending invite or knock of `user_id` on a room
/// this node may not be in: the inviting server, or the server a knock went through.
pub fn membership_server(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, _, _)) if m == "invite" => inviting_server(c, room_id, user_id),
        Some((m, event_id, _)) if m == "knock" => Ok(storage::get_event_any(c, &event_id)?
            .and_then(|e| e.unsigned)
            .and_then(|u| serde_json::from_str::<Value>(&u).ok())
            .and_then(|u| u[KNOCK_VIA].as_str().map(str::to_owned))),
        _ => Ok(None),
    }
}
