//! `GET /_matrix/key/v2/server`: the node's signing key, signed by itself.
//!
//! On a P2P node the key is also spelled by the server name, so a peer never needs this
//! endpoint to verify us; it is served so standard tooling and notary-style checks work.

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::CanonicalJsonObject;

use crate::error::Error;
use crate::identity::KEY_ID;
use crate::server::Server;
use crate::storage::now_ms;

/// How long a fetched key response may be cached. The key never changes (it *is* the
/// server name), so a week is conservative.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

pub(super) async fn server_keys(
    State(server): State<Arc<Server>>,
) -> Result<Json<serde_json::Value>, Error> {
    let name = server.server_name();
    let body = serde_json::json!({
        "server_name": name,
        "valid_until_ts": now_ms() + VALIDITY.as_millis() as i64,
        "verify_keys": {
            KEY_ID: { "key": STANDARD_NO_PAD.encode(server.identity.public_key()) }
        },
        "old_verify_keys": {},
    });
    let mut object: CanonicalJsonObject = serde_json::from_value(body)?;
    ruma::signatures::sign_json(name, server.identity.keypair(), &mut object)
        .map_err(|e| Error::Internal(format!("signing key response: {e}")))?;
    Ok(Json(serde_json::to_value(object)?))
}
