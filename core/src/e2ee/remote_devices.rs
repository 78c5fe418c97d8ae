//! Other servers' users' devices: the remote device-list cache and how it is kept.
//!
//! For a remote user who shares a room with a local user, the first `/keys/query` fetches
//! the whole list with `GET /_matrix/federation/v1/user/devices/{userId}` and caches it
//! with its `stream_id`. The user's server then sends an `m.device_list_update` EDU for
//! every change; one whose `prev_id`s are all at or below the cached `stream_id` is
//! applied to the cache, any other marks the list stale, and the next query re-fetches
//! it. `m.signing_key_update` EDUs replace the cached cross-signing keys. Users who share
//! no room with us are not cached (their server would not tell us of changes): their
//! keys are asked for with `user/keys/query` each time.
//!
//! Everything a remote server hands us is checked before it is stored or passed on:
//! device keys must be for the user and device they are listed under and carry a valid
//! self-signature by the device's ed25519 key; cross-signing keys must be the user's,
//! with the right usage, and a self-signing key must be signed by the master key. Sizes
//! are capped.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use rusqlite::Connection;
use serde_json::{Map, Value, json};

use super::cross_signing::parse_key;
use super::verify_signature;
use ruma::api::federation::device::get_devices;
use ruma::api::federation::keys::get_keys;

use crate::error::Error;
use crate::federation::client;
use crate::server::Server;
use crate::storage::{self, RemoteDevice, RemoteDeviceList};

/// Most devices kept for one remote user; the rest of a longer list is dropped.
pub const MAX_REMOTE_DEVICES: usize = 1000;
/// Largest JSON of one device's keys (or one cross-signing key) accepted from a server.
pub const MAX_KEY_JSON: usize = 16 * 1024;
/// Longest device display name kept.
const MAX_DISPLAY_NAME: usize = 256;
/// Most `user/devices` fetches under way to one server for one key query.
const FETCHES_PER_SERVER: usize = 4;
/// Longest wait for one remote server's answer.
pub const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// Check a remote `DeviceKeys` object listed as `user_id`'s device `device_id`; returns
/// it without `unsigned`, ready to store.
pub fn check_device_keys(user_id: &str, device_id: &str, keys: &Value) -> Result<String, String> {
    if !keys.is_object() {
        return Err("device keys are not an object".into());
    }
    if keys["user_id"].as_str() != Some(user_id) || keys["device_id"].as_str() != Some(device_id) {
        return Err(format!(
            "keys listed as {user_id} {device_id} name another device"
        ));
    }
    let ed_id = format!("ed25519:{device_id}");
    let ed_key = keys["keys"][&ed_id]
        .as_str()
        .ok_or_else(|| format!("no {ed_id} key"))?;
    verify_signature(keys, user_id, &ed_id, ed_key)?;
    let mut stored = keys.clone();
    if let Some(o) = stored.as_object_mut() {
        o.remove("unsigned");
    }
    let text = serde_json::to_string(&stored).map_err(|e| e.to_string())?;
    if text.len() > MAX_KEY_JSON {
        return Err(format!("{} bytes of device keys", text.len()));
    }
    Ok(text)
}

/// Check a remote user's master and self-signing keys (either may be absent; a
/// self-signing key needs a master key, given or `cached_master`, that signed it).
/// Returns the JSON to store for each.
pub fn check_cross_signing_keys(
    user_id: &str,
    master: Option<&Value>,
    self_signing: Option<&Value>,
    cached_master: Option<&str>,
) -> Result<(Option<String>, Option<String>), String> {
    let master = master
        .filter(|v| !v.is_null())
        .map(|v| parse_key(v, user_id, "master", "master").map_err(|e| e.to_string()))
        .transpose()?;
    let master_public = match (&master, cached_master) {
        (Some(m), _) => Some(m.row.public_key.clone()),
        (None, Some(json)) => serde_json::from_str::<Value>(json)
            .ok()
            .and_then(|v| first_ed25519_key(&v)),
        (None, None) => None,
    };
    let self_signing = match self_signing.filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let parsed =
                parse_key(v, user_id, "self_signing", "self_signing").map_err(|e| e.to_string())?;
            let master_public = master_public.ok_or("a self-signing key without a master key")?;
            verify_signature(
                v,
                user_id,
                &format!("ed25519:{master_public}"),
                &master_public,
            )?;
            Some(parsed.row.key_json)
        }
    };
    let master = master.map(|m| m.row.key_json);
    for json in master.iter().chain(self_signing.iter()) {
        if json.len() > MAX_KEY_JSON {
            return Err(format!("{} bytes of cross-signing key", json.len()));
        }
    }
    Ok((master, self_signing))
}

