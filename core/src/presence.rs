//! Presence (spec: client-server "Presence", server-server `m.presence`).
//!
//! A local user is `online` while a client syncs (unless it syncs with
//! `set_presence=offline` or `unavailable`) or after `PUT /presence/{userId}/status`;
//! after [`IDLE_AFTER`] without activity a sweep turns them `unavailable`, as Synapse
//! does. Each significant change (state, status message, currently-active) takes a
//! stream position, so `/sync` reports it to the user and to everyone sharing a room,
//! and is sent as an `m.presence` EDU to every other server sharing a room with the user.
//! Activity alone only refreshes `last_active_ts` (at most every
//! [`ACTIVITY_GRANULARITY`]), so a syncing client does not wake everyone up.
//!
//! Remote presence arrives in `m.presence` EDUs and is accepted only for users of the
//! sending server who share a room with a local user. Presence of a user who shares
//! none yet is held back (bounded: `storage::MAX_PENDING_PRESENCE` rows, ten minutes):
//! the server that stored a join sends its members' presence at once, often before the
//! joining node has stored the join itself; the join places it ([`on_join`]).

use std::time::Duration;

use rusqlite::Connection;
use serde_json::{Value, json};

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, PresenceRow, next_stream_position, now_ms};

/// After this long without activity an `online` user becomes `unavailable`.
pub const IDLE_AFTER: Duration = Duration::from_secs(5 * 60);
/// Activity is recorded at most this often per user (a write on the `/sync` path).
pub const ACTIVITY_GRANULARITY: Duration = Duration::from_secs(60);
/// How often the idle sweep runs.
pub const SWEEP_EVERY: Duration = Duration::from_secs(30);
/// Longest status message kept.
const MAX_STATUS_MSG: usize = 1024;
/// Most presence updates taken from one `m.presence` EDU.
const MAX_PUSH: usize = 1000;
/// Most presence events in one `/sync` response.
const MAX_SYNC_EVENTS: usize = 500;

/// The presence states the spec defines.
pub fn valid_state(state: &str) -> bool {
    matches!(state, "online" | "unavailable" | "offline")
}

/// A status message as given: `None` keeps the current one.
pub type StatusUpdate = Option<Option<String>>;

/// Set a local user's presence (`PUT /presence/{userId}/status`). Setting `online`
/// counts as activity.
pub fn set(
    server: &Server,
    user_id: &str,
    state: &str,
    status_msg: StatusUpdate,
) -> Result<(), Error> {
    if !valid_state(state) {
        return Err(Error::InvalidParam(format!("invalid presence {state}")));
    }
    if let Some(Some(msg)) = &status_msg
        && msg.len() > MAX_STATUS_MSG
    {
        return Err(Error::InvalidParam(format!(
            "status_msg is longer than {MAX_STATUS_MSG} bytes"
        )));
    }
    let now = now_ms();
    server.write(|tx| {
        let old = storage::presence(tx, user_id)?;
        let status_msg = match status_msg {
            Some(s) => s,
            None => old.as_ref().and_then(|o| o.status_msg.clone()),
        };
        let last_active_ts = match (state, &old) {
            ("online", _) | (_, None) => now,
            (_, Some(o)) => o.last_active_ts,
        };
        let new = PresenceRow {
            user_id: user_id.to_owned(),
            state: state.to_owned(),
            status_msg,
            last_active_ts,
            currently_active: state == "online",
            stream_ordering: 0,
        };
        change(tx, server, old.as_ref(), new, now)
    })
}

/// Record that a local user's client synced with `set_presence` (`None`: online).
/// Cheap when nothing changes: one primary-key read, and a write at most once a minute.
pub fn on_sync(server: &Server, user_id: &str, set_presence: Option<&str>) -> Result<(), Error> {
    let state = match set_presence.unwrap_or("online") {
        // "Do not mark me online": leave presence as it is.
        "offline" => return Ok(()),
        s => s,
    };
    let now = now_ms();
    let old = server.db.read(|c| storage::presence(c, user_id))?;
    if let Some(o) = &old
        && o.state == state
        && (state != "online"
            || (o.currently_active
                && now - o.last_active_ts < ACTIVITY_GRANULARITY.as_millis() as i64))
    {
        return Ok(());
    }
    if let Some(o) = &old
        && o.state == state
        && state == "online"
        && o.currently_active
    {
        // Only the activity time moved: no new position, nobody woken.
        return server
            .db
            .write(|tx| storage::touch_presence(tx, user_id, now));
    }
    server.write(|tx| {
        let old = storage::presence(tx, user_id)?;
        let new = PresenceRow {
            user_id: user_id.to_owned(),
            state: state.to_owned(),
            status_msg: old.as_ref().and_then(|o| o.status_msg.clone()),
            last_active_ts: if state == "online" {
                now
            } else {
                old.as_ref().map_or(now, |o| o.last_active_ts)
            },
            currently_active: state == "online",
            stream_ordering: 0,
        };
        change(tx, server, old.as_ref(), new, now)
    })
}

