//! Knocking (the spec's "Knocking on rooms"): asking to be invited into a room whose
//! join rule is `knock` or `knock_restricted`. A room this node is in takes the knock as
//! a local event; otherwise it goes over federation (`rooms::knock_remote`) through
//! `via`, the alias's server, the room's last known servers and the server in the room
//! id.

use std::sync::Arc;

use crate::error::Error;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::rooms;
use crate::server::Server;
use crate::storage;

/// The requester knocks on the room `target` names (an id or an alias). Returns the
/// room id.
pub async fn knock(
    server: &Arc<Server>,
    requester: &Requester,
    target: String,
    reason: Option<String>,
    mut via: Vec<String>,
) -> Result<String, Error> {
    server.rate_limit_requester(Action::Join, requester)?;
    let room_id = super::resolve_room(server, target, &mut via).await?;
    let user_id = requester.user_id.as_str();
    if rooms::needs_remote_join(server, &room_id)? {
        let residents = server.db.read(|c| storage::joined_servers(c, &room_id))?;
        via.extend(residents);
        if let Some((_, s)) = room_id.split_once(':') {
            via.push(s.to_owned());
        }
        rooms::knock_remote(server, &room_id, user_id, reason.as_deref(), via).await?;
        return Ok(room_id);
    }
    server.db.read(|c| {
        let current = storage::membership(c, &room_id, user_id)?.map(|(m, _, _)| m);
        rooms::check_knock_allowed(c, &room_id, user_id, current.as_deref())
    })?;
    super::send_member_event(server, requester, &room_id, user_id, "knock", reason)?;
    Ok(room_id)
}
