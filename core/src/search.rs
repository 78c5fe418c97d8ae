//! Server-side search (`POST /search`, the `room_events` category) over the FTS5 index
//! of timeline events (`storage/search.rs`).
//!
//! Live events enter the index after their commit, many to a write ([`catch_up`]): the
//! indexer task does it [`INDEX_DELAY`] after commits, and every search does it first
//! for whatever is still waiting, so a search sees every event committed before it.
//!
//! The search term is split into words; every word must match (as a prefix) the indexed
//! text of one of the requested keys. Results come from rooms the searcher is joined to,
//! or left/was banned from (up to their leave), within the part of the history the
//! searcher may read (`rooms::visibility`). Pagination is by offset.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::requester::Requester;
use crate::rooms::state_at::state_at;
use crate::rooms::visibility::{Visibility, visibility_for, visible_events};
use crate::server::Server;
use crate::storage::{self, StoredEvent};
use crate::streams::PageToken;

/// Most live events indexed in one write: one write holds the writer for a few
/// milliseconds at most.
pub const INDEX_BATCH: usize = 256;

/// How long the indexer waits after a commit before it indexes: a burst of sends is
/// indexed in a few writes, not one each. The index lags the timeline by about this
/// much (searches never do: they catch up first).
pub const INDEX_DELAY: Duration = Duration::from_millis(500);

/// Index every live event committed so far that is not indexed yet, in writes of at
/// most [`INDEX_BATCH`] events. Returns how many went into the index. Events committed
/// while it runs are left to the next call, so it ends however busy the node is.
pub fn catch_up(server: &Server) -> Result<usize, Error> {
    let (behind, until) = server.db.read(|c| {
        Ok((
            storage::search_index_behind(c)?,
            storage::newest_live_position(c)?,
        ))
    })?;
    if !behind {
        return Ok(0);
    }
    let mut indexed = 0;
    loop {
        // Nothing `/sync` shows: the answers kept for repeated initial syncs stay valid.
        let batch = crate::server::off_the_reactor(|| {
            server
                .db
                .write_unseen_by_sync(|c| storage::index_pending(c, INDEX_BATCH, until))
        })?;
        indexed += batch.indexed;
        if !batch.more {
            return Ok(indexed);
        }
    }
}

/// The search indexer: indexes what a previous run left (a restart after a crash), then
/// [`INDEX_DELAY`] after each commit, whatever has come since.
pub fn start_indexer(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut positions = server.notifier.subscribe();
        loop {
            let s = server.clone();
            match tokio::task::spawn_blocking(move || catch_up(&s)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "search indexing failed; retried after the next commit")
                }
                Err(e) => tracing::warn!(error = %e, "search indexing task failed"),
            }
            if positions.changed().await.is_err() {
                return;
            }
            tokio::time::sleep(INDEX_DELAY).await;
        }
    })
}

/// Default page size.
pub const DEFAULT_LIMIT: usize = 10;
/// Largest page size (larger `limit`s are clamped).
pub const MAX_LIMIT: usize = 100;
/// Default and largest `before_limit` / `after_limit` of `event_context`.
pub const DEFAULT_CONTEXT: usize = 5;
/// Largest `before_limit` / `after_limit`.
pub const MAX_CONTEXT: usize = 50;
/// Most index hits considered per request (the `count` is exact below this).
pub const MAX_CANDIDATES: usize = 10_000;
/// Most words of a search term used.
pub const MAX_WORDS: usize = 16;

/// The searchable keys.
#[derive(Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SearchKey {
    /// `m.room.message` body.
    #[serde(rename = "content.body")]
    Body,
    /// `m.room.name` name.
    #[serde(rename = "content.name")]
    Name,
    /// `m.room.topic` topic.
    #[serde(rename = "content.topic")]
    Topic,
}

impl SearchKey {
    fn as_str(self) -> &'static str {
        match self {
            SearchKey::Body => "content.body",
            SearchKey::Name => "content.name",
            SearchKey::Topic => "content.topic",
        }
    }
}

/// Result order.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum OrderBy {
    /// Best match first.
    #[default]
    Rank,
    /// Newest first.
    Recent,
}

/// The `filter` of a search (a RoomEventFilter).
#[derive(Deserialize, Clone, Debug, Default)]
pub struct SearchFilter {
    /// Page size.
    pub limit: Option<u64>,
    /// Only these rooms.
    pub rooms: Option<Vec<String>>,
    /// Not these rooms.
    #[serde(default)]
    pub not_rooms: Vec<String>,
    /// Only these senders.
    pub senders: Option<Vec<String>>,
    /// Not these senders.
    #[serde(default)]
    pub not_senders: Vec<String>,
    /// Only these types (`*` suffix wildcards).
    pub types: Option<Vec<String>>,
    /// Not these types.
    #[serde(default)]
    pub not_types: Vec<String>,
}

