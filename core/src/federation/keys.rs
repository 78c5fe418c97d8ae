//! `GET /_matrix/key/v2/server`: the node's signing key, signed by itself.
//!
//! On a P2P node the key is also spelled by the server name, so a peer never needs this
//! endpoint to verify us; it is served so standard tooling and notary-style checks work.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use std::collections::BTreeMap;

use ruma::CanonicalJsonObject;
use ruma::serde::Base64;
use ruma::signatures::PublicKeyMap;

use crate::error::Error;
use crate::identity::{KEY_ID, public_key_from_server_name};
use crate::server::Server;
use crate::storage::now_ms;

/// How long a fetched key response may be cached. The key never changes (it *is* the
/// server name), so a week is conservative.
const VALIDITY: Duration = Duration::from_secs(7 * 24 * 3600);

/// The node's key response (`GET /_matrix/key/v2/server`), signed by itself.
pub fn server_keys(server: &Server) -> Result<serde_json::Value, Error> {
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
    Ok(serde_json::to_value(object)?)
}

/// The verify keys of P2P servers, read from their names, as ruma's signature checks
/// take them.
pub(crate) fn key_map<'a>(
    servers: impl IntoIterator<Item = &'a str>,
) -> Result<PublicKeyMap, Error> {
    let mut keys = PublicKeyMap::new();
    for s in servers {
        let key = public_key_from_server_name(s)
            .ok_or_else(|| Error::Forbidden(format!("{s} is not a P2P server name")))?;
        let mut set = BTreeMap::new();
        set.insert(KEY_ID.to_owned(), Base64::new(key.to_vec()));
        keys.insert(s.to_owned(), set);
    }
    Ok(keys)
}

/// Sign a JSON value (an object) as this node.
pub(crate) fn sign(server: &Server, value: &serde_json::Value) -> Result<serde_json::Value, Error> {
    server.identity.sign_json(value).map_err(Error::Internal)
}

/// Check that `signer` signed `object` (and that its signature is the only thing that
/// makes it valid: other servers' signatures are not looked at).
pub(crate) fn verify_signed_by(signer: &str, object: &CanonicalJsonObject) -> Result<(), Error> {
    let signed = matches!(
        object.get("signatures"),
        Some(ruma::CanonicalJsonValue::Object(o)) if o.contains_key(signer)
    );
    if !signed {
        return Err(Error::InvalidSignature(format!("{signer} did not sign it")));
    }
    // Only the signer's signature is checked: keep just that one.
    let mut only = object.clone();
    if let Some(ruma::CanonicalJsonValue::Object(sigs)) = only.get_mut("signatures") {
        sigs.retain(|k, _| k == signer);
    }
    ruma::signatures::verify_json(&key_map([signer])?, &only)
        .map_err(|e| Error::InvalidSignature(format!("bad signature by {signer}: {e}")))
}
