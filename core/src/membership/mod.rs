//! The membership service: joining, leaving, inviting, knocking, kicking, banning,
//! unbanning and forgetting, and the member events that follow a profile change, for a
//! local user, in rooms this node is in or not.
//!
//! Every entry point goes through here: the client API's membership and room handlers,
//! account deactivation (`crate::account`, used by `/account/deactivate` and the admin
//! API), room creation's invites. Each operation decides once whether it is a local
//! event or the federation handshake with a server in the room (`rooms::join_remote`,
//! `rooms::leave_remote`, `rooms::invite_remote`, `rooms::knock_remote`), so the entry
//! points cannot drift apart. One file per operation, named after the spec's sections.
//!
//! A service call acts for a [`Requester`]: rate limits apply to it unless it is exempt
//! (an unlimited application service, the node itself).

mod ban;
mod forget;
mod invite;
mod join;
mod kick;
mod knock;
mod leave;
mod profile;

use rusqlite::Connection;
use serde_json::json;

pub use ban::{ban, unban};
pub use forget::forget;
pub use invite::invite;
pub use join::{join, join_by_id_or_alias};
pub use kick::kick;
pub use knock::knock;
pub use leave::leave;
pub use profile::profile_changed;

use crate::error::Error;
use crate::events::NewEvent;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;

/// A user id a membership may name: the spec's grammar, historical ids included (an
/// empty localpart, or one outside printable ASCII, is refused: peers would drop the
/// event).
pub fn valid_user_id(user_id: &str) -> Result<ruma::OwnedUserId, Error> {
    ruma::UserId::parse(user_id)
        .ok()
        .filter(|u| u.validate_historical().is_ok())
        .ok_or_else(|| Error::InvalidParam(format!("{user_id} is not a valid user id")))
}

/// A valid user id to invite: `true` for a user of this node, `false` for another's.
/// Users of other nodes can be invited through [`invite`] only (which speaks the
/// federation invite protocol); other places that invite refuse them.
pub fn check_invitee(server: &Server, user_id: &str) -> Result<bool, Error> {
    let parsed = valid_user_id(user_id)?;
    Ok(parsed.server_name().as_str() == server.server_name())
}

/// A room id, or the room an alias names (asking the alias's server when it is not
/// ours, whose answer adds to `via`).
pub async fn resolve_room(
    server: &Server,
    target: String,
    via: &mut Vec<String>,
) -> Result<String, Error> {
    if target.starts_with('#') {
        let alias = ruma::RoomAliasId::parse(&target)
            .map_err(|e| Error::InvalidParam(format!("invalid room alias {target:?}: {e}")))?;
        let alias_server = alias.server_name().as_str();
        if alias_server == server.server_name() {
            server
                .db
                .read(|c| storage::alias_room(c, &target))?
                .ok_or_else(|| Error::NotFound(format!("room alias {target} not found")))
        } else {
            let (room_id, servers) = crate::directory::query_remote_alias(server, &alias).await?;
            via.push(alias_server.to_owned());
            via.extend(servers);
            Ok(room_id)
        }
    } else if target.starts_with('!') && ruma::RoomId::parse(&target).is_ok() {
        Ok(target)
    } else {
        Err(Error::InvalidParam("expected a room id or alias".into()))
    }
}

/// The member event `sender` sends to give `target` the `membership`: a join or knock
/// carries the target's display name and avatar (read in the write's transaction), any
/// event the reason given.
fn member_event(
    c: &Connection,
    sender: &str,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<NewEvent, Error> {
    let mut content = json!({"membership": membership});
    if membership == "join" || membership == "knock" {
        let (displayname, avatar_url) = crate::rooms::member_profile(c, target)?;
        if let Some(d) = displayname {
            content["displayname"] = json!(d);
        }
        if let Some(a) = avatar_url {
            content["avatar_url"] = json!(a);
        }
    }
    if let Some(r) = reason {
        content["reason"] = json!(r);
    }
    Ok(NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(target.to_owned()),
        content,
        sender: sender.to_owned(),
        redacts: None,
    })
}

/// Send the member event giving `target` the `membership` in a room this node is in,
/// as the requester; it counts against the requester's message rate limit, as any
/// event a client sends.
fn send_member_event(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    target: &str,
    membership: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let appended = server.write(|tx| {
        let ev = member_event(tx, &requester.user_id, target, membership, reason)?;
        server.rate_limit_requester(Action::Message, requester)?;
        crate::rooms::append_event(tx, server, room_id, ev, None)
    })?;
    Ok(appended.event_id)
}

/// The current membership of `user_id` in `room_id`, as this node knows it.
fn current_membership(
    server: &Server,
    room_id: &str,
    user_id: &str,
) -> Result<Option<String>, Error> {
    Ok(server
        .db
        .read(|c| storage::membership(c, room_id, user_id))?
        .map(|(m, _, _)| m))
}
