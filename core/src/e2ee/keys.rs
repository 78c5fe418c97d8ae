//! `/keys/upload`, `/keys/query` and `/keys/claim`.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use ruma::api::federation::keys::claim_keys;
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{
    check_signatures_shape, merge_signatures, object, signed_part, string_field, verify_signature,
};
use crate::error::Error;
use crate::requester::Requester;
use crate::server::Server;
use crate::storage;

/// The algorithm clients count on; always reported, even at zero.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// At most this many one-time keys per upload (a client sends ~50 at a time).
const MAX_ONE_TIME_KEYS_PER_UPLOAD: usize = 1000;

/// `POST /keys/upload` body.
#[derive(Deserialize, Default)]
pub struct UploadRequest {
    /// The device's identity keys.
    pub device_keys: Option<Value>,
    /// `{"algorithm:key_id": key}`.
    #[serde(default)]
    pub one_time_keys: Map<String, Value>,
    /// `{"algorithm:key_id": key}`, one per algorithm.
    pub fallback_keys: Option<Map<String, Value>>,
    /// The MSC2732 name of `fallback_keys`, still sent by some clients.
    #[serde(rename = "org.matrix.msc2732.fallback_keys")]
    pub unstable_fallback_keys: Option<Map<String, Value>>,
}

/// A one-time or fallback key split from its `algorithm:key_id` name.
struct NamedKey<'a> {
    algorithm: &'a str,
    key_id: &'a str,
    json: String,
}

/// Upload keys for the caller's device; returns `one_time_key_counts`.
pub fn upload(server: &Server, caller: &Requester, req: UploadRequest) -> Result<Value, Error> {
    let device_keys = req
        .device_keys
        .as_ref()
        .map(|dk| validate_device_keys(dk, caller))
        .transpose()?;
    if req.one_time_keys.len() > MAX_ONE_TIME_KEYS_PER_UPLOAD {
        return Err(Error::InvalidParam(format!(
            "at most {MAX_ONE_TIME_KEYS_PER_UPLOAD} one-time keys per upload"
        )));
    }
    let otks = named_keys(&req.one_time_keys, "one_time_keys")?;
    let fallback = req.fallback_keys.or(req.unstable_fallback_keys);
    let fallback = fallback
        .as_ref()
        .map(|f| named_keys(f, "fallback_keys"))
        .transpose()?
        .unwrap_or_default();
    server
        .write(|tx| {
            if let Some(dk) = &device_keys {
                store_device_keys(tx, caller, dk)?;
            }
            for k in &otks {
                store_one_time_key(tx, caller, k)?;
            }
            for k in &fallback {
                store_fallback_key(tx, caller, k)?;
            }
            one_time_key_counts(tx, &caller.user_id, &caller.device_id)
        })
        .map(|counts| json!({ "one_time_key_counts": counts }))
}

/// Check a `DeviceKeys` object: it must be the caller's device, have string keys
/// including its own ed25519 key, and carry a valid self-signature by that key.
fn validate_device_keys(dk: &Value, caller: &Requester) -> Result<Value, Error> {
    object(dk, "device_keys")?;
    let user_id = string_field(dk, "user_id", "device_keys")?;
    let device_id = string_field(dk, "device_id", "device_keys")?;
    if user_id != caller.user_id || device_id != caller.device_id {
        return Err(Error::InvalidParam(format!(
            "device_keys are for {user_id} {device_id}, but this access token is {} {}",
            caller.user_id, caller.device_id
        )));
    }
    let algorithms = dk["algorithms"]
        .as_array()
        .filter(|a| a.iter().all(Value::is_string))
        .ok_or_else(|| Error::BadJson("device_keys.algorithms must be a list of strings".into()))?;
    if algorithms.is_empty() {
        return Err(Error::BadJson("device_keys.algorithms is empty".into()));
    }
    let keys = object(&dk["keys"], "device_keys.keys")?;
    if keys
        .iter()
        .any(|(id, k)| !id.contains(':') || !k.is_string())
    {
        return Err(Error::BadJson(
            "device_keys.keys must map algorithm:device_id to strings".into(),
        ));
    }
    check_signatures_shape(dk, "device_keys")?;
    let ed_id = format!("ed25519:{device_id}");
    let ed_key = keys
        .get(&ed_id)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::BadJson(format!("device_keys.keys has no {ed_id}")))?;
    verify_signature(dk, user_id, &ed_id, ed_key).map_err(Error::InvalidSignature)?;
    // `unsigned` is ours to fill in (the display name) when answering queries.
    let mut stored = dk.clone();
    if let Some(o) = stored.as_object_mut() {
        o.remove("unsigned");
    }
    Ok(stored)
}

