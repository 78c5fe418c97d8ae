//! The sliding sync request body.

use super::*;

/// The request body.
#[derive(Deserialize, Default)]
pub struct Request {
    /// Names the connection; one client may run several (the room list, notifications).
    #[serde(default)]
    pub conn_id: Option<String>,
    /// Echoed in the response.
    #[serde(default)]
    pub txn_id: Option<String>,
    /// Named lists.
    #[serde(default)]
    pub lists: BTreeMap<String, ListRequest>,
    /// Rooms wanted whatever their place in the lists.
    #[serde(default)]
    pub room_subscriptions: BTreeMap<String, RoomDetails>,
    /// Extensions.
    #[serde(default)]
    pub extensions: Extensions,
}

/// One list.
#[derive(Deserialize, Default)]
pub struct ListRequest {
    /// Inclusive index ranges into the sorted, filtered rooms.
    #[serde(default)]
    pub ranges: Vec<(u64, u64)>,
    /// What to send for each room.
    #[serde(flatten)]
    pub details: RoomDetails,
    /// Which rooms are in the list.
    #[serde(default)]
    pub filters: Option<ListFilters>,
}

/// `required_state` and `timeline_limit`.
#[derive(Deserialize, Default, Clone)]
pub struct RoomDetails {
    /// `[type, state_key]` pairs; `*` wildcards, `$ME`, `$LAZY`.
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    /// Timeline events to send.
    #[serde(default)]
    pub timeline_limit: u64,
}

/// List filters (the simple ones).
#[derive(Deserialize, Default)]
pub struct ListFilters {
    /// Only rooms in (true) or not in (false) `m.direct`.
    pub is_dm: Option<bool>,
    /// Only invites (true) or no invites (false).
    pub is_invite: Option<bool>,
    /// Only encrypted (true) or unencrypted (false) rooms.
    pub is_encrypted: Option<bool>,
}

/// The extensions asked for.
#[derive(Deserialize, Default)]
pub struct Extensions {
    /// To-device messages.
    #[serde(default)]
    pub to_device: ToDeviceExt,
    /// Device lists and key counts.
    #[serde(default)]
    pub e2ee: Toggle,
    /// Global and room account data.
    #[serde(default)]
    pub account_data: RoomsExt,
    /// Read receipts.
    #[serde(default)]
    pub receipts: RoomsExt,
    /// Typing notifications.
    #[serde(default)]
    pub typing: RoomsExt,
}

/// `{"enabled": bool}`.
#[derive(Deserialize, Default)]
pub struct Toggle {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// The to-device extension.
#[derive(Deserialize, Default)]
pub struct ToDeviceExt {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// The previous `next_batch`: everything up to it was received and may be deleted.
    #[serde(default)]
    pub since: Option<String>,
}

/// An extension that applies to some of the rooms: by list name and by room id, `*` for
/// all (the default for both, as in Synapse).
#[derive(Deserialize, Default)]
pub struct RoomsExt {
    /// On when true.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// List names, or `*`.
    #[serde(default)]
    pub lists: Option<Vec<String>>,
    /// Subscribed room ids, or `*`.
    #[serde(default)]
    pub rooms: Option<Vec<String>>,
}

impl RoomsExt {
    pub(super) fn on(&self) -> bool {
        self.enabled == Some(true)
    }
}