fn first_ed25519_key(key: &Value) -> Option<String> {
    key["keys"]
        .as_object()?
        .keys()
        .find_map(|id| id.strip_prefix("ed25519:").map(str::to_owned))
}

/// The checked devices of a `user/devices` answer (or of one user's `device_keys` in a
/// key query answer, `{device_id: keys}`), bad ones dropped with a log line.
fn checked_devices<'a>(
    user_id: &str,
    entries: impl Iterator<Item = (&'a str, &'a Value, Option<&'a str>)>,
) -> Vec<RemoteDevice> {
    let mut out = Vec::new();
    for (device_id, keys, name) in entries {
        if out.len() >= MAX_REMOTE_DEVICES {
            tracing::info!(%user_id, "remote device list cut at {MAX_REMOTE_DEVICES}");
            break;
        }
        match check_device_keys(user_id, device_id, keys) {
            Ok(key_json) => out.push(RemoteDevice {
                device_id: device_id.to_owned(),
                key_json,
                display_name: name
                    .filter(|n| n.len() <= MAX_DISPLAY_NAME)
                    .map(str::to_owned),
            }),
            Err(e) => {
                tracing::info!(%user_id, %device_id, error = %e, "remote device keys dropped")
            }
        }
    }
    out
}

/// A user's list as fetched: header and devices.
struct Fetched {
    list: RemoteDeviceList,
    devices: Vec<RemoteDevice>,
}

/// Fetch `user_id`'s whole list from their server with `user/devices`, checked.
async fn fetch_user_devices(server: &Server, user_id: &str) -> Result<Fetched, Error> {
    let destination = user_id
        .rsplit_once(':')
        .map(|(_, s)| s)
        .ok_or_else(|| Error::InvalidParam(format!("{user_id} has no server")))?;
    let user = client::parse_id(user_id)?;
    let call = client::execute(server, destination, get_devices::v1::Request::new(user));
    let answer = tokio::time::timeout(REMOTE_TIMEOUT, call)
        .await
        .map_err(|_| Error::RemoteServer(format!("{destination} did not answer in time")))??;
    if answer.user_id != user_id {
        return Err(Error::RemoteServer(format!(
            "{destination} answered for another user"
        )));
    }
    let stream_id = i64::try_from(u64::from(answer.stream_id)).unwrap_or(0);
    let devices = serde_json::to_value(&answer.devices)?;
    let devices = devices.as_array().map(Vec::as_slice).unwrap_or(&[]);
    let master_key = answer.master_key.map(serde_json::to_value).transpose()?;
    let self_signing_key = answer
        .self_signing_key
        .map(serde_json::to_value)
        .transpose()?;
    let devices = checked_devices(
        user_id,
        devices.iter().filter_map(|d| {
            Some((
                d["device_id"].as_str()?,
                &d["keys"],
                d["device_display_name"].as_str(),
            ))
        }),
    );
    let (master_key, self_signing_key) = check_cross_signing_keys(
        user_id,
        master_key.as_ref(),
        self_signing_key.as_ref(),
        None,
    )
    .unwrap_or_else(|e| {
        tracing::info!(%user_id, error = %e, "remote cross-signing keys dropped");
        (None, None)
    });
    Ok(Fetched {
        list: RemoteDeviceList {
            stream_id,
            stale: false,
            master_key,
            self_signing_key,
        },
        devices,
    })
}

