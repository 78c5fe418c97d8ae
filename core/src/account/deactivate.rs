//! Deactivation (`POST /account/deactivate` and the admin API).

use std::sync::Arc;

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;

/// Deactivate a local account, as Synapse does: the account is marked deactivated and
/// loses its password (so `/login` answers `M_USER_DEACTIVATED`), every device, access
/// token and pusher goes, then the user leaves every room they are joined to, invited to or
/// knocking on (which also takes them out of the user directory, built from joined
/// memberships). `erase` clears the profile and records the erasure.
///
/// Each room is left as `POST /rooms/{roomId}/leave` leaves it (the membership service's
/// [`crate::membership::leave`]): a room this node is in with a local leave event, a
/// pending invite or knock on a room it is not in through the server it came from. The
/// node acts for the user, so no rate limit holds the leaves back. A room the user
/// cannot leave (a failing remote leave) is logged and skipped: the account is
/// deactivated whatever happens to one room.
pub async fn deactivate(server: &Arc<Server>, user_id: &str, erase: bool) -> Result<(), Error> {
    let memberships = server.write(|c| {
        storage::deactivate_user(c, user_id)?;
        super::devices::delete_all_devices_in(c, user_id)?;
        storage::delete_user_pushers(c, user_id)?;
        if erase {
            storage::set_erased(c, user_id)?;
            storage::set_displayname(c, user_id, None)?;
            storage::set_avatar_url(c, user_id, None)?;
        }
        storage::user_memberships(c, user_id)
    })?;
    server.sync.initial.forget_user(user_id);
    server.sync.rooms.forget_user(user_id);
    server.sync.sliding_rooms.forget_user(user_id);
    let requester = Requester::node_acting_for(user_id);
    for (room_id, membership, _, _) in memberships {
        if !matches!(membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        if let Err(e) = crate::membership::leave(server, &requester, &room_id, None).await {
            tracing::info!(%room_id, %user_id, error = %e, "deactivation: could not leave");
        }
    }
    Ok(())
}
