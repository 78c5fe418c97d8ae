//! Joining a room over federation: `make_join` against each candidate server in turn,
//! `send_join`, the returned state checked and stored, the join on top of it.

use super::*;

/// Join `user_id` (local) to `room_id` through the first of `via` that lets us in.
/// Returns the join event id.
pub async fn join_remote(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    content: Map<String, Value>,
    via: Vec<String>,
) -> Result<String, Error> {
    let via = candidates(server, via);
    if via.is_empty() {
        return Err(Error::NotFound(format!(
            "room {room_id} is not known here and no server to join it through was given"
        )));
    }
    let mut last = None;
    for dest in via {
        match join_via(server, room_id, user_id, content.clone(), &dest).await {
            Ok(id) => return Ok(id),
            Err(e) => {
                tracing::info!(%room_id, %dest, error = %e, "remote join failed");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::NotFound(format!("cannot join {room_id}"))))
}

/// `make_{membership}` on `dest`: the room version it names and the event template.
async fn make_template(
    server: &Server,
    dest: &str,
    room_id: &str,
    user_id: &str,
    membership: &str,
) -> Result<(Option<String>, Box<RawJsonValue>), Error> {
    let (room, user) = (parse_id(room_id)?, parse_id(user_id)?);
    let ver = || {
        SUPPORTED_ROOM_VERSIONS
            .iter()
            .map(|v| parse_id(v))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(match membership {
        "join" => {
            let mut request = prepare_join_event::v1::Request::new(room, user);
            request.ver = ver()?;
            let answer = execute(server, dest, request).await?;
            (answer.room_version.map(|v| v.to_string()), answer.event)
        }
        "knock" => {
            let mut request = prepare_knock_event::v1::Request::new(room, user);
            request.ver = ver()?;
            let answer = execute(server, dest, request).await?;
            (Some(answer.room_version.to_string()), answer.event)
        }
        "leave" => {
            let request = prepare_leave_event::v1::Request::new(room, user);
            let answer = execute(server, dest, request).await?;
            (answer.room_version.map(|v| v.to_string()), answer.event)
        }
        other => return Err(Error::internal(format!("no make_{other} endpoint"))),
    })
}

/// `make_*` then sign the template: the version and our signed event.
pub(in crate::rooms) async fn make_membership(
    server: &Arc<Server>,
    dest: &str,
    room_id: &str,
    user_id: &str,
    membership: &str,
    client_content: Map<String, Value>,
) -> Result<(String, String, ruma::CanonicalJsonObject), Error> {
    let (version, template) = make_template(server, dest, room_id, user_id, membership).await?;
    let version = version.ok_or_else(|| {
        Error::RemoteServer(format!("{dest}: make_{membership} without room_version"))
    })?;
    if !SUPPORTED_ROOM_VERSIONS.contains(&version.as_str()) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "room {room_id} has version {version}, which this server does not support"
        )));
    }
    let (_, rules) = rules_for(&version)?;
    let template: Value = serde_json::from_str(template.get())?;
    let t = &template;
    let bad =
        |what: &str| Error::RemoteServer(format!("{dest}: make_{membership} template: {what}"));
    if t["type"] != "m.room.member"
        || t["sender"] != user_id
        || t["state_key"] != user_id
        || t["content"]["membership"] != membership
    {
        return Err(bad("not our membership event"));
    }
    if t.get("room_id").is_some_and(|r| r != room_id) {
        return Err(bad("another room"));
    }
    // Kept as the resident wrote them (with their hashes in room versions 1 and 2).
    let refs =
        |field: &str| parse_references(t, field, &rules.event_format, 20).map_err(|e| bad(&e));
    let prev = refs("prev_events")?;
    let auth = refs("auth_events")?;
    let depth = t["depth"].as_i64().ok_or_else(|| bad("depth"))?;
    let mut content = if membership == "join" || membership == "knock" {
        let mut c = server
            .db
            .read(|c| join_content(c, user_id, client_content))?;
        c.insert("membership".into(), json!(membership));
        Value::Object(c)
    } else {
        let mut c = client_content;
        c.insert("membership".into(), json!(membership));
        Value::Object(c)
    };
    if membership == "join"
        && let Some(via) = t["content"].get("join_authorised_via_users_server")
    {
        // A restricted room: the resident names one of its users, and must sign the join
        // in `send_join` (the signature is checked on the event it gives back).
        let via = via
            .as_str()
            .and_then(|v| ruma::UserId::parse(v).ok())
            .filter(|v| v.server_name().as_str() == dest)
            .ok_or_else(|| bad("join_authorised_via_users_server is not a user of it"))?;
        content["join_authorised_via_users_server"] = json!(via);
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(user_id.to_owned()),
        content,
        sender: user_id.to_owned(),
        redacts: None,
    };
    let (event_id, object) = build_pdu(
        &server.identity,
        &rules,
        Some(room_id),
        &ev,
        &prev,
        &auth,
        depth,
        now_ms(),
    )?;
    Ok((version, event_id, object))
}