/// Store device keys. The identity keys of a device never change: a different upload for
/// a device that has keys is refused (log in as a new device instead), the same keys with
/// new signatures replace the old ones.
fn store_device_keys(tx: &Connection, caller: &Requester, dk: &Value) -> Result<(), Error> {
    let existing = storage::device_keys(tx, &caller.user_id, &caller.device_id)?;
    if let Some(old) = existing {
        let old: Value = serde_json::from_str(&old)?;
        if signed_part(&old) != signed_part(dk) {
            return Err(Error::InvalidParam(format!(
                "device {} already has different keys; log in as a new device",
                caller.device_id
            )));
        }
        if old == *dk {
            return Ok(());
        }
    }
    storage::set_device_keys(
        tx,
        &caller.user_id,
        &caller.device_id,
        &serde_json::to_string(dk)?,
    )?;
    super::device_lists::mark_changed(tx, &caller.user_id, Some(&caller.device_id))?;
    Ok(())
}

/// Split and check `{"algorithm:key_id": key}`. A key is a string (unsigned curve25519)
/// or an object with a string `key` and well-formed `signatures`.
fn named_keys<'a>(map: &'a Map<String, Value>, what: &str) -> Result<Vec<NamedKey<'a>>, Error> {
    let mut out = Vec::with_capacity(map.len());
    for (name, key) in map {
        let (algorithm, key_id) = name
            .split_once(':')
            .filter(|(a, k)| !a.is_empty() && !k.is_empty())
            .ok_or_else(|| Error::BadJson(format!("{what}: {name:?} is not algorithm:key_id")))?;
        let ok = match key {
            Value::String(s) => !s.is_empty(),
            Value::Object(o) => {
                o.get("key")
                    .and_then(Value::as_str)
                    .is_some_and(|s| !s.is_empty())
                    && check_signatures_shape(key, what).is_ok()
            }
            _ => false,
        };
        if !ok {
            return Err(Error::BadJson(format!(
                "{what}.{name} must be a key string or an object with a string `key`"
            )));
        }
        out.push(NamedKey {
            algorithm,
            key_id,
            json: serde_json::to_string(key)?,
        });
    }
    Ok(out)
}

/// Store a one-time key; re-uploading the same key is harmless, a different key under a
/// used id is an error (the client's state is broken).
fn store_one_time_key(tx: &Connection, caller: &Requester, k: &NamedKey<'_>) -> Result<(), Error> {
    let (user, device) = (&caller.user_id, &caller.device_id);
    match storage::one_time_key(tx, user, device, k.algorithm, k.key_id)? {
        Some(old) if old == k.json => Ok(()),
        Some(_) => Err(Error::InvalidParam(format!(
            "one-time key {}:{} already exists with different content",
            k.algorithm, k.key_id
        ))),
        None => storage::insert_one_time_key(tx, user, device, k.algorithm, k.key_id, &k.json),
    }
}

/// Replace the fallback key of an algorithm, unless it is the same key (then keep its
/// used flag, so a retried upload does not resurrect a used key as "unused").
fn store_fallback_key(tx: &Connection, caller: &Requester, k: &NamedKey<'_>) -> Result<(), Error> {
    let (user, device) = (&caller.user_id, &caller.device_id);
    if let Some((id, json, _)) = storage::fallback_key(tx, user, device, k.algorithm)?
        && id == k.key_id
        && json == k.json
    {
        return Ok(());
    }
    storage::set_fallback_key(tx, user, device, k.algorithm, k.key_id, &k.json)
}

