//! Account lifecycle services: deactivation (`POST /account/deactivate` and the admin
//! API).

use std::sync::Arc;

use serde_json::json;

use crate::error::Error;
use crate::events::NewEvent;
use crate::server::Server;
use crate::storage;

/// Whether `l` is a valid user-id localpart (the historical lower-case set).
pub fn valid_localpart(l: &str) -> bool {
    !l.is_empty()
        && l.bytes().all(
            |b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+'),
        )
}

/// Deactivate a local account, as Synapse does: the account is marked deactivated and
/// loses its password (so `/login` answers `M_USER_DEACTIVATED`), every device, access
/// token and pusher goes, then the user leaves every room they are joined to, invited to or
/// knocking on (which also takes them out of the user directory, built from joined
/// memberships). `erase` clears the profile and records the erasure.
///
/// A room the user cannot leave (a failing remote leave) is logged and skipped: the
/// account is deactivated whatever happens to one room.
pub async fn deactivate(server: &Arc<Server>, user_id: &str, erase: bool) -> Result<(), Error> {
    let memberships = server.write(|c| {
        storage::deactivate_user(c, user_id)?;
        storage::delete_user_pushers(c, user_id)?;
        if erase {
            storage::set_erased(c, user_id)?;
            storage::set_displayname(c, user_id, None)?;
            storage::set_avatar_url(c, user_id, None)?;
        }
        storage::user_memberships(c, user_id)
    })?;
    server.initial_syncs.forget_user(user_id);
    for (room_id, membership, _, _) in memberships {
        if !matches!(membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        if let Err(e) = leave(server, &room_id, user_id).await {
            tracing::info!(%room_id, %user_id, error = %e, "deactivation: could not leave");
        }
    }
    Ok(())
}

async fn leave(server: &Arc<Server>, room_id: &str, user_id: &str) -> Result<(), Error> {
    // As `POST /rooms/{roomId}/leave` does: a room known here takes a local leave; a
    // pending invite or knock on a room this node is not in is rejected (rescinded)
    // through the server it came from (went through).
    let remote_via = server.db.read(|c| {
        if storage::room_info(c, room_id)?.is_some() {
            return Ok(None);
        }
        Ok(Some(crate::rooms::membership_server(c, room_id, user_id)?))
    })?;
    if let Some(via) = remote_via {
        if let Some(via) = via {
            crate::rooms::leave_remote(server, room_id, user_id, vec![via]).await?;
        }
        return Ok(());
    }
    let ev = NewEvent {
        kind: "m.room.member".into(),
        state_key: Some(user_id.to_owned()),
        content: json!({ "membership": "leave" }),
        sender: user_id.to_owned(),
        redacts: None,
    };
    server.write(|c| crate::rooms::append_event(c, server, room_id, ev, None))?;
    Ok(())
}
