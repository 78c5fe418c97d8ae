//! `GET /_matrix/federation/v1/openid/userinfo?access_token=`: who an OpenID token
//! belongs to. Asked by third parties that are not Matrix servers, so it is not signed.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::error::Error;
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct UserinfoQuery {
    access_token: Option<String>,
}

pub(super) async fn userinfo(
    State(server): State<Arc<Server>>,
    Query(q): Query<UserinfoQuery>,
) -> Result<Json<Value>, Error> {
    let token = q.access_token.ok_or(Error::MissingToken)?;
    let user_id = crate::openid::userinfo(&server, &token)?;
    Ok(Json(json!({ "sub": user_id })))
}