/// `{algorithm: count}` of unclaimed one-time keys, always with `signed_curve25519`.
pub fn one_time_key_counts(c: &Connection, user_id: &str, device_id: &str) -> Result<Value, Error> {
    let mut counts = Map::new();
    counts.insert(SIGNED_CURVE25519.into(), json!(0));
    for (alg, n) in storage::one_time_key_counts(c, user_id, device_id)? {
        counts.insert(alg, json!(n));
    }
    Ok(Value::Object(counts))
}

/// `POST /keys/query` body.
#[derive(Deserialize)]
pub struct QueryRequest {
    /// `{user_id: [device_id]}`; an empty list means every device.
    pub device_keys: BTreeMap<String, Vec<String>>,
    /// Accepted; remote servers get a fixed timeout.
    #[allow(dead_code)]
    pub timeout: Option<u64>,
}

/// Servers asked at once by one key query or claim: a request naming thousands of
/// servers (a 1 MiB body holds ~20k users) must not open thousands of requests at once.
pub const DESTINATIONS_AT_ONCE: usize = 16;

/// Longest wait for one remote server's answer to a proxied key query or claim.
const REMOTE_KEYS_TIMEOUT: Duration = Duration::from_secs(10);

/// Answer a key query: local users from the database, remote users from the remote
/// device-list cache or by asking their servers (see `remote_devices`), all servers at
/// once. A server that cannot be asked is named in `failures`.
pub async fn query(
    server: &Server,
    caller: &Requester,
    req: &QueryRequest,
) -> Result<Value, Error> {
    let mut local = Vec::new();
    let mut remote: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for (user_id, devices) in &req.device_keys {
        if server.is_local_user(user_id) {
            local.push((user_id.as_str(), devices.as_slice()));
        } else if let Some((_, destination)) = user_id.rsplit_once(':') {
            remote
                .entry(destination)
                .or_default()
                .insert(user_id.clone(), json!(devices));
        }
    }
    let mut body = server
        .db
        .read_tx(|c| query_local(c, &caller.user_id, &local))?;
    let failures = super::remote_devices::query(server, remote, &mut body).await;
    body["failures"] = Value::Object(failures);
    Ok(body)
}

/// `POST /_matrix/federation/v1/user/keys/claim` to `destination` for `users`
/// (`{user_id: {device_id: algorithm}}`), with a timeout.
async fn claim_remote(
    server: &Server,
    destination: &str,
    users: &Map<String, Value>,
) -> Result<Value, Error> {
    let claims = serde_json::from_value(Value::Object(users.clone()))
        .map_err(|e| Error::InvalidParam(format!("bad user or device id in a key claim: {e}")))?;
    let call = crate::federation::client::execute(
        server,
        destination,
        claim_keys::v1::Request::new(claims),
    );
    let answer = tokio::time::timeout(REMOTE_KEYS_TIMEOUT, call)
        .await
        .map_err(|_| Error::RemoteServer(format!("{destination} did not answer in time")))??;
    Ok(json!({ "one_time_keys": answer.one_time_keys }))
}

/// A destination's entry in a key answer's `failures` (an internal error's detail
/// stays in the log).
pub(super) fn remote_failure(e: &Error) -> Value {
    json!({"status": 503, "message": e.public_message()})
}

