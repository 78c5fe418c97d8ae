//! `POST /user/{userId}/openid/request_token`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::{Value, json};

use super::extract::{Auth, P};
use crate::error::Error;
use crate::server::Server;

pub(super) async fn request_token(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(user_id): P<String>,
) -> Result<Json<Value>, Error> {
    if user_id != caller.user_id {
        return Err(Error::Forbidden(
            "you can only request OpenID tokens for yourself".into(),
        ));
    }
    let (token, expires_in) = crate::openid::request_token(&server, &caller.user_id)?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": server.server_name(),
        "expires_in": expires_in,
    })))
}
