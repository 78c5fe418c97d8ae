//! The remote device-list cache: device keys and cross-signing keys of users of other
//! servers, as their server last told us (a `user/devices` answer, then the
//! `m.device_list_update` and `m.signing_key_update` EDUs that follow it).
//!
//! Only users who share a room with a local user are cached: only for them does their
//! server send updates. A list marked `stale` (an update arrived whose `prev_id` we never
//! saw) is re-fetched before it is used again.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// A cached user's list header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDeviceList {
    /// The `stream_id` of the last update applied (from the user's server).
    pub stream_id: i64,
    /// Whether the list must be re-fetched before use.
    pub stale: bool,
    /// The master key JSON, if the user has one.
    pub master_key: Option<String>,
    /// The self-signing key JSON, if the user has one.
    pub self_signing_key: Option<String>,
}

/// One cached device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RemoteDevice {
    /// Device id.
    pub device_id: String,
    /// The device's `DeviceKeys` JSON (checked: self-signed by the device).
    pub key_json: String,
    /// The device's public display name.
    pub display_name: Option<String>,
}

/// The cached header of `user_id`'s list.
pub fn remote_device_list(
    c: &Connection,
    user_id: &str,
) -> Result<Option<RemoteDeviceList>, Error> {
    Ok(c.prepare_cached(
        "SELECT stream_id, stale, master_key, self_signing_key FROM remote_device_lists
         WHERE user_id = ?1",
    )?
    .query_row([user_id], |r| {
        Ok(RemoteDeviceList {
            stream_id: r.get(0)?,
            stale: r.get(1)?,
            master_key: r.get(2)?,
            self_signing_key: r.get(3)?,
        })
    })
    .optional()?)
}

/// The cached devices of `user_id`, by device id.
pub fn remote_devices(c: &Connection, user_id: &str) -> Result<Vec<RemoteDevice>, Error> {
    let mut st = c.prepare_cached(
        "SELECT device_id, key_json, display_name FROM remote_devices
         WHERE user_id = ?1 ORDER BY device_id",
    )?;
    let rows = st.query_map([user_id], |r| {
        Ok(RemoteDevice {
            device_id: r.get(0)?,
            key_json: r.get(1)?,
            display_name: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Replace `user_id`'s whole cached list (after a full fetch); it is fresh afterwards.
pub fn replace_remote_device_list(
    c: &Connection,
    user_id: &str,
    list: &RemoteDeviceList,
    devices: &[RemoteDevice],
) -> Result<(), Error> {
    c.execute(
        "DELETE FROM remote_device_lists WHERE user_id = ?1",
        [user_id],
    )?;
    c.execute(
        "INSERT INTO remote_device_lists
             (user_id, stream_id, stale, master_key, self_signing_key, fetched_ts)
         VALUES (?1, ?2, 0, ?3, ?4, ?5)",
        params![
            user_id,
            list.stream_id,
            list.master_key,
            list.self_signing_key,
            super::now_ms()
        ],
    )?;
    let mut st = c.prepare_cached(
        "INSERT INTO remote_devices (user_id, device_id, key_json, display_name)
         VALUES (?1, ?2, ?3, ?4)",
    )?;
    for d in devices {
        st.execute(params![user_id, d.device_id, d.key_json, d.display_name])?;
    }
    Ok(())
}

/// Add or replace one cached device.
pub fn upsert_remote_device(c: &Connection, user_id: &str, d: &RemoteDevice) -> Result<(), Error> {
    c.execute(
        "INSERT INTO remote_devices (user_id, device_id, key_json, display_name)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET
             key_json = excluded.key_json, display_name = excluded.display_name",
        params![user_id, d.device_id, d.key_json, d.display_name],
    )?;
    Ok(())
}

/// Remove one cached device.
pub fn delete_remote_device(c: &Connection, user_id: &str, device_id: &str) -> Result<(), Error> {
    c.execute(
        "DELETE FROM remote_devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
    )?;
    Ok(())
}

/// Record the `stream_id` of an update applied to the cached list.
pub fn set_remote_device_list_stream_id(
    c: &Connection,
    user_id: &str,
    stream_id: i64,
) -> Result<(), Error> {
    c.execute(
        "UPDATE remote_device_lists SET stream_id = ?2 WHERE user_id = ?1",
        params![user_id, stream_id],
    )?;
    Ok(())
}

/// Mark the cached list stale: it is re-fetched before it is used again.
pub fn mark_remote_device_list_stale(c: &Connection, user_id: &str) -> Result<(), Error> {
    c.execute(
        "UPDATE remote_device_lists SET stale = 1 WHERE user_id = ?1",
        [user_id],
    )?;
    Ok(())
}

/// Replace the cached master and self-signing keys (`None` keeps the old one).
pub fn set_remote_cross_signing_keys(
    c: &Connection,
    user_id: &str,
    master_key: Option<&str>,
    self_signing_key: Option<&str>,
) -> Result<(), Error> {
    c.execute(
        "UPDATE remote_device_lists SET master_key = COALESCE(?2, master_key),
             self_signing_key = COALESCE(?3, self_signing_key)
         WHERE user_id = ?1",
        params![user_id, master_key, self_signing_key],
    )?;
    Ok(())
}

/// Forget a cached list (the user no longer shares a room with us, so updates stop).
pub fn forget_remote_device_list(c: &Connection, user_id: &str) -> Result<(), Error> {
    c.execute(
        "DELETE FROM remote_device_lists WHERE user_id = ?1",
        [user_id],
    )?;
    Ok(())
}

/// Whether the local `user_id` is joined to a room that a user of `server` is joined to.
/// Visits the members of the user's rooms, stopping at the first match.
pub fn user_shares_room_with_server(
    c: &Connection,
    user_id: &str,
    server: &str,
) -> Result<bool, Error> {
    let suffix = format!("%:{}", server.replace(['%', '_'], ""));
    Ok(c.prepare_cached(
        "SELECT EXISTS (SELECT 1 FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.user_id = ?1 AND m1.membership = 'join' AND m2.membership = 'join'
           AND m2.user_id LIKE ?2)",
    )?
    .query_row(params![user_id, suffix], |r| r.get(0))?)
}

/// Whether `user_id` (of another server) is joined to a room that a user of `own` is
/// joined to: only then does their server keep us told of their devices.
pub fn shares_room_with_server(c: &Connection, user_id: &str, own: &str) -> Result<bool, Error> {
    Ok(super::servers_sharing_rooms(c, user_id)?
        .iter()
        .any(|s| s == own))
}
