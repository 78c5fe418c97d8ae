//! `GET /rooms/{roomId}/event/{eventId}`.

use std::sync::Arc;

use axum::{Json, extract::State};

use super::{JsonResult, opts};
use crate::client_api::extract::{Auth, P};
use crate::error::Error;
use crate::relations;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage;

/// `GET /rooms/{roomId}/event/{eventId}`.
pub(in crate::client_api) async fn get_event(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
) -> JsonResult {
    let ev = server.db.read_tx(|c| {
        // The spec's 404 for "not found or you may not read it": the same answer either
        // way, so nobody learns which events exist in a room they cannot see.
        let hidden = || Error::NotFound("event not found".into());
        let vis = visibility_for(c, &room_id, &caller.user_id).map_err(|e| match e {
            Error::Forbidden(_) => hidden(),
            other => other,
        })?;
        let ev = match storage::get_event(c, &event_id)? {
            Some(e) if vis.allows(c, &e)? => e,
            _ => return Err(Error::NotFound("event not found".into())),
        };
        let mut rendered = relations::render_in_room(c, &[ev], opts(&caller), &vis)?;
        Ok(rendered.pop().unwrap_or_default())
    })?;
    Ok(Json(ev))
}
