//! `GET /_matrix/key/v2/server`: the node's signing key, signed by itself
//! ([`crate::federation::keys::server_keys`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use crate::error::Error;
use crate::server::Server;

pub(super) async fn server_keys(State(server): State<Arc<Server>>) -> Result<Json<Value>, Error> {
    Ok(Json(crate::federation::keys::server_keys(&server)?))
}