/// `event_context`.
#[derive(Deserialize, Clone, Debug, Default)]
pub struct EventContext {
    /// Events before each result.
    pub before_limit: Option<u64>,
    /// Events after each result.
    pub after_limit: Option<u64>,
    /// Include `profile_info` of the senders.
    #[serde(default)]
    pub include_profile: bool,
}

/// `search_categories.room_events`.
#[derive(Deserialize, Clone, Debug)]
pub struct RoomEventsCriteria {
    /// What to look for.
    pub search_term: String,
    /// Where to look (default: all keys).
    pub keys: Option<Vec<SearchKey>>,
    /// Which events.
    #[serde(default)]
    pub filter: SearchFilter,
    /// Order of results.
    #[serde(default)]
    pub order_by: OrderBy,
    /// Context around each result.
    pub event_context: Option<EventContext>,
    /// Accepted and ignored: grouping is not implemented.
    pub groupings: Option<Value>,
    /// Accepted and ignored: the current state of result rooms is not returned.
    #[serde(default)]
    pub include_state: bool,
}

fn type_matches(pattern: &str, ty: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(prefix) => ty.starts_with(prefix),
        None => pattern == ty,
    }
}

impl SearchFilter {
    fn allows_room(&self, room_id: &str) -> bool {
        !self.not_rooms.iter().any(|r| r == room_id)
            && self
                .rooms
                .as_ref()
                .is_none_or(|rs| rs.iter().any(|r| r == room_id))
    }

    fn allows(&self, kind: &str, sender: &str) -> bool {
        !self.not_types.iter().any(|p| type_matches(p, kind))
            && !self.not_senders.iter().any(|s| s == sender)
            && self
                .types
                .as_ref()
                .is_none_or(|ts| ts.iter().any(|p| type_matches(p, kind)))
            && self
                .senders
                .as_ref()
                .is_none_or(|ss| ss.iter().any(|s| s == sender))
    }
}

