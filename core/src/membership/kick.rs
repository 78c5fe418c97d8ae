//! Kicking (the spec's "Kicking"): a leave event for another member, sent by the
//! requester (the auth rules check their power).

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;

/// The requester kicks `user_id` out of `room_id` (a "kick" of oneself is a leave).
pub fn kick(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    user_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    super::valid_user_id(user_id)?;
    // A kick needs someone to kick (Synapse: 403 for a user who left or was never
    // there).
    if user_id != requester.user_id {
        require_membership(server, room_id, user_id)?;
    }
    super::send_member_event(server, requester, room_id, user_id, "leave", reason)
}

/// Refuse (403) a kick or unban of a user with no membership to end.
pub(super) fn require_membership(
    server: &Server,
    room_id: &str,
    user_id: &str,
) -> Result<(), Error> {
    let current = super::current_membership(server, room_id, user_id)?;
    if !matches!(
        current.as_deref(),
        Some("join" | "invite" | "knock" | "ban")
    ) {
        return Err(Error::Forbidden(format!("{user_id} is not in the room")));
    }
    Ok(())
}
