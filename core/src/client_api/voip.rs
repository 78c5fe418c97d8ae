//! `GET /voip/turnServer` and `GET /.well-known/matrix/client`.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderMap;
use serde_json::{Value, json};

use super::extract::Auth;
use crate::error::Error;
use crate::server::Server;

/// `GET /voip/turnServer`: TURN URIs and credentials, or `{}` when this node has no
/// TURN server configured (as Synapse answers; clients then call without TURN).
pub(super) async fn turn_server(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> Result<Json<Value>, Error> {
    let now = u64::try_from(crate::storage::now_ms() / 1000).unwrap_or(0);
    let Some(c) = crate::voip::turn_credentials(&server.config.voip, &caller.user_id, now) else {
        return Ok(Json(json!({})));
    };
    Ok(Json(json!({
        "username": c.username,
        "password": c.password,
        "uris": c.uris,
        "ttl": c.ttl,
    })))
}

/// `GET /.well-known/matrix/client`: where this homeserver is (the address the client
/// reached it at: a node serves its own device) and the MatrixRTC focus, if any.
pub(super) async fn well_known_client(
    State(server): State<Arc<Server>>,
    headers: HeaderMap,
) -> Json<Value> {
    let base = headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_graphic()))
        .map_or_else(
            || format!("http://{}", server.config.client_addr),
            |h| format!("http://{h}"),
        );
    let mut body = json!({ "m.homeserver": { "base_url": base } });
    if let Some(foci) = crate::voip::rtc_foci(&server.config.voip) {
        body["org.matrix.msc4143.rtc_foci"] = foci;
    }
    Json(body)
}
