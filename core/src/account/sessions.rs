//! Sessions: a device signed in with an access token (and, for a client that can
//! refresh, a refresh token), as `/login`, `/register` and the mobile API's
//! `ensure_owner_account` start them, and `/refresh`.

use rusqlite::Connection;

use crate::error::Error;
use crate::rooms::random_string;
use crate::server::Server;
use crate::storage;

/// A refresh token issued with an access token, and when that access token expires.
#[derive(Clone, Debug)]
pub struct RefreshToken {
    /// The refresh token.
    pub token: String,
    /// When the access token issued with it expires (ms since the epoch).
    pub expires_ts: i64,
}

impl RefreshToken {
    /// A new refresh token; its access token lives for the configured lifetime.
    fn new(server: &Server) -> RefreshToken {
        let lifetime = i64::try_from(server.config.refreshable_access_token_lifetime.as_millis())
            .unwrap_or(i64::MAX);
        RefreshToken {
            token: random_string(40),
            expires_ts: storage::now_ms().saturating_add(lifetime),
        }
    }
}

/// A device of `user_id` and its tokens.
#[derive(Clone, Debug)]
pub struct Session {
    /// `@user:server`.
    pub user_id: String,
    /// The device (the one the client asked for, or a random id).
    pub device_id: String,
    /// The access token.
    pub access_token: String,
    /// The refresh token, for a client that can refresh.
    pub refresh: Option<RefreshToken>,
}

impl Session {
    /// The ids and tokens of a new session of `user_id` on `device_id` (a random id when
    /// none is given); nothing is written until [`Session::start`].
    pub fn new(
        server: &Server,
        user_id: &str,
        device_id: Option<String>,
        refreshable: bool,
    ) -> Session {
        Session {
            user_id: user_id.to_owned(),
            device_id: device_id.unwrap_or_else(|| random_string(10).to_uppercase()),
            access_token: random_string(40),
            refresh: refreshable.then(|| RefreshToken::new(server)),
        }
    }

    /// Write the session in the write transaction `tx`: the device (created if new; a
    /// known device's old tokens go) named `display_name`, and its tokens. Registration
    /// creates the account in the same transaction.
    pub fn start(&self, tx: &Connection, display_name: Option<&str>) -> Result<(), Error> {
        storage::start_session(
            tx,
            &self.user_id,
            &self.device_id,
            display_name,
            &self.access_token,
        )?;
        if let Some(r) = &self.refresh {
            storage::make_refreshable(tx, &self.access_token, &r.token, r.expires_ts)?;
        }
        Ok(())
    }
}

/// Sign `user_id` (whose credentials the caller checked) in on a device: a new session,
/// written at once.
pub fn log_in(
    server: &Server,
    user_id: &str,
    device_id: Option<String>,
    display_name: Option<&str>,
    refreshable: bool,
) -> Result<Session, Error> {
    let session = Session::new(server, user_id, device_id, refreshable);
    server.write(|tx| session.start(tx, display_name))?;
    Ok(session)
}

/// `POST /refresh`: a new access token and refresh token for the device of
/// `refresh_token`, which keeps working until the new pair is first used (the spec's
/// "the old refresh token remains valid until the new access token or refresh token is
/// used"); the device, and so its transaction ids, stay the same. `M_UNKNOWN_TOKEN` for
/// a token that is not live or whose account is deactivated.
pub fn refresh(server: &Server, refresh_token: &str) -> Result<(String, RefreshToken), Error> {
    let access = random_string(40);
    let refresh = RefreshToken::new(server);
    let owner = server.write(|tx| {
        storage::refresh_session(
            tx,
            refresh_token,
            &access,
            &refresh.token,
            refresh.expires_ts,
        )
    })?;
    match owner {
        Some(o) if !o.deactivated => Ok((access, refresh)),
        _ => Err(Error::UnknownToken),
    }
}

/// The pair issued with `refresh_token` by `/refresh` has been used for the first time:
/// the refresh token it replaced, and that one's access tokens, stop working (the
/// spec's "until the new access token or refresh token is used").
pub fn first_use_after_refresh(server: &Server, refresh_token: &str) -> Result<(), Error> {
    server.write(|tx| storage::revoke_replaced(tx, refresh_token))
}
