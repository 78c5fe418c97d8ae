//! Pushers: stored and listed, never delivered to (no push gateway traffic yet).

use serde_json::{Map, Value};

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, now_ms};

const MAX_APP_ID: usize = 64;
const MAX_PUSHKEY: usize = 512;
const MAX_PROFILE_TAG: usize = 32;
const NOTIFY_PATH: &str = "/_matrix/push/v1/notify";

fn string<'a>(body: &'a Value, name: &str, max: usize) -> Result<&'a str, Error> {
    let s = body
        .get(name)
        .ok_or_else(|| Error::MissingParam(format!("`{name}` is required")))?
        .as_str()
        .ok_or_else(|| Error::BadJson(format!("`{name}` must be a string")))?;
    if s.len() > max {
        return Err(Error::InvalidParam(format!(
            "`{name}` is longer than {max} bytes"
        )));
    }
    Ok(s)
}

/// An http pusher's URL must be http(s) and end at the push gateway's notify path.
fn check_url(data: &Map<String, Value>) -> Result<(), Error> {
    let url = data
        .get("url")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::MissingParam("`data.url` is required for http pushers".into()))?;
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| Error::InvalidParam("`data.url` must be an http(s) URL".into()))?;
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let path = path.split(['?', '#']).next().unwrap_or_default();
    if path != NOTIFY_PATH {
        return Err(Error::InvalidParam(format!(
            "`data.url` must have the path {NOTIFY_PATH}"
        )));
    }
    Ok(())
}

/// The pusher to store: the request body without `append`, checked.
fn checked_pusher(body: &Value) -> Result<Value, Error> {
    let kind = body.get("kind").and_then(Value::as_str);
    match kind {
        Some("http") => {}
        Some("email") => {
            return Err(Error::InvalidParam(
                "email pushers need a verified email address; this server has none".into(),
            ));
        }
        _ => {
            return Err(Error::InvalidParam(
                "`kind` must be http (or null to delete)".into(),
            ));
        }
    }
    for name in ["app_display_name", "device_display_name", "lang"] {
        string(body, name, 1024)?;
    }
    if body.get("profile_tag").is_some_and(|v| !v.is_null()) {
        string(body, "profile_tag", MAX_PROFILE_TAG)?;
    }
    let data = body
        .get("data")
        .and_then(Value::as_object)
        .ok_or_else(|| Error::MissingParam("`data` must be an object".into()))?;
    check_url(data)?;
    let mut pusher = body.as_object().cloned().unwrap_or_default();
    pusher.remove("append");
    Ok(Value::Object(pusher))
}

/// `POST /pushers/set`: add, replace, or (`kind: null`) delete a pusher. The pusher
/// belongs to `device_id`, the device that set it: it goes when that device goes (a
/// logout, a password change that logs out the other devices).
pub fn set_pusher(
    server: &Server,
    user_id: &str,
    device_id: &str,
    body: &Value,
) -> Result<(), Error> {
    let app_id = string(body, "app_id", MAX_APP_ID)?.to_owned();
    let pushkey = string(body, "pushkey", MAX_PUSHKEY)?.to_owned();
    if body.get("kind").is_some_and(Value::is_null) {
        server.write(|tx| storage::delete_pusher(tx, user_id, &app_id, &pushkey))?;
        return Ok(());
    }
    let pusher = checked_pusher(body)?.to_string();
    let append = body.get("append").and_then(Value::as_bool).unwrap_or(false);
    server.write(|tx| {
        if !append {
            // The spec: without `append`, this key now belongs to this user only.
            storage::delete_other_users_pushers(tx, user_id, &app_id, &pushkey)?;
        }
        storage::set_pusher(tx, user_id, device_id, &app_id, &pushkey, &pusher, now_ms())
    })
}

/// `GET /pushers`.
pub fn get_pushers(server: &Server, user_id: &str) -> Result<Vec<Value>, Error> {
    let stored = server.db.read(|c| storage::pushers(c, user_id))?;
    Ok(stored
        .iter()
        .filter_map(|s| serde_json::from_str(s).ok())
        .collect())
}
