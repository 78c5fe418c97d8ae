//! The shape of a `/sync` answer, as it is built. Room events are rendered straight to
//! JSON text ([`RawValue`]) and written into the answer as they are: an initial sync
//! carries thousands of events, and building each as a tree of values, then writing
//! and dropping the trees, was most of its cost. The smaller parts stay values.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// A whole `/sync` answer.
#[derive(Serialize)]
pub struct SyncBody {
    pub next_batch: String,
    pub rooms: Rooms,
    /// `account_data`, `presence`, `to_device`, `device_lists` and the key counts.
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// `rooms`: each room the user is in, was invited to, knocked on or left.
#[derive(Serialize, Default)]
pub struct Rooms {
    pub join: BTreeMap<String, RoomSection>,
    pub invite: Map<String, Value>,
    pub leave: BTreeMap<String, RoomSection>,
    pub knock: Map<String, Value>,
}

/// A joined or left room: its timeline and state, and the rest (`ephemeral`,
/// `account_data`, `unread_notifications`, `summary`).
#[derive(Serialize)]
pub struct RoomSection {
    pub timeline: Timeline,
    pub state: Events,
    #[serde(flatten)]
    pub rest: Map<String, Value>,
}

/// A room's `timeline`.
#[derive(Serialize)]
pub struct Timeline {
    pub events: Vec<Box<RawValue>>,
    pub limited: bool,
    pub prev_batch: String,
}

/// A list of rendered events (`state`).
#[derive(Serialize, Default)]
pub struct Events {
    pub events: Vec<Box<RawValue>>,
}

impl SyncBody {
    /// The answer as JSON bytes.
    pub fn to_bytes(&self) -> Result<bytes::Bytes, serde_json::Error> {
        Ok(serde_json::to_vec(self)?.into())
    }

    /// The answer as a JSON value (for callers inside the node that read it).
    pub fn to_value(&self) -> Result<Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}