/// The words of a search term, lower-cased, deduplicated, in order.
pub fn words(term: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    term.split(|ch: char| !ch.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
        .filter(|w| seen.insert(w.clone()))
        .take(MAX_WORDS)
        .collect()
}

/// An FTS5 query in which every word must match as a prefix. Words only hold
/// alphanumerics, and each is quoted, so no FTS5 syntax reaches SQLite.
pub fn fts_query(words: &[String]) -> String {
    words
        .iter()
        .map(|w| format!("\"{}\"*", w.replace('"', "\"\"")))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run the `room_events` category for `caller`; `next_batch` is the offset token of a
/// previous answer.
pub fn room_events(
    c: &Connection,
    caller: &Requester,
    criteria: &RoomEventsCriteria,
    next_batch: Option<&str>,
) -> Result<Value, Error> {
    let offset: usize = match next_batch {
        None | Some("") => 0,
        Some(t) => t
            .parse()
            .map_err(|_| Error::InvalidParam(format!("invalid next_batch token {t:?}")))?,
    };
    let filter = &criteria.filter;
    let limit = filter.limit.map_or(DEFAULT_LIMIT, |l| {
        usize::try_from(l).unwrap_or(MAX_LIMIT).clamp(1, MAX_LIMIT)
    });
    let keys: Vec<&str> = match &criteria.keys {
        Some(k) if !k.is_empty() => {
            let set: BTreeSet<SearchKey> = k.iter().copied().collect();
            set.into_iter().map(SearchKey::as_str).collect()
        }
        _ => vec!["content.body", "content.name", "content.topic"],
    };
    let words = words(&criteria.search_term);

    // Rooms the caller may search, with the part of each they may read.
    let mut windows: HashMap<String, Visibility> = HashMap::new();
    for (room_id, membership, _, _) in storage::user_memberships(c, &caller.user_id)? {
        if !matches!(membership.as_str(), "join" | "leave" | "ban") || !filter.allows_room(&room_id)
        {
            continue;
        }
        match visibility_for(c, &room_id, &caller.user_id) {
            Ok(v) => {
                windows.insert(room_id, v);
            }
            Err(Error::Forbidden(_)) => {}
            Err(e) => return Err(e),
        }
    }
    let rooms: Vec<String> = windows.keys().cloned().collect();

    let hits = if words.is_empty() || rooms.is_empty() {
        Vec::new()
    } else {
        storage::search_events(
            c,
            &fts_query(&words),
            &keys,
            &rooms,
            criteria.order_by == OrderBy::Rank,
            MAX_CANDIDATES,
        )?
    };
    // Each candidate is judged by the room's state at it (see `rooms::visibility`).
    let mut visible = Vec::new();
    for h in hits {
        let Some(window) = windows.get(&h.room_id) else {
            continue;
        };
        if !filter.allows(&h.kind, &h.sender) {
            continue;
        }
        if let Some(ev) = storage::event_at(c, h.stream_ordering)?
            && window.allows(c, &ev)?
        {
            visible.push((h, ev));
        }
    }
    let count = visible.len();
    let page: Vec<(storage::SearchHit, StoredEvent)> =
        visible.into_iter().skip(offset).take(limit).collect();
    // Bundled aggregations: one set of lookups per room of the page.
    let page_events: Vec<StoredEvent> = page.iter().map(|(_, ev)| ev.clone()).collect();
    let rendered = crate::relations::render(c, &page_events, caller.event_options(), |room| {
        windows.get(room)
    })?;
    let mut results = Vec::new();
    for ((hit, ev), rendered) in page.into_iter().zip(rendered) {
        let mut result = json!({
            "rank": -hit.bm25,
            "result": rendered,
        });
        if let Some(ctx) = &criteria.event_context
            && let Some(window) = windows.get(&hit.room_id)
        {
            result["context"] = context(c, caller, &ev, window, ctx)?;
        }
        results.push(result);
    }
    let end = offset.saturating_add(limit);
    let mut body = json!({
        "count": count,
        "results": results,
        "highlights": words,
    });
    if end < count {
        body["next_batch"] = json!(end.to_string());
    }
    Ok(body)
}

fn clamp_context(n: Option<u64>) -> usize {
    n.map_or(DEFAULT_CONTEXT, |n| {
        usize::try_from(n).unwrap_or(MAX_CONTEXT).min(MAX_CONTEXT)
    })
}

/// Events around a result, within what the caller may read.
fn context(
    c: &Connection,
    caller: &Requester,
    ev: &StoredEvent,
    window: &Visibility,
    ctx: &EventContext,
) -> Result<Value, Error> {
    let before_n = clamp_context(ctx.before_limit);
    let after_n = clamp_context(ctx.after_limit);
    let pos = ev.stream_ordering;
    let before = if before_n == 0 {
        Vec::new()
    } else {
        let evs = storage::room_events(c, &ev.room_id, window.min_pos(), pos - 1, before_n, true)?;
        visible_events(c, window, evs)?
    };
    let after = if after_n == 0 {
        Vec::new()
    } else {
        let evs = storage::room_events(c, &ev.room_id, pos, window.max_pos(), after_n, false)?;
        visible_events(c, window, evs)?
    };
    let start = before.last().map_or(pos - 1, |e| e.stream_ordering - 1);
    let end = after.last().map_or(pos, |e| e.stream_ordering);
    let n_before = before.len();
    let mut around = before.clone();
    around.extend(after.iter().cloned());
    let mut events_before =
        crate::relations::render_in_room(c, &around, caller.event_options(), window)?;
    let events_after = events_before.split_off(n_before);
    let mut out = json!({
        "events_before": events_before,
        "events_after": events_after,
        "start": PageToken::at(start).to_string(),
        "end": PageToken::at(end).to_string(),
    });
    if ctx.include_profile {
        let state = state_at(c, &ev.room_id, pos)?;
        let senders: BTreeSet<&str> = before
            .iter()
            .chain(after.iter())
            .chain(std::iter::once(ev))
            .map(|e| e.sender.as_str())
            .collect();
        let mut profiles = BTreeMap::new();
        for sender in senders {
            let Some(id) = state.get(&("m.room.member".to_owned(), sender.to_owned())) else {
                continue;
            };
            let Some(member) = storage::get_state_event(c, id)? else {
                continue;
            };
            let v: Value = serde_json::from_str(&member.json)?;
            let mut profile = serde_json::Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(s) = v["content"][field].as_str() {
                    profile.insert(field.into(), json!(s));
                }
            }
            profiles.insert(sender.to_owned(), Value::Object(profile));
        }
        out["profile_info"] = json!(profiles);
    }
    Ok(out)
}

#[cfg(test)]
mod search_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_and_query_are_safe() {
        let w = words("Hello, \"wörld\" OR NEAR(x*) hello");
        assert_eq!(w, vec!["hello", "wörld", "or", "near", "x"]);
        assert_eq!(fts_query(&w[..2]), "\"hello\"* \"wörld\"*");
        assert!(words("  !!! ").is_empty());
    }

    #[test]
    fn filter_rules() {
        let f = SearchFilter {
            types: Some(vec!["m.room.*".into()]),
            not_senders: vec!["@bad:x".into()],
            not_rooms: vec!["!no:x".into()],
            ..Default::default()
        };
        assert!(f.allows("m.room.message", "@a:x"));
        assert!(!f.allows("m.reaction", "@a:x"));
        assert!(!f.allows("m.room.message", "@bad:x"));
        assert!(!f.allows_room("!no:x"));
        assert!(f.allows_room("!yes:x"));
    }
}
