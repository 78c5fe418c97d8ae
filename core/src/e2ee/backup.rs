//! Server-side key backup (`/room_keys`): versions, and encrypted room keys in them.
//!
//! Keys are opaque to the server except for the three fields of the spec's replacement
//! rule. Writes go to the current (newest) version only; the etag changes whenever the
//! keys of a version change, so clients can tell whether to re-download.

use std::collections::BTreeMap;

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage::{self, BackupKeyRow, BackupVersionRow};

/// `POST /room_keys/version` and `PUT /room_keys/version/{version}` body.
#[derive(Deserialize)]
pub struct VersionRequest {
    /// Backup algorithm, e.g. `m.megolm_backup.v1.curve25519-aes-sha2`.
    pub algorithm: String,
    /// Algorithm-specific data (public key, signatures).
    pub auth_data: Map<String, Value>,
    /// On update: must match the path if given.
    pub version: Option<String>,
}

/// One backed-up key as clients send it.
#[derive(Deserialize, Clone, Debug)]
pub struct KeyBackupData {
    /// First message index the key decrypts.
    pub first_message_index: u32,
    /// Forwarding hops.
    pub forwarded_count: u32,
    /// Whether the sending device was verified.
    pub is_verified: bool,
    /// Encrypted payload.
    pub session_data: Map<String, Value>,
}

/// `{"sessions": {session_id: KeyBackupData}}`.
#[derive(Deserialize)]
pub struct RoomKeyBackup {
    /// Keys by session id.
    pub sessions: BTreeMap<String, KeyBackupData>,
}

/// `{"rooms": {room_id: RoomKeyBackup}}`.
#[derive(Deserialize)]
pub struct KeysBackup {
    /// Keys by room.
    pub rooms: BTreeMap<String, RoomKeyBackup>,
}

/// Which keys of a version a request addresses.
#[derive(Clone, Copy, Debug)]
pub enum Scope<'a> {
    /// Every key.
    All,
    /// One room's keys.
    Room(&'a str),
    /// One session's key.
    Session(&'a str, &'a str),
}

/// The spec's rule for a key that is already backed up: keep the verified one; if both
/// or neither are verified, the lower first message index; then the lower forwarded
/// count. With everything equal the stored key stays.
pub fn should_replace(existing: &BackupKeyRow, new: &BackupKeyRow) -> bool {
    if existing.is_verified != new.is_verified {
        return new.is_verified;
    }
    if existing.first_message_index != new.first_message_index {
        return new.first_message_index < existing.first_message_index;
    }
    new.forwarded_count < existing.forwarded_count
}

/// Version numbers are ours, so anything not a number is simply not found.
fn parse_version(v: &str) -> Result<i64, Error> {
    v.parse::<i64>()
        .ok()
        .filter(|n| *n > 0)
        .ok_or_else(|| Error::NotFound(format!("unknown backup version {v}")))
}

fn version_json(c: &Connection, user_id: &str, row: &BackupVersionRow) -> Result<Value, Error> {
    Ok(json!({
        "algorithm": row.algorithm,
        "auth_data": serde_json::from_str::<Value>(&row.auth_data)?,
        "count": storage::backup_key_count(c, user_id, row.version)?,
        "etag": row.etag.to_string(),
        "version": row.version.to_string(),
    }))
}

/// Create a backup version; it becomes the current one.
pub fn create_version(
    server: &Server,
    caller: &Requester,
    req: &VersionRequest,
) -> Result<Value, Error> {
    let auth_data = serde_json::to_string(&req.auth_data)?;
    let version = server.db.write(|tx| {
        storage::create_backup_version(tx, &caller.user_id, &req.algorithm, &auth_data)
    })?;
    Ok(json!({ "version": version.to_string() }))
}

/// The current version (`None`) or a given one.
pub fn get_version(
    server: &Server,
    caller: &Requester,
    version: Option<&str>,
) -> Result<Value, Error> {
    let wanted = version.map(parse_version).transpose()?;
    server.db.read_tx(|c| {
        let row = match wanted {
            Some(v) => storage::backup_version(c, &caller.user_id, v)?,
            None => storage::latest_backup_version(c, &caller.user_id)?,
        };
        let row = row.ok_or_else(|| Error::NotFound("no such backup version".into()))?;
        version_json(c, &caller.user_id, &row)
    })
}

/// Replace a version's `auth_data` (the algorithm cannot change).
pub fn update_version(
    server: &Server,
    caller: &Requester,
    version: &str,
    req: &VersionRequest,
) -> Result<Value, Error> {
    let v = parse_version(version)?;
    if req.version.as_deref().is_some_and(|b| b != version) {
        return Err(Error::InvalidParam(
            "the body's version does not match the path".into(),
        ));
    }
    let auth_data = serde_json::to_string(&req.auth_data)?;
    server.db.write(|tx| {
        let row = storage::backup_version(tx, &caller.user_id, v)?
            .ok_or_else(|| Error::NotFound("no such backup version".into()))?;
        if row.algorithm != req.algorithm {
            return Err(Error::InvalidParam(
                "the algorithm of a backup version cannot change".into(),
            ));
        }
        storage::set_backup_auth_data(tx, &caller.user_id, v, &auth_data)
    })?;
    Ok(json!({}))
}

