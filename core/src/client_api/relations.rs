//! Relationships and threads: `GET /v1/rooms/{roomId}/relations/{eventId}[/{relType}
//! [/{eventType}]]` and `GET /v1/rooms/{roomId}/threads` (the service is `crate::relations`).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Auth, P, Q};
use super::rooms::opts;
use crate::error::Error;
use crate::relations::{self, RelationsParams, ThreadsParams};
use crate::server::Server;

type JsonResult = Result<Json<Value>, Error>;

#[derive(Deserialize)]
pub(super) struct RelationsQuery {
    from: Option<String>,
    to: Option<String>,
    limit: Option<usize>,
    dir: Option<String>,
    recurse: Option<bool>,
    /// The name `recurse` had before Matrix 1.10 (MSC3981); some clients still send it.
    #[serde(rename = "org.matrix.msc3981.recurse")]
    recurse_unstable: Option<bool>,
}

impl RelationsQuery {
    fn params(
        self,
        rel_type: Option<String>,
        event_type: Option<String>,
    ) -> Result<RelationsParams, Error> {
        let forwards = match self.dir.as_deref() {
            None | Some("b") => false,
            Some("f") => true,
            Some(other) => {
                return Err(Error::InvalidParam(format!(
                    "dir must be b or f, not {other}"
                )));
            }
        };
        if self.limit == Some(0) {
            return Err(Error::InvalidParam("limit must be at least 1".into()));
        }
        Ok(RelationsParams {
            rel_type,
            event_type,
            from: self.from,
            to: self.to,
            limit: self.limit,
            forwards,
            recurse: self.recurse.or(self.recurse_unstable),
        })
    }
}

async fn relations_inner(
    server: Arc<Server>,
    caller: super::Requester,
    room_id: String,
    event_id: String,
    params: RelationsParams,
) -> JsonResult {
    let body = server
        .db
        .read_tx(|c| relations::children_page(c, opts(&caller), &room_id, &event_id, &params))?;
    Ok(Json(body))
}

/// `GET /rooms/{roomId}/relations/{eventId}`.
pub(super) async fn all(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id)): P<(String, String)>,
    Q(q): Q<RelationsQuery>,
) -> JsonResult {
    let params = q.params(None, None)?;
    relations_inner(server, caller, room_id, event_id, params).await
}

/// `GET /rooms/{roomId}/relations/{eventId}/{relType}`.
pub(super) async fn by_rel_type(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id, rel_type)): P<(String, String, String)>,
    Q(q): Q<RelationsQuery>,
) -> JsonResult {
    let params = q.params(Some(rel_type), None)?;
    relations_inner(server, caller, room_id, event_id, params).await
}

/// `GET /rooms/{roomId}/relations/{eventId}/{relType}/{eventType}`.
pub(super) async fn by_rel_and_event_type(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, event_id, rel_type, event_type)): P<(String, String, String, String)>,
    Q(q): Q<RelationsQuery>,
) -> JsonResult {
    let params = q.params(Some(rel_type), Some(event_type))?;
    relations_inner(server, caller, room_id, event_id, params).await
}

#[derive(Deserialize)]
pub(super) struct ThreadsQuery {
    include: Option<String>,
    from: Option<String>,
    limit: Option<usize>,
}

/// `GET /rooms/{roomId}/threads`.
pub(super) async fn threads(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<ThreadsQuery>,
) -> JsonResult {
    let participated = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "include must be all or participated, not {other}"
            )));
        }
    };
    if q.limit == Some(0) {
        return Err(Error::InvalidParam("limit must be at least 1".into()));
    }
    let params = ThreadsParams {
        participated,
        from: q.from,
        limit: q.limit,
    };
    let body = server
        .db
        .read_tx(|c| relations::threads_page(c, opts(&caller), &room_id, &params))?;
    Ok(Json(body))
}
