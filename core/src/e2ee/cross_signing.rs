//! Cross-signing: `POST /keys/device_signing/upload` and `POST /keys/signatures/upload`.
//!
//! The master key vouches for the self-signing key (which signs the user's devices) and
//! the user-signing key (which signs other users' master keys). Every signature the
//! server stores is checked with ed25519 against the key that claims to have made it.

use std::collections::BTreeSet;

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{check_signatures_shape, object, signed_part, string_field, verify_signature};
use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage::{self, CrossSigningKeyRow, SignatureRow};

/// `POST /keys/device_signing/upload` body.
#[derive(Deserialize, Default)]
pub struct SigningKeysRequest {
    /// The master key.
    pub master_key: Option<Value>,
    /// Signs the user's own devices.
    pub self_signing_key: Option<Value>,
    /// Signs other users' master keys.
    pub user_signing_key: Option<Value>,
    /// User-interactive auth, needed to replace existing keys.
    pub auth: Option<Value>,
}

/// A checked key ready to store.
pub(crate) struct ParsedKey {
    pub(crate) key_type: &'static str,
    pub(crate) row: CrossSigningKeyRow,
}

/// Keys checked and compared with the stored ones, waiting for [`commit`].
pub struct Prepared {
    keys: Vec<ParsedKey>,
    /// Whether the upload replaces keys the user already has, which needs UIAA (the
    /// first upload does not, as in spec v1.11 / MSC3967).
    pub needs_auth: bool,
}

/// Check an upload: shapes, owner, usage, and that the sub-keys are signed by the (new
/// or existing) master key.
pub fn prepare(
    server: &Server,
    caller: &Requester,
    req: &SigningKeysRequest,
) -> Result<Prepared, Error> {
    let user = caller.user_id.as_str();
    let mut keys = Vec::new();
    for (key_type, usage, v) in [
        ("master", "master", &req.master_key),
        ("self_signing", "self_signing", &req.self_signing_key),
        ("user_signing", "user_signing", &req.user_signing_key),
    ] {
        if let Some(v) = v.as_ref().filter(|v| !v.is_null()) {
            keys.push(parse_key(v, user, key_type, usage)?);
        }
    }
    server.db.read_tx(|c| {
        let master = match keys.iter().find(|k| k.key_type == "master") {
            Some(k) => Some(k.row.clone()),
            None => storage::cross_signing_key(c, user, "master")?,
        };
        for k in keys.iter().filter(|k| k.key_type != "master") {
            let master = master.as_ref().ok_or_else(|| {
                Error::InvalidParam("upload a master key before its sub-keys".into())
            })?;
            let json: Value = serde_json::from_str(&k.row.key_json)?;
            let id = format!("ed25519:{}", master.public_key);
            verify_signature(&json, user, &id, &master.public_key)
                .map_err(|e| Error::InvalidSignature(format!("{} key: {e}", k.key_type)))?;
        }
        let needs_auth = needs_auth(c, user, &keys)?;
        Ok(Prepared { keys, needs_auth })
    })
}

