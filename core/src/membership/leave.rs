//! Leaving rooms (the spec's "Leaving rooms"), which also rejects an invite and
//! rescinds a knock.
//!
//! A room this node is in takes a local leave event. A pending invite to (or knock on)
//! a room this node is not in is rejected (rescinded) through the inviting server (the
//! server the knock went through), with the `make_leave`/`send_leave` handshake. A room
//! this node knows but no local user is joined to counts as not in: its state here is
//! stale (it stopped receiving the room's events when its last user left), and a leave
//! built on it would be refused by the auth rules. When no server answers, the invite
//! or knock is left locally, out of band (`rooms::leave_out_of_band`).

use std::sync::Arc;

use crate::error::Error;
use crate::requester::Requester;
use crate::rooms;
use crate::server::Server;

/// Make the requester leave `room_id` (reject an invite, rescind a knock), with an
/// optional reason. Returns the leave event's id.
pub async fn leave(
    server: &Arc<Server>,
    requester: &Requester,
    room_id: &str,
    reason: Option<String>,
) -> Result<String, Error> {
    let user_id = requester.user_id.as_str();
    let remote_via = if rooms::needs_remote_join(server, room_id)? {
        server
            .db
            .read(|c| rooms::membership_server(c, room_id, user_id))?
    } else {
        None
    };
    if let Some(via) = remote_via {
        return match rooms::leave_remote(server, room_id, user_id, vec![via]).await {
            Ok(id) => Ok(id),
            // Unreachable or refusing: the invite or knock is dropped here all the same
            // (see `rooms::leave_out_of_band`).
            Err(e) => {
                tracing::info!(%room_id, %user_id, error = %e, "remote leave failed; leaving out of band");
                rooms::leave_out_of_band(server, room_id, user_id, reason)
            }
        };
    }
    super::send_member_event(server, requester, room_id, user_id, "leave", reason)
}
