//! The resident side of membership over federation: accepting the join, leave or knock
//! another server's user signed (`send_join`, `send_leave`, `send_knock`), and what a
//! joining server is answered.

use super::*;
use crate::federation::remote::FederationRemote;
use crate::rooms::{Outcome, receive_pdu};

/// Accept a signed `membership` event (join, leave or knock) that a user of `origin`
/// sent for `room`, with the id `id`: it must be the user's own membership, with the
/// same policy as the template (`make_join`, `make_knock`); a restricted join must name
/// one of our users and gets our signature. It then goes through the ordinary receipt
/// checks ([`receive_pdu`]: signatures, hashes, auth against its auth events and the
/// room state), must end in the timeline, and is queued for the room's other servers.
/// Returns its id.
pub async fn accept_membership(
    server: &Arc<Server>,
    origin: &str,
    room: &str,
    id: &str,
    pdu: Value,
    membership: &str,
) -> Result<String, Error> {
    let Some((version, _)) = server.db.read(|c| storage::room_info(c, room))? else {
        return Err(Error::NotFound(format!("room {room} is not known here")));
    };
    server
        .db
        .read(|c| crate::federation::visible::check_server_acl(c, room, origin))?;
    if pdu.get("type").and_then(Value::as_str) != Some("m.room.member")
        || pdu.get("room_id").and_then(Value::as_str) != Some(room)
    {
        return Err(Error::BadJson(format!("not a membership event of {room}")));
    }
    let sender = pdu
        .get("sender")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let sender = sender.as_str();
    if pdu.get("state_key").and_then(Value::as_str) != Some(sender) {
        return Err(Error::BadJson("state_key must be the sender".into()));
    }
    if pdu["content"]["membership"].as_str() != Some(membership) {
        return Err(Error::BadJson(format!("membership must be {membership}")));
    }
    if server_of(sender) != Some(origin) {
        return Err(Error::Forbidden(format!(
            "{sender} is not a user of the requesting server {origin}"
        )));
    }
    let computed = crate::rooms::event_id_of(&pdu, &version)?;
    if computed != id {
        return Err(Error::BadJson(format!(
            "the event's id is {computed}, not {id}"
        )));
    }
    let mut pdu = pdu;
    if membership == "knock" {
        // The same policy as make_knock (the auth rules would also refuse, but as a
        // rejected event rather than a clear answer).
        server.db.read_tx(|c| {
            crate::rooms::membership_template(c, server.server_name(), room, sender, membership)
        })?;
    } else if membership == "join" {
        // The same policy as make_join; a restricted join must name one of our users,
        // and we sign it (our word that the user is in an allowed room).
        let policy = server
            .db
            .read_tx(|c| crate::rooms::check_join(c, server.server_name(), room, sender))?;
        let via = crate::rooms::local_authoriser(&pdu["content"], server.server_name())?;
        match (policy, via) {
            (crate::rooms::JoinPolicy::Authorised(_), None) => {
                return Err(Error::Forbidden(format!(
                    "{room} is restricted: the join must name a user of this server in \
                     join_authorised_via_users_server"
                )));
            }
            (_, Some(_)) => pdu = crate::rooms::countersign_join(server, room, &version, pdu)?,
            (crate::rooms::JoinPolicy::Open, None) => {}
        }
    }
    let remote = FederationRemote::new(server.clone());
    let event_id = match receive_pdu(server, &remote, origin, room, pdu).await? {
        Outcome::Accepted { event_id, .. } | Outcome::AlreadyKnown { event_id } => event_id,
        Outcome::Rejected { reason, .. } => {
            return Err(Error::Forbidden(format!(
                "the {membership} event was rejected: {reason}"
            )));
        }
        Outcome::SoftFailed { .. } => {
            return Err(Error::Forbidden(format!(
                "the {membership} event fails auth against the room's current state"
            )));
        }
        Outcome::Outlier { .. } => {
            return Err(Error::BadJson(format!(
                "the {membership} event's prev_events are unknown here"
            )));
        }
    };
    forward(server, room, &event_id, origin)?;
    Ok(event_id)
}

/// Queue an accepted event for the room's other servers (not the one that sent it).
fn forward(server: &Server, room: &str, event_id: &str, origin: &str) -> Result<(), Error> {
    server.write(|c| {
        let destinations: Vec<String> = storage::joined_servers(c, room)?
            .into_iter()
            .filter(|s| s != server.server_name() && s != origin)
            .collect();
        if !destinations.is_empty() {
            storage::enqueue_pdu(c, &destinations, event_id)?;
        }
        Ok(())
    })
}

/// What `send_join` answers besides the server name.
pub struct JoinAnswer {
    /// The room state before the join.
    pub state: Vec<Value>,
    /// Its auth chain.
    pub auth_chain: Vec<Value>,
    /// The join as stored (with our signature on a restricted join).
    pub event: Value,
    /// The servers in the room, sorted.
    pub servers: Vec<String>,
}

/// The answer to a `send_join` whose join `event_id` was accepted.
pub fn join_answer(server: &Server, room: &str, event_id: &str) -> Result<JoinAnswer, Error> {
    server.db.read_tx(|c| {
        let (state, auth_chain) = state_and_auth_chain_before(c, event_id)?;
        let event = storage::get_event(c, event_id)?
            .map(|e| serde_json::from_str::<Value>(&e.json))
            .transpose()?
            .unwrap_or(Value::Null);
        let mut servers = storage::joined_servers(c, room)?;
        servers.sort();
        Ok(JoinAnswer {
            state,
            auth_chain,
            event,
            servers,
        })
    })
}
