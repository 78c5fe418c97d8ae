//! PDUs: building, hashing, signing, redaction and the client event format.
//!
//! The canonical JSON, content hashes, signatures and reference hashes all come from
//! ruma (`ruma::signatures`, `ruma::canonical_json`); this module only arranges them.

mod build;
mod format;
mod pdu;
mod reference;

pub use build::{NewEvent, build_pdu, event_id_of, redact_json, room_id_from_create_event_id};
pub use format::{ClientEvent, ClientEventOptions, client_event, stripped_state};
pub use pdu::Pdu;
pub use reference::{
    EventReference, parse_references, reference_ids, reference_ids_in, references_json, uses_pairs,
};

use ruma::{RoomVersionId, room_version_rules::RoomVersionRules};

use crate::error::Error;

/// Room versions this node can create and join: every version ruma knows the rules of.
///
/// Versions 1 and 2 use the original event format: each PDU carries its own `event_id`
/// (`$random:server`) and references other events as `[event_id, {"sha256": hash}]`
/// pairs (see `reference`); version 1 also resolves state with the original algorithm
/// (`rooms::resolve_v1`).
pub const SUPPORTED_ROOM_VERSIONS: &[&str] = &[
    "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12",
];

/// The version new rooms get (state resolution v2.1 resists partition-caused resets).
pub const DEFAULT_ROOM_VERSION: &str = "12";

/// Rules for a supported room version string.
pub fn rules_for(version: &str) -> Result<(RoomVersionId, RoomVersionRules), Error> {
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
