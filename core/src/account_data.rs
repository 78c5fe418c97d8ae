//! Account data (global and per room), room tags and filters of a local user (handlers
//! in `client_api/account_data.rs`).

use serde_json::{Value, json};

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, next_stream_position};

/// Set `user`'s account data `ty` (in `room`, or global for an empty room) to
/// `content`, at a new stream position so `/sync` sends it. The read marker and push
/// rules have their own APIs, which keep them valid: setting them here is the spec's
/// 405.
pub fn set(
    server: &Server,
    user: &str,
    room: &str,
    ty: &str,
    content: &Value,
) -> Result<(), Error> {
    if ty == "m.fully_read" {
        return Err(Error::ServerControlled(
            "Cannot set m.fully_read through this API; use /read_markers".into(),
        ));
    }
    if ty == crate::push::PUSH_RULES && room.is_empty() {
        return Err(Error::ServerControlled(
            "Cannot set m.push_rules through this API; use /pushrules".into(),
        ));
    }
    let content = content.to_string();
    server.write(|tx| {
        let pos = next_stream_position(tx)?;
        storage::set_account_data(tx, user, room, ty, &content, pos)
    })
}

/// `user`'s tags on `room` (`{"tags": {…}}`, empty when none were set).
pub fn tags(server: &Server, user: &str, room: &str) -> Result<Value, Error> {
    let raw = server
        .db
        .read(|c| storage::account_data(c, user, room, "m.tag"))?;
    Ok(parse_tags(raw))
}

fn parse_tags(raw: Option<String>) -> Value {
    raw.and_then(|r| serde_json::from_str(&r).ok())
        .unwrap_or_else(|| json!({"tags": {}}))
}

/// Set `user`'s tag `tag` on `room` to `info`, or remove it (`None`). The tags are read
/// and written in one transaction, so two changes at once both stand.
pub fn set_tag(
    server: &Server,
    user: &str,
    room: &str,
    tag: &str,
    info: Option<Value>,
) -> Result<(), Error> {
    server.write(|tx| {
        let mut all = parse_tags(storage::account_data(tx, user, room, "m.tag")?);
        match info {
            Some(info) => all["tags"][tag] = info,
            None => {
                if let Some(map) = all["tags"].as_object_mut() {
                    map.remove(tag);
                }
            }
        }
        let pos = next_stream_position(tx)?;
        storage::set_account_data(tx, user, room, "m.tag", &all.to_string(), pos)
    })
}

/// Store `user`'s filter (already validated) and return its id.
pub fn save_filter(server: &Server, user: &str, filter: &Value) -> Result<i64, Error> {
    server.write(|tx| storage::save_filter(tx, user, &filter.to_string()))
}