/// Replacing a stored key with a different one needs auth; re-sending the very same keys
/// (a retried request) does not, nor does the first upload.
fn needs_auth(c: &Connection, user: &str, keys: &[ParsedKey]) -> Result<bool, Error> {
    if storage::cross_signing_key(c, user, "master")?.is_none() {
        return Ok(false);
    }
    for k in keys {
        if storage::cross_signing_key(c, user, k.key_type)?.as_ref() != Some(&k.row) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Check one cross-signing key object.
pub(crate) fn parse_key(
    v: &Value,
    user: &str,
    key_type: &'static str,
    usage: &str,
) -> Result<ParsedKey, Error> {
    let what = format!("{key_type} key");
    object(v, &what)?;
    if string_field(v, "user_id", &what)? != user {
        return Err(Error::InvalidParam(format!(
            "{what} belongs to another user"
        )));
    }
    let usages = v["usage"]
        .as_array()
        .ok_or_else(|| Error::BadJson(format!("{what}.usage must be a list")))?;
    if !usages.iter().any(|u| u == usage) {
        return Err(Error::InvalidParam(format!(
            "{what}.usage must contain {usage}"
        )));
    }
    let keys = object(&v["keys"], &format!("{what}.keys"))?;
    let mut entries = keys.iter();
    let (Some((id, key)), None) = (entries.next(), entries.next()) else {
        return Err(Error::InvalidParam(format!(
            "{what} must have exactly one key"
        )));
    };
    let public_key = id
        .strip_prefix("ed25519:")
        .filter(|p| key.as_str() == Some(p) && super::decode_b64(p, 32).is_some())
        .ok_or_else(|| {
            Error::InvalidParam(format!(
                "{what}: the key must be ed25519:<base64 key> mapped to the same key"
            ))
        })?;
    check_signatures_shape(v, &what)?;
    Ok(ParsedKey {
        key_type,
        row: CrossSigningKeyRow {
            public_key: public_key.to_owned(),
            key_json: serde_json::to_string(&signed_part_with_signatures(v))?,
        },
    })
}

/// The key as stored: everything but `unsigned`.
fn signed_part_with_signatures(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("unsigned");
    }
    v
}

/// Store checked keys. A replaced key takes its old signatures with it, both those on
/// it and those it made, since they vouch for a key that is gone.
pub fn commit(server: &Server, caller: &Requester, prepared: &Prepared) -> Result<(), Error> {
    let user = caller.user_id.as_str();
    server.write(|tx| {
        // Another upload may have landed since `prepare` decided no auth was needed; it
        // must not be replaced without auth.
        if !prepared.needs_auth && needs_auth(tx, user, &prepared.keys)? {
            return Err(Error::Forbidden(
                "cross-signing keys changed meanwhile; retry the upload".into(),
            ));
        }
        let mut changed = false;
        let mut public_change = false;
        for k in &prepared.keys {
            let old = storage::cross_signing_key(tx, user, k.key_type)?;
            if old.as_ref() == Some(&k.row) {
                continue;
            }
            if let Some(old) = old {
                storage::delete_signatures_on(tx, user, &old.public_key)?;
                storage::delete_signatures_by(tx, user, &format!("ed25519:{}", old.public_key))?;
            }
            storage::set_cross_signing_key(tx, user, k.key_type, &k.row)?;
            changed = true;
            public_change |= k.key_type != "user_signing";
        }
        if changed {
            super::device_lists::mark_changed(tx, user, None)?;
        }
        if public_change {
            queue_signing_key_update(tx, user)?;
        }
        Ok(())
    })
}

/// Queue an `m.signing_key_update` with the user's master and self-signing keys for
/// every other server sharing a room with them (user-signing keys stay private).
fn queue_signing_key_update(tx: &Connection, user: &str) -> Result<(), Error> {
    let own = user.rsplit_once(':').map(|(_, s)| s).unwrap_or("");
    let mut content = json!({ "user_id": user });
    for (field, key_type) in [
        ("master_key", "master"),
        ("self_signing_key", "self_signing"),
    ] {
        if let Some(row) = storage::cross_signing_key(tx, user, key_type)? {
            content[field] = serde_json::from_str(&row.key_json)?;
        }
    }
    let edu = json!({ "edu_type": "m.signing_key_update", "content": content });
    for destination in storage::servers_sharing_rooms(tx, user)? {
        if destination != own {
            storage::enqueue_edu(tx, &destination, &edu)?;
        }
    }
    Ok(())
}

/// `POST /keys/signatures/upload`: `{user_id: {key_id: signed object}}`. Returns the
/// per-key `failures`; good signatures are stored even when others fail.
pub fn upload_signatures(
    server: &Server,
    caller: &Requester,
    body: &Map<String, Value>,
) -> Result<Value, Error> {
    for (user, keys) in body {
        for (key_id, signed) in object(keys, user)? {
            object(signed, &format!("{user}.{key_id}"))?;
        }
    }
    server.write(|tx| {
        let mut failures = Map::new();
        let mut touched = BTreeSet::new();
        for (user, keys) in body {
            for (key_id, signed) in keys.as_object().into_iter().flatten() {
                match sign_one(tx, server, caller, user, key_id, signed)? {
                    Ok(true) => {
                        touched.insert(user.as_str());
                    }
                    Ok(false) => {}
                    Err(msg) => {
                        let per_user = failures.entry(user.clone()).or_insert_with(|| json!({}));
                        per_user[key_id] = json!({"errcode": "M_INVALID_SIGNATURE", "error": msg});
                    }
                }
            }
        }
        // Whoever shares a room with a signed user re-fetches their keys and sees it.
        for user in touched {
            super::device_lists::mark_changed(tx, user, None)?;
        }
        Ok(json!({ "failures": failures }))
    })
}

/// What a signature may target, and which keys may sign it.
struct Target {
    stored: Value,
    key_id: String,
    /// `(signer key id, public key)` of the caller's keys allowed to sign it.
    signers: Vec<(String, String)>,
}

/// Check and store the caller's new signatures on one key. The inner result is the
/// per-key verdict (true when any signature was stored); the outer one a database error.
fn sign_one(
    tx: &Connection,
    server: &Server,
    caller: &Requester,
    target_user: &str,
    key_id: &str,
    signed: &Value,
) -> Result<Result<bool, String>, Error> {
    if !server.is_local_user(target_user) {
        return Ok(Err(
            "signing keys of remote users is not supported yet".into()
        ));
    }
    let target = match find_target(tx, caller, target_user, key_id)? {
        Ok(t) => t,
        Err(msg) => return Ok(Err(msg)),
    };
    let rows = match new_signatures(caller, target_user, signed, &target) {
        Ok(rows) => rows,
        Err(msg) => return Ok(Err(msg)),
    };
    for row in &rows {
        storage::add_signature(tx, target_user, &target.key_id, row)?;
    }
    Ok(Ok(!rows.is_empty()))
}

/// The caller's signatures in `signed` that are not part of the stored key, each made
/// by a key allowed to sign the target and verified.
fn new_signatures(
    caller: &Requester,
    target_user: &str,
    signed: &Value,
    target: &Target,
) -> Result<Vec<SignatureRow>, String> {
    if signed["user_id"] != target_user {
        return Err("user_id of the signed object does not match".into());
    }
    if signed_part(signed) != signed_part(&target.stored) {
        return Err("the signed object differs from the stored key".into());
    }
    let sigs = signed["signatures"][&caller.user_id]
        .as_object()
        .ok_or("no signatures by the uploading user")?;
    let mut rows = Vec::new();
    for (signer_key_id, sig) in sigs {
        if target.stored["signatures"][&caller.user_id][signer_key_id] == *sig {
            continue; // Part of the key as uploaded; nothing new.
        }
        let (_, public) = target
            .signers
            .iter()
            .find(|(id, _)| id == signer_key_id)
            .ok_or_else(|| format!("{signer_key_id} may not sign this key"))?;
        verify_signature(signed, &caller.user_id, signer_key_id, public)?;
        rows.push(SignatureRow {
            signer_user_id: caller.user_id.clone(),
            signer_key_id: signer_key_id.clone(),
            signature: sig.as_str().unwrap_or_default().to_owned(),
        });
    }
    Ok(rows)
}

/// Own devices are signed by the self-signing key, the own master key by a device key,
/// other users' master keys by the caller's user-signing key.
fn find_target(
    tx: &Connection,
    caller: &Requester,
    target_user: &str,
    key_id: &str,
) -> Result<Result<Target, String>, Error> {
    let own = target_user == caller.user_id;
    let master = storage::cross_signing_key(tx, target_user, "master")?;
    if let Some(m) = master.filter(|m| m.public_key == key_id) {
        let signers = if own {
            own_device_keys(tx, &caller.user_id)?
        } else {
            own_key(tx, &caller.user_id, "user_signing")?
        };
        return Ok(Ok(Target {
            stored: serde_json::from_str(&m.key_json)?,
            key_id: m.public_key,
            signers,
        }));
    }
    if own && let Some(dk) = storage::device_keys(tx, target_user, key_id)? {
        return Ok(Ok(Target {
            stored: serde_json::from_str(&dk)?,
            key_id: key_id.to_owned(),
            signers: own_key(tx, &caller.user_id, "self_signing")?,
        }));
    }
    Ok(Err(format!(
        "no key {key_id} of {target_user} that you may sign"
    )))
}

fn own_key(tx: &Connection, user: &str, key_type: &str) -> Result<Vec<(String, String)>, Error> {
    Ok(storage::cross_signing_key(tx, user, key_type)?
        .map(|k| (format!("ed25519:{}", k.public_key), k.public_key))
        .into_iter()
        .collect())
}

fn own_device_keys(tx: &Connection, user: &str) -> Result<Vec<(String, String)>, Error> {
    let mut out = Vec::new();
    for row in storage::user_device_keys(tx, user)? {
        let keys: Value = serde_json::from_str(&row.key_json)?;
        let id = format!("ed25519:{}", row.device_id);
        if let Some(public) = keys["keys"][&id].as_str() {
            out.push((id, public.to_owned()));
        }
    }
    Ok(out)
}