async fn join_via(
    server: &Arc<Server>,
    room_id: &str,
    user_id: &str,
    content: Map<String, Value>,
    dest: &str,
) -> Result<String, Error> {
    let (version, event_id, object) =
        make_membership(server, dest, room_id, user_id, "join", content).await?;
    let request = create_join_event::v2::Request::new(
        parse_id(room_id)?,
        parse_id(&event_id)?,
        serde_json::value::to_raw_value(&object)?,
    );
    let answer = serde_json::to_value(execute(server, dest, request).await?.room_state)?;
    let list = |key: &str, max: usize| -> Result<Vec<Value>, Error> {
        match answer.get(key) {
            Some(Value::Array(a)) if a.len() <= max => Ok(a.clone()),
            Some(Value::Array(a)) => Err(Error::RemoteServer(format!(
                "{dest}: send_join {key} has {} events, at most {max} accepted",
                a.len()
            ))),
            _ => Err(Error::RemoteServer(format!(
                "{dest}: send_join without {key}"
            ))),
        }
    };
    let state = list("state", MAX_JOIN_STATE)?;
    let auth_chain = list("auth_chain", MAX_JOIN_AUTH_CHAIN)?;
    // A restricted join comes back signed by the resident as well (checked with the
    // other signatures in `persist_remote_join`); otherwise the resident's copy, when it
    // is the same event, or ours.
    let authorised = object
        .get("content")
        .and_then(|c| match c {
            CanonicalJsonValue::Object(o) => o.get("join_authorised_via_users_server"),
            _ => None,
        })
        .is_some();
    let join_json = match answer.get("event").filter(|e| !e.is_null()) {
        Some(ev) if event_id_of(ev, &version).ok().as_deref() == Some(event_id.as_str()) => {
            ev.clone()
        }
        Some(_) => {
            return Err(Error::RemoteServer(format!(
                "{dest}: send_join answered with another event than our join"
            )));
        }
        None if authorised => {
            return Err(Error::RemoteServer(format!(
                "{dest}: send_join did not return the join it authorised"
            )));
        }
        None => serde_json::to_value(&object)?,
    };
    let joined = server.write(|c| {
        let joined = persist_remote_join(
            c, room_id, &version, join_json, state, auth_chain, &event_id,
        )?;
        // The history before the join is on `dest`: where backfilling starts.
        crate::rooms::backfill::note_remote_join(c, room_id, &joined, dest)?;
        Ok(joined)
    })?;
    tracing::info!(%room_id, %dest, event_id = %joined, "joined a room over federation");
    // The room's avatar and its members' avatars came with the state, not as events:
    // queue them for prefetching too, so they outlive the devices that set them.
    let media = server.db.read(|c| state_media(server, c, room_id))?;
    crate::media::remote::prefetch(server, media);
    Ok(joined)
}

/// Most state events looked at for media to prefetch after a join (the room avatar,
/// then member avatars); the prefetch queue bounds what is fetched.
const MAX_JOIN_STATE_MEDIA: usize = 64;

/// Media of other servers named by the room's avatar and members' avatars.
fn state_media(
    server: &Server,
    c: &Connection,
    room_id: &str,
) -> Result<Vec<(String, String)>, Error> {
    let state = storage::current_state(c, room_id)?;
    let ids = state
        .iter()
        .filter(|((ty, _), _)| ty == "m.room.avatar")
        .chain(state.iter().filter(|((ty, _), _)| ty == "m.room.member"))
        .map(|(_, id)| id)
        .take(MAX_JOIN_STATE_MEDIA);
    let mut out = Vec::new();
    for id in ids {
        if let Some(pdu) = crate::rooms::load_pdu(c, id)? {
            for item in crate::media::remote::remote_references(server, &pdu) {
                if !out.contains(&item) {
                    out.push(item);
                }
            }
        }
    }
    Ok(out)
}

