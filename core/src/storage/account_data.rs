//! Account data, global (`room_id = ''`) and per room, tags included.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// Store account data at a new stream position.
pub fn set_account_data(
    c: &Connection,
    user_id: &str,
    room_id: &str,
    ty: &str,
    content: &str,
    pos: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO account_data (user_id, room_id, type, content, stream_ordering) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, room_id, type) DO UPDATE SET content = excluded.content, stream_ordering = excluded.stream_ordering",
        params![user_id, room_id, ty, content, pos],
    )?;
    Ok(())
}

/// One account data item.
pub fn account_data(
    c: &Connection,
    user_id: &str,
    room_id: &str,
    ty: &str,
) -> Result<Option<String>, Error> {
    // Cached: push evaluation reads the rules of every notified member on every send.
    Ok(c.prepare_cached(
        "SELECT content FROM account_data WHERE user_id = ?1 AND room_id = ?2 AND type = ?3",
    )?
    .query_row(params![user_id, room_id, ty], |r| r.get(0))
    .optional()?)
}

/// Account data changed in `(after, up_to]`: (room_id, type, content).
pub fn account_data_since(
    c: &Connection,
    user_id: &str,
    after: i64,
    up_to: i64,
) -> Result<Vec<(String, String, String)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT room_id, type, content FROM account_data WHERE user_id = ?1 AND stream_ordering > ?2 AND stream_ordering <= ?3",
    )?;
    let rows = st.query_map(params![user_id, after, up_to], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}