/// The local part of a key query: device keys with merged signatures and display names,
/// and cross-signing keys (user-signing keys only for the caller's own user).
pub fn query_local(
    c: &Connection,
    caller: &str,
    users: &[(&str, &[String])],
) -> Result<Value, Error> {
    let mut device_keys = Map::new();
    let mut master = Map::new();
    let mut self_signing = Map::new();
    let mut user_signing = Map::new();
    for (user_id, wanted) in users {
        device_keys.insert(
            (*user_id).to_owned(),
            user_devices(c, caller, user_id, wanted)?,
        );
        let user_id = *user_id;
        if let Some(k) = cross_signing_key(c, caller, user_id, "master")? {
            master.insert(user_id.to_owned(), k);
        }
        if let Some(k) = cross_signing_key(c, caller, user_id, "self_signing")? {
            self_signing.insert(user_id.to_owned(), k);
        }
        if user_id == caller
            && let Some(k) = cross_signing_key(c, caller, user_id, "user_signing")?
        {
            user_signing.insert(user_id.to_owned(), k);
        }
    }
    Ok(json!({
        "device_keys": device_keys,
        "master_keys": master,
        "self_signing_keys": self_signing,
        "user_signing_keys": user_signing,
    }))
}

fn user_devices(
    c: &Connection,
    caller: &str,
    user_id: &str,
    wanted: &[String],
) -> Result<Value, Error> {
    let mut out = Map::new();
    for row in storage::user_device_keys(c, user_id)? {
        if !wanted.is_empty() && !wanted.contains(&row.device_id) {
            continue;
        }
        let mut keys: Value = serde_json::from_str(&row.key_json)?;
        merge_signatures(
            &mut keys,
            &visible_signatures(c, caller, user_id, &row.device_id)?,
        );
        if let Some(name) = &row.display_name {
            keys["unsigned"] = json!({ "device_display_name": name });
        }
        out.insert(row.device_id, keys);
    }
    Ok(Value::Object(out))
}

/// A cross-signing key with the signatures the caller may see merged in.
fn cross_signing_key(
    c: &Connection,
    caller: &str,
    user_id: &str,
    key_type: &str,
) -> Result<Option<Value>, Error> {
    let Some(row) = storage::cross_signing_key(c, user_id, key_type)? else {
        return Ok(None);
    };
    let mut key: Value = serde_json::from_str(&row.key_json)?;
    merge_signatures(
        &mut key,
        &visible_signatures(c, caller, user_id, &row.public_key)?,
    );
    Ok(Some(key))
}

/// Signatures the owner made on their own keys are public; a signature by another user's
/// user-signing key is only shown to that user (as Synapse does): it is private trust.
fn visible_signatures(
    c: &Connection,
    caller: &str,
    target_user: &str,
    target_key: &str,
) -> Result<Vec<storage::SignatureRow>, Error> {
    Ok(storage::signatures_on(c, target_user, target_key)?
        .into_iter()
        .filter(|s| s.signer_user_id == target_user || s.signer_user_id == caller)
        .collect())
}

/// `POST /keys/claim` body.
#[derive(Deserialize)]
pub struct ClaimRequest {
    /// `{user_id: {device_id: algorithm}}`.
    pub one_time_keys: BTreeMap<String, BTreeMap<String, String>>,
    /// Accepted; remote servers get a fixed timeout.
    #[allow(dead_code)]
    pub timeout: Option<u64>,
}

/// Claim one key per requested device: local ones in one write transaction, remote ones
/// from their servers (`POST /_matrix/federation/v1/user/keys/claim`).
pub async fn claim(server: &Server, req: &ClaimRequest) -> Result<Value, Error> {
    let mut local = BTreeMap::new();
    let mut remote: BTreeMap<&str, Map<String, Value>> = BTreeMap::new();
    for (user_id, devices) in &req.one_time_keys {
        if server.is_local_user(user_id) {
            local.insert(user_id.as_str(), devices);
        } else if let Some((_, destination)) = user_id.rsplit_once(':') {
            remote
                .entry(destination)
                .or_default()
                .insert(user_id.clone(), json!(devices));
        }
    }
    let mut claimed = server.db.write(|tx| claim_local(tx, &local))?;
    let asks: Vec<_> = remote
        .into_iter()
        .map(|(destination, users)| async move {
            let answer = claim_remote(server, destination, &users).await;
            (destination, users, answer)
        })
        .collect();
    let answers: Vec<_> = futures::stream::iter(asks)
        .buffer_unordered(DESTINATIONS_AT_ONCE)
        .collect()
        .await;
    let mut failures = Map::new();
    for (destination, users, answer) in answers {
        match answer {
            Ok(answer) => {
                for (user_id, asked) in &users {
                    let per_device = checked_claim(&answer["one_time_keys"][user_id], asked);
                    if !per_device.is_empty() {
                        claimed[user_id] = Value::Object(per_device);
                    }
                }
            }
            Err(e) => {
                failures.insert(destination.to_owned(), remote_failure(&e));
            }
        }
    }
    Ok(json!({ "one_time_keys": claimed, "failures": failures }))
}

