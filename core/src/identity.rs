//! The node's one ed25519 key: Matrix server signing key and libp2p identity at once.
//!
//! The server name is the lowercase hex of the public key, so a name is
//! self-certifying: anyone can decode the verify key from it.

use std::fs;
use std::io::Write;
use std::path::Path;

use ed25519_dalek::SigningKey;
use ed25519_dalek::pkcs8::EncodePrivateKey;
use ruma::signatures::Ed25519KeyPair;

use crate::error::StartError;

/// File name of the key inside the data directory (32 raw seed bytes, mode 0600).
pub const KEY_FILE: &str = "signing.key";
/// The key id used in signatures and `/key/v2/server`.
pub const KEY_ID: &str = "ed25519:p2p";
/// The version part of [`KEY_ID`].
pub const KEY_VERSION: &str = "p2p";

/// The node's identity.
pub struct Identity {
    seed: [u8; 32],
    public: [u8; 32],
    server_name: String,
    keypair: Ed25519KeyPair,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.debug_struct("Identity")
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl Identity {
    /// Load the key from `data_dir`, creating the directory and a fresh key on first start.
    pub fn load_or_create(data_dir: &Path) -> Result<Identity, StartError> {
        fs::create_dir_all(data_dir).map_err(|e| {
            StartError::Other(format!(
                "cannot create data directory {}: {e}",
                data_dir.display()
            ))
        })?;
        let path = data_dir.join(KEY_FILE);
        let shown = path.display().to_string();
        let seed = match fs::read(&path) {
            Ok(bytes) => <[u8; 32]>::try_from(bytes.as_slice()).map_err(|_| {
                StartError::Key(
                    shown.clone(),
                    format!("expected 32 bytes, found {}", bytes.len()),
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let seed: [u8; 32] = rand::random();
                write_private(&path, &seed)
                    .map_err(|e| StartError::Key(shown.clone(), e.to_string()))?;
                seed
            }
            Err(e) => return Err(StartError::Key(shown, e.to_string())),
        };
        Identity::from_seed(seed).map_err(|e| StartError::Key(shown, e))
    }

    /// Build an identity from a 32-byte ed25519 seed.
    pub fn from_seed(seed: [u8; 32]) -> Result<Identity, String> {
        let signing = SigningKey::from_bytes(&seed);
        let public = signing.verifying_key().to_bytes();
        let der = signing.to_pkcs8_der().map_err(|e| e.to_string())?;
        let keypair = Ed25519KeyPair::from_der(der.as_bytes(), KEY_VERSION.to_owned())
            .map_err(|e| e.to_string())?;
        Ok(Identity {
            seed,
            public,
            server_name: hex::encode(public),
            keypair,
        })
    }

    /// 64 lowercase hex characters.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// The ed25519 public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.public
    }

    /// The ed25519 seed, for building the libp2p keypair from the same key.
    pub fn secret_seed(&self) -> [u8; 32] {
        self.seed
    }

    /// Sign a JSON object as this server (canonical JSON; signatures already on it are
    /// kept). Fails if the value is not an object or not canonical JSON (floats, integers
    /// out of range).
    pub fn sign_json(&self, value: &serde_json::Value) -> Result<serde_json::Value, String> {
        let mut object: ruma::CanonicalJsonObject = serde_json::from_value(value.clone())
            .map_err(|e| format!("not canonical JSON: {e}"))?;
        ruma::signatures::sign_json(&self.server_name, &self.keypair, &mut object)
            .map_err(|e| format!("signing: {e}"))?;
        serde_json::to_value(object).map_err(|e| e.to_string())
    }

    /// The key pair in the form ruma's signing functions take.
    pub fn keypair(&self) -> &Ed25519KeyPair {
        &self.keypair
    }
}

/// Decode the verify key from a P2P server name (64 lowercase hex characters).
pub fn public_key_from_server_name(name: &str) -> Option<[u8; 32]> {
    if name.len() != 64
        || !name
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return None;
    }
    let bytes = hex::decode(name).ok()?;
    <[u8; 32]>::try_from(bytes.as_slice()).ok()
}

pub(crate) fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    // Rename so a crash never leaves a half-written key behind.
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_created_once_and_reloaded() {
        let dir = tempfile::tempdir().expect("tempdir");
        let a = Identity::load_or_create(dir.path()).expect("create");
        let b = Identity::load_or_create(dir.path()).expect("load");
        assert_eq!(a.server_name(), b.server_name());
        assert_eq!(a.server_name().len(), 64);
        assert_eq!(
            public_key_from_server_name(a.server_name()),
            Some(a.public_key())
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(KEY_FILE))
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn corrupt_key_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(KEY_FILE), b"short").expect("write");
        let err = Identity::load_or_create(dir.path()).expect_err("must fail");
        assert!(err.to_string().contains("expected 32 bytes"), "{err}");
    }

    #[test]
    fn server_name_parsing_rejects_non_p2p_names() {
        assert!(public_key_from_server_name("example.org").is_none());
        assert!(public_key_from_server_name(&"A".repeat(64)).is_none());
        assert!(public_key_from_server_name(&"a".repeat(63)).is_none());
    }
}
