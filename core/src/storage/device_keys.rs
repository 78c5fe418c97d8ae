//! Device keys, one-time keys, fallback keys and the device-list change stream.
//!
//! Keys are stored as the JSON the client uploaded. Rows of one device are removed with
//! the device by the schema's `ON DELETE CASCADE`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;
use crate::streams::StreamPosition;

/// The uploaded device keys of one device, as JSON text.
pub fn device_keys(
    c: &Connection,
    user_id: &str,
    device_id: &str,
) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT key_json FROM e2e_device_keys WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
        |r| r.get(0),
    )
    .optional()?)
}

/// Store (or replace) a device's keys.
pub fn set_device_keys(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    key_json: &str,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = excluded.key_json",
        params![user_id, device_id, key_json],
    )?;
    Ok(())
}

/// A device that has uploaded keys: id, display name, key JSON.
#[derive(Clone, Debug)]
pub struct DeviceKeysRow {
    /// Device id.
    pub device_id: String,
    /// The device's display name, from `devices`.
    pub display_name: Option<String>,
    /// The uploaded `DeviceKeys` object.
    pub key_json: String,
}

/// Every device of a user that has keys.
pub fn user_device_keys(c: &Connection, user_id: &str) -> Result<Vec<DeviceKeysRow>, Error> {
    let mut st = c.prepare_cached(
        "SELECT k.device_id, d.display_name, k.key_json FROM e2e_device_keys k
         JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
         WHERE k.user_id = ?1 ORDER BY k.device_id",
    )?;
    let rows = st.query_map([user_id], |r| {
        Ok(DeviceKeysRow {
            device_id: r.get(0)?,
            display_name: r.get(1)?,
            key_json: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a device row exists (keys may only be stored for existing devices).
pub fn device_exists(c: &Connection, user_id: &str, device_id: &str) -> Result<bool, Error> {
    Ok(c.query_row(
        "SELECT 1 FROM devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
        |_| Ok(()),
    )
    .optional()?
    .is_some())
}

/// A device's display name (`None` for an unknown device or one without a name).
pub fn device_display_name(
    c: &Connection,
    user_id: &str,
    device_id: &str,
) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT display_name FROM devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
        |r| r.get(0),
    )
    .optional()?
    .flatten())
}

/// Device ids of a user.
pub fn device_ids(c: &Connection, user_id: &str) -> Result<Vec<String>, Error> {
    let mut st =
        c.prepare_cached("SELECT device_id FROM devices WHERE user_id = ?1 ORDER BY device_id")?;
    let rows = st.query_map([user_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The JSON of a stored one-time key, if that key id exists.
pub fn one_time_key(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT key_json FROM e2e_one_time_keys
         WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3 AND key_id = ?4",
        params![user_id, device_id, algorithm, key_id],
        |r| r.get(0),
    )
    .optional()?)
}

/// Store a new one-time key.
pub fn insert_one_time_key(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key_json: &str,
) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json)
         VALUES (?1, ?2, ?3, ?4, ?5)",
    )?
    .execute(params![user_id, device_id, algorithm, key_id, key_json])?;
    Ok(())
}

