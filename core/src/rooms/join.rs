//! Joining a room, as `/join` asks: a local event when a user of this node is already in
//! the room, the federation handshake ([`join_remote`]) otherwise.
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

use super::remote_join::join_remote;
use super::restricted::{JoinPolicy, check_join};
use crate::error::Error;
use crate::events::NewEvent;
use crate::server::Server;
use crate::storage;

/// Most rooms with a join in flight at once (`Server::joins`); further joins of other
/// rooms get 429.
/// Joins are rate limited per user, so this only bites a node under a join storm.
pub const MAX_ROOMS_JOINING: usize = 1024;

/// Content keys this server sets itself; a client's `/join` body cannot override them.
const RESERVED_KEYS: &[&str] = &[
    "membership",
    "displayname",
    "avatar_url",
    "join_authorised_via_users_server",
    "third_party_invite",
    "third_party_signed",
];

/// Whether a join must go through another server: the room is unknown here, or no user
/// of this server is joined any more while users of other servers are.
pub fn needs_remote_join(server: &Server, room_id: &str) -> Result<bool, Error> {
    server.db.read(|c| {
        if storage::room_info(c, room_id)?.is_none() {
            return Ok(true);
        }
        let joined = storage::room_members(c, room_id, "join")?;
        let local = joined.iter().any(|u| server.is_local_user(u));
        Ok(!local && !joined.is_empty())
    })
}

/// Longest display name accepted, in characters (Synapse's limit).
pub const MAX_DISPLAYNAME_LEN: usize = 256;
/// Longest avatar URL accepted, in bytes (Synapse's limit).
pub const MAX_AVATAR_URL_LEN: usize = 1000;

/// The user's display name and avatar as member events carry them. Values over the
/// limits (stored before the limits existed) are left out, so no profile field can make
/// a member event too large to sign or for peers to accept.
pub fn member_profile(
    c: &Connection,
    user_id: &str,
) -> Result<(Option<String>, Option<String>), Error> {
    let (displayname, avatar_url) = storage::profile(c, user_id)?.unwrap_or((None, None));
    Ok((
        displayname.filter(|d| d.chars().count() <= MAX_DISPLAYNAME_LEN),
        avatar_url.filter(|a| a.len() <= MAX_AVATAR_URL_LEN),
    ))
}

/// The member content a join by `user_id` carries: the client's own keys (a reason,
/// custom keys), then the user's profile and `membership`, which the client cannot set.
pub fn join_content(
    c: &Connection,
    user_id: &str,
    mut content: Map<String, Value>,
) -> Result<Map<String, Value>, Error> {
    content.retain(|k, _| !RESERVED_KEYS.contains(&k.as_str()));
    content.insert("membership".into(), json!("join"));
    let (displayname, avatar_url) = member_profile(c, user_id)?;
    if let Some(d) = displayname {
        content.insert("displayname".into(), json!(d));
    }
    if let Some(a) = avatar_url {
        content.insert("avatar_url".into(), json!(a));
    }
    Ok(content)
}

/// Join local user `user_id` to `room_id` with the client's `content` (reason, custom
/// keys), through `via` when the room must be joined over federation. Returns the
/// member event id: the existing one when the user is already joined with this content.
pub async fn join(
    server: &Arc<Server>,
    user_id: &str,
    room_id: &str,
    content: Map<String, Value>,
    mut via: Vec<String>,
) -> Result<String, Error> {
    let _turn = server.joins.acquire(room_id).await?;
    if needs_remote_join(server, room_id)? {
        // Also through the server that invited us, then the room's joined servers as
        // last known, then the server in a v10/v11 room id.
        let (inviter, residents) = server.db.read(|c| {
            Ok((
                super::inviting_server(c, room_id, user_id)?,
                storage::joined_servers(c, room_id)?,
            ))
        })?;
        via.extend(inviter);
        via.extend(residents);
        if let Some((_, s)) = room_id.split_once(':') {
            via.push(s.to_owned());
        }
        let event_id = join_remote(server, room_id, user_id, content, via).await?;
        // The join stands whatever happens to the copy.
        if let Err(e) =
            server.write(|tx| super::upgrade::copy_rules_from_predecessor(tx, room_id, user_id))
        {
            tracing::warn!(room_id, user_id, error = %e, "copying push rules after a join");
        }
        return Ok(event_id);
    }
    server.write(|tx| {
        let event_id = join_local(tx, server, room_id, user_id, content)?;
        if let Err(e) = super::upgrade::copy_rules_from_predecessor(tx, room_id, user_id) {
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
    if let Some(existing) = super::unchanged_state(tx, room_id, &ev)? {
        return Ok(existing);
    }
    // The join rule decides in the same transaction the event is built in; a restricted
    // room names a local user with power to invite (the auth rules check it).
    if let JoinPolicy::Authorised(via) = check_join(tx, server.server_name(), room_id, user_id)?
        && let Some(content) = ev.content.as_object_mut()
    {
        content.insert("join_authorised_via_users_server".into(), json!(via));
    }
    Ok(super::append_event(tx, server, room_id, ev, None)?.event_id)
}
