//! What a requester writes into rooms: new rooms, messages, state, redactions and
//! upgrades. The
//! client API's room handlers parse and answer; the checks a client's write needs on
//! top of the room engine's auth rules (rate limits, a retried transaction, a relation's
//! target, a canonical alias that must exist, a member event only for users of this
//! node), and the write transaction itself, are here. Membership changes are the
//! membership service's ([`crate::membership`]).

use std::sync::Arc;

use serde_json::Value;

use crate::error::Error;
use crate::events::NewEvent;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::rooms::{self, CreateRoom};
use crate::server::Server;

/// Create a room for the requester, inviting `invite`: users of this node inside the
/// creation, users of other nodes afterwards over federation (their server must
/// countersign the invite). Returns the room id.
pub async fn create_room(
    server: &Arc<Server>,
    requester: &Requester,
    mut req: CreateRoom,
) -> Result<String, Error> {
    server.rate_limit_requester(Action::RoomCreation, requester)?;
    let mut local_invites = Vec::new();
    let mut remote_invites = Vec::new();
    for invitee in std::mem::take(&mut req.invite) {
        match crate::membership::check_invitee(server, &invitee)? {
            true => local_invites.push(invitee),
            false => remote_invites.push(invitee),
        }
    }
    req.invite = local_invites;
    let room_id = server.write(|tx| rooms::create_room(tx, server, &requester.user_id, req))?;
    tracing::info!(%room_id, creator = %requester.user_id, "room created");
    for invitee in remote_invites {
        // The room exists now; a peer that cannot be reached must not make the client
        // think creation failed (it would create another room). The inviter can retry.
        if let Err(e) =
            rooms::invite_remote(server, &room_id, &requester.user_id, &invitee, None).await
        {
            tracing::warn!(%room_id, %invitee, error = %e, "remote invite at room creation failed");
        }
    }
    Ok(room_id)
}

/// Append an event for the requester (with the client transaction id `txn` of its
/// device, if any) and return its id. A new event (not a retried transaction) counts
/// against the requester's message rate limit.
pub fn send(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    ev: NewEvent,
    txn: Option<&str>,
) -> Result<String, Error> {
    let txn = txn.map(|t| (requester.device_id.as_str(), t));
    let appended = server.write(|tx| {
        let retried = match txn {
            Some((device, t)) => rooms::is_retry(tx, room_id, &ev, device, t)?,
            None => false,
        };
        if !retried {
            server.rate_limit_requester(Action::Message, requester)?;
        }
        rooms::append_event(tx, server, room_id, ev, txn)
    })?;
    Ok(appended.event_id)
}

/// A message event (`PUT /rooms/{roomId}/send/{eventType}/{txnId}`) of `kind` from the
/// requester, at `ts` (an application service's timestamp) if given. A retried
/// transaction gets its event back; only a new one is rate limited and has its
/// relation checked.
pub fn send_message(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    kind: String,
    content: Value,
    txn_id: &str,
    ts: Option<i64>,
) -> Result<String, Error> {
    let ev = NewEvent {
        kind,
        state_key: None,
        content,
        sender: requester.user_id.clone(),
        redacts: None,
    };
    let txn = Some((requester.device_id.as_str(), txn_id));
    // A new send (not a retried transaction) takes its rate-limit token first, so a
    // limited client costs no work. Then the event is built, signed and authorised,
    // and the members' push rules evaluated, here on a read snapshot rather than in
    // the single writer, which uses them only if the room has not moved on (and builds
    // and evaluates again if it has). A failure here is left to the write to answer.
    let ahead = server.db.read_tx(|c| {
        if rooms::is_retry(c, room_id, &ev, &requester.device_id, txn_id)? {
            return Ok(rooms::Prepared::default());
        }
        server.rate_limit_requester(Action::Message, requester)?;
        let Ok(built) = rooms::prebuild(c, server, room_id, &ev, ts) else {
            // Not allowed as the room stands: nobody's rules are evaluated for it.
            return Ok(rooms::Prepared::default());
        };
        Ok(rooms::Prepared {
            push: crate::push::plan(c, room_id, &ev).ok().flatten(),
            built: Some(built),
        })
    })?;
    if let Some(built) = &ahead.built {
        built.wait_turn();
    }
    let appended = server.write(|tx| {
        if !rooms::is_retry(tx, room_id, &ev, &requester.device_id, txn_id)? {
            crate::relations::check_new_relation(tx, room_id, &ev.sender, &ev.kind, &ev.content)?;
        }
        rooms::append_prepared(tx, server, room_id, ev, txn, ts, ahead)
    })?;
    Ok(appended.event_id)
}

/// A state event (`PUT /rooms/{roomId}/state/{eventType}/{stateKey}`) from the
/// requester, at `ts` if given. Unchanged state creates nothing: the current event's id
/// is the answer.
pub async fn put_state(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    kind: String,
    state_key: String,
    mut content: Value,
    ts: Option<i64>,
) -> Result<String, Error> {
    if kind == "m.room.member" && !crate::membership::check_invitee(server, &state_key)? {
        return Err(Error::Forbidden(format!(
            "{state_key} is on another node: use /invite, /kick or /ban for them"
        )));
    }
    // The spec asks more of a canonical alias than the auth rules do: every alias must
    // exist and point to the room.
    if kind == "m.room.canonical_alias" && state_key.is_empty() {
        crate::directory::check_canonical_alias(server, room_id, &content).await?;
    }
    if kind == "m.room.topic" && state_key.is_empty() {
        rooms::add_rich_topic(&mut content);
    }
    let ev = NewEvent {
        kind,
        state_key: Some(state_key),
        content,
        sender: requester.user_id.clone(),
        redacts: None,
    };
    server.write(|tx| match rooms::unchanged_state(tx, room_id, &ev)? {
        Some(existing) => Ok(existing),
        None => {
            server.rate_limit_requester(Action::Message, requester)?;
            Ok(rooms::append_event_at(tx, server, room_id, ev, None, ts)?.event_id)
        }
    })
}

/// Redact `event_id` for the requester (`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`),
/// which must have sent it or have the power to redact.
pub fn redact(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    event_id: String,
    reason: Option<String>,
    txn_id: &str,
) -> Result<String, Error> {
    let allowed = server
        .db
        .read(|c| rooms::check_redaction_allowed(c, room_id, &requester.user_id, &event_id))?;
    if !allowed {
        return Err(Error::Forbidden("you may not redact this event".into()));
    }
    let mut content = serde_json::json!({});
    if let Some(reason) = reason {
        content["reason"] = serde_json::json!(reason);
    }
    let ev = NewEvent {
        kind: "m.room.redaction".into(),
        state_key: None,
        content,
        sender: requester.user_id.clone(),
        redacts: Some(event_id),
    };
    send(server, requester, room_id, ev, Some(txn_id))
}

/// Upgrade `room_id` to `new_version` for the requester (`POST /rooms/{roomId}/upgrade`,
/// the work is [`rooms::upgrade_room`]'s, in one write transaction). Counts as a room
/// creation for rate limits. Returns the new room's id.
pub fn upgrade_room(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    new_version: &str,
    additional_creators: &[String],
) -> Result<String, Error> {
    server.rate_limit_requester(Action::RoomCreation, requester)?;
    server.write(|c| {
        rooms::upgrade_room(
            c,
            server,
            &requester.user_id,
            room_id,
            new_version,
            additional_creators,
        )
    })
}
