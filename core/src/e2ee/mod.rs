//! End-to-end encryption services: device keys, one-time and fallback keys,
//! cross-signing, device-list changes, to-device messages and server-side key backup.
//!
//! The server never sees plaintext: it stores what clients upload, hands it to the
//! right devices, and checks shapes (and signatures, where it can) so one client cannot
//! hand another garbage. Every change `/sync` reports (device-list changes, to-device
//! messages) takes a stream position inside its write transaction.

pub mod backup;
pub mod cross_signing;
pub mod device_lists;
pub mod keys;
pub mod remote_devices;
pub mod to_device;

use base64::Engine;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use serde_json::{Map, Value};

use crate::error::Error;

/// Matrix uses unpadded standard base64; accept padding on input anyway.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new()
        .with_encode_padding(false)
        .with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Decode base64 of an expected byte length.
fn decode_b64(s: &str, len: usize) -> Option<Vec<u8>> {
    BASE64.decode(s).ok().filter(|b| b.len() == len)
}

/// Check the ed25519 signature `signer_user`/`key_id` on `object` against
/// `public_key` (unpadded base64). The signed form is the canonical JSON without
/// `signatures` and `unsigned`, as the spec defines.
pub fn verify_signature(
    object: &Value,
    signer_user: &str,
    key_id: &str,
    public_key: &str,
) -> Result<(), String> {
    let sig = object["signatures"][signer_user][key_id]
        .as_str()
        .ok_or_else(|| format!("no signature by {signer_user} {key_id}"))?;
    let sig = decode_b64(sig, 64).ok_or("signature is not 64 bytes of base64")?;
    let key = decode_b64(public_key, 32).ok_or("public key is not 32 bytes of base64")?;
    let canonical: ruma::CanonicalJsonObject = serde_json::from_value(object.clone())
        .map_err(|e| format!("object is not canonical JSON: {e}"))?;
    let signed = ruma::signatures::to_canonical_json_string_for_signing(&canonical)
        .map_err(|e| format!("object is not canonical JSON: {e}"))?;
    ruma::signatures::verify_canonical_json_bytes(
        &ruma::SigningKeyAlgorithm::Ed25519,
        &key,
        &sig,
        signed.as_bytes(),
    )
    .map_err(|_| format!("signature by {signer_user} {key_id} does not verify"))
}

/// `object` without `signatures` and `unsigned`: what a signature covers. Two uploads
/// of the same key compare equal on this.
fn signed_part(object: &Value) -> Value {
    let mut v = object.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("signatures");
        o.remove("unsigned");
    }
    v
}

/// The object at `v`, or `M_BAD_JSON` naming `what`.
fn object<'a>(v: &'a Value, what: &str) -> Result<&'a Map<String, Value>, Error> {
    v.as_object()
        .ok_or_else(|| Error::BadJson(format!("{what} must be an object")))
}

/// The string at `v[field]`, or `M_BAD_JSON`.
fn string_field<'a>(v: &'a Value, field: &str, what: &str) -> Result<&'a str, Error> {
    v[field]
        .as_str()
        .ok_or_else(|| Error::BadJson(format!("{what}.{field} must be a string")))
}

/// Check a `signatures` object: `{user: {key id: base64 string}}`.
fn check_signatures_shape(v: &Value, what: &str) -> Result<(), Error> {
    let Some(sigs) = v.get("signatures") else {
        return Ok(());
    };
    for (user, by_key) in object(sigs, &format!("{what}.signatures"))? {
        for (key_id, sig) in object(by_key, &format!("{what}.signatures.{user}"))? {
            if !key_id.contains(':') || sig.as_str().is_none_or(|s| s.is_empty()) {
                return Err(Error::BadJson(format!(
                    "{what}.signatures.{user}.{key_id} must be a non-empty string under an algorithm:id key"
                )));
            }
        }
    }
    Ok(())
}

pub(crate) use crate::storage::merge_signatures;

#[cfg(test)]
pub(crate) mod test_util {
    //! A database with users and devices for the service tests.

    use crate::storage::{self, Db};

    /// An open database in a temporary directory (kept alive by the returned guard).
    pub fn db() -> (tempfile::TempDir, Db) {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = Db::open(&dir.path().join("db")).expect("open db");
        (dir, db)
    }

    /// Create `user_id` (if new) with `device_id`.
    pub fn device(db: &Db, user_id: &str, device_id: &str) {
        db.write(|tx| {
            if !storage::user_exists(tx, user_id)? {
                storage::create_user(tx, user_id, None, false, "x")?;
            }
            storage::start_session(
                tx,
                user_id,
                device_id,
                None,
                &format!("{user_id}{device_id}"),
            )
        })
        .expect("create device");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};
    use serde_json::json;

    fn sign(key: &SigningKey, user: &str, key_id: &str, object: &mut Value) {
        let canonical: ruma::CanonicalJsonObject =
            serde_json::from_value(object.clone()).expect("canonical");
        let bytes = ruma::signatures::to_canonical_json_string_for_signing(&canonical)
            .expect("canonical string");
        let sig = BASE64.encode(key.sign(bytes.as_bytes()).to_bytes());
        object["signatures"][user][key_id] = json!(sig);
    }

    #[test]
    fn signatures_verify_and_tampering_is_caught() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let public = BASE64.encode(key.verifying_key().to_bytes());
        let mut obj = json!({"user_id": "@a:x", "keys": {"ed25519:D": public}, "signatures": {}});
        sign(&key, "@a:x", "ed25519:D", &mut obj);
        assert_eq!(verify_signature(&obj, "@a:x", "ed25519:D", &public), Ok(()));
        // Unsigned data is outside the signature.
        obj["unsigned"] = json!({"device_display_name": "x"});
        assert_eq!(verify_signature(&obj, "@a:x", "ed25519:D", &public), Ok(()));
        obj["user_id"] = json!("@b:x");
        assert!(verify_signature(&obj, "@a:x", "ed25519:D", &public).is_err());
        assert!(verify_signature(&obj, "@a:x", "ed25519:E", &public).is_err());
        assert!(verify_signature(&obj, "@a:x", "ed25519:D", "bm90IGEga2V5").is_err());
    }
}
