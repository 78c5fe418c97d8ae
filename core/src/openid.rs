//! OpenID tokens (spec: "OpenID"): a client asks for a token, hands it to a third party
//! (a widget, Element Call's LiveKit JWT service), and that party asks this server who
//! it belongs to with `GET /_matrix/federation/v1/openid/userinfo`. A token proves only
//! the user id, for an hour; it grants no access to the account.

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, now_ms};

/// How long a token is valid (Synapse's default), in seconds.
pub const TOKEN_LIFETIME_SECS: i64 = 3600;
/// Tokens kept per user; requesting another drops the oldest.
pub const MAX_TOKENS_PER_USER: usize = 16;
/// Length of a token (alphanumeric).
const TOKEN_LEN: usize = 32;

/// A fresh token for `user_id` and its lifetime in seconds.
pub fn request_token(server: &Server, user_id: &str) -> Result<(String, i64), Error> {
    let token = crate::rooms::random_string(TOKEN_LEN);
    let now = now_ms();
    let expires = now + TOKEN_LIFETIME_SECS * 1000;
    server.db.write(|tx| {
        storage::insert_openid_token(tx, &token, user_id, expires, now, MAX_TOKENS_PER_USER)
    })?;
    Ok((token, TOKEN_LIFETIME_SECS))
}

/// The user a token belongs to; `401 M_UNKNOWN_TOKEN` when it is unknown or expired.
pub fn userinfo(server: &Server, token: &str) -> Result<String, Error> {
    server
        .db
        .read(|c| storage::openid_token_user(c, token, now_ms()))?
        .ok_or(Error::UnknownToken)
}
