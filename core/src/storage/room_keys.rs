//! Server-side key backup: backup versions and the room keys stored in them.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// A backup version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupVersionRow {
    /// Version number (sent to clients as a string).
    pub version: i64,
    /// Backup algorithm.
    pub algorithm: String,
    /// `auth_data` JSON text.
    pub auth_data: String,
    /// Changes with every key change.
    pub etag: i64,
}

/// One backed-up room key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackupKeyRow {
    /// Room.
    pub room_id: String,
    /// Megolm session id.
    pub session_id: String,
    /// First message index the key can decrypt.
    pub first_message_index: i64,
    /// How often the key was forwarded.
    pub forwarded_count: i64,
    /// Whether the device that sent the key was verified.
    pub is_verified: bool,
    /// Encrypted `session_data` JSON text.
    pub session_data: String,
}

/// Create a new backup version; numbers never repeat for a user, even after deletion.
pub fn create_backup_version(
    c: &Connection,
    user_id: &str,
    algorithm: &str,
    auth_data: &str,
) -> Result<i64, Error> {
    let version: i64 = c.query_row(
        "SELECT COALESCE(MAX(version), 0) + 1 FROM room_key_backup_versions WHERE user_id = ?1",
        [user_id],
        |r| r.get(0),
    )?;
    c.execute(
        "INSERT INTO room_key_backup_versions (user_id, version, algorithm, auth_data) VALUES (?1, ?2, ?3, ?4)",
        params![user_id, version, algorithm, auth_data],
    )?;
    Ok(version)
}

fn version_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackupVersionRow> {
    Ok(BackupVersionRow {
        version: r.get(0)?,
        algorithm: r.get(1)?,
        auth_data: r.get(2)?,
        etag: r.get(3)?,
    })
}

/// The newest live backup version.
pub fn latest_backup_version(
    c: &Connection,
    user_id: &str,
) -> Result<Option<BackupVersionRow>, Error> {
    Ok(c.query_row(
        "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions
         WHERE user_id = ?1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
        [user_id],
        version_row,
    )
    .optional()?)
}

/// A live backup version by number.
pub fn backup_version(
    c: &Connection,
    user_id: &str,
    version: i64,
) -> Result<Option<BackupVersionRow>, Error> {
    Ok(c.query_row(
        "SELECT version, algorithm, auth_data, etag FROM room_key_backup_versions
         WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
        params![user_id, version],
        version_row,
    )
    .optional()?)
}

/// Replace a version's `auth_data`.
pub fn set_backup_auth_data(
    c: &Connection,
    user_id: &str,
    version: i64,
    auth_data: &str,
) -> Result<(), Error> {
    c.execute(
        "UPDATE room_key_backup_versions SET auth_data = ?3 WHERE user_id = ?1 AND version = ?2",
        params![user_id, version, auth_data],
    )?;
    Ok(())
}

/// Mark a version deleted and drop its keys; false when there was no live version.
pub fn delete_backup_version(c: &Connection, user_id: &str, version: i64) -> Result<bool, Error> {
    c.execute(
        "DELETE FROM room_key_backups WHERE user_id = ?1 AND version = ?2",
        params![user_id, version],
    )?;
    Ok(c.execute(
        "UPDATE room_key_backup_versions SET deleted = 1 WHERE user_id = ?1 AND version = ?2 AND deleted = 0",
        params![user_id, version],
    )? > 0)
}

/// Advance a version's etag after its keys changed.
pub fn bump_backup_etag(c: &Connection, user_id: &str, version: i64) -> Result<(), Error> {
    c.execute(
        "UPDATE room_key_backup_versions SET etag = etag + 1 WHERE user_id = ?1 AND version = ?2",
        params![user_id, version],
    )?;
    Ok(())
}

/// Number of keys in a version.
pub fn backup_key_count(c: &Connection, user_id: &str, version: i64) -> Result<i64, Error> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM room_key_backups WHERE user_id = ?1 AND version = ?2",
        params![user_id, version],
        |r| r.get(0),
    )?)
}

fn key_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<BackupKeyRow> {
    Ok(BackupKeyRow {
        room_id: r.get(0)?,
        session_id: r.get(1)?,
        first_message_index: r.get(2)?,
        forwarded_count: r.get(3)?,
        is_verified: r.get(4)?,
        session_data: r.get(5)?,
    })
}

/// One stored key.
pub fn backup_key(
    c: &Connection,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> Result<Option<BackupKeyRow>, Error> {
    Ok(c.query_row(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
         FROM room_key_backups WHERE user_id = ?1 AND version = ?2 AND room_id = ?3 AND session_id = ?4",
        params![user_id, version, room_id, session_id],
        key_row,
    )
    .optional()?)
}

/// Keys of a version, optionally only one room's, ordered by room and session.
pub fn backup_keys(
    c: &Connection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
) -> Result<Vec<BackupKeyRow>, Error> {
    let mut st = c.prepare_cached(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
         FROM room_key_backups WHERE user_id = ?1 AND version = ?2 AND (?3 IS NULL OR room_id = ?3)
         ORDER BY room_id, session_id",
    )?;
    let rows = st.query_map(params![user_id, version, room_id], key_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Store (or replace) one key.
pub fn put_backup_key(
    c: &Connection,
    user_id: &str,
    version: i64,
    key: &BackupKeyRow,
) -> Result<(), Error> {
    c.prepare_cached(
        "INSERT INTO room_key_backups (user_id, version, room_id, session_id, first_message_index,
             forwarded_count, is_verified, session_data) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
             first_message_index = excluded.first_message_index, forwarded_count = excluded.forwarded_count,
             is_verified = excluded.is_verified, session_data = excluded.session_data",
    )?
    .execute(params![
        user_id,
        version,
        key.room_id,
        key.session_id,
        key.first_message_index,
        key.forwarded_count,
        key.is_verified,
        key.session_data
    ])?;
    Ok(())
}

/// Delete keys of a version: all, one room's, or one session's. Returns how many.
pub fn delete_backup_keys(
    c: &Connection,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> Result<usize, Error> {
    Ok(c.execute(
        "DELETE FROM room_key_backups WHERE user_id = ?1 AND version = ?2
             AND (?3 IS NULL OR room_id = ?3) AND (?4 IS NULL OR session_id = ?4)",
        params![user_id, version, room_id, session_id],
    )?)
}
