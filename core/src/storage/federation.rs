//! Reads the inbound server-server API needs beyond the per-table files: which servers
//! are in a room, the published rooms, a user's device-list stream position.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// Whether any user of `server` (a server name) currently has membership `join` in
/// `room_id`. User ids end in `:<server>`; the suffix is compared exactly.
pub fn server_has_joined_member(
    c: &Connection,
    room_id: &str,
    server: &str,
) -> Result<bool, Error> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM memberships WHERE room_id = ?1 AND membership = 'join'
             AND substr(user_id, length(user_id) - length(?2)) = ':' || ?2 LIMIT 1",
    )?
    .query_row(params![room_id, server], |_| Ok(()))
    .optional()?
    .is_some())
}

/// Rooms published in this server's room directory, by id.
pub fn published_rooms(c: &Connection) -> Result<Vec<String>, Error> {
    let mut st =
        c.prepare_cached("SELECT room_id FROM rooms WHERE is_public = 1 ORDER BY room_id")?;
    let rows = st.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The stream position of a user's latest device-list change (0 when it never changed):
/// the `stream_id` of `GET /_matrix/federation/v1/user/devices/{userId}`.
pub fn device_list_stream_id(c: &Connection, user_id: &str) -> Result<i64, Error> {
    Ok(c.prepare_cached(
        "SELECT COALESCE(MAX(stream_ordering), 0) FROM device_list_changes WHERE user_id = ?1",
    )?
    .query_row([user_id], |r| r.get(0))?)
}

/// Rooms where both a user of `own` and a user of `peer` are joined (the rooms
/// anti-entropy compares with `peer`), at most `limit`.
pub fn rooms_shared_with_server(
    c: &Connection,
    own: &str,
    peer: &str,
    limit: usize,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT m1.room_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.membership = 'join' AND m2.membership = 'join'
           AND substr(m1.user_id, length(m1.user_id) - length(?1)) = ':' || ?1
           AND substr(m2.user_id, length(m2.user_id) - length(?2)) = ':' || ?2
         ORDER BY m1.room_id LIMIT ?3",
    )?;
    let rows = st.query_map(params![own, peer, limit as i64], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn joined_servers_match_the_whole_suffix() {
        let mut conn = Connection::open_in_memory().expect("db");
        super::super::migrations::run(&mut conn, "mem").expect("migrate");
        for (user, membership) in [("@a:abc", "join"), ("@b:xabc", "join"), ("@c:def", "leave")] {
            super::super::set_membership(&conn, "!r", user, membership, "$e", 1).expect("m");
        }
        assert!(server_has_joined_member(&conn, "!r", "abc").expect("q"));
        assert!(server_has_joined_member(&conn, "!r", "xabc").expect("q"));
        assert!(!server_has_joined_member(&conn, "!r", "bc").expect("q"));
        assert!(!server_has_joined_member(&conn, "!r", "def").expect("q"));
        assert!(!server_has_joined_member(&conn, "!other", "abc").expect("q"));
    }
}
