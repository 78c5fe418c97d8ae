//! `GET /_matrix/federation/v1/query/profile`: a local user's profile for another server.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct ProfileQuery {
    user_id: String,
    field: Option<String>,
}

pub(super) async fn profile(
    State(server): State<Arc<Server>>,
    Query(q): Query<ProfileQuery>,
) -> Result<Json<Value>, Error> {
    if !server.is_local_user(&q.user_id) {
        return Err(Error::InvalidParam(format!(
            "{} is not a user of this server",
            q.user_id
        )));
    }
    let (displayname, avatar_url) = crate::appservice::query::local_profile(&server, &q.user_id)
        .await?
        .ok_or_else(|| Error::NotFound("profile not found".into()))?;
    let mut out = json!({});
    let want = |f: &str| q.field.as_deref().is_none_or(|w| w == f);
    if let Some(d) = displayname.filter(|_| want("displayname")) {
        out["displayname"] = json!(d);
    }
    if let Some(a) = avatar_url.filter(|_| want("avatar_url")) {
        out["avatar_url"] = json!(a);
    }
    Ok(Json(out))
}
