//! Inviting (the spec's "Inviting a user to a room"): a user of this node gets a local
//! invite event; a user of another node gets one their server has countersigned
//! (`rooms::invite_remote`, the federation invite handshake).

use std::sync::Arc;

use crate::error::Error;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::rooms;
use crate::server::Server;

/// The requester invites `user_id` into `room_id`.
pub async fn invite(
    server: &Arc<Server>,
    requester: &Requester,
    room_id: &str,
    user_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let local = super::check_invitee(server, user_id)?;
    server.rate_limit_requester(Action::Invite, requester)?;
    if !local {
        return rooms::invite_remote(server, room_id, &requester.user_id, user_id, reason).await;
    }
    super::send_member_event(server, requester, room_id, user_id, "invite", reason)
}
