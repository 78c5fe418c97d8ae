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
    /// Display name: the local profile's, else one from a member event.
    pub display_name: Option<String>,
    /// Avatar: the local profile's, else one from a member event.
    pub avatar_url: Option<String>,
    /// Every display name the user's member events carry in the rooms the searcher may
    /// see (per-room nicknames included), without duplicates.
    pub room_names: Vec<String>,
}

/// Users `searcher` may find, one row each: joined members of rooms the searcher is
/// joined to, and of rooms that are published or have a `public` join rule.
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
                json_group_array(DISTINCT json_extract(e.json, '$.content.displayname')),
                MAX(json_extract(e.json, '$.content.avatar_url')),
                u.displayname, u.avatar_url
         FROM memberships m
         JOIN events e ON e.event_id = m.event_id
         LEFT JOIN users u ON u.user_id = m.user_id
         WHERE m.membership = 'join' AND m.room_id IN (SELECT room_id FROM visible_rooms)
         GROUP BY m.user_id ORDER BY m.user_id",
    )?;
    let rows = st.query_map(params![searcher], |r| {
        let names: String = r.get(1)?;
        let member_avatar: Option<String> = r.get(2).ok().flatten();
        let profile_name: Option<String> = r.get(3)?;
        let profile_avatar: Option<String> = r.get(4)?;
        Ok((
            r.get::<_, String>(0)?,
            names,
            member_avatar,
            profile_name,
            profile_avatar,
        ))
    })?;
    let mut users = Vec::new();
    for row in rows {
        let (user_id, names, member_avatar, profile_name, profile_avatar) = row?;
        // Display names that are not strings (a hostile member event) are skipped.
        let mut room_names: Vec<String> = serde_json::from_str::<Vec<serde_json::Value>>(&names)
            .unwrap_or_default()
            .into_iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .filter(|n| !n.is_empty())
            .collect();
        room_names.sort();
        room_names.dedup();
        users.push(DirectoryUser {
            display_name: profile_name.or_else(|| room_names.first().cloned()),
            avatar_url: profile_avatar.or(member_avatar),
            user_id,
            room_names,
        });
    }
    Ok(users)
}

/// Point every local alias of room `from` at room `to` (a room upgrade); returns them.
pub fn move_aliases(c: &Connection, from: &str, to: &str) -> Result<Vec<String>, Error> {
    let aliases = room_aliases(c, from)?;
    c.prepare_cached("UPDATE room_aliases SET room_id = ?2 WHERE room_id = ?1")?
        .execute(params![from, to])?;
    Ok(aliases)
}
