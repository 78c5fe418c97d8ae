//! Cross-signing keys (master, self-signing, user-signing) and the signatures that
//! `/keys/signatures/upload` adds to devices and keys.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// A stored cross-signing key: its public key (unpadded base64) and uploaded JSON.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CrossSigningKeyRow {
    /// The ed25519 public key; also the key id after `ed25519:`.
    pub public_key: String,
    /// The uploaded `CrossSigningKey` object.
    pub key_json: String,
}

/// One of a user's cross-signing keys; `key_type` is `master`, `self_signing` or
/// `user_signing`.
pub fn cross_signing_key(
    c: &Connection,
    user_id: &str,
    key_type: &str,
) -> Result<Option<CrossSigningKeyRow>, Error> {
    Ok(c.query_row(
        "SELECT public_key, key_json FROM e2e_cross_signing_keys WHERE user_id = ?1 AND key_type = ?2",
        params![user_id, key_type],
        |r| {
            Ok(CrossSigningKeyRow {
                public_key: r.get(0)?,
                key_json: r.get(1)?,
            })
        },
    )
    .optional()?)
}

/// Store (or replace) one cross-signing key.
pub fn set_cross_signing_key(
    c: &Connection,
    user_id: &str,
    key_type: &str,
    row: &CrossSigningKeyRow,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO e2e_cross_signing_keys (user_id, key_type, public_key, key_json) VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (user_id, key_type) DO UPDATE SET public_key = excluded.public_key, key_json = excluded.key_json",
        params![user_id, key_type, row.public_key, row.key_json],
    )?;
    Ok(())
}

/// A signature on a device or key, added after upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignatureRow {
    /// Who signed.
    pub signer_user_id: String,
    /// With which key, e.g. `ed25519:<public key or device id>`.
    pub signer_key_id: String,
    /// Unpadded base64 signature.
    pub signature: String,
}

/// Store a signature on `(target_user_id, target_key_id)`; the key id is a device id or a
/// cross-signing public key.
pub fn add_signature(
    c: &Connection,
    target_user_id: &str,
    target_key_id: &str,
    sig: &SignatureRow,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO e2e_signatures (target_user_id, target_key_id, signer_user_id, signer_key_id, signature)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (target_user_id, target_key_id, signer_user_id, signer_key_id)
         DO UPDATE SET signature = excluded.signature",
        params![target_user_id, target_key_id, sig.signer_user_id, sig.signer_key_id, sig.signature],
    )?;
    Ok(())
}

/// Signatures stored for a device or key.
pub fn signatures_on(
    c: &Connection,
    target_user_id: &str,
    target_key_id: &str,
) -> Result<Vec<SignatureRow>, Error> {
    let mut st = c.prepare_cached(
        "SELECT signer_user_id, signer_key_id, signature FROM e2e_signatures
         WHERE target_user_id = ?1 AND target_key_id = ?2 ORDER BY signer_user_id, signer_key_id",
    )?;
    let rows = st.query_map(params![target_user_id, target_key_id], |r| {
        Ok(SignatureRow {
            signer_user_id: r.get(0)?,
            signer_key_id: r.get(1)?,
            signature: r.get(2)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Drop every signature on a target (its key was replaced, so they no longer apply).
pub fn delete_signatures_on(
    c: &Connection,
    target_user_id: &str,
    target_key_id: &str,
) -> Result<(), Error> {
    c.execute(
        "DELETE FROM e2e_signatures WHERE target_user_id = ?1 AND target_key_id = ?2",
        params![target_user_id, target_key_id],
    )?;
    Ok(())
}

/// Drop the signatures on a user's devices and keys made by one of that user's keys
/// (a replaced self-signing or master key no longer vouches for anything).
pub fn delete_signatures_by(
    c: &Connection,
    signer_user_id: &str,
    signer_key_id: &str,
) -> Result<(), Error> {
    c.execute(
        "DELETE FROM e2e_signatures WHERE signer_user_id = ?1 AND signer_key_id = ?2",
        params![signer_user_id, signer_key_id],
    )?;
    Ok(())
}
