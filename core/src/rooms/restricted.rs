//! Who may join a room, as the server decides before building or accepting a join:
//! the join rule, and for restricted rooms (`restricted`, `knock_restricted`, room
//! versions 8+ and 10+) the allow conditions and the local user that authorises the join
//! (`join_authorised_via_users_server`).
//!
//! The auth rules then check the authorising user (joined, with power to invite) and the
//! signature of its server; what they cannot check is whether the joining user satisfies
//! an allow condition. That is the resident server's word, given here.

use ruma::CanonicalJsonValue;
use ruma::signatures::sign_event;
use rusqlite::Connection;
use serde_json::Value;

use super::power::power_levels;
use super::receive::check_pdu;
use crate::error::Error;
use crate::events::rules_for;
use crate::server::Server;
use crate::storage;

/// The outcome of [`check_join`] for a user allowed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinPolicy {
    /// Public room, or the user is invited or already joined: no authorisation needed.
    Open,
    /// A restricted room the user may join through an allowed room; the join must name
    /// this local user in `join_authorised_via_users_server`.
    Authorised(String),
}

/// The room's current `m.room.join_rules` content (`null` when it has none).
fn join_rules_content(c: &Connection, room_id: &str) -> Result<Value, Error> {
    let Some(id) = storage::current_state_event(c, room_id, "m.room.join_rules", "")? else {
        return Ok(Value::Null);
    };
    Ok(storage::get_state_event(c, &id)?
        .and_then(|e| serde_json::from_str::<Value>(&e.json).ok())
        .map(|v| v["content"].clone())
        .unwrap_or(Value::Null))
}

/// The room ids of the `m.room_membership` allow conditions.
fn allowed_rooms(join_rules: &Value) -> Vec<String> {
    join_rules["allow"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|r| r["type"] == "m.room_membership")
                .filter_map(|r| r["room_id"].as_str())
                .filter(|r| ruma::RoomId::parse(r).is_ok())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `user_id` may join `room_id` by the room's join rule, as this server
/// (`server_name`) sees it, and which local user authorises a restricted join.
///
/// Errors, as the spec names them for `make_join`: `403 M_FORBIDDEN` when the rule does
/// not let the user in (banned, invite-only, in none of the allowed rooms);
/// `400 M_UNABLE_TO_AUTHORISE_JOIN` when this server is in none of the allowed rooms
/// and so cannot tell (never for a local user: their memberships are all known here);
/// `400 M_UNABLE_TO_GRANT_JOIN` when the user qualifies but no local user may invite.
pub fn check_join(
    c: &Connection,
    server_name: &str,
    room_id: &str,
    user_id: &str,
) -> Result<JoinPolicy, Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Err(Error::NotFound(format!("room {room_id} is not known here")));
    };
    let (_, rules) = rules_for(&version)?;
    let current = storage::membership(c, room_id, user_id)?.map(|(m, _, _)| m);
    if current.as_deref() == Some("ban") {
        return Err(Error::Forbidden(format!(
            "{user_id} is banned from {room_id}"
        )));
    }
    let invited = matches!(current.as_deref(), Some("invite") | Some("join"));
    let join_rules = join_rules_content(c, room_id)?;
    let join_rule = join_rules["join_rule"].as_str().unwrap_or("invite");
    let restricted = (join_rule == "restricted" && rules.authorization.restricted_join_rule)
        || (join_rule == "knock_restricted" && rules.authorization.knock_restricted_join_rule);
    match join_rule {
        "public" => return Ok(JoinPolicy::Open),
        _ if invited => return Ok(JoinPolicy::Open),
        _ if restricted => {}
        other => {
            return Err(Error::Forbidden(format!(
                "the room's join rule is {other:?} and {user_id} is not invited"
            )));
        }
    }
    let allowed = allowed_rooms(&join_rules);
    let mut qualifies = false;
    let mut known = false;
    for room in &allowed {
        if storage::membership(c, room, user_id)?.is_some_and(|(m, _, _)| m == "join") {
            qualifies = true;
            break;
        }
        // A room's memberships are only known while this server is in it.
        known = known
            || storage::joined_servers(c, room)?
                .iter()
                .any(|s| s == server_name);
    }
    let is_local = user_id
        .rsplit_once(':')
        .is_some_and(|(_, s)| s == server_name);
    if !qualifies {
        if !known && !is_local {
            return Err(Error::UnableToAuthoriseJoin(format!(
                "this server is in none of the rooms that allow joining {room_id}"
            )));
        }
        return Err(Error::Forbidden(format!(
            "{user_id} is not invited to {room_id} and is not a member of any room its \
             join rule allows ({})",
            allowed.join(", ")
        )));
    }
    match authoriser(c, server_name, room_id)? {
        Some(u) => Ok(JoinPolicy::Authorised(u)),
        None => Err(Error::UnableToGrantJoin(format!(
            "no user of this server in {room_id} may invite; try another server"
        ))),
    }
}