/// Answer `user_id`'s part of a key query from the cache, re-fetching the list first
/// when it is missing or stale. `None`: the user shares no room with us (not cached).
async fn cached_or_fetched(server: &Server, user_id: &str) -> Result<Option<Fetched>, Error> {
    let own = server.server_name();
    let cached = server.db.read_tx(|c| {
        if !storage::shares_room_with_server(c, user_id, own)? {
            return Ok(None);
        }
        let Some(list) = storage::remote_device_list(c, user_id)? else {
            return Ok(Some(None));
        };
        if list.stale {
            return Ok(Some(None));
        }
        let devices = storage::remote_devices(c, user_id)?;
        Ok(Some(Some(Fetched { list, devices })))
    })?;
    match cached {
        None => Ok(None),
        Some(Some(hit)) => Ok(Some(hit)),
        Some(None) => {
            let fetched = fetch_user_devices(server, user_id).await?;
            server.db.write(|tx| {
                // Still sharing a room (we may have left while fetching)?
                if storage::shares_room_with_server(tx, user_id, own)? {
                    storage::replace_remote_device_list(
                        tx,
                        user_id,
                        &fetched.list,
                        &fetched.devices,
                    )?;
                }
                Ok(())
            })?;
            Ok(Some(fetched))
        }
    }
}

/// The key-query answer for remote users, `{user_id: wanted device ids}` grouped by
/// server: from the cache for users sharing a room, from `user/keys/query` for the rest.
/// Fills `body`'s `device_keys`, `master_keys` and `self_signing_keys`; returns the
/// servers that could not be asked, for `failures`.
pub async fn query(
    server: &Server,
    remote: BTreeMap<&str, Map<String, Value>>,
    body: &mut Value,
) -> Map<String, Value> {
    let asks: Vec<_> = remote
        .into_iter()
        .map(|(destination, users)| async move {
            let mut uncached = Map::new();
            let mut found = Vec::new();
            let mut error = None;
            // Cache misses cost one `user/devices` request each: a few at a time.
            let lookups: Vec<_> = users
                .into_iter()
                .map(|(user_id, wanted)| async move {
                    let result = cached_or_fetched(server, &user_id).await;
                    (user_id, wanted, result)
                })
                .collect();
            let mut lookups = futures::stream::iter(lookups).buffer_unordered(FETCHES_PER_SERVER);
            while let Some((user_id, wanted, result)) = lookups.next().await {
                match result {
                    Ok(Some(f)) => found.push((user_id, wanted, f)),
                    Ok(None) => {
                        uncached.insert(user_id, wanted);
                    }
                    Err(e) => error = Some(e),
                }
            }
            let queried = if uncached.is_empty() {
                None
            } else {
                Some(query_uncached(server, destination, &uncached).await)
            };
            (destination, found, queried, error)
        })
        .collect();
    let answers: Vec<_> = futures::stream::iter(asks)
        .buffer_unordered(super::keys::DESTINATIONS_AT_ONCE)
        .collect()
        .await;
    let mut failures = Map::new();
    for (destination, found, queried, error) in answers {
        for (user_id, wanted, f) in found {
            add_to_answer(body, &user_id, &wanted, &f);
        }
        match queried {
            Some(Ok(parts)) => {
                for (user_id, f) in parts {
                    add_to_answer(body, &user_id, &json!([]), &f);
                }
            }
            Some(Err(e)) => {
                failures.insert(destination.to_owned(), super::keys::remote_failure(&e));
            }
            None => {}
        }
        if let Some(e) = error {
            failures.insert(destination.to_owned(), super::keys::remote_failure(&e));
        }
    }
    failures
}

