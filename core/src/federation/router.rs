//! The inbound server-server API, mounted by the transport on its streams.
//!
//! The self-describing endpoints (`/federation/v1/version`, the self-certifying key
//! server) are open; everything else sits behind [`auth::require_signature`] and may
//! trust the [`FederationOrigin`](super::FederationOrigin) it sets. Unknown paths get
//! `404 M_UNRECOGNIZED` like the client API.

use std::sync::Arc;

use axum::Router;
use axum::middleware::from_fn_with_state;
use axum::routing::get;

use crate::client_api::unrecognized;
use crate::server::Server;

use super::{auth, keys, query};

/// The federation router, with `Server` state applied.
pub fn router(server: Arc<Server>) -> Router {
    let signed = Router::new()
        .route("/_matrix/federation/v1/query/profile", get(query::profile))
        .route_layer(from_fn_with_state(server.clone(), auth::require_signature));
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/key/v2/server", get(keys::server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(keys::server_keys))
        .merge(signed)
        .fallback(unrecognized)
        .with_state(server)
}

async fn version() -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::json!({
        "server": { "name": "Warren", "version": env!("CARGO_PKG_VERSION") }
    }))
}
