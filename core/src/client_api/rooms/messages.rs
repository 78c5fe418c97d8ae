//! `GET /rooms/{roomId}/messages`: a page of a room's timeline, backfilling older
//! history from other servers when paging back past what is stored here.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, lazy_members, opts, parse_filter, parse_token};
use crate::client_api::extract::{Auth, P, Q, Requester};
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

/// What one `/messages` call asks for.
struct Request {
    room_id: String,
    filter: RoomEventFilter,
    limit: usize,
    backwards: bool,
    /// Where the page starts (the `from` token's position).
    from: i64,
    /// The `to` token's position.
    to: Option<i64>,
    /// The stream position when the call came.
    current: i64,
}

impl Request {
    fn parse(q: &MessagesQuery, room_id: String, current: i64) -> Result<Self, Error> {
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
        let from = match &q.from {
            Some(t) => parse_token(t)?,
            None if backwards => current,
            None => i64::MIN,
        };
        let to = q.to.as_deref().map(parse_token).transpose()?;
        Ok(Request {
            room_id,
            filter,
            limit,
            backwards,
            from,
            to,
            current,
        })
    }
}

/// `GET /rooms/{roomId}/messages`.
pub(in crate::client_api) async fn messages(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<MessagesQuery>,
) -> JsonResult {
    let req = Request::parse(&q, room_id, server.notifier.current().pos)?;
    let mut page = Page {
        out: Vec::new(),
        cursor: req.from,
        examined: 0,
        exhausted: false,
    };
    let backfill_stalled = page.gather(&server, &caller, &req).await?;
    let mut body = server
        .db
        .read_tx(|c| page.answer(c, &caller, &req, backfill_stalled))?;
    body["start"] = json!(
        q.from
            .clone()
            .unwrap_or_else(|| PageToken::at(req.from).to_string())
    );
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
    /// Fill the page from what is stored here; paging back past the oldest event stored
    /// here, ask another server of the room for older history (bounded), then go on.
    /// Returns whether backfilling stalled (brought nothing).
    async fn gather(
        &mut self,
        server: &Arc<Server>,
        caller: &Requester,
        req: &Request,
    ) -> Result<bool, Error> {
        let room_id = &req.room_id;
        let mut backfill_calls = 0;
        loop {
            server.db.read_tx(|c| {
                let vis = visibility_for(c, room_id, &caller.user_id)?;
                self.fill(c, req, &vis)
            })?;
            if !req.backwards
                || !self.exhausted
                || self.out.len() >= req.limit
                || self.examined >= SCAN_BUDGET
                || req.to.is_some()
                || backfill_calls >= MAX_BACKFILL_CALLS
            {
                return Ok(false);
            }
            if !server
                .db
                .read(|c| storage::has_backfill_extremities(c, room_id))?
            {
                return Ok(false);
            }
            backfill_calls += 1;
            // Our own failure while storing history must not cost the client what is here.
            let done = match rooms::backfill::backfill(server, room_id).await {
                Ok(done) => done,
                Err(e) => {
                    tracing::warn!(%room_id, error = %e, "backfill failed");
                    rooms::backfill::Backfilled::default()
                }
            };
            if done.added == 0 {
                return Ok(true);
            }
            self.exhausted = false;
        }
    }

    /// The page as the client sees it (all but `start`): the rendered events, the `end`
    /// token when more may come, and the members a lazy-loading client needs.
    fn answer(
        &self,
        c: &rusqlite::Connection,
        caller: &Requester,
        req: &Request,
        backfill_stalled: bool,
    ) -> Result<Value, Error> {
        let room_id = &req.room_id;
        let vis = visibility_for(c, room_id, &caller.user_id)?;
        let out = &self.out;
        // More may come: a full page or a search cut short, or (backwards) history that
        // backfilling may still fetch. When backfilling brought nothing (no server could
        // be reached, or none had more), an empty page ends without `end`, so a client
        // does not spin on empty pages; paging again later tries again.
        let gap = req.backwards
            && self.exhausted
            && req.to.is_none()
            && storage::has_backfill_extremities(c, room_id)?
            && !(backfill_stalled && out.is_empty());
        let more = !self.exhausted || out.len() == req.limit || gap;
        let end = more.then(|| PageToken::at(self.cursor).to_string());
        let state = if req.filter.lazy_load_members {
            lazy_members(c, &storage::current_state(c, room_id)?, out, caller)?
        } else {
            Vec::new()
        };
        let chunk = relations::render_in_room(c, out, opts(caller), &vis)?;
        let mut body = json!({ "chunk": chunk });
        if let Some(end) = end {
            body["end"] = json!(end);
        }
        if !state.is_empty() {
            body["state"] = json!(state);
        }
        Ok(body)
    }

    /// Add the events after the cursor the caller may see and the filter allows, until
    /// the page is full, the events stored here run out or the scan budget is spent.
    /// Filtered-out events still advance the cursor: a long stretch the user may not
    /// see ends the page early with an `end` token to continue from.
    fn fill(
        &mut self,
        c: &rusqlite::Connection,
        req: &Request,
        vis: &crate::rooms::visibility::Visibility,
    ) -> Result<(), Error> {
        let Request {
            room_id,
            filter,
            limit,
            backwards,
            to,
            current,
            ..
        } = req;
        let (limit, backwards, to, current) = (*limit, *backwards, *to, *current);
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