/// `user/keys/query` for users we do not cache, checked like a fetched list.
async fn query_uncached(
    server: &Server,
    destination: &str,
    users: &Map<String, Value>,
) -> Result<Vec<(String, Fetched)>, Error> {
    let device_keys = serde_json::from_value(Value::Object(users.clone()))
        .map_err(|e| Error::InvalidParam(format!("bad user or device id in a key query: {e}")))?;
    let call = client::execute(server, destination, get_keys::v1::Request::new(device_keys));
    let answer = tokio::time::timeout(REMOTE_TIMEOUT, call)
        .await
        .map_err(|_| Error::RemoteServer(format!("{destination} did not answer in time")))??;
    let answer = json!({
        "device_keys": answer.device_keys,
        "master_keys": answer.master_keys,
        "self_signing_keys": answer.self_signing_keys,
    });
    let mut out = Vec::new();
    // Only what we asked about, and only that server's users.
    for user_id in users.keys() {
        let devices = answer["device_keys"][user_id]
            .as_object()
            .map(|m| {
                checked_devices(
                    user_id,
                    m.iter().map(|(id, k)| {
                        (
                            id.as_str(),
                            k,
                            k["unsigned"]["device_display_name"].as_str(),
                        )
                    }),
                )
            })
            .unwrap_or_default();
        let (master_key, self_signing_key) = check_cross_signing_keys(
            user_id,
            answer["master_keys"].get(user_id),
            answer["self_signing_keys"].get(user_id),
            None,
        )
        .unwrap_or((None, None));
        out.push((
            user_id.clone(),
            Fetched {
                list: RemoteDeviceList {
                    stream_id: 0,
                    stale: false,
                    master_key,
                    self_signing_key,
                },
                devices,
            },
        ));
    }
    Ok(out)
}

/// Put one user's devices (those in `wanted`, all when it is empty) and cross-signing
/// keys into a key-query answer.
fn add_to_answer(body: &mut Value, user_id: &str, wanted: &Value, f: &Fetched) {
    let wanted: Vec<&str> = wanted
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut devices = Map::new();
    for d in &f.devices {
        if !wanted.is_empty() && !wanted.contains(&d.device_id.as_str()) {
            continue;
        }
        let Ok(mut keys) = serde_json::from_str::<Value>(&d.key_json) else {
            continue;
        };
        if let Some(name) = &d.display_name {
            keys["unsigned"] = json!({ "device_display_name": name });
        }
        devices.insert(d.device_id.clone(), keys);
    }
    body["device_keys"][user_id] = Value::Object(devices);
    for (field, key) in [
        ("master_keys", &f.list.master_key),
        ("self_signing_keys", &f.list.self_signing_key),
    ] {
        if let Some(k) = key
            .as_deref()
            .and_then(|k| serde_json::from_str::<Value>(k).ok())
        {
            body[field][user_id] = k;
        }
    }
}

/// Apply an `m.device_list_update` from `user_id`'s server to the cache (inside the
/// EDU's write transaction). Returns whether the list was applied (`false`: not cached,
/// an old update, or marked stale).
pub fn apply_device_list_update(
    tx: &Connection,
    user_id: &str,
    content: &Value,
) -> Result<bool, Error> {
    let Some(list) = storage::remote_device_list(tx, user_id)? else {
        return Ok(false);
    };
    if list.stale {
        return Ok(false);
    }
    let Some(stream_id) = content["stream_id"].as_i64() else {
        storage::mark_remote_device_list_stale(tx, user_id)?;
        return Ok(false);
    };
    if stream_id <= list.stream_id {
        // Seen (or superseded by a full fetch) already.
        return Ok(false);
    }
    let prev_known = match content.get("prev_id") {
        None | Some(Value::Null) => true,
        Some(Value::Array(prev)) => prev
            .iter()
            .all(|p| p.as_i64().is_some_and(|p| p <= list.stream_id)),
        Some(_) => false,
    };
    let device_id = content["device_id"].as_str().unwrap_or("");
    if !prev_known || device_id.is_empty() {
        // We missed an update (or it is not about one device): fetch it all next time.
        storage::mark_remote_device_list_stale(tx, user_id)?;
        return Ok(false);
    }
    if content["deleted"].as_bool() == Some(true) {
        storage::delete_remote_device(tx, user_id, device_id)?;
    } else {
        let keys = &content["keys"];
        let name = content["device_display_name"].as_str();
        let checked = if keys.is_object() {
            check_device_keys(user_id, device_id, keys)
        } else {
            Err("no keys".into())
        };
        match checked {
            Ok(key_json) => {
                if storage::remote_devices(tx, user_id)?.len() >= MAX_REMOTE_DEVICES {
                    storage::mark_remote_device_list_stale(tx, user_id)?;
                    return Ok(false);
                }
                storage::upsert_remote_device(
                    tx,
                    user_id,
                    &RemoteDevice {
                        device_id: device_id.to_owned(),
                        key_json,
                        display_name: name
                            .filter(|n| n.len() <= MAX_DISPLAY_NAME)
                            .map(str::to_owned),
                    },
                )?
            }
            Err(e) => {
                tracing::info!(%user_id, %device_id, error = %e, "device update without usable keys; list marked stale");
                storage::mark_remote_device_list_stale(tx, user_id)?;
                return Ok(false);
            }
        }
    }
    storage::set_remote_device_list_stream_id(tx, user_id, stream_id)?;
    Ok(true)
}