/// Store `new` (with a new stream position) when it differs significantly from `old`,
/// and queue an `m.presence` EDU for the other servers sharing a room with the user.
fn change(
    tx: &Connection,
    server: &Server,
    old: Option<&PresenceRow>,
    mut new: PresenceRow,
    now: i64,
) -> Result<(), Error> {
    let significant = old.is_none_or(|o| {
        o.state != new.state
            || o.status_msg != new.status_msg
            || o.currently_active != new.currently_active
    });
    if !significant {
        return storage::touch_presence(tx, &new.user_id, new.last_active_ts);
    }
    new.stream_ordering = next_stream_position(tx)?;
    storage::set_presence(tx, &new)?;
    let own = server.server_name();
    let edu = json!({
        "edu_type": "m.presence",
        "content": { "push": [edu_entry(&new, now)] },
    });
    for destination in storage::servers_sharing_rooms(tx, &new.user_id)? {
        if destination != own {
            storage::enqueue_edu(tx, &destination, &edu)?;
        }
    }
    Ok(())
}

fn edu_entry(p: &PresenceRow, now: i64) -> Value {
    let mut e = json!({
        "user_id": p.user_id,
        "presence": p.state,
        "last_active_ago": (now - p.last_active_ts).max(0),
        "currently_active": p.currently_active,
    });
    if let Some(msg) = &p.status_msg {
        e["status_msg"] = json!(msg);
    }
    e
}

/// Most presence entries sent to a server that newly joins a room.
const MAX_ON_JOIN: usize = 100;

/// A user joined `room_id` (called in the write transaction that records it): the
/// servers that did not share the room yet need the current presence. A local user's
/// presence goes to the room's other servers; for a remote user whose server is new to
/// the room, the presence of the room's local members goes to that server. (Synapse
/// does the same.) The sender is woken once the write commits (`storage::effects`).
pub fn on_join(c: &Connection, room_id: &str, user_id: &str) -> Result<(), Error> {
    let Some((_, user_server)) = user_id.rsplit_once(':') else {
        return Ok(());
    };
    let now = now_ms();
    let local = storage::user_exists(c, user_id)?;
    place_held(c, room_id, user_id, local, now)?;
    if local {
        let Some(p) = storage::presence(c, user_id)? else {
            return Ok(());
        };
        let edu = json!({ "edu_type": "m.presence", "content": { "push": [edu_entry(&p, now)] } });
        for destination in storage::joined_servers(c, room_id)? {
            if destination != user_server {
                storage::enqueue_edu(c, &destination, &edu)?;
            }
        }
        return Ok(());
    }
    let members = storage::joined_members(c, room_id)?;
    let suffix = format!(":{user_server}");
    if members.iter().any(|m| m != user_id && m.ends_with(&suffix)) {
        // The server is in the room already and has been told.
        return Ok(());
    }
    let mut push = Vec::new();
    for member in &members {
        if push.len() >= MAX_ON_JOIN {
            break;
        }
        if storage::user_exists(c, member)?
            && let Some(p) = storage::presence(c, member)?
        {
            push.push(edu_entry(&p, now));
        }
    }
    if !push.is_empty() {
        let edu = json!({ "edu_type": "m.presence", "content": { "push": push } });
        storage::enqueue_edu(c, user_server, &edu)?;
    }
    Ok(())
}

/// Place presence held back by [`receive`] whose user now shares `room_id` with a local
/// user: every held member of the room when a local user joins, the joining user when a
/// remote one joins a room with local members.
fn place_held(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    local: bool,
    now: i64,
) -> Result<(), Error> {
    let users = if local {
        storage::pending_presence_in_room(c, room_id)?
    } else if storage::has_pending_presence(c, user_id)?
        && !storage::joined_local_members(c, room_id)?.is_empty()
    {
        vec![user_id.to_owned()]
    } else {
        return Ok(());
    };
    for user in users {
        if let Some(p) = storage::take_pending_presence(c, &user, now)? {
            let p = PresenceRow {
                stream_ordering: next_stream_position(c)?,
                ..p
            };
            storage::set_presence(c, &p)?;
        }
    }
    Ok(())
}

