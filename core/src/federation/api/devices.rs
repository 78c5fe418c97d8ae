//! A local user's devices and keys for other servers: `GET /user/devices/{userId}`,
//! `POST /user/keys/query`, `POST /user/keys/claim`. Remote users in a request are
//! ignored (we answer for our own users only).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::extract::{FedJson, FedPath, Origin, user_id};
use crate::e2ee::keys::{self, ClaimRequest, QueryRequest};
use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Most users one key query or claim may name, and most devices one claim may name.
const MAX_KEY_REQUEST: usize = 1000;

pub(super) async fn user_devices(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(user): FedPath<String>,
) -> Result<Json<Value>, Error> {
    let user = user_id(&user)?;
    if !server.is_local_user(user) {
        return Err(Error::InvalidParam(format!(
            "{user} is not a user of this server"
        )));
    }
    let body = server.db.read_tx(|c| {
        if !storage::user_exists(c, user)? {
            return Err(Error::NotFound(format!("user {user} not found")));
        }
        let stream_id = storage::device_list_stream_id(c, user)?;
        // The same view a key query gives: the owner's own signatures only.
        let queried = keys::query_local(c, &origin, &[(user, &[])])?;
        let mut devices = Vec::new();
        for row in storage::user_device_keys(c, user)? {
            let mut device_keys = queried["device_keys"][user][&row.device_id].clone();
            if let Some(o) = device_keys.as_object_mut() {
                o.remove("unsigned");
            }
            let mut d = json!({ "device_id": row.device_id, "keys": device_keys });
            if let Some(name) = row.display_name {
                d["device_display_name"] = json!(name);
            }
            devices.push(d);
        }
        let mut body = json!({ "user_id": user, "stream_id": stream_id, "devices": devices });
        for (field, from) in [
            ("master_key", "master_keys"),
            ("self_signing_key", "self_signing_keys"),
        ] {
            if let Some(k) = queried[from].get(user) {
                body[field] = k.clone();
            }
        }
        Ok(body)
    })?;
    Ok(Json(body))
}

pub(super) async fn user_keys_query(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedJson(body): FedJson<QueryRequest>,
) -> Result<Json<Value>, Error> {
    if body.device_keys.len() > MAX_KEY_REQUEST {
        return Err(Error::InvalidParam(format!(
            "at most {MAX_KEY_REQUEST} users per key query"
        )));
    }
    let local: Vec<(&str, &[String])> = body
        .device_keys
        .iter()
        .filter(|(u, _)| server.is_local_user(u))
        .map(|(u, d)| (u.as_str(), d.as_slice()))
        .collect();
    let mut answer = server
        .db
        .read_tx(|c| keys::query_local(c, &origin, &local))?;
    // User-signing keys are private to their owner; never sent to other servers.
    if let Some(o) = answer.as_object_mut() {
        o.remove("user_signing_keys");
    }
    Ok(Json(answer))
}

pub(super) async fn user_keys_claim(
    State(server): State<Arc<Server>>,
    FedJson(body): FedJson<ClaimRequest>,
) -> Result<Json<Value>, Error> {
    let devices: usize = body.one_time_keys.values().map(BTreeMap::len).sum();
    if body.one_time_keys.len() > MAX_KEY_REQUEST || devices > MAX_KEY_REQUEST {
        return Err(Error::InvalidParam(format!(
            "at most {MAX_KEY_REQUEST} devices per key claim"
        )));
    }
    let local: BTreeMap<&str, &BTreeMap<String, String>> = body
        .one_time_keys
        .iter()
        .filter(|(u, _)| server.is_local_user(u))
        .map(|(u, d)| (u.as_str(), d))
        .collect();
    let claimed = server.db.write(|tx| keys::claim_local(tx, &local))?;
    Ok(Json(json!({ "one_time_keys": claimed })))
}
