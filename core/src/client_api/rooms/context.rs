//! `GET /rooms/{roomId}/context/{eventId}`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, lazy_members, opts, parse_filter};
use crate::client_api::extract::{Auth, P, Q};
use crate::error::Error;
use crate::events::client_event;
use crate::relations;
use crate::rooms::state_at::state_at;
use crate::rooms::visibility::{visibility_for, visible_events};
use crate::server::Server;
use crate::storage::{self, StoredEvent};
use crate::streams::PageToken;

#[derive(Deserialize)]
pub(in crate::client_api) struct ContextQuery {
    limit: Option<usize>,
    filter: Option<String>,
}

/// `GET /rooms/{roomId}/context/{eventId}`.
pub(in crate::client_api) async fn context(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
    Q(q): Q<ContextQuery>,
) -> JsonResult {
    let filter = parse_filter(q.filter.as_deref())?;
    let limit = q.limit.unwrap_or(10).min(100);
    let body = server.db.read_tx(|c| {
        let vis = visibility_for(c, &room_id, &caller.user_id)?;
        let ev = match storage::get_event(c, &event_id)? {
            Some(e) if vis.allows(c, &e)? => e,
            _ => return Err(Error::NotFound("event not found".into())),
        };
        let before_n = limit / 2;
        let after_n = limit - before_n;
        let before = storage::room_events(
            c,
            &room_id,
            vis.min_pos(),
            ev.stream_ordering - 1,
            before_n,
            true,
        )?;
        let before: Vec<StoredEvent> = visible_events(c, &vis, before)?
            .into_iter()
            .filter(|e| filter.allows(e))
            .collect();
        let after = storage::room_events(
            c,
            &room_id,
            ev.stream_ordering,
            vis.max_pos(),
            after_n,
            false,
        )?;
        let after: Vec<StoredEvent> = visible_events(c, &vis, after)?
            .into_iter()
            .filter(|e| filter.allows(e))
            .collect();
        let start = before
            .last()
            .map(|e| e.stream_ordering - 1)
            .unwrap_or(ev.stream_ordering - 1);
        let end = after
            .last()
            .map(|e| e.stream_ordering)
            .unwrap_or(ev.stream_ordering);
        let state_map = state_at(c, &room_id, ev.stream_ordering)?;
        let state: Vec<Value> = if filter.lazy_load_members {
            let mut all = before.clone();
            all.extend(after.iter().cloned());
            all.push(ev.clone());
            lazy_members(c, &state_map, &all, &caller)?
        } else {
            let mut v = Vec::new();
            for id in state_map.values() {
                if let Some(s) = storage::get_state_event(c, id)? {
                    v.push(client_event(&s, opts(&caller)));
                }
            }
            v
        };
        // One set of aggregation lookups for the whole answer.
        let (n_before, n_after) = (before.len(), after.len());
        let mut all = before;
        all.push(ev);
        all.extend(after);
        let mut rendered = relations::render_in_room(c, &all, opts(&caller), &vis)?;
        let events_after = rendered.split_off(n_before + 1);
        let event = rendered.pop().unwrap_or_default();
        debug_assert_eq!(events_after.len(), n_after);
        Ok(json!({
            "event": event,
            "events_before": rendered,
            "events_after": events_after,
            "start": PageToken::at(start).to_string(),
            "end": PageToken::at(end).to_string(),
            "state": state,
        }))
    })?;
    Ok(Json(body))
}
