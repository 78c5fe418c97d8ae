//! `/versions` and `/capabilities`.

use axum::Json;
use serde_json::{Value, json};

use super::extract::Auth;
use crate::events::SUPPORTED_ROOM_VERSIONS;

/// `GET /_matrix/client/versions`.
pub(super) async fn versions() -> Json<Value> {
    Json(json!({
        "versions": ["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11"],
        // Simplified sliding sync (MSC4186), which matrix-sdk discovers here; room reports
        // on the MSC4151 path (spec v1.13), which v1.11 clients use.
        // Delayed events (MSC4140), which Element Call looks for.
        "unstable_features": {
            "org.matrix.simplified_msc3575": true,
            "org.matrix.msc4151": true,
            "org.matrix.msc4140": true,
        },
    }))
}

/// `GET /capabilities`.
pub(super) async fn capabilities(
    axum::extract::State(server): axum::extract::State<std::sync::Arc<crate::server::Server>>,
    Auth(_caller): Auth,
) -> Json<Value> {
    let available: serde_json::Map<String, Value> = SUPPORTED_ROOM_VERSIONS
        .iter()
        .map(|v| ((*v).to_owned(), json!("stable")))
        .collect();
    Json(json!({
        "capabilities": {
            "m.change_password": {"enabled": true},
            "m.room_versions": {"default": server.config.default_room_version, "available": available},
            "m.set_displayname": {"enabled": true},
            "m.set_avatar_url": {"enabled": true},
            "m.3pid_changes": {"enabled": false},
            "m.get_login_token": {"enabled": false},
        }
    }))
}
