//! Accounts, devices, access tokens, profiles and filters.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// The owner of an access token.
#[derive(Clone, Debug)]
pub struct TokenOwner {
    /// Full user id.
    pub user_id: String,
    /// Device the token belongs to.
    pub device_id: String,
    /// Whether the account is deactivated.
    pub deactivated: bool,
    /// When the token stops working (ms since the epoch); `None` for tokens issued
    /// without a refresh token, which never expire.
    pub expires_ts: Option<i64>,
    /// The refresh token this token's own refresh token replaced, still valid until
    /// this token is first used (then [`revoke_replaced`] removes it).
    pub replaces: Option<String>,
    /// The refresh token issued with this token.
    pub refresh_token: Option<String>,
}

/// A device row.
#[derive(Clone, Debug)]
pub struct DeviceRow {
    /// Device id.
    pub device_id: String,
    /// Human name.
    pub display_name: Option<String>,
    /// Last use, ms.
    pub last_seen_ts: Option<i64>,
    /// Last address.
    pub last_seen_ip: Option<String>,
}

/// Insert a new account.
pub fn create_user(
    c: &Connection,
    user_id: &str,
    password_hash: Option<&str>,
    is_admin: bool,
    displayname: &str,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO users (user_id, password_hash, is_admin, displayname, created_ts) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user_id, password_hash, is_admin, displayname, super::now_ms()],
    )?;
    // Joins recorded before the account (none in practice): the account's rooms have a
    // local member now (`local_joins`, see `set_membership`).
    c.prepare_cached(
        "INSERT OR IGNORE INTO local_joins (room_id, user_id)
         SELECT room_id, user_id FROM memberships WHERE user_id = ?1 AND membership = 'join'",
    )?
    .execute([user_id])?;
    Ok(())
}

/// Whether the account exists (deactivated or not).
pub fn user_exists(c: &Connection, user_id: &str) -> Result<bool, Error> {
    Ok(
        c.query_row("SELECT 1 FROM users WHERE user_id = ?1", [user_id], |_| {
            Ok(())
        })
        .optional()?
        .is_some(),
    )
}

