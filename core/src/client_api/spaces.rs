//! Spaces: `GET /_matrix/client/v1/rooms/{roomId}/hierarchy` (the walk is
//! [`rooms::space_hierarchy`](crate::rooms::space_hierarchy)).

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::Value;

use super::extract::{Auth, P, Q};
use crate::error::Error;
use crate::rooms::{HierarchyRequest, hierarchy};
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct HierarchyQuery {
    suggested_only: Option<String>,
    max_depth: Option<String>,
    limit: Option<String>,
    from: Option<String>,
}

fn non_negative(name: &str, v: Option<&str>) -> Result<Option<usize>, Error> {
    v.map(|v| {
        v.parse::<usize>().map_err(|_| {
            Error::InvalidParam(format!("{name} must be a non-negative integer, not {v:?}"))
        })
    })
    .transpose()
}

/// `GET /_matrix/client/v1/rooms/{roomId}/hierarchy`.
pub(super) async fn space_hierarchy(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(room_id): P<String>,
    Q(q): Q<HierarchyQuery>,
) -> Result<Json<Value>, Error> {
    let suggested_only = match q.suggested_only.as_deref() {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(Error::InvalidParam(format!(
                "suggested_only must be true or false, not {other:?}"
            )));
        }
    };
    let limit = non_negative("limit", q.limit.as_deref())?.unwrap_or(hierarchy::DEFAULT_LIMIT);
    if limit == 0 {
        return Err(Error::InvalidParam("limit must be positive".into()));
    }
    let req = HierarchyRequest {
        suggested_only,
        max_depth: non_negative("max_depth", q.max_depth.as_deref())?,
        limit,
        from: q.from,
    };
    let body = crate::rooms::space_hierarchy(&server, &caller.user_id, &room_id, &req).await?;
    Ok(Json(body))
}
