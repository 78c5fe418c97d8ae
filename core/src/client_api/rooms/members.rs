//! `GET /rooms/{roomId}/members` and `GET /rooms/{roomId}/joined_members`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{JsonResult, opts, parse_token, visible_state};
use crate::client_api::extract::{Auth, P, Q};
use crate::error::Error;
use crate::events::client_event;
use crate::rooms::state_at::state_at;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage;

#[derive(Deserialize)]
pub(in crate::client_api) struct MembersQuery {
    at: Option<String>,
    membership: Option<String>,
    not_membership: Option<String>,
}

/// `GET /rooms/{roomId}/members`.
pub(in crate::client_api) async fn members(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<MembersQuery>,
) -> JsonResult {
    let chunk = server.db.read_tx(|c| {
        let mut state = visible_state(c, &room_id, &caller.user_id)?;
        if let Some(at) = &q.at {
            let pos = parse_token(at)?;
            let vis = visibility_for(c, &room_id, &caller.user_id)?;
            state = state_at(c, &room_id, pos.min(vis.max_pos()))?;
        }
        let mut out = Vec::new();
        for ((ty, _), id) in state.iter() {
            if ty != "m.room.member" {
                continue;
            }
            let Some(ev) = storage::get_state_event(c, id)? else {
                continue;
            };
            let v = client_event(&ev, opts(&caller));
            let m = v["content"]["membership"].as_str().unwrap_or("");
            if q.membership.as_deref().is_some_and(|want| want != m)
                || q.not_membership.as_deref() == Some(m)
            {
                continue;
            }
            out.push(v);
        }
        Ok(out)
    })?;
    Ok(Json(json!({"chunk": chunk})))
}

/// `GET /rooms/{roomId}/joined_members`.
pub(in crate::client_api) async fn joined_members(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
) -> JsonResult {
    let joined = server.db.read_tx(|c| {
        // Only current members (Synapse's rule): a user who left sees no member list.
        let membership = storage::membership(c, &room_id, &caller.user_id)?.map(|(m, _, _)| m);
        if membership.as_deref() != Some("join") {
            return Err(Error::Forbidden(
                "only current members of the room may list its joined members".into(),
            ));
        }
        let state = visible_state(c, &room_id, &caller.user_id)?;
        let mut out = serde_json::Map::new();
        for ((ty, sk), id) in state.iter() {
            if ty != "m.room.member" {
                continue;
            }
            let Some(ev) = storage::get_state_event(c, id)? else { continue };
            let v: Value = serde_json::from_str(&ev.json)?;
            if v["content"]["membership"] == "join" {
                out.insert(
                    sk.clone(),
                    json!({"display_name": v["content"]["displayname"], "avatar_url": v["content"]["avatar_url"]}),
                );
            }
        }
        Ok(out)
    })?;
    Ok(Json(json!({"joined": joined})))
}