/// Delete a version and its keys.
pub fn delete_version(server: &Server, caller: &Requester, version: &str) -> Result<Value, Error> {
    let v = parse_version(version)?;
    if !server
        .db
        .write(|tx| storage::delete_backup_version(tx, &caller.user_id, v))?
    {
        return Err(Error::NotFound("no such backup version".into()));
    }
    Ok(json!({}))
}

/// Writes must name the current version: an unknown one is 404, an older one 403
/// `M_WRONG_ROOM_KEYS_VERSION` with the current version, so the client can switch.
fn writable_version(c: &Connection, user_id: &str, version: &str) -> Result<i64, Error> {
    let v = parse_version(version)?;
    let current = storage::latest_backup_version(c, user_id)?
        .ok_or_else(|| Error::NotFound("no backup version exists".into()))?;
    if storage::backup_version(c, user_id, v)?.is_none() {
        return Err(Error::NotFound(format!("unknown backup version {version}")));
    }
    if current.version != v {
        return Err(Error::WrongRoomKeysVersion(Some(
            current.version.to_string(),
        )));
    }
    Ok(v)
}

/// Store keys under the replacement rule; answers `{etag, count}`.
pub fn put_keys(
    server: &Server,
    caller: &Requester,
    version: &str,
    keys: Vec<BackupKeyRow>,
) -> Result<Value, Error> {
    for k in &keys {
        check_room_id(&k.room_id)?;
    }
    server.db.write(|tx| {
        let v = writable_version(tx, &caller.user_id, version)?;
        let changed = store_keys(tx, &caller.user_id, v, &keys)?;
        if changed {
            storage::bump_backup_etag(tx, &caller.user_id, v)?;
        }
        etag_and_count(tx, &caller.user_id, v)
    })
}

/// Store each key that wins against the stored one; true when anything was written.
pub fn store_keys(
    tx: &Connection,
    user_id: &str,
    version: i64,
    keys: &[BackupKeyRow],
) -> Result<bool, Error> {
    let mut changed = false;
    for k in keys {
        let existing = storage::backup_key(tx, user_id, version, &k.room_id, &k.session_id)?;
        if existing.is_none_or(|e| should_replace(&e, k)) {
            storage::put_backup_key(tx, user_id, version, k)?;
            changed = true;
        }
    }
    Ok(changed)
}

fn etag_and_count(c: &Connection, user_id: &str, version: i64) -> Result<Value, Error> {
    let row = storage::backup_version(c, user_id, version)?
        .ok_or_else(|| Error::NotFound("no such backup version".into()))?;
    Ok(json!({
        "etag": row.etag.to_string(),
        "count": storage::backup_key_count(c, user_id, version)?,
    }))
}

fn check_room_id(room_id: &str) -> Result<(), Error> {
    if ruma::RoomId::parse(room_id).is_err() {
        return Err(Error::InvalidParam(format!("invalid room id {room_id}")));
    }
    Ok(())
}

/// Flatten a request into rows.
pub fn rows_from(rooms: BTreeMap<String, RoomKeyBackup>) -> Result<Vec<BackupKeyRow>, Error> {
    let mut out = Vec::new();
    for (room_id, room) in rooms {
        for (session_id, data) in room.sessions {
            out.push(row_from(&room_id, &session_id, data)?);
        }
    }
    Ok(out)
}

/// One request key as a row.
pub fn row_from(
    room_id: &str,
    session_id: &str,
    data: KeyBackupData,
) -> Result<BackupKeyRow, Error> {
    Ok(BackupKeyRow {
        room_id: room_id.to_owned(),
        session_id: session_id.to_owned(),
        first_message_index: data.first_message_index.into(),
        forwarded_count: data.forwarded_count.into(),
        is_verified: data.is_verified,
        session_data: serde_json::to_string(&data.session_data)?,
    })
}

fn key_json(k: &BackupKeyRow) -> Result<Value, Error> {
    Ok(json!({
        "first_message_index": k.first_message_index,
        "forwarded_count": k.forwarded_count,
        "is_verified": k.is_verified,
        "session_data": serde_json::from_str::<Value>(&k.session_data)?,
    }))
}