/// Turn local users idle for [`IDLE_AFTER`] `unavailable`; returns how many. Run by the
/// node every [`SWEEP_EVERY`].
pub fn sweep_idle(server: &Server, now: i64) -> Result<usize, Error> {
    let cutoff = now - IDLE_AFTER.as_millis() as i64;
    let own = server.server_name().to_owned();
    let idle = server
        .db
        .read(|c| storage::idle_online_users(c, &own, cutoff))?;
    if idle.is_empty() {
        return Ok(0);
    }
    server.write(|tx| {
        let mut n = 0;
        for old in &idle {
            // Re-read inside the transaction: the user may have synced meanwhile.
            let Some(current) = storage::presence(tx, &old.user_id)? else {
                continue;
            };
            if current.state != "online" || current.last_active_ts >= cutoff {
                continue;
            }
            let new = PresenceRow {
                state: "unavailable".into(),
                currently_active: false,
                ..current.clone()
            };
            change(tx, server, Some(&current), new, now)?;
            n += 1;
        }
        Ok(n)
    })
}

/// The `content` of a presence event for `p` at `now`.
pub fn content(p: &PresenceRow, now: i64) -> Value {
    let mut c = json!({
        "presence": p.state,
        "last_active_ago": (now - p.last_active_ts).max(0),
        "currently_active": p.currently_active && p.state == "online",
    });
    if let Some(msg) = &p.status_msg {
        c["status_msg"] = json!(msg);
    }
    c
}

/// `GET /presence/{userId}/status`: the caller may see their own presence and that of
/// users they share a room with (`403` otherwise, as Synapse). A user with no presence
/// recorded is `offline`.
pub fn get(c: &Connection, caller: &str, user_id: &str) -> Result<Value, Error> {
    if !storage::shares_room_or_self(c, caller, user_id)? {
        return Err(Error::Forbidden(
            "you are not allowed to see their presence".into(),
        ));
    }
    Ok(match storage::presence(c, user_id)? {
        Some(p) => content(&p, now_ms()),
        None => json!({ "presence": "offline" }),
    })
}

/// `/sync` `presence.events`: changes in `(after, up_to]` of the user and of users
/// sharing a room (on an initial sync, `after` is 0: everyone's current presence), and
/// the current presence of users who started sharing a room in that window.
pub fn for_sync(
    c: &Connection,
    user_id: &str,
    after: i64,
    up_to: i64,
    limit: Option<usize>,
) -> Result<Vec<Value>, Error> {
    let now = now_ms();
    let limit = limit.unwrap_or(MAX_SYNC_EVENTS).min(MAX_SYNC_EVENTS);
    let mut rows = storage::presence_visible_to(c, user_id, after, up_to, limit)?;
    // Users who newly share a room: their current presence, even if it did not change
    // (as Synapse), so a client learns it without an initial sync.
    if after > 0 {
        for other in storage::newly_shared_users(c, user_id, after, up_to)? {
            if rows.len() >= limit {
                break;
            }
            if rows.iter().any(|r| r.user_id == other) {
                continue;
            }
            if let Some(p) = storage::presence(c, &other)?
                && p.stream_ordering <= up_to
            {
                rows.push(p);
            }
        }
    }
    Ok(rows
        .iter()
        .map(|p| json!({ "type": "m.presence", "sender": p.user_id, "content": content(p, now) }))
        .collect())
}