/// Apply an `m.signing_key_update` (`{user_id, master_key?, self_signing_key?}`) to the
/// cache. Keys that do not check out mark the list stale instead.
pub fn apply_signing_key_update(
    tx: &Connection,
    user_id: &str,
    content: &Value,
) -> Result<(), Error> {
    let Some(list) = storage::remote_device_list(tx, user_id)? else {
        return Ok(());
    };
    let master = content.get("master_key");
    // A new master key invalidates the cached self-signing key's signature, so only a
    // self-signing key in the same update (or signed by the cached master) is kept.
    let cached_master = if master.is_some_and(|m| !m.is_null()) {
        None
    } else {
        list.master_key.as_deref()
    };
    match check_cross_signing_keys(
        user_id,
        master,
        content.get("self_signing_key"),
        cached_master,
    ) {
        Ok((m, s)) => {
            storage::set_remote_cross_signing_keys(tx, user_id, m.as_deref(), s.as_deref())?
        }
        Err(e) => {
            tracing::info!(%user_id, error = %e, "signing key update refused; list marked stale");
            storage::mark_remote_device_list_stale(tx, user_id)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::test_util;
    use base64::Engine;
    use ed25519_dalek::{Signer, SigningKey};

    const BOB: &str = "@bob:y";

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(bytes)
    }

    fn sign(key: &SigningKey, user: &str, key_id: &str, object: &mut Value) {
        let canonical: ruma::CanonicalJsonObject =
            serde_json::from_value(object.clone()).expect("canonical");
        let bytes = ruma::signatures::to_canonical_json_string_for_signing(&canonical)
            .expect("canonical string");
        object["signatures"][user][key_id] = json!(b64(&key.sign(bytes.as_bytes()).to_bytes()));
    }

    fn device(seed: u8, device_id: &str) -> Value {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let mut keys = json!({
            "user_id": BOB,
            "device_id": device_id,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2"],
            "keys": { format!("ed25519:{device_id}"): b64(&key.verifying_key().to_bytes()) },
        });
        sign(&key, BOB, &format!("ed25519:{device_id}"), &mut keys);
        keys
    }

    fn cache(db: &storage::Db, stream_id: i64) {
        db.write(|tx| {
            storage::replace_remote_device_list(
                tx,
                BOB,
                &RemoteDeviceList {
                    stream_id,
                    stale: false,
                    master_key: None,
                    self_signing_key: None,
                },
                &[],
            )
        })
        .expect("cache");
    }

    #[test]
    fn device_keys_must_be_self_signed_and_listed_under_their_own_ids() {
        let keys = device(1, "B1");
        assert!(check_device_keys(BOB, "B1", &keys).is_ok());
        assert!(
            check_device_keys(BOB, "B2", &keys).is_err(),
            "another device id"
        );
        assert!(
            check_device_keys("@eve:y", "B1", &keys).is_err(),
            "another user"
        );
        let mut forged = keys.clone();
        forged["keys"]["curve25519:B1"] = json!("c3dpdGNoZWQ");
        assert!(check_device_keys(BOB, "B1", &forged).is_err(), "tampered");
        let mut huge = device(1, "B1");
        huge["padding"] = json!("x".repeat(MAX_KEY_JSON));
        sign(
            &SigningKey::from_bytes(&[1; 32]),
            BOB,
            "ed25519:B1",
            &mut huge,
        );
        assert!(check_device_keys(BOB, "B1", &huge).is_err(), "too big");
    }

    #[test]
    fn updates_apply_in_order_and_a_gap_marks_the_list_stale() {
        let (_dir, db) = test_util::db();
        cache(&db, 10);
        let apply = |content: Value| {
            db.write(|tx| apply_device_list_update(tx, BOB, &content))
                .expect("apply")
        };
        let update = |stream_id: i64, prev: &[i64], device_id: &str, keys: Value| {
            json!({"user_id": BOB, "device_id": device_id, "stream_id": stream_id,
                   "prev_id": prev, "keys": keys})
        };
        assert!(apply(update(11, &[10], "B1", device(1, "B1"))));
        assert!(apply(update(12, &[11], "B2", device(2, "B2"))));
        let ids: Vec<String> = db
            .read(|c| storage::remote_devices(c, BOB))
            .expect("devices")
            .into_iter()
            .map(|d| d.device_id)
            .collect();
        assert_eq!(ids, ["B1", "B2"]);
        // A replay changes nothing; a deletion removes the device.
        assert!(!apply(update(12, &[11], "B2", device(2, "B2"))));
        assert!(apply(
            json!({"user_id": BOB, "device_id": "B2", "stream_id": 13,
                             "prev_id": [12], "deleted": true})
        ));
        assert_eq!(
            db.read(|c| storage::remote_devices(c, BOB))
                .expect("d")
                .len(),
            1
        );
        // Forged keys are not stored: the list goes stale instead.
        let mut forged = device(3, "B3");
        forged["keys"]["ed25519:B3"] = json!(b64(&[9; 32]));
        assert!(!apply(update(14, &[13], "B3", forged)));
        let list = db
            .read(|c| storage::remote_device_list(c, BOB))
            .expect("list")
            .expect("cached");
        assert!(list.stale);

        // A gap (prev_id never seen) marks a fresh list stale too.
        cache(&db, 20);
        assert!(!apply(update(23, &[22], "B4", device(4, "B4"))));
        let list = db
            .read(|c| storage::remote_device_list(c, BOB))
            .expect("list")
            .expect("cached");
        assert!(list.stale);
        assert_eq!(list.stream_id, 20);
    }

    #[test]
    fn a_self_signing_key_needs_the_master_keys_signature() {
        let master = SigningKey::from_bytes(&[5; 32]);
        let ssk = SigningKey::from_bytes(&[6; 32]);
        let master_pub = b64(&master.verifying_key().to_bytes());
        let ssk_pub = b64(&ssk.verifying_key().to_bytes());
        let master_key = json!({"user_id": BOB, "usage": ["master"],
                                "keys": {format!("ed25519:{master_pub}"): master_pub}});
        let mut ssk_key = json!({"user_id": BOB, "usage": ["self_signing"],
                                 "keys": {format!("ed25519:{ssk_pub}"): ssk_pub}});
        assert!(
            check_cross_signing_keys(BOB, Some(&master_key), Some(&ssk_key), None).is_err(),
            "unsigned self-signing key"
        );
        sign(&master, BOB, &format!("ed25519:{master_pub}"), &mut ssk_key);
        let (m, s) = check_cross_signing_keys(BOB, Some(&master_key), Some(&ssk_key), None)
            .expect("valid keys");
        assert!(m.is_some() && s.is_some());
        assert!(
            check_cross_signing_keys("@eve:y", Some(&master_key), None, None).is_err(),
            "another user's key"
        );
    }
}
