//! The server's own PDU type, as ruma-state-res sees it.

use ruma::{
    EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UserId,
    events::TimelineEventType,
};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::error::Error;

/// A PDU with the fields auth and state resolution read.
#[derive(Clone, Debug)]
pub struct Pdu {
    /// Event id (the PDU's `event_id` field in room versions 1 and 2; the reference hash,
    /// not part of the PDU JSON, from room version 3 on).
    pub event_id: OwnedEventId,
    /// Room id; absent on a v12 create event.
    pub room_id: Option<OwnedRoomId>,
    /// Sender.
    pub sender: OwnedUserId,
    /// Origin timestamp.
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    /// Type.
    pub kind: TimelineEventType,
    /// Raw content.
    pub content: Box<RawValue>,
    /// State key.
    pub state_key: Option<String>,
    /// Parents in the DAG.
    pub prev_events: Vec<OwnedEventId>,
    /// Auth events.
    pub auth_events: Vec<OwnedEventId>,
    /// Redaction target (top level before v11, in content from v11).
    pub redacts: Option<OwnedEventId>,
    /// DAG depth.
    pub depth: i64,
    /// Rejected on receipt.
    pub rejected: bool,
}

#[derive(Deserialize)]
struct Fields {
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    state_key: Option<String>,
    // Bare ids from room version 3, `[id, hashes]` pairs before (see `reference`).
    #[serde(default, deserialize_with = "super::reference::deserialize_ids")]
    prev_events: Vec<OwnedEventId>,
    #[serde(default, deserialize_with = "super::reference::deserialize_ids")]
    auth_events: Vec<OwnedEventId>,
    redacts: Option<OwnedEventId>,
    #[serde(default)]
    depth: i64,
}

#[derive(Deserialize)]
struct RedactsContent {
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parse a stored or received PDU.
    pub fn from_json(event_id: &str, json: &str) -> Result<Pdu, Error> {
        let f: Fields =
            serde_json::from_str(json).map_err(|e| Error::BadJson(format!("invalid PDU: {e}")))?;
        let event_id = EventId::parse(event_id)
            .map_err(|e| Error::BadJson(format!("invalid event id: {e}")))?;
        let redacts = match f.redacts {
            Some(r) => Some(r),
            None if f.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsContent>(f.content.get())
                    .ok()
                    .and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id: f.room_id,
            sender: f.sender,
            origin_server_ts: f.origin_server_ts,
            kind: f.kind,
            content: f.content,
            state_key: f.state_key,
            prev_events: f.prev_events,
            auth_events: f.auth_events,
            redacts,
            depth: f.depth,
            rejected: false,
        })
    }
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.room_id.as_deref()
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