/// Password hash and deactivation flag.
pub fn user_password(
    c: &Connection,
    user_id: &str,
) -> Result<Option<(Option<String>, bool)>, Error> {
    Ok(c.query_row(
        "SELECT password_hash, deactivated FROM users WHERE user_id = ?1",
        [user_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// Replace the password hash.
pub fn set_password(c: &Connection, user_id: &str, hash: &str) -> Result<(), Error> {
    c.execute(
        "UPDATE users SET password_hash = ?2 WHERE user_id = ?1",
        params![user_id, hash],
    )?;
    Ok(())
}

/// List local accounts: (user_id, is_admin, deactivated).
pub fn list_users(c: &Connection) -> Result<Vec<(String, bool, bool)>, Error> {
    let mut st = c.prepare("SELECT user_id, is_admin, deactivated FROM users ORDER BY user_id")?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Create or keep a device.
pub fn upsert_device(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO devices (user_id, device_id, display_name, last_seen_ts) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, device_id) DO UPDATE SET display_name = COALESCE(excluded.display_name, display_name)",
        params![user_id, device_id, display_name, super::now_ms()],
    )?;
    Ok(())
}

/// Store a new access token.
pub fn insert_token(
    c: &Connection,
    token: &str,
    user_id: &str,
    device_id: &str,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO access_tokens (token, user_id, device_id) VALUES (?1, ?2, ?3)",
        params![token, user_id, device_id],
    )?;
    Ok(())
}

/// Sign a device in: create it if new and give it `token`, replacing any token the
/// device had (logging in again with a known device id).
pub fn start_session(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    display_name: Option<&str>,
    token: &str,
) -> Result<(), Error> {
    c.execute(
        "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
    )?;
    c.execute(
        "DELETE FROM refresh_tokens WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
    )?;
    upsert_device(c, user_id, device_id, display_name)?;
    insert_token(c, token, user_id, device_id)
}

/// Make the access token `token` (just issued) refreshable: it expires at `expires_ts`
/// and `refresh` (new) refreshes it.
pub fn make_refreshable(
    c: &Connection,
    token: &str,
    refresh: &str,
    expires_ts: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO refresh_tokens (token, user_id, device_id)
         SELECT ?2, user_id, device_id FROM access_tokens WHERE token = ?1",
        params![token, refresh],
    )?;
    c.execute(
        "UPDATE access_tokens SET expires_ts = ?2, refresh_token = ?3 WHERE token = ?1",
        params![token, expires_ts, refresh],
    )?;
    Ok(())
}

/// Remove a refresh token and the access tokens issued with it.
fn delete_refresh_token(c: &Connection, refresh: &str) -> Result<(), Error> {
    c.execute(
        "DELETE FROM access_tokens WHERE refresh_token = ?1",
        [refresh],
    )?;
    c.execute("DELETE FROM refresh_tokens WHERE token = ?1", [refresh])?;
    Ok(())
}

/// `POST /refresh`: a new access token `access` (expiring at `expires_ts`) and refresh
/// token `new_refresh` for the device of `old_refresh`, which stays valid until the new
/// pair is first used (so a client that lost the answer can refresh again). The owner
/// of `old_refresh`, or `None` if it is not a live refresh token.
pub fn refresh_session(
    c: &Connection,
    old_refresh: &str,
    access: &str,
    new_refresh: &str,
    expires_ts: i64,
) -> Result<Option<TokenOwner>, Error> {
    let found: Option<(String, String, Option<String>, bool)> = c
        .query_row(
            "SELECT r.user_id, r.device_id, r.prev, u.deactivated FROM refresh_tokens r
                 JOIN users u ON u.user_id = r.user_id WHERE r.token = ?1",
            [old_refresh],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((user_id, device_id, prev, deactivated)) = found else {
        return Ok(None);
    };
    // Using `old_refresh` ends the one it replaced, and any pair an earlier use of
    // `old_refresh` gave out but the client never used.
    if let Some(prev) = prev {
        delete_refresh_token(c, &prev)?;
    }
    let earlier: Vec<String> = c
        .prepare("SELECT token FROM refresh_tokens WHERE prev = ?1")?
        .query_map([old_refresh], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for t in earlier {
        delete_refresh_token(c, &t)?;
    }
    c.execute(
        "UPDATE refresh_tokens SET prev = NULL WHERE token = ?1",
        [old_refresh],
    )?;
    c.execute(
        "INSERT INTO refresh_tokens (token, user_id, device_id, prev) VALUES (?1, ?2, ?3, ?4)",
        params![new_refresh, user_id, device_id, old_refresh],
    )?;
    c.execute(
        "INSERT INTO access_tokens (token, user_id, device_id, expires_ts, refresh_token)
         VALUES (?1, ?2, ?3, ?4, ?5)",
        params![access, user_id, device_id, expires_ts, new_refresh],
    )?;
    Ok(Some(TokenOwner {
        user_id,
        device_id,
        deactivated,
        expires_ts: Some(expires_ts),
        replaces: Some(old_refresh.to_owned()),
        refresh_token: Some(new_refresh.to_owned()),
    }))
}

/// The pair issued with refresh token `refresh` has been used: the refresh token it
/// replaced, and that one's access tokens, stop working.
pub fn revoke_replaced(c: &Connection, refresh: &str) -> Result<(), Error> {
    let prev: Option<Option<String>> = c
        .query_row(
            "SELECT prev FROM refresh_tokens WHERE token = ?1",
            [refresh],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(Some(prev)) = prev {
        delete_refresh_token(c, &prev)?;
        c.execute(
            "UPDATE refresh_tokens SET prev = NULL WHERE token = ?1",
            [refresh],
        )?;
    }
    Ok(())
}

/// Who owns this token, if anyone.
pub fn token_owner(c: &Connection, token: &str) -> Result<Option<TokenOwner>, Error> {
    // Every authenticated request runs this: prepared once per connection, not parsed
    // and planned again each time (a tenth of a sequential send's time).
    Ok(c.prepare_cached(
        "SELECT t.user_id, t.device_id, u.deactivated, t.expires_ts, r.prev, t.refresh_token
             FROM access_tokens t JOIN users u ON u.user_id = t.user_id
             LEFT JOIN refresh_tokens r ON r.token = t.refresh_token
             WHERE t.token = ?1",
    )?
    .query_row([token], |r| {
        Ok(TokenOwner {
            user_id: r.get(0)?,
            device_id: r.get(1)?,
            deactivated: r.get(2)?,
            expires_ts: r.get(3)?,
            replaces: r.get(4)?,
            refresh_token: r.get(5)?,
        })
    })
    .optional()?)
}

/// Remove one token (logout).
pub fn delete_token(c: &Connection, token: &str) -> Result<(), Error> {
    c.execute("DELETE FROM access_tokens WHERE token = ?1", [token])?;
    Ok(())
}

/// Remove a device and, through the foreign keys, its tokens, keys and pending to-device
/// messages. Whether it existed. (Recording the device-list change is the caller's:
/// `account::delete_device_in`.)
pub fn delete_device(c: &Connection, user_id: &str, device_id: &str) -> Result<bool, Error> {
    c.execute(
        "DELETE FROM access_tokens WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
    )?;
    let removed = c.execute(
        "DELETE FROM devices WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id],
    )? > 0;
    // Its pushers go with it (the spec, for a password change that logs out the
    // other devices; Synapse, for every logout).
    super::delete_device_pushers(c, user_id, device_id)?;
    if removed {
        super::delete_signatures_on(c, user_id, device_id)?;
    }
    Ok(removed)
}

/// All devices of a user.
pub fn list_devices(c: &Connection, user_id: &str) -> Result<Vec<DeviceRow>, Error> {
    let mut st = c.prepare(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices WHERE user_id = ?1 ORDER BY device_id",
    )?;
    let rows = st.query_map([user_id], |r| {
        Ok(DeviceRow {
            device_id: r.get(0)?,
            display_name: r.get(1)?,
            last_seen_ts: r.get(2)?,
            last_seen_ip: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Rename a device; false when it does not exist.
pub fn rename_device(
    c: &Connection,
    user_id: &str,
    device_id: &str,
    name: Option<&str>,
) -> Result<bool, Error> {
    Ok(c.execute(
        "UPDATE devices SET display_name = ?3 WHERE user_id = ?1 AND device_id = ?2",
        params![user_id, device_id, name],
    )? > 0)
}

/// `(displayname, avatar_url)`.
pub type Profile = (Option<String>, Option<String>);

/// Profile fields; `None` when the user is unknown.
pub fn profile(c: &Connection, user_id: &str) -> Result<Option<Profile>, Error> {
    Ok(c.query_row(
        "SELECT displayname, avatar_url FROM users WHERE user_id = ?1",
        [user_id],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()?)
}

/// Set the display name.
pub fn set_displayname(c: &Connection, user_id: &str, name: Option<&str>) -> Result<(), Error> {
    c.execute(
        "UPDATE users SET displayname = ?2 WHERE user_id = ?1",
        params![user_id, name],
    )?;
    Ok(())
}

/// Set the avatar URL.
pub fn set_avatar_url(c: &Connection, user_id: &str, url: Option<&str>) -> Result<(), Error> {
    c.execute(
        "UPDATE users SET avatar_url = ?2 WHERE user_id = ?1",
        params![user_id, url],
    )?;
    Ok(())
}

/// Mark an account deactivated (its devices are the caller's to delete:
/// `account::deactivate`).
pub fn deactivate_user(c: &Connection, user_id: &str) -> Result<(), Error> {
    c.execute(
        "UPDATE users SET deactivated = 1, password_hash = NULL WHERE user_id = ?1",
        [user_id],
    )?;
    Ok(())
}

/// Record that a deactivated user asked for their data to be erased.
pub fn set_erased(c: &Connection, user_id: &str) -> Result<(), Error> {
    c.execute("UPDATE users SET erased = 1 WHERE user_id = ?1", [user_id])?;
    Ok(())
}

/// Store a filter and return its id.
pub fn save_filter(c: &Connection, user_id: &str, json: &str) -> Result<i64, Error> {
    let id: i64 = c.query_row(
        "SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = ?1",
        [user_id],
        |r| r.get(0),
    )?;
    c.execute(
        "INSERT INTO filters (user_id, filter_id, json) VALUES (?1, ?2, ?3)",
        params![user_id, id, json],
    )?;
    Ok(id)
}

/// Load a filter.
pub fn load_filter(c: &Connection, user_id: &str, filter_id: i64) -> Result<Option<String>, Error> {
    Ok(c.query_row(
        "SELECT json FROM filters WHERE user_id = ?1 AND filter_id = ?2",
        params![user_id, filter_id],
        |r| r.get(0),
    )
    .optional()?)
}

/// Count one use of a registration token; returns the uses before this one.
pub fn use_registration_token(c: &Connection, token: &str) -> Result<i64, Error> {
    let before: i64 = c
        .query_row(
            "SELECT uses FROM registration_tokens_used WHERE token = ?1",
            [token],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(0);
    c.execute(
        "INSERT INTO registration_tokens_used (token, uses) VALUES (?1, 1)
         ON CONFLICT (token) DO UPDATE SET uses = uses + 1",
        [token],
    )?;
    Ok(before)
}
