//! Rooms, current state, memberships and aliases.

use rusqlite::{Connection, OptionalExtension, params};

use super::StateMap;
use crate::error::Error;

/// Register a new room.
pub fn insert_room(
    c: &Connection,
    room_id: &str,
    version: &str,
    creator: &str,
    is_public: bool,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO rooms (room_id, room_version, creator, is_public, created_ts) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![room_id, version, creator, is_public, super::now_ms()],
    )?;
    Ok(())
}

/// Room version and current state group, if the room is known.
pub fn room_info(c: &Connection, room_id: &str) -> Result<Option<(String, Option<i64>)>, Error> {
    Ok(
        c.prepare_cached("SELECT room_version, current_state_group FROM rooms WHERE room_id = ?1")?
            .query_row([room_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// What a room's current state is, as of this snapshot: its state group and how many of
/// its state events have been redacted (a redaction changes what a state event says
/// without changing the group). Equal versions mean the same events with the same
/// content. `None` for an unknown room or one without current state.
pub fn state_version(c: &Connection, room_id: &str) -> Result<Option<[i64; 2]>, Error> {
    let row: Option<(Option<i64>, i64)> = c
        .prepare_cached("SELECT current_state_group, redactions FROM rooms WHERE room_id = ?1")?
        .query_row([room_id], |r| Ok((r.get(0)?, r.get(1)?)))
        .optional()?;
    Ok(row.and_then(|(group, redactions)| Some([group?, redactions])))
}

/// Point the room at a new current state group.
pub fn set_current_state_group(c: &Connection, room_id: &str, group: i64) -> Result<(), Error> {
    c.prepare_cached("UPDATE rooms SET current_state_group = ?2 WHERE room_id = ?1")?
        .execute(params![room_id, group])?;
    Ok(())
}

/// Set the published-directory flag.
pub fn set_room_public(c: &Connection, room_id: &str, public: bool) -> Result<(), Error> {
    c.execute(
        "UPDATE rooms SET is_public = ?2 WHERE room_id = ?1",
        params![room_id, public],
    )?;
    Ok(())
}

/// The event id currently holding `(type, state_key)`.
pub fn current_state_event(
    c: &Connection,
    room_id: &str,
    ty: &str,
    state_key: &str,
) -> Result<Option<String>, Error> {
    Ok(c.prepare_cached(
        "SELECT event_id FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
    )?
    .query_row(params![room_id, ty, state_key], |r| r.get(0))
    .optional()?)
}

/// An entry of a room's current state with its event row, if stored.
#[derive(Clone, Debug)]
pub struct CurrentStateEvent {
    /// Event type.
    pub kind: String,
    /// State key.
    pub state_key: String,
    /// The event the entry points to.
    pub event_id: String,
    /// The event's stored JSON and status, `None` when the row is missing.
    pub row: Option<(String, super::EventStatus)>,
}

/// Several entries of a room's current state with their events (whatever their status,
/// as [`super::get_event_any`]), in one statement: what a new event's auth rules read.
/// `keys` are `(type, state_key)` pairs; those not in the current state are left out.
pub fn current_state_events(
    c: &Connection,
    room_id: &str,
    keys: &[(&str, &str)],
) -> Result<Vec<CurrentStateEvent>, Error> {
    let keys = serde_json::to_string(keys)?;
    // CROSS JOIN keeps the few keys as the outer loop: one primary-key probe each, never
    // a walk over the room's whole state.
    let mut st = c.prepare_cached(
        "SELECT cs.type, cs.state_key, cs.event_id, e.json, e.status
         FROM json_each(?2) AS k
         CROSS JOIN current_state cs
             ON cs.room_id = ?1 AND cs.type = k.value ->> 0 AND cs.state_key = k.value ->> 1
         LEFT JOIN events e ON e.event_id = cs.event_id",
    )?;
    let rows = st.query_map(params![room_id, keys], |r| {
        let json: Option<String> = r.get(3)?;
        let status: Option<String> = r.get(4)?;
        Ok(CurrentStateEvent {
            kind: r.get(0)?,
            state_key: r.get(1)?,
            event_id: r.get(2)?,
            row: json.zip(status.map(|s| super::EventStatus::parse(&s))),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Which events stand at several entries of a room's current state, and whether each is
/// redacted, without their JSON: enough to tell whether something parsed from them
/// before still holds (an event's content changes only when it is redacted). `keys` as
/// in [`current_state_events`]; entries whose event row is missing are left out.
pub fn current_state_refs(
    c: &Connection,
    room_id: &str,
    keys: &[(&str, &str)],
) -> Result<Vec<(String, String, bool)>, Error> {
    let keys = serde_json::to_string(keys)?;
    let mut st = c.prepare_cached(
        "SELECT cs.type, cs.event_id, e.redacted_by IS NOT NULL
         FROM json_each(?2) AS k
         CROSS JOIN current_state cs
             ON cs.room_id = ?1 AND cs.type = k.value ->> 0 AND cs.state_key = k.value ->> 1
         JOIN events e ON e.event_id = cs.event_id",
    )?;
    let rows = st.query_map(params![room_id, keys], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The whole current state of a room.
pub fn current_state(c: &Connection, room_id: &str) -> Result<StateMap, Error> {
    let mut st =
        c.prepare_cached("SELECT type, state_key, event_id FROM current_state WHERE room_id = ?1")?;
    let rows = st.query_map([room_id], |r| Ok(((r.get(0)?, r.get(1)?), r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Record a state entry as current.
pub fn set_current_state(
    c: &Connection,
    room_id: &str,
    ty: &str,
    state_key: &str,
    event_id: &str,
) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO current_state (room_id, type, state_key, event_id) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (room_id, type, state_key) DO UPDATE SET event_id = excluded.event_id",
    )?
    .execute(params![room_id, ty, state_key, event_id])?;
    Ok(())
}

/// Drop a state entry from the current state.
pub fn delete_current_state(
    c: &Connection,
    room_id: &str,
    ty: &str,
    state_key: &str,
) -> Result<(), Error> {
    c.prepare_cached(
        "DELETE FROM current_state WHERE room_id = ?1 AND type = ?2 AND state_key = ?3",
    )?
    .execute(params![room_id, ty, state_key])?;
    Ok(())
}

/// Record a user's current membership. Returns whether the user has just joined (was
/// not joined before): the room engine then sends presence where it is newly needed.
pub fn set_membership(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
    pos: i64,
) -> Result<bool, Error> {
    let was: Option<String> = c
        .prepare_cached("SELECT membership FROM memberships WHERE room_id = ?1 AND user_id = ?2")?
        .query_row(params![room_id, user_id], |r| r.get(0))
        .optional()?;
    let was_joined = was.as_deref() == Some("join");
    if was.as_deref() != Some(membership) {
        keep_member_counts(c, room_id, user_id, was.as_deref(), membership)?;
    }
    c.prepare_cached(
        "INSERT INTO memberships (room_id, user_id, membership, event_id, stream_ordering) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (room_id, user_id) DO UPDATE SET membership = excluded.membership,
             event_id = excluded.event_id, stream_ordering = excluded.stream_ordering, forgotten = 0",
    )?
    .execute(params![room_id, user_id, membership, event_id, pos])?;
    let joined = membership == "join" && !was_joined;
    if membership != "join" {
        // Remote users who no longer share a room with any local user: their servers
        // stop sending us device-list updates, so their cached lists would go stale
        // unnoticed. Drop them; a later query fetches afresh.
        // Whether a room has a local member is one lookup in `local_joins` (it was a
        // walk of each of the user's rooms' members).
        c.prepare_cached(
            "DELETE FROM remote_device_lists WHERE user_id IN (
                 SELECT user_id FROM memberships WHERE room_id = ?1)
             AND NOT EXISTS (
                 SELECT 1 FROM memberships m JOIN local_joins l ON l.room_id = m.room_id
                 WHERE m.user_id = remote_device_lists.user_id AND m.membership = 'join')",
        )?
        .execute([room_id])?;
    }
    Ok(joined)
}

/// Keep `room_member_counts` and `local_joins` (schema 32) as a membership changes from
/// `was` to `now`.
fn keep_member_counts(
    c: &Connection,
    room_id: &str,
    user_id: &str,
    was: Option<&str>,
    now: &str,
) -> Result<(), Error> {
    let delta = |m: &str| i64::from(now == m) - i64::from(was == Some(m));
    let (joined, invited) = (delta("join"), delta("invite"));
    if joined != 0 || invited != 0 {
        c.prepare_cached(
            "INSERT INTO room_member_counts (room_id, joined, invited) VALUES (?1, ?2, ?3)
             ON CONFLICT (room_id) DO UPDATE SET joined = joined + excluded.joined,
                 invited = invited + excluded.invited",
        )?
        .execute(params![room_id, joined, invited])?;
    }
    match joined {
        1 => {
            c.prepare_cached(
                "INSERT OR IGNORE INTO local_joins (room_id, user_id)
                 SELECT ?1, user_id FROM users WHERE user_id = ?2",
            )?
            .execute(params![room_id, user_id])?;
        }
        -1 => {
            c.prepare_cached("DELETE FROM local_joins WHERE room_id = ?1 AND user_id = ?2")?
                .execute(params![room_id, user_id])?;
        }
        _ => {}
    }
    Ok(())
}

/// A user's membership in a room: (membership, event id, stream position).
pub fn membership(
    c: &Connection,
    room_id: &str,
    user_id: &str,
) -> Result<Option<(String, String, i64)>, Error> {
    Ok(c
        .prepare_cached("SELECT membership, event_id, stream_ordering FROM memberships WHERE room_id = ?1 AND user_id = ?2")?
        .query_row(params![room_id, user_id], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .optional()?)
}

/// Rooms where the user currently has `membership`.
pub fn rooms_with_membership(
    c: &Connection,
    user_id: &str,
    membership: &str,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT room_id FROM memberships WHERE user_id = ?1 AND membership = ?2 ORDER BY room_id",
    )?;
    let rows = st.query_map(params![user_id, membership], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every membership row of a user: (room, membership, event id, position).
pub fn user_memberships(
    c: &Connection,
    user_id: &str,
) -> Result<Vec<(String, String, String, i64)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT room_id, membership, event_id, stream_ordering FROM memberships WHERE user_id = ?1 AND forgotten = 0",
    )?;
    let rows = st.query_map([user_id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Members of a room with a given membership.
pub fn room_members(c: &Connection, room_id: &str, membership: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership = ?2 ORDER BY user_id",
    )?;
    let rows = st.query_map(params![room_id, membership], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` members with a membership other than `except`, in user id order (room
/// heroes): reads `limit` rows, not the whole member list.
pub fn some_room_members(
    c: &Connection,
    room_id: &str,
    membership: &str,
    except: &str,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership = ?2
             AND user_id != ?3 ORDER BY user_id LIMIT ?4",
    )?;
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let rows = st.query_map(params![room_id, membership, except, limit], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many members are joined and how many invited (`m.joined_member_count`,
/// `m.invited_member_count`): kept per room, one row read.
pub fn member_counts(c: &Connection, room_id: &str) -> Result<(i64, i64), Error> {
    Ok(
        c.prepare_cached("SELECT joined, invited FROM room_member_counts WHERE room_id = ?1")?
            .query_row([room_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
            .unwrap_or((0, 0)),
    )
}

/// Hide a left room from the user's sync.
pub fn forget_room(c: &Connection, room_id: &str, user_id: &str) -> Result<(), Error> {
    c.execute(
        "UPDATE memberships SET forgotten = 1 WHERE room_id = ?1 AND user_id = ?2",
        params![room_id, user_id],
    )?;
    Ok(())
}

/// Whether two users share a joined room.
pub fn share_room(c: &Connection, a: &str, b: &str) -> Result<bool, Error> {
    Ok(c
        .query_row(
            "SELECT 1 FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
             WHERE m1.user_id = ?1 AND m2.user_id = ?2 AND m1.membership = 'join' AND m2.membership = 'join' LIMIT 1",
            params![a, b],
            |_| Ok(()),
        )
        .optional()?
        .is_some())
}

/// Map an alias to a room.
pub fn insert_alias(
    c: &Connection,
    alias: &str,
    room_id: &str,
    creator: &str,
) -> Result<bool, Error> {
    Ok(c.execute(
        "INSERT OR IGNORE INTO room_aliases (alias, room_id, creator) VALUES (?1, ?2, ?3)",
        params![alias, room_id, creator],
    )? > 0)
}

/// Resolve an alias.
pub fn alias_room(c: &Connection, alias: &str) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT room_id FROM room_aliases WHERE alias = ?1",
        [alias],
        |r| r.get(0),
    )
    .optional()?)
}

/// Rooms of the local server, for status output: (room_id, joined members).
pub fn list_rooms(c: &Connection) -> Result<Vec<(String, i64)>, Error> {
    let mut st = c.prepare(
        "SELECT r.room_id, (SELECT COUNT(*) FROM memberships m WHERE m.room_id = r.room_id AND m.membership = 'join')
         FROM rooms r ORDER BY r.room_id",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Current state entries of one type: (state_key, event_id).
pub fn current_state_of_type(
    c: &Connection,
    room_id: &str,
    ty: &str,
) -> Result<Vec<(String, String)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT state_key, event_id FROM current_state WHERE room_id = ?1 AND type = ?2",
    )?;
    let rows = st.query_map(params![room_id, ty], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Up to `limit` joined or invited members other than `exclude`, longest-standing
/// first: the heroes a client names an unnamed room after.
pub fn first_members(
    c: &Connection,
    room_id: &str,
    exclude: &str,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT user_id FROM memberships WHERE room_id = ?1 AND membership IN ('join', 'invite')
         AND user_id != ?2 ORDER BY stream_ordering, user_id LIMIT ?3",
    )?;
    let rows = st.query_map(params![room_id, exclude, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_counts_count_joined_and_invited_members_of_one_room() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let db = super::super::Db::open(&dir.path().join("warren.db")).map_err(Error::internal)?;
        db.write(|c| {
            let rows = [
                ("!r:x", "@a:x", "join"),
                ("!r:x", "@b:x", "join"),
                ("!r:x", "@c:x", "invite"),
                ("!r:x", "@d:x", "leave"),
                ("!r:x", "@e:x", "ban"),
                ("!r:x", "@f:x", "knock"),
                ("!s:x", "@a:x", "invite"),
            ];
            for (pos, (room, user, membership)) in (1..).zip(rows) {
                set_membership(c, room, user, membership, &format!("$e{pos}"), pos)?;
            }
            assert_eq!(member_counts(c, "!r:x")?, (2, 1));
            assert_eq!(member_counts(c, "!s:x")?, (0, 1));
            assert_eq!(member_counts(c, "!none:x")?, (0, 0));
            Ok(())
        })
    }

    /// A remote user's cached device list goes when they no longer share a joined room
    /// with a local user, and only then.
    #[test]
    fn device_lists_go_with_the_last_room_shared_with_a_local_user() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let db = super::super::Db::open(&dir.path().join("warren.db")).map_err(Error::internal)?;
        db.write(|c| {
            super::super::create_user(c, "@a:here", None, false, "a")?;
            let cached = |c: &Connection| -> Result<bool, Error> {
                Ok(c.query_row(
                    "SELECT COUNT(*) FROM remote_device_lists WHERE user_id = '@r:there'",
                    [],
                    |r| r.get::<_, i64>(0),
                )? == 1)
            };
            let mut pos = 0;
            let mut set = |c: &Connection, room: &str, user: &str, m: &str| {
                pos += 1;
                set_membership(c, room, user, m, &format!("$e{pos}"), pos)
            };
            for room in ["!one:x", "!two:x"] {
                set(c, room, "@a:here", "join")?;
                set(c, room, "@r:there", "join")?;
            }
            c.execute(
                "INSERT INTO remote_device_lists (user_id, stream_id, fetched_ts)
                 VALUES ('@r:there', 1, 0)",
                [],
            )?;
            set(c, "!one:x", "@r:there", "leave")?;
            assert!(cached(c)?, "still shares !two:x with a local user");
            set(c, "!two:x", "@a:here", "leave")?;
            assert!(!cached(c)?, "shares no room with a local user any more");
            Ok(())
        })
    }

    /// The kept counts and local joins stay what counting the memberships gives, through
    /// joins, invites, leaves, bans and repeats, for local and remote users alike.
    #[test]
    fn kept_member_counts_and_local_joins_follow_every_change() -> Result<(), Error> {
        let dir = tempfile::tempdir().map_err(Error::internal)?;
        let db = super::super::Db::open(&dir.path().join("warren.db")).map_err(Error::internal)?;
        let counted = |c: &Connection, room: &str| -> Result<(i64, i64, Vec<String>), Error> {
            let (joined, invited) = c.query_row(
                "SELECT COUNT(*) FILTER (WHERE membership = 'join'),
                        COUNT(*) FILTER (WHERE membership = 'invite')
                 FROM memberships WHERE room_id = ?1",
                [room],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let mut st = c.prepare(
                "SELECT m.user_id FROM memberships m JOIN users u ON u.user_id = m.user_id
                 WHERE m.room_id = ?1 AND m.membership = 'join' ORDER BY m.user_id",
            )?;
            let local = st
                .query_map([room], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            Ok((joined, invited, local))
        };
        db.write(|c| {
            for u in ["@a:here", "@b:here"] {
                super::super::create_user(c, u, None, false, u)?;
            }
            let changes = [
                ("@a:here", "join"),
                ("@r:there", "invite"),
                ("@r:there", "join"),
                ("@r:there", "join"),
                ("@b:here", "invite"),
                ("@b:here", "join"),
                ("@a:here", "leave"),
                ("@s:there", "knock"),
                ("@s:there", "invite"),
                ("@r:there", "ban"),
                ("@b:here", "join"),
                ("@a:here", "join"),
                ("@b:here", "leave"),
            ];
            for (pos, (user, membership)) in (1..).zip(changes) {
                set_membership(c, "!r:x", user, membership, &format!("$e{pos}"), pos)?;
                let (joined, invited, local) = counted(c, "!r:x")?;
                assert_eq!(member_counts(c, "!r:x")?, (joined, invited), "after {pos}");
                assert_eq!(
                    super::super::joined_local_members(c, "!r:x")?,
                    local,
                    "after {pos}"
                );
            }
            // An account made after its join (as an imported database may have it).
            set_membership(c, "!r:x", "@late:here", "join", "$late", 100)?;
            super::super::create_user(c, "@late:here", None, false, "late")?;
            assert_eq!(
                super::super::joined_local_members(c, "!r:x")?,
                counted(c, "!r:x")?.2
            );
            Ok(())
        })
    }
}
