//! Member events that follow the profile (the spec's "Events on change of profile
//! information"): when a user's display name or avatar changes, their join in every
//! room they are joined to is sent again with the new profile.

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;

/// Send the requester's member event again, with their current profile, in every room
/// they are joined to. One room refusing (its power levels, say) does not stop the
/// others: it is logged.
pub fn profile_changed(server: &Server, requester: &Requester) -> Result<(), Error> {
    let user_id = requester.user_id.as_str();
    let rooms = server
        .db
        .read(|c| storage::rooms_with_membership(c, user_id, "join"))?;
    for room_id in rooms {
        if let Err(e) = super::send_member_event(server, requester, &room_id, user_id, "join", None)
        {
            tracing::warn!(%room_id, error = %e, "could not update member event");
        }
    }
    Ok(())
}
