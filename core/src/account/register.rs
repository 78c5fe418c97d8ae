//! Creating an account (`/register`, an application service's users, the mobile API's
//! owner account, the admin API's `user add`), with its first session in the same
//! transaction.

use super::Session;
use crate::error::Error;
use crate::server::Server;
use crate::storage;

/// Create the account `user_id` (`localpart` on this node) with the password `hash`
/// (none for an application service's user), a node admin if `admin`, and, if given,
/// start `session` (named `display_name`) in the same write, so an account never
/// exists half made.
/// `M_USER_IN_USE` if the name is taken (also by a registration that raced this one).
pub fn register(
    server: &Server,
    user_id: &str,
    localpart: &str,
    hash: Option<&str>,
    admin: bool,
    session: Option<(&Session, Option<&str>)>,
) -> Result<(), Error> {
    let created = server.write(|tx| {
        if storage::user_exists(tx, user_id)? {
            return Ok(false);
        }
        storage::create_user(tx, user_id, hash, admin, localpart)?;
        if let Some((session, display_name)) = session {
            session.start(tx, display_name)?;
        }
        Ok(true)
    })?;
    if !created {
        return Err(Error::UserInUse);
    }
    tracing::info!(%user_id, "registered user");
    Ok(())
}

/// Count one use of the registration token `token` (checked by the caller against the
/// configured tokens); returns the uses before this one.
pub fn use_registration_token(server: &Server, token: &str) -> Result<i64, Error> {
    server.write(|tx| storage::use_registration_token(tx, token))
}