/// A local user joined to `room_id` with power to invite: the most powerful, then the
/// smallest user id, so the choice is stable.
fn authoriser(c: &Connection, server_name: &str, room_id: &str) -> Result<Option<String>, Error> {
    let power = power_levels(c, room_id)?;
    let needed = power.threshold("invite");
    let suffix = format!(":{server_name}");
    Ok(storage::room_members(c, room_id, "join")?
        .into_iter()
        .filter(|u| u.ends_with(&suffix))
        .map(|u| (power.user_level(&u), u))
        .filter(|(level, _)| *level >= needed)
        .min_by(|(la, ua), (lb, ub)| lb.cmp(la).then_with(|| ua.cmp(ub)))
        .map(|(_, u)| u))
}

/// The local user a join names in `join_authorised_via_users_server`, if any; an error
/// when it names a user of another server (its signature cannot be had here) or is not
/// a user id.
pub fn local_authoriser(content: &Value, server_name: &str) -> Result<Option<String>, Error> {
    let Some(v) = content.get("join_authorised_via_users_server") else {
        return Ok(None);
    };
    let user = v
        .as_str()
        .and_then(|s| ruma::UserId::parse(s).ok())
        .ok_or_else(|| {
            Error::BadJson("join_authorised_via_users_server is not a user id".into())
        })?;
    if user.server_name().as_str() != server_name {
        return Err(Error::Forbidden(format!(
            "the join is authorised via {user}, a user of another server"
        )));
    }
    Ok(Some(user.to_string()))
}

/// The resident's side of a restricted join in `send_join`: add this server's signature
/// (the authorising user's server must sign, and the room checks it), then check every
/// signature the event now needs (the joining server's and ours) and its content hash,
/// so nothing we did not check goes out signed by us. Returns the signed event.
pub fn countersign_join(
    server: &Server,
    room_id: &str,
    version: &str,
    pdu: Value,
) -> Result<Value, Error> {
    let (_, rules) = rules_for(version)?;
    let mut object = match CanonicalJsonValue::try_from(pdu) {
        Ok(CanonicalJsonValue::Object(o)) => o,
        _ => {
            return Err(Error::BadJson(
                "the join is not a canonical JSON object".into(),
            ));
        }
    };
    object.remove("unsigned");
    sign_event(
        server.server_name(),
        server.identity.keypair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(|e| Error::BadJson(format!("cannot sign the join: {e}")))?;
    let signed = serde_json::to_string(&object)?;
    let checked = check_pdu(serde_json::from_str(&signed)?, room_id, &rules)
        .map_err(|(_, reason)| Error::Forbidden(format!("the join is refused: {reason}")))?;
    // `check_pdu` keeps a redacted copy when the content hash fails; we sign only whole
    // events.
    if checked.json != signed {
        return Err(Error::Forbidden("the join fails its content hash".into()));
    }
    Ok(serde_json::from_str(&signed)?)
}