/// Check and store the state and auth chain a resident gave us, then put our join into
/// the timeline on top of that state. Runs in one write transaction.
pub(super) fn persist_remote_join(
    c: &Connection,
    room_id: &str,
    version: &str,
    join: Value,
    state: Vec<Value>,
    auth_chain: Vec<Value>,
    event_id: &str,
) -> Result<String, Error> {
    let (_, rules) = rules_for(version)?;
    let join = check_pdu(join, room_id, &rules).map_err(|(_, reason)| {
        Error::RemoteServer(format!("our join came back altered: {reason}"))
    })?;
    if join.event_id != event_id {
        return Err(Error::RemoteServer(
            "our join came back with another id".into(),
        ));
    }
    // The resident may have sent our join on to us already (this node was in the room
    // through another user): it passed the ordinary checks then, and is in the timeline.
    if storage::get_event(c, event_id)?.is_some() {
        return Ok(join.event_id);
    }
    let mut state_ids: HashSet<String> = HashSet::new();
    let mut checked: Vec<Checked> = Vec::new();
    for (is_state, value) in state
        .into_iter()
        .map(|v| (true, v))
        .chain(auth_chain.into_iter().map(|v| (false, v)))
    {
        match check_pdu(value, room_id, &rules) {
            Ok(ev) => {
                if is_state {
                    state_ids.insert(ev.event_id.clone());
                }
                checked.push(ev);
            }
            Err((id, reason)) => {
                tracing::info!(?id, %reason, "dropped an event of a send_join answer");
            }
        }
    }
    // The create event first (v12 events do not list it), then by auth dependencies.
    let (creates, rest): (Vec<Checked>, Vec<Checked>) = checked
        .into_iter()
        .partition(|e| e.pdu.kind == TimelineEventType::RoomCreate);
    let creates = dependency_order(creates);
    let create = match creates.as_slice() {
        [one] => one.clone(),
        [] => {
            return Err(Error::RemoteServer(
                "the room state has no create event".into(),
            ));
        }
        _ => {
            return Err(Error::RemoteServer(
                "the room state has several create events".into(),
            ));
        }
    };
    let create_content: Value = serde_json::from_str(create.pdu.content.get())?;
    let create_version = create_content["room_version"].as_str().unwrap_or("1");
    if create_version != version {
        return Err(Error::RemoteServer(format!(
            "make_join said version {version}, the create event says {create_version}"
        )));
    }
    let room = Room {
        c,
        room_id,
        version,
        rules: &rules,
    };
    let mut rejected: HashSet<String> = HashSet::new();
    for ev in std::iter::once(create.clone()).chain(dependency_order(rest)) {
        let id = ev.event_id.clone();
        if let crate::rooms::Outcome::Rejected { reason, .. } =
            room.process(ev.clone(), Mode::JoinState)?
        {
            tracing::info!(event_id = %id, %reason, "rejected an event of a send_join answer");
            rejected.insert(id);
        }
    }
    if rejected.contains(&create.event_id) {
        return Err(Error::RemoteServer(
            "the room's create event fails auth".into(),
        ));
    }
    let mut before = StateMap::new();
    for id in &state_ids {
        if rejected.contains(id) {
            continue;
        }
        if let Some(e) = storage::get_event_any(c, id)?
            && let Some(sk) = &e.state_key
        {
            before.insert((e.kind.clone(), sk.clone()), e.event_id.clone());
        }
    }
    if before.get(&("m.room.create".to_owned(), String::new())) != Some(&create.event_id) {
        return Err(Error::RemoteServer(
            "the room state lacks its create event".into(),
        ));
    }
    // The join must pass auth against its own auth events and the state before it.
    let pdu = &join.pdu;
    let auth = &rules.authorization;
    state_res::check_state_independent_auth_rules(auth, pdu, |id: &ruma::EventId| {
        crate::rooms::load_pdu(c, id.as_str()).ok().flatten()
    })
    .map_err(|e| Error::Forbidden(format!("our join fails auth: {e}")))?;
    check_against(c, auth, pdu, &before).map_err(|e| {
        Error::Forbidden(format!("our join fails auth against the room state: {e}"))
    })?;

    match storage::room_info(c, room_id)? {
        Some(_) => storage::clear_forward_extremities(c, room_id)?,
        None => storage::insert_room(c, room_id, version, create.pdu.sender.as_str(), false)?,
    }
    let group_before = storage::group_for_state(c, room_id, None, &before)?;
    let key = ("m.room.member".to_owned(), pdu.sender.to_string());
    let replaces = before.get(&key).cloned();
    let mut after = before;
    after.insert(key, join.event_id.clone());
    storage::delete_outlier(c, &join.event_id)?;
    persist_accepted(
        c,
        Accepted {
            room_id,
            version,
            pdu,
            json: &join.json,
            group_before: Some(group_before),
            replaces,
            current: NewCurrentState::Replace {
                state: after,
                is_state_after_event: true,
            },
            txn: None,
            push: None,
        },
    )?;
    Ok(join.event_id)
}
