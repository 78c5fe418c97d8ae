//! Redactions: who may redact what, and applying the redaction algorithm.

use rusqlite::Connection;

use super::power_levels;
use crate::error::Error;
use crate::storage;

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
