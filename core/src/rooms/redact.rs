//! Redactions: who may redact what, and applying the redaction algorithm.

use rusqlite::Connection;
use serde_json::{Map, Value};

use super::power_levels;
use crate::error::Error;
use crate::events::{ClientEventOptions, client_event, redact_json, rules_for};
use crate::storage::{self, StoredEvent, now_ms};

/// The spec leaves this check to the server: a redaction applies only when its sender
/// sent the target or has at least the room's `redact` power level.
pub fn check_redaction_allowed(
    c: &Connection,
    room_id: &str,
    sender: &str,
    target: &str,
) -> Result<bool, Error> {
    let Some(ev) = storage::get_event(c, target)? else {
        return Ok(false);
    };
    if ev.room_id != room_id {
        return Ok(false);
    }
    if ev.sender == sender {
        return Ok(true);
    }
    let pl = power_levels(c, room_id)?;
    Ok(pl.user_level(sender) >= pl.threshold("redact"))
}

/// Redact the target in place (when allowed), remembering the redaction in `unsigned`.
pub(super) fn apply_redaction(
    c: &Connection,
    room_id: &str,
    version: &str,
    redaction: &StoredEvent,
    target: &str,
) -> Result<(), Error> {
    let Some(ev) = storage::get_event(c, target)? else {
        return Ok(());
    };
    if ev.room_id != room_id || ev.redacted_by.is_some() {
        return Ok(());
    }
    if !check_redaction_allowed(c, room_id, &redaction.sender, target)? {
        return Ok(());
    }
    let (_, rules) = rules_for(version)?;
    let redacted = redact_json(&ev.json, &rules)?;
    storage::mark_redacted(c, target, &redacted, &redaction.event_id)?;
    storage::unindex_event(c, ev.stream_ordering)?;
    crate::relations::on_redacted(c, target)?;
    let because = client_event(
        redaction,
        ClientEventOptions {
            include_room_id: true,
            now_ms: now_ms(),
            viewer: None,
        },
    );
    let mut unsigned: Map<String, Value> = ev
        .unsigned
        .as_deref()
        .and_then(|u| serde_json::from_str(u).ok())
        .unwrap_or_default();
    // prev_content of a redacted state event must not leak the content either.
    unsigned.remove("prev_content");
    unsigned.insert("redacted_because".into(), because);
    storage::set_unsigned(c, target, &Value::Object(unsigned).to_string())
}
