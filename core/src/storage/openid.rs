//! OpenID tokens (`/openid/request_token`): short-lived proofs of a user's identity that
//! another server checks with `/federation/v1/openid/userinfo`.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// Store a token for `user_id` until `expires_ts`, forgetting expired tokens and all
/// but the newest `keep_per_user - 1` of the user's others, so the table stays bounded.
pub fn insert_openid_token(
    c: &Connection,
    token: &str,
    user_id: &str,
    expires_ts: i64,
    now_ms: i64,
    keep_per_user: usize,
) -> Result<(), Error> {
    c.prepare_cached("DELETE FROM openid_tokens WHERE expires_ts <= ?1")?
        .execute([now_ms])?;
    let keep = i64::try_from(keep_per_user.saturating_sub(1)).unwrap_or(i64::MAX);
    c.prepare_cached(
        "DELETE FROM openid_tokens WHERE user_id = ?1 AND token NOT IN (
             SELECT token FROM openid_tokens WHERE user_id = ?1
             ORDER BY expires_ts DESC LIMIT ?2)",
    )?
    .execute(params![user_id, keep])?;
    c.prepare_cached("INSERT INTO openid_tokens (token, user_id, expires_ts) VALUES (?1, ?2, ?3)")?
        .execute(params![token, user_id, expires_ts])?;
    Ok(())
}

/// The user a token names, if it exists and has not expired.
pub fn openid_token_user(
    c: &Connection,
    token: &str,
    now_ms: i64,
) -> Result<Option<String>, Error> {
    Ok(
        c.prepare_cached("SELECT user_id FROM openid_tokens WHERE token = ?1 AND expires_ts > ?2")?
            .query_row(params![token, now_ms], |r| r.get(0))
            .optional()?,
    )
}

/// How many tokens are stored (for tests of the bound).
pub fn openid_token_count(c: &Connection) -> Result<i64, Error> {
    Ok(c.query_row("SELECT COUNT(*) FROM openid_tokens", [], |r| r.get(0))?)
}
