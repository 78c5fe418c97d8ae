//! Banning and unbanning (the spec's "Banning users in a room"): a `ban` member event,
//! and a `leave` one that lifts it, sent by the requester (the auth rules check their
//! power).

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;

/// The requester bans `user_id` from `room_id`.
pub fn ban(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    user_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    super::valid_user_id(user_id)?;
    super::send_member_event(server, requester, room_id, user_id, "ban", reason)
}

/// The requester lifts `user_id`'s ban from `room_id`. As a kick, it needs a membership
/// to end (Synapse answers 403 for a user with none).
pub fn unban(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    user_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    super::valid_user_id(user_id)?;
    if user_id != requester.user_id {
        super::kick::require_membership(server, room_id, user_id)?;
    }
    super::send_member_event(server, requester, room_id, user_id, "leave", reason)
}