/// What a remote server claimed for one user, kept only where it makes sense: devices
/// we asked about, one key each, of the algorithm we asked for, of a sane size. (The
/// client checks the key's signature by the device.)
fn checked_claim(answer: &Value, asked: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    for (device_id, algorithm) in asked.as_object().into_iter().flatten() {
        let Some(keys) = answer[device_id].as_object() else {
            continue;
        };
        let Some(algorithm) = algorithm.as_str() else {
            continue;
        };
        let mut entries = keys.iter();
        if let (Some((name, key)), None) = (entries.next(), entries.next())
            && name.split_once(':').is_some_and(|(a, _)| a == algorithm)
            && key.to_string().len() <= super::remote_devices::MAX_KEY_JSON
        {
            out.insert(device_id.clone(), json!({ name: key }));
        }
    }
    out
}

/// For each device: take (delete) one one-time key of the algorithm; with none left,
/// hand out the fallback key, marked used but kept, so the device can still be reached
/// until it uploads a new one. Devices with neither are left out.
pub fn claim_local(
    tx: &Connection,
    wanted: &BTreeMap<&str, &BTreeMap<String, String>>,
) -> Result<Value, Error> {
    let mut out = Map::new();
    for (user_id, devices) in wanted {
        let mut per_device = Map::new();
        for (device_id, algorithm) in *devices {
            if let Some((key_id, json)) = claim_one(tx, user_id, device_id, algorithm)? {
                per_device.insert(
                    device_id.clone(),
                    json!({ format!("{algorithm}:{key_id}"): serde_json::from_str::<Value>(&json)? }),
                );
            }
        }
        if !per_device.is_empty() {
            out.insert((*user_id).to_owned(), Value::Object(per_device));
        }
    }
    Ok(Value::Object(out))
}

