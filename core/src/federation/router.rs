//! The inbound server-server API, mounted by the transport on its streams.
//!
//! Only the self-describing endpoints are served so far (`/federation/v1/version` and
//! the self-certifying key server); rooms over federation come with the federation
//! issue. Unknown paths get `404 M_UNRECOGNIZED` like the client API.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;

use crate::client_api::unrecognized;
use crate::server::Server;

use super::keys;

/// The federation router, with `Server` state applied.
pub fn router(server: Arc<Server>) -> Router {
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .fallback(unrecognized)
        .with_state(server)
}

async fn version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "server": { "name": "Warren", "version": env!("CARGO_PKG_VERSION") }
    }))
}
