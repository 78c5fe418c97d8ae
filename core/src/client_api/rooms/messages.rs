//! `GET /rooms/{roomId}/messages`: a page of a room's timeline, backfilling older
//! history from other servers when paging back past what is stored here.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::json;

use super::{JsonResult, lazy_members, opts, parse_filter, parse_token};
use crate::client_api::extract::{Auth, P, Q};
use crate::error::Error;
use crate::relations;
use crate::rooms;
use crate::rooms::filter::RoomEventFilter;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage::{self, StoredEvent};
use crate::streams::PageToken;

/// Most events one `/messages` call looks at, visible or not.
const SCAN_BUDGET: usize = 1000;

/// Most backfill calls (one federation batch each, see `rooms::backfill`) one
/// `/messages` call makes when it pages past the oldest event stored here.
const MAX_BACKFILL_CALLS: usize = 2;

#[derive(Deserialize)]
pub(in crate::client_api) struct MessagesQuery {
    from: Option<String>,
    to: Option<String>,
    dir: Option<String>,
    limit: Option<usize>,
    filter: Option<String>,
}

/// `GET /rooms/{roomId}/messages`.
pub(in crate::client_api) async fn messages(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<MessagesQuery>,
) -> JsonResult {
    let backwards = match q.dir.as_deref() {
        Some("b") | None => true,
        Some("f") => false,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "dir must be b or f, not {other}"
            )));
        }
    };
    let filter = parse_filter(q.filter.as_deref())?;
    let limit = q.limit.or(filter.limit).unwrap_or(10).clamp(1, 1000);
    let current = server.notifier.current().pos;
    let from = match &q.from {
        Some(t) => parse_token(t)?,
        None if backwards => current,
        None => i64::MIN,
    };
    let to = q.to.as_deref().map(parse_token).transpose()?;
    let mut page = Page {
        out: Vec::new(),
        cursor: from,
        examined: 0,
        exhausted: false,
    };
    let mut backfill_calls = 0;
    let mut backfill_stalled = false;
    loop {
        server.db.read_tx(|c| {
            let vis = visibility_for(c, &room_id, &caller.user_id)?;
            page.fill(c, &room_id, &vis, &filter, limit, backwards, to, current)
        })?;
        // Paging back past the oldest event stored here: ask another server of the room
        // for older history (bounded), then go on.
        if !backwards
            || !page.exhausted
            || page.out.len() >= limit
            || page.examined >= SCAN_BUDGET
            || to.is_some()
            || backfill_calls >= MAX_BACKFILL_CALLS
        {
            break;
        }
        if !server
            .db
            .read(|c| storage::has_backfill_extremities(c, &room_id))?
        {
            break;
        }
        backfill_calls += 1;
        // Our own failure while storing history must not cost the client what is here.
        let done = match rooms::backfill::backfill(&server, &room_id).await {
            Ok(done) => done,
            Err(e) => {
                tracing::warn!(%room_id, error = %e, "backfill failed");
                rooms::backfill::Backfilled::default()
            }
        };
        if done.added == 0 {
            backfill_stalled = true;
            break;
        }
        page.exhausted = false;
    }
    let (chunk, end, state) = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        let out = &page.out;
        // More may come: a full page or a search cut short, or (backwards) history that
        // backfilling may still fetch. When backfilling brought nothing (no server could
        // be reached, or none had more), an empty page ends without `end`, so a client
        // does not spin on empty pages; paging again later tries again.
        let gap = backwards
            && page.exhausted
            && to.is_none()
            && storage::has_backfill_extremities(c, &room_id)?
            && !(backfill_stalled && out.is_empty());
        let more = !page.exhausted || out.len() == limit || gap;
        let end = more.then(|| PageToken::at(page.cursor).to_string());
        let state = if filter.lazy_load_members {
            lazy_members(c, &storage::current_state(c, &room_id)?, out, &caller)?
        } else {
            Vec::new()
        };
        let chunk = relations::render_in_room(c, out, opts(&caller), &vis)?;
        Ok((chunk, end, state))
    })?;
    let start = q
        .from
        .clone()
        .unwrap_or_else(|| PageToken::at(from).to_string());
    let mut body = json!({
        "start": start,
        "chunk": chunk,
    });
    if let Some(end) = end {
        body["end"] = json!(end);
    }
    if !state.is_empty() {
        body["state"] = json!(state);
    }
    Ok(Json(body))
}

/// A `/messages` page being gathered, across the reads between backfill calls.
struct Page {
    out: Vec<StoredEvent>,
    /// Where the next read continues from (a position, see [`PageToken`]).
    cursor: i64,
    examined: usize,
    /// Whether the last read found no more events stored here.
    exhausted: bool,
}

impl Page {
    /// Add the events after the cursor the caller may see and the filter allows, until
    /// the page is full, the events stored here run out or the scan budget is spent.
    /// Filtered-out events still advance the cursor: a long stretch the user may not
    /// see ends the page early with an `end` token to continue from.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        c: &rusqlite::Connection,
        room_id: &str,
        vis: &crate::rooms::visibility::Visibility,
        filter: &RoomEventFilter,
        limit: usize,
        backwards: bool,
        to: Option<i64>,
        current: i64,
    ) -> Result<(), Error> {
        self.exhausted = false;
        while self.out.len() < limit && !self.exhausted && self.examined < SCAN_BUDGET {
            let (after, up_to) = if backwards {
                (to.unwrap_or(i64::MIN).max(vis.min_pos()), self.cursor)
            } else {
                (self.cursor, to.unwrap_or(current).min(vis.max_pos()))
            };
            if after >= up_to {
                break;
            }
            let page = storage::room_events(c, room_id, after, up_to, limit * 2, backwards)?;
            self.exhausted = page.len() < limit * 2;
            let related = filter.related_ids(c, &page)?;
            for e in page {
                self.examined += 1;
                self.cursor = if backwards {
                    e.stream_ordering - 1
                } else {
                    e.stream_ordering
                };
                if filter.allows(&e)
                    && related.as_ref().is_none_or(|ids| ids.contains(&e.event_id))
                    && vis.allows(c, &e)?
                {
                    self.out.push(e);
                    if self.out.len() == limit {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}
