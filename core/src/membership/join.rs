//! Joining rooms (the spec's "Joining rooms"): a local event when a user of this node is
//! already in the room, the federation handshake (`rooms::join_remote`) otherwise.
//!
//! Joins of one room are serialised here, per room. Without that, several users of this
//! node joining a room it is not yet in would each run the remote handshake at once, and
//! each persist the resident's view of the room on top of the others'. Serialised, the
//! first join makes this node resident and the others become ordinary local joins, as
//! in Synapse.
//!
//! A join by a user who is already joined, with the same content, creates nothing and
//! answers with the current member event (Synapse does the same), so a client or bot
//! that joins on every start does not flood the room with member events.

use std::sync::Arc;

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::events::NewEvent;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::rooms::{self, JoinPolicy, check_join, join_content};
use crate::server::Server;
use crate::storage;

/// Join the requester to `room_id` with the client's `content` (a reason, custom keys),
/// through `via` when the room must be joined over federation. Returns the member event
/// id: the existing one when the user is already joined with this content.
pub async fn join(
    server: &Arc<Server>,
    requester: &Requester,
    room_id: &str,
    content: Map<String, Value>,
    via: Vec<String>,
) -> Result<String, Error> {
    server.rate_limit_requester(Action::Join, requester)?;
    join_room(server, &requester.user_id, room_id, content, via).await
}

/// [`join`] a room named by its id or an alias (resolved first, see
/// [`super::resolve_room`]). Returns the room id.
pub async fn join_by_id_or_alias(
    server: &Arc<Server>,
    requester: &Requester,
    target: String,
    content: Map<String, Value>,
    mut via: Vec<String>,
) -> Result<String, Error> {
    server.rate_limit_requester(Action::Join, requester)?;
    let room_id = super::resolve_room(server, target, &mut via).await?;
    join_room(server, &requester.user_id, &room_id, content, via).await?;
    Ok(room_id)
}

async fn join_room(
    server: &Arc<Server>,
    user_id: &str,
    room_id: &str,
    content: Map<String, Value>,
    mut via: Vec<String>,
) -> Result<String, Error> {
    if content.get("reason").is_some_and(|r| !r.is_string()) {
        return Err(Error::BadJson("reason must be a string".into()));
    }
    let _turn = server.joins.acquire(room_id).await?;
    if rooms::needs_remote_join(server, room_id)? {
        // Also through the server that invited us, then the room's joined servers as
        // last known, then the server in a v10/v11 room id.
        let (inviter, residents) = server.db.read(|c| {
            Ok((
                rooms::inviting_server(c, room_id, user_id)?,
                storage::joined_servers(c, room_id)?,
            ))
        })?;
        via.extend(inviter);
        via.extend(residents);
        if let Some((_, s)) = room_id.split_once(':') {
            via.push(s.to_owned());
        }
        let event_id = rooms::join_remote(server, room_id, user_id, content, via).await?;
        // The join stands whatever happens to the copy.
        if let Err(e) = server.write(|tx| rooms::copy_rules_from_predecessor(tx, room_id, user_id))
        {
            tracing::warn!(room_id, user_id, error = %e, "copying push rules after a join");
        }
        return Ok(event_id);
    }
    server.write(|tx| {
        let event_id = join_local(tx, server, room_id, user_id, content)?;
        if let Err(e) = rooms::copy_rules_from_predecessor(tx, room_id, user_id) {
            tracing::warn!(room_id, user_id, error = %e, "copying push rules after a join");
        }
        Ok(event_id)
    })
}

/// A join in a room this node is in, decided and written in one transaction.
fn join_local(
    tx: &Connection,
    server: &Server,
    room_id: &str,
    user_id: &str,
    content: Map<String, Value>,
) -> Result<String, Error> {
    let mut ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(user_id.to_owned()),
        content: Value::Object(join_content(tx, user_id, content)?),
        sender: user_id.to_owned(),
        redacts: None,
    };
    // Already joined with this content: nothing to send.
    if let Some(existing) = rooms::unchanged_state(tx, room_id, &ev)? {
        return Ok(existing);
    }
    // The join rule decides in the same transaction the event is built in; a restricted
    // room names a local user with power to invite (the auth rules check it).
    if let JoinPolicy::Authorised(via) = check_join(tx, server.server_name(), room_id, user_id)?
        && let Some(content) = ev.content.as_object_mut()
    {
        content.insert("join_authorised_via_users_server".into(), json!(via));
    }
    Ok(rooms::append_event(tx, server, room_id, ev, None)?.event_id)
}
