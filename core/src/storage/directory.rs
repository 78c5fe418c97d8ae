//! The room directory (aliases, published rooms) and the user directory.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// An alias's room and the user who created it.
pub fn alias_entry(c: &Connection, alias: &str) -> Result<Option<(String, String)>, Error> {
    Ok(
        c.prepare_cached("SELECT room_id, creator FROM room_aliases WHERE alias = ?1")?
            .query_row([alias], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// Remove an alias; whether it existed.
pub fn delete_alias(c: &Connection, alias: &str) -> Result<bool, Error> {
    Ok(
        c.prepare_cached("DELETE FROM room_aliases WHERE alias = ?1")?
            .execute([alias])?
            > 0,
    )
}

/// The local aliases pointing at a room, sorted.
pub fn room_aliases(c: &Connection, room_id: &str) -> Result<Vec<String>, Error> {
    let mut st =
        c.prepare_cached("SELECT alias FROM room_aliases WHERE room_id = ?1 ORDER BY alias")?;
    let rows = st.query_map([room_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether the room is published in the directory; `None` for an unknown room.
pub fn room_is_public(c: &Connection, room_id: &str) -> Result<Option<bool>, Error> {
    Ok(
        c.prepare_cached("SELECT is_public FROM rooms WHERE room_id = ?1")?
            .query_row([room_id], |r| r.get(0))
            .optional()?,
    )
}

/// A user the user directory may show.
#[derive(Clone, Debug)]
pub struct DirectoryUser {
    /// `@user:server`.
    pub user_id: String,
    /// Display name from a member event (or the local profile).
    pub display_name: Option<String>,
    /// Avatar from a member event (or the local profile).
    pub avatar_url: Option<String>,
}

/// Users `searcher` may find: joined members of rooms the searcher is joined to, and of
/// rooms that are published or have a `public` join rule. Display names and avatars come
/// from the member event of one such room (the local profile when that has none).
pub fn visible_users(c: &Connection, searcher: &str) -> Result<Vec<DirectoryUser>, Error> {
    let mut st = c.prepare_cached(
        "WITH visible_rooms AS (
             SELECT room_id FROM memberships WHERE user_id = ?1 AND membership = 'join'
             UNION SELECT room_id FROM rooms WHERE is_public = 1
             UNION SELECT cs.room_id FROM current_state cs JOIN events e ON e.event_id = cs.event_id
                   WHERE cs.type = 'm.room.join_rules' AND cs.state_key = ''
                     AND json_extract(e.json, '$.content.join_rule') = 'public'
         )
         SELECT m.user_id,
                MAX(json_extract(e.json, '$.content.displayname')),
                MAX(json_extract(e.json, '$.content.avatar_url')),
                u.displayname, u.avatar_url
         FROM memberships m
         JOIN events e ON e.event_id = m.event_id
         LEFT JOIN users u ON u.user_id = m.user_id
         WHERE m.membership = 'join' AND m.room_id IN (SELECT room_id FROM visible_rooms)
         GROUP BY m.user_id ORDER BY m.user_id",
    )?;
    let rows = st.query_map(params![searcher], |r| {
        let member_name: Option<String> = r.get(1).ok().flatten();
        let member_avatar: Option<String> = r.get(2).ok().flatten();
        let profile_name: Option<String> = r.get(3)?;
        let profile_avatar: Option<String> = r.get(4)?;
        Ok(DirectoryUser {
            user_id: r.get(0)?,
            display_name: member_name.or(profile_name),
            avatar_url: member_avatar.or(profile_avatar),
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Point every local alias of room `from` at room `to` (a room upgrade); returns them.
pub fn move_aliases(c: &Connection, from: &str, to: &str) -> Result<Vec<String>, Error> {
    let aliases = room_aliases(c, from)?;
    c.prepare_cached("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1")?
        .execute(params![from, to])?;
    Ok(aliases)
}