/// Read keys of a version: `{rooms}`, `{sessions}` or one key, by scope.
pub fn get_keys(
    server: &Server,
    caller: &Requester,
    version: &str,
    scope: Scope<'_>,
) -> Result<Value, Error> {
    let v = parse_version(version)?;
    server.db.read_tx(|c| {
        if storage::backup_version(c, &caller.user_id, v)?.is_none() {
            return Err(Error::NotFound(format!("unknown backup version {version}")));
        }
        match scope {
            Scope::Session(room, session) => {
                let k = storage::backup_key(c, &caller.user_id, v, room, session)?
                    .ok_or_else(|| Error::NotFound("no key for this session".into()))?;
                key_json(&k)
            }
            Scope::Room(room) => {
                let rows = storage::backup_keys(c, &caller.user_id, v, Some(room))?;
                let mut rooms = rooms_json(&rows)?;
                Ok(match rooms.get_mut(room) {
                    Some(r) => r.take(),
                    None => json!({"sessions": {}}),
                })
            }
            Scope::All => Ok(
                json!({"rooms": rooms_json(&storage::backup_keys(c, &caller.user_id, v, None)?)?}),
            ),
        }
    })
}

fn rooms_json(rows: &[BackupKeyRow]) -> Result<Value, Error> {
    let mut rooms = Map::new();
    for k in rows {
        let room = rooms
            .entry(k.room_id.clone())
            .or_insert_with(|| json!({"sessions": {}}));
        room["sessions"][&k.session_id] = key_json(k)?;
    }
    Ok(Value::Object(rooms))
}

/// Delete keys of a version by scope; answers `{etag, count}`.
pub fn delete_keys(
    server: &Server,
    caller: &Requester,
    version: &str,
    scope: Scope<'_>,
) -> Result<Value, Error> {
    let v = parse_version(version)?;
    let (room, session) = match scope {
        Scope::All => (None, None),
        Scope::Room(r) => (Some(r), None),
        Scope::Session(r, s) => (Some(r), Some(s)),
    };
    server.db.write(|tx| {
        if storage::backup_version(tx, &caller.user_id, v)?.is_none() {
            return Err(Error::NotFound(format!("unknown backup version {version}")));
        }
        if storage::delete_backup_keys(tx, &caller.user_id, v, room, session)? > 0 {
            storage::bump_backup_etag(tx, &caller.user_id, v)?;
        }
        etag_and_count(tx, &caller.user_id, v)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::test_util;

    fn key(fmi: i64, fwd: i64, verified: bool, data: &str) -> BackupKeyRow {
        BackupKeyRow {
            room_id: "!r:x".into(),
            session_id: "s".into(),
            first_message_index: fmi,
            forwarded_count: fwd,
            is_verified: verified,
            session_data: data.into(),
        }
    }

    #[test]
    fn replacement_rule_follows_the_spec() {
        let base = key(5, 1, false, "old");
        // Verified beats unverified, whatever the indexes say.
        assert!(should_replace(&base, &key(9, 9, true, "new")));
        assert!(!should_replace(
            &key(9, 9, true, "old"),
            &key(0, 0, false, "new")
        ));
        // Same verification: the lower first message index wins.
        assert!(should_replace(&base, &key(4, 3, false, "new")));
        assert!(!should_replace(&base, &key(6, 0, false, "new")));
        // Then the lower forwarded count.
        assert!(should_replace(&base, &key(5, 0, false, "new")));
        assert!(!should_replace(&base, &key(5, 2, false, "new")));
        // All equal: keep what is stored.
        assert!(!should_replace(&base, &key(5, 1, false, "new")));
    }

    #[test]
    fn stored_keys_follow_the_rule_and_count() {
        let (_dir, db) = test_util::db();
        let user = "@a:x";
        let v = db
            .write(|tx| storage::create_backup_version(tx, user, "alg", "{}"))
            .expect("version");
        let put = |k: BackupKeyRow| db.write(|tx| store_keys(tx, user, v, &[k])).expect("store");
        let stored = || {
            db.read(|c| storage::backup_key(c, user, v, "!r:x", "s"))
                .expect("read")
                .expect("present")
                .session_data
        };
        assert!(put(key(5, 1, false, "first")));
        assert!(!put(key(7, 0, false, "worse index")));
        assert_eq!(stored(), "first");
        assert!(put(key(7, 0, true, "verified")));
        assert_eq!(stored(), "verified");
        assert!(!put(key(0, 0, false, "unverified")));
        assert_eq!(stored(), "verified");
        let count = db
            .read(|c| storage::backup_key_count(c, user, v))
            .expect("count");
        assert_eq!(count, 1);
    }

    #[test]
    fn only_the_current_version_is_writable() {
        let (_dir, db) = test_util::db();
        let user = "@a:x";
        let check = |v: &str| db.read(|c| writable_version(c, user, v));
        assert!(matches!(check("1"), Err(Error::NotFound(_))));
        db.write(|tx| storage::create_backup_version(tx, user, "alg", "{}"))
            .expect("v1");
        db.write(|tx| storage::create_backup_version(tx, user, "alg", "{}"))
            .expect("v2");
        assert_eq!(check("2").expect("current"), 2);
        assert!(matches!(
            check("1"),
            Err(Error::WrongRoomKeysVersion(Some(ref v))) if v == "2"
        ));
        assert!(matches!(check("3"), Err(Error::NotFound(_))));
        assert!(matches!(check("abc"), Err(Error::NotFound(_))));
    }
}