/// Remove and return one one-time key of `algorithm` (the oldest key id first): `(key_id,
/// key_json)`. Runs inside the caller's write transaction, so two claims never get the
/// same key.
pub fn take_one_time_key(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>, Error> {
    Ok(c.query_row(
        "DELETE FROM e2e_one_time_keys WHERE rowid = (
             SELECT rowid FROM e2e_one_time_keys
             WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3
             ORDER BY rowid LIMIT 1)
         RETURNING key_id, key_json",
        params![user_id, device_id, algorithm],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// Unclaimed one-time keys of a device, per algorithm.
pub fn one_time_key_counts(
    c: &Connection,
    user_id: &str,
    device_id: &str,
) -> Result<Vec<(String, i64)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys
         WHERE user_id = ?1 AND device_id = ?2 GROUP BY algorithm ORDER BY algorithm",
    )?;
    let rows = st.query_map(params![user_id, device_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A device's fallback key of one algorithm: `(key_id, key_json, used)`.
pub fn fallback_key(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String, bool)>, Error> {
    Ok(c.query_row(
        "SELECT key_id, key_json, used FROM e2e_fallback_keys
         WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3",
        params![user_id, device_id, algorithm],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )
    .optional()?)
}

/// Replace a device's fallback key of one algorithm (the new key starts unused).
pub fn set_fallback_key(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
    key_json: &str,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
         VALUES (?1, ?2, ?3, ?4, ?5, 0)
         ON CONFLICT (user_id, device_id, algorithm) DO UPDATE SET
             key_id = excluded.key_id, key_json = excluded.key_json, used = 0",
        params![user_id, device_id, algorithm, key_id, key_json],
    )?;
    Ok(())
}

/// Mark a fallback key as handed out (it stays claimable until replaced).
pub fn mark_fallback_key_used(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<(), Error> {
    c.execute(
        "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = ?1 AND device_id = ?2 AND algorithm = ?3",
        params![user_id, device_id, algorithm],
    )?;
    Ok(())
}

/// Algorithms for which the device has a fallback key that was never handed out.
pub fn unused_fallback_key_types(
    c: &Connection,
    user_id: &str,
    device_id: &str,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT algorithm FROM e2e_fallback_keys
         WHERE user_id = ?1 AND device_id = ?2 AND used = 0 ORDER BY algorithm",
    )?;
    let rows = st.query_map(params![user_id, device_id], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Record that `user_id`'s device list (device keys or cross-signing keys) changed, at a
/// new stream position, so `/sync` and `/keys/changes` report it. Telling other servers
/// of a local user's change is the e2ee service's (`e2ee::device_lists::mark_changed`),
/// which calls this.
pub fn record_device_list_change(c: &Connection, user_id: &str) -> Result<StreamPosition, Error> {
    let pos = super::next_stream_position(c)?;
    c.prepare_cached("INSERT INTO device_list_changes (stream_ordering, user_id) VALUES (?1, ?2)")?
        .execute(params![pos, user_id])?;
    Ok(pos)
}

/// Servers of users joined to any room `user_id` is joined to.
pub fn servers_sharing_rooms(c: &Connection, user_id: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT m2.user_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.user_id = ?1 AND m1.membership = 'join' AND m2.membership = 'join'",
    )?;
    let rows = st.query_map([user_id], |r| r.get::<_, String>(0))?;
    super::servers_of(rows)
}

/// Users whose device list changed in `(after, up_to]` and who are the user themself or
/// share a joined room with them.
pub fn device_list_changes_visible_to(
    c: &Connection,
    user_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT d.user_id FROM device_list_changes d
         WHERE d.stream_ordering > ?2 AND d.stream_ordering <= ?3
           AND (d.user_id = ?1 OR EXISTS (
               SELECT 1 FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
               WHERE m1.user_id = ?1 AND m1.membership = 'join'
                 AND m2.user_id = d.user_id AND m2.membership = 'join'))",
    )?;
    let rows = st.query_map(params![user_id, after, up_to], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Users who started sharing a joined room with `user_id` in `(after, up_to]`: someone
/// joined one of the user's rooms, or the user joined a room (all its members).
pub fn newly_shared_users(
    c: &Connection,
    user_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT m2.user_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.user_id = ?1 AND m1.membership = 'join'
           AND m2.membership = 'join' AND m2.user_id != ?1
           AND (m1.stream_ordering > ?2 OR m2.stream_ordering > ?2)
           AND m1.stream_ordering <= ?3 AND m2.stream_ordering <= ?3",
    )?;
    let rows = st.query_map(params![user_id, after, up_to], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Users who may have stopped sharing a room with `user_id` in `(after, up_to]`: they
/// left (or were banned from) one of the user's rooms, or the user left a room they are
/// in. The caller checks whether another room is still shared.
pub fn possibly_unshared_users(
    c: &Connection,
    user_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<Vec<String>, Error> {
    let mut st = c.prepare_cached(
        "SELECT DISTINCT m2.user_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.user_id = ?1 AND m2.user_id != ?1 AND (
             (m1.membership = 'join' AND m2.membership IN ('leave', 'ban')
                 AND m2.stream_ordering > ?2 AND m2.stream_ordering <= ?3)
          OR (m1.membership IN ('leave', 'ban') AND m2.membership = 'join'
                 AND m1.stream_ordering > ?2 AND m1.stream_ordering <= ?3))",
    )?;
    let rows = st.query_map(params![user_id, after, up_to], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Merge stored signatures into an object's `signatures`.
pub fn merge_signatures(object: &mut serde_json::Value, sigs: &[super::SignatureRow]) {
    if sigs.is_empty() || !object.is_object() {
        return;
    }
    if !object["signatures"].is_object() {
        object["signatures"] = serde_json::Value::Object(serde_json::Map::new());
    }
    for s in sigs {
        if !object["signatures"][&s.signer_user_id].is_object() {
            object["signatures"][&s.signer_user_id] =
                serde_json::Value::Object(serde_json::Map::new());
        }
        object["signatures"][&s.signer_user_id][&s.signer_key_id] =
            serde_json::Value::String(s.signature.clone());
    }
}