/// Apply an inbound `m.presence` EDU: `{push: [{user_id, presence, last_active_ago,
/// currently_active?, status_msg?}]}`. Entries for users of other servers, users who
/// share no room with a local user, or malformed entries are skipped.
pub fn receive(server: &Server, origin: &str, content: &Value) -> Result<(), Error> {
    let push = content["push"]
        .as_array()
        .ok_or_else(|| Error::BadJson("m.presence needs a push list".into()))?;
    let now = now_ms();
    let own = server.server_name();
    server.write(|tx| {
        for entry in push.iter().take(MAX_PUSH) {
            let Some(user_id) = entry["user_id"].as_str() else {
                continue;
            };
            if user_id.rsplit_once(':').map(|(_, s)| s) != Some(origin) {
                tracing::info!(%origin, %user_id, "presence for another server's user ignored");
                continue;
            }
            let Some(state) = entry["presence"].as_str().filter(|s| valid_state(s)) else {
                continue;
            };
            let ago = entry["last_active_ago"].as_i64().unwrap_or(0).clamp(0, now);
            let status_msg = entry["status_msg"]
                .as_str()
                .filter(|m| m.len() <= MAX_STATUS_MSG)
                .map(str::to_owned);
            let new = PresenceRow {
                user_id: user_id.to_owned(),
                state: state.to_owned(),
                status_msg,
                last_active_ts: now - ago,
                currently_active: entry["currently_active"].as_bool().unwrap_or(false),
                stream_ordering: 0,
            };
            if !storage::shares_room_with_server(tx, user_id, own)? {
                // The join that makes us share a room may still be on its way (the
                // server that stored it sends presence at once): hold it until then.
                storage::hold_presence(tx, &new, now)?;
                continue;
            }
            let old = storage::presence(tx, user_id)?;
            let significant = old.as_ref().is_none_or(|o| {
                o.state != new.state
                    || o.status_msg != new.status_msg
                    || o.currently_active != new.currently_active
            });
            if significant {
                let new = PresenceRow {
                    stream_ordering: next_stream_position(tx)?,
                    ..new
                };
                storage::set_presence(tx, &new)?;
            } else {
                storage::touch_presence(tx, user_id, new.last_active_ts)?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::rooms::{CreateRoom, create_room};

    fn edu(users: &[String]) -> Value {
        json!({ "push": users.iter().map(|u| json!({
            "user_id": u, "presence": "online", "last_active_ago": 5,
        })).collect::<Vec<_>>() })
    }

    #[tokio::test]
    async fn presence_that_arrives_before_the_join_is_placed_by_the_join() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let bob = server.user_id("bob");
        let remote = "a".repeat(64);
        let alice = format!("@alice:{remote}");
        let room = server
            .write(|tx| {
                storage::create_user(tx, &bob, None, false, "bob")?;
                create_room(tx, &server, &bob, CreateRoom::default())
            })
            .expect("create");

        // Alice's server sends her presence before this node has stored her join.
        receive(&server, &remote, &edu(std::slice::from_ref(&alice))).expect("receive");
        let (held, placed) = server
            .db
            .read(|c| {
                Ok((
                    storage::pending_presence_count(c)?,
                    storage::presence(c, &alice)?,
                ))
            })
            .expect("read");
        assert_eq!((held, placed), (1, None));

        // The join makes them share a room: the presence is placed, with a new position.
        server
            .write(|tx| {
                let pos = next_stream_position(tx)?;
                crate::rooms::set_membership(tx, &room, &alice, "join", "$join", pos)
            })
            .expect("join");
        let (held, placed) = server
            .db
            .read(|c| {
                Ok((
                    storage::pending_presence_count(c)?,
                    storage::presence(c, &alice)?,
                ))
            })
            .expect("read");
        assert_eq!(held, 0);
        let placed = placed.expect("placed");
        assert_eq!(placed.state, "online");
        assert!(placed.stream_ordering > 0);
        let shown = server
            .db
            .read(|c| for_sync(c, &bob, 0, i64::MAX, None))
            .expect("sync");
        assert!(
            shown.iter().any(|e| e["sender"] == alice.as_str()),
            "{shown:?}"
        );
    }

    #[tokio::test]
    async fn held_presence_is_bounded_in_rows_and_age() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let remote = "b".repeat(64);
        let users: Vec<String> = (0..storage::MAX_PENDING_PRESENCE + 50)
            .map(|i| format!("@u{i}:{remote}"))
            .collect();
        for chunk in users.chunks(MAX_PUSH) {
            receive(&server, &remote, &edu(chunk)).expect("receive");
        }
        let held = server
            .db
            .read(storage::pending_presence_count)
            .expect("count");
        assert_eq!(held, storage::MAX_PENDING_PRESENCE);

        // A row held longer than the time to live is not placed, and goes.
        let now = now_ms();
        let stale = server
            .write(|tx| {
                storage::take_pending_presence(
                    tx,
                    users.last().expect("user"),
                    now + storage::PENDING_PRESENCE_TTL_MS + 1,
                )
            })
            .expect("take");
        assert_eq!(stale, None);
    }
}
