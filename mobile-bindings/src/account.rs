//! `ensure_owner_account`: the device's user, signed in without a registration screen.
//!
//! Uses the node's accounts service directly (the session `/register` and `/login`
//! start, `warren_core::account::Session`), not HTTP, so it works whatever the
//! registration policy is.

use std::sync::Arc;

use warren_core::server::Server;
use warren_core::storage;
use warren_core::{Error, account, hash_password, valid_localpart, verify_password};

use crate::WarrenError;

/// A signed-in device: what a Matrix client needs to restore a session.
#[derive(Clone, Debug, PartialEq, Eq, uniffi::Record)]
pub struct Credentials {
    /// Full Matrix user id, `@localpart:<server name>`.
    pub user_id: String,
    /// Access token of the new device.
    pub access_token: String,
    /// Id of the new device.
    pub device_id: String,
}

/// The user names `/register` accepts (lowercased first).
/// Create `localpart` if missing (else check `password`), then sign a new device in.
pub(crate) async fn ensure_owner_account(
    server: Arc<Server>,
    localpart: String,
    password: String,
) -> Result<Credentials, WarrenError> {
    let localpart = localpart.trim().to_lowercase();
    if !valid_localpart(&localpart) {
        return Err(WarrenError::invalid(format!(
            "invalid user name {localpart:?}: use only a-z, 0-9 and ._=-/+"
        )));
    }
    if password.is_empty() {
        return Err(WarrenError::invalid("the password must not be empty"));
    }
    let user_id = server.user_id(&localpart);
    if user_id.len() > 255 {
        return Err(WarrenError::invalid("the user id would be too long"));
    }
    let stored = server.db.read(|c| storage::user_password(c, &user_id))?;
    let new_hash = match stored {
        None => Some(
            hash_password(password)
                .await
                .map_err(WarrenError::internal)?,
        ),
        Some((_, true)) => {
            return Err(WarrenError::Auth {
                message: format!("{user_id} is deactivated"),
            });
        }
        Some((Some(hash), false)) => {
            if !verify_password(password, hash)
                .await
                .map_err(WarrenError::internal)?
            {
                return Err(WarrenError::Auth {
                    message: format!("wrong password for {user_id}"),
                });
            }
            None
        }
        Some((None, false)) => {
            return Err(WarrenError::Auth {
                message: format!("{user_id} has no password set"),
            });
        }
    };
    let session = match &new_hash {
        Some(hash) => {
            let session = account::Session::new(&server, &user_id, None, false);
            match account::register(
                &server,
                &user_id,
                &localpart,
                Some(hash),
                false,
                Some((&session, None)),
            ) {
                // Someone registered the name since the read above.
                Err(Error::UserInUse) => {
                    return Err(WarrenError::Auth {
                        message: format!("{user_id} was registered concurrently; try again"),
                    });
                }
                other => other?,
            }
            session
        }
        None => account::log_in(&server, &user_id, None, None, false)?,
    };
    if new_hash.is_some() {
        tracing::info!(%user_id, "created the owner account");
    }
    Ok(Credentials {
        user_id,
        access_token: session.access_token,
        device_id: session.device_id,
    })
}

#[cfg(test)]
mod tests {
    use super::valid_localpart;

    #[test]
    fn localparts() {
        assert!(valid_localpart("alice"));
        assert!(valid_localpart("a.b_c=d-e/f+1"));
        assert!(!valid_localpart(""));
        assert!(!valid_localpart("Alice"));
        assert!(!valid_localpart("al ice"));
        assert!(!valid_localpart("@alice"));
    }
}