fn claim_one(
    tx: &Connection,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> Result<Option<(String, String)>, Error> {
    if let Some(k) = storage::take_one_time_key(tx, user_id, device_id, algorithm)? {
        return Ok(Some(k));
    }
    let Some((key_id, json, _)) = storage::fallback_key(tx, user_id, device_id, algorithm)? else {
        return Ok(None);
    };
    storage::mark_fallback_key_used(tx, user_id, device_id, algorithm)?;
    Ok(Some((key_id, json)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::test_util;

    const ALICE: &str = "@alice:x";
    const BOB: &str = "@bob:x";

    fn otk(db: &crate::storage::Db, user: &str, device: &str, id: &str) {
        db.write(|tx| {
            storage::insert_one_time_key(
                tx,
                user,
                device,
                "signed_curve25519",
                id,
                &json!({"key": id}).to_string(),
            )
        })
        .expect("insert otk");
    }

    fn claim_for(db: &crate::storage::Db, user: &str, device: &str) -> Value {
        let devices: BTreeMap<String, String> =
            [(device.to_owned(), "signed_curve25519".to_owned())].into();
        let wanted: BTreeMap<&str, &BTreeMap<String, String>> = [(user, &devices)].into();
        db.write(|tx| claim_local(tx, &wanted)).expect("claim")
    }

    #[test]
    fn claims_consume_one_time_keys_then_fall_back() {
        let (_dir, db) = test_util::db();
        test_util::device(&db, ALICE, "A1");
        otk(&db, ALICE, "A1", "AAAA");
        otk(&db, ALICE, "A1", "AAAB");
        db.write(|tx| {
            storage::set_fallback_key(
                tx,
                ALICE,
                "A1",
                "signed_curve25519",
                "FFFF",
                &json!({"key": "fb", "fallback": true}).to_string(),
            )
        })
        .expect("fallback");

        // Each one-time key is handed out exactly once, oldest first.
        let first = claim_for(&db, ALICE, "A1");
        assert_eq!(first[ALICE]["A1"]["signed_curve25519:AAAA"]["key"], "AAAA");
        let second = claim_for(&db, ALICE, "A1");
        assert_eq!(second[ALICE]["A1"]["signed_curve25519:AAAB"]["key"], "AAAB");
        let counts = db
            .read(|c| one_time_key_counts(c, ALICE, "A1"))
            .expect("counts");
        assert_eq!(counts, json!({"signed_curve25519": 0}));
        let unused = db
            .read(|c| storage::unused_fallback_key_types(c, ALICE, "A1"))
            .expect("unused");
        assert_eq!(unused, vec!["signed_curve25519".to_owned()]);

        // Then the fallback key, as often as asked, marked used but kept.
        for _ in 0..2 {
            let fb = claim_for(&db, ALICE, "A1");
            assert_eq!(fb[ALICE]["A1"]["signed_curve25519:FFFF"]["key"], "fb");
        }
        let unused = db
            .read(|c| storage::unused_fallback_key_types(c, ALICE, "A1"))
            .expect("unused");
        assert!(unused.is_empty());

        // A new fallback key starts unused again.
        db.write(|tx| {
            storage::set_fallback_key(
                tx,
                ALICE,
                "A1",
                "signed_curve25519",
                "GGGG",
                "{\"key\":\"g\"}",
            )
        })
        .expect("new fallback");
        let unused = db
            .read(|c| storage::unused_fallback_key_types(c, ALICE, "A1"))
            .expect("unused");
        assert_eq!(unused, vec!["signed_curve25519".to_owned()]);
    }

    #[test]
    fn devices_without_keys_are_left_out() {
        let (_dir, db) = test_util::db();
        test_util::device(&db, BOB, "B1");
        assert_eq!(claim_for(&db, BOB, "B1"), json!({}));
        assert_eq!(claim_for(&db, BOB, "NOPE"), json!({}));
    }

    #[test]
    fn deleting_a_device_deletes_its_keys() {
        let (_dir, db) = test_util::db();
        test_util::device(&db, ALICE, "A1");
        otk(&db, ALICE, "A1", "AAAA");
        db.write(|tx| {
            storage::set_device_keys(tx, ALICE, "A1", "{}")?;
            storage::insert_to_device(tx, 1_000, ALICE, "A1", BOB, "m.test", "{}")
        })
        .expect("keys and a pending message");
        let before = db.max_stream_position().expect("pos");
        db.write(|tx| crate::account::delete_device_in(tx, ALICE, "A1").map(|_| ()))
            .expect("delete");
        let (keys, counts, inbox, changes) = db
            .read(|c| {
                Ok((
                    storage::device_keys(c, ALICE, "A1")?,
                    storage::one_time_key_counts(c, ALICE, "A1")?,
                    storage::has_to_device_up_to(c, ALICE, "A1", i64::MAX)?,
                    storage::device_list_changes_visible_to(c, ALICE, before, i64::MAX)?,
                ))
            })
            .expect("read");
        assert_eq!(keys, None);
        assert!(counts.is_empty());
        assert!(!inbox, "pending to-device messages go with the device");
        assert_eq!(
            changes,
            vec![ALICE.to_owned()],
            "the deletion is a device-list change"
        );
        // Re-creating the device id starts from nothing.
        test_util::device(&db, ALICE, "A1");
        assert_eq!(claim_for(&db, ALICE, "A1"), json!({}));
    }
}
