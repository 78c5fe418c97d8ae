//! PDUs: building, hashing, signing, redaction and the client event format.
//!
//! The canonical JSON, content hashes, signatures and reference hashes all come from
//! ruma (`ruma::signatures`, `ruma::canonical_json`); this module only arranges them.

mod build;
mod format;
mod pdu;

pub use build::{NewEvent, build_pdu, redact_json, room_id_from_create_event_id};
pub use format::{ClientEventOptions, client_event, stripped_state};
pub use pdu::Pdu;

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::error::Error;

/// Room versions this node can create and join.
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &["10", "11", "12"];

/// The version new rooms get (state resolution v2.1 resists partition-caused resets).
pub const DEFAULT_ROOM_VERSION: &str = "12";

/// Rules for a supported room version string.
pub fn rules_for(version: &str) -> Result<(RoomVersionId, RoomVersionRules), Error> {
    if !SUPPORTED_ROOM_VERSIONS.contains(&version) {
        return Err(Error::UnsupportedRoomVersion(format!(
            "room version {version} is not supported"
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
