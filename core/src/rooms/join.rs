//! What a join is made of: whether it must go through another server
//! ([`needs_remote_join`]), the member content it carries ([`join_content`]) and the
//! profile in it. The join itself, local or over federation, is the membership
//! service's (`crate::membership::join`).

use rusqlite::Connection;
use serde_json::{Map, Value, json};

use crate::error::Error;
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
