//! PDUs: building, hashing, signing, redaction and the client event format.
//!
//! The canonical JSON, content hashes, signatures and reference hashes all come from
//! ruma (`ruma::signatures`, `ruma::canonical_json`); this module only arranges them.

mod build;
mod format;
mod pdu;

pub use build::{NewEvent, build_pdu, redact_json, room_id_from_create_event_id};
pub use format::{ClientEvent, ClientEventOptions, client_event, stripped_state};
pub use pdu::Pdu;

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::error::Error;

/// Room versions this node can create and join: every one whose event ids are reference
/// hashes (3 on) and whose state resolution ruma implements.
///
/// Versions 1 and 2 are refused with `M_UNSUPPORTED_ROOM_VERSION`: their events carry
/// an `event_id` field of the form `$random:server` and reference other events as
/// `[event_id, {"sha256": hash}]` pairs, a PDU format this server neither builds nor
/// parses; version 1 also needs the original state resolution algorithm, which
/// ruma-state-res does not implement.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["3", "4", "5", "6", "7", "8", "9", "10", "11", "12"];

/// Versions known to exist that this node refuses (see [`SUPPORTED_ROOM_VERSIONS`]).
pub const REFUSED_ROOM_VERSIONS: &[&str] = &["1", "2"];

/// The version new rooms get (state resolution v2.1 resists partition-caused resets).
pub const DEFAULT_ROOM_VERSION: &str = "12";

/// Rules for a supported room version string.
pub fn rules_for(version: &str) -> Result<(RoomVersionId, RoomVersionRules), Error> {
    if REFUSED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "room version {version} is not supported: its events use the original event id \
             and reference format; supported: {}",
            SUPPORTED_ROOM_VERSIONS.join(", ")
        )));
    }
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "room version {version} is not supported (supported: {})",
            SUPPORTED_ROOM_VERSIONS.join(", ")
        )));
    }
    let id = RoomVersionId::try_from(version).map_err(|_| {
        Error::UnsupportedRoomVersion(format!("room version {version} is not supported"))
    })?;
    let rules = id.rules().ok_or_else(|| {
        Error::UnsupportedRoomVersion(format!("room version {version} has no known rules"))
    })?;
    Ok((id, rules))
}
