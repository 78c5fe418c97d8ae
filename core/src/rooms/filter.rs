//! Room event filters (the spec's `RoomEventFilter`, the subset clients use).

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::storage::{self, StoredEvent};

/// Event filter for `/messages` and `/context` (the RoomEventFilter subset clients use).
#[derive(Deserialize, Serialize, Default, Clone)]
pub struct RoomEventFilter {
    pub limit: Option<usize>,
    pub types: Option<Vec<String>>,
    #[serde(default)]
    pub not_types: Vec<String>,
    pub senders: Option<Vec<String>>,
    #[serde(default)]
    pub not_senders: Vec<String>,
    #[serde(default)]
    pub lazy_load_members: bool,
    pub contains_url: Option<bool>,
    /// Only events that have a child with one of these relationship types (`/messages`).
    #[serde(alias = "io.element.relation_types")]
    pub related_by_rel_types: Option<Vec<String>>,
    /// Only events that have a child sent by one of these users (`/messages`).
    #[serde(alias = "io.element.relation_senders")]
    pub related_by_senders: Option<Vec<String>>,
}

fn type_matches(pattern: &str, ty: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ty.starts_with(prefix),
        None => pattern == ty,
    }
}

impl RoomEventFilter {
    /// Of these events, the ids that pass `related_by_rel_types`/`related_by_senders`
    /// (one lookup for the whole page); `None` when the filter has neither.
    pub fn related_ids(
        &self,
        c: &rusqlite::Connection,
        events: &[StoredEvent],
    ) -> Result<Option<std::collections::HashSet<String>>, Error> {
        if self.related_by_rel_types.is_none() && self.related_by_senders.is_none() {
            return Ok(None);
        }
        let ids: Vec<&str> = events.iter().map(|e| e.event_id.as_str()).collect();
        storage::parents_with_children(
            c,
            &ids,
            self.related_by_rel_types.as_deref(),
            self.related_by_senders.as_deref(),
        )
        .map(Some)
    }

    /// Whether an event passes the filter.
    pub fn allows(&self, e: &StoredEvent) -> bool {
        if self.not_types.iter().any(|p| type_matches(p, &e.kind))
            || self.not_senders.contains(&e.sender)
        {
            return false;
        }
        if let Some(types) = &self.types
            && !types.iter().any(|p| type_matches(p, &e.kind))
        {
            return false;
        }
        if let Some(senders) = &self.senders
            && !senders.contains(&e.sender)
        {
            return false;
        }
        if let Some(want) = self.contains_url {
            let has = e.json.contains("\"url\"");
            if has != want {
                return false;
            }
        }
        true
    }
}
