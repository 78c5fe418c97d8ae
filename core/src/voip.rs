//! Calls: TURN credentials for `/voip/turnServer` and the MatrixRTC focus that
//! `/.well-known/matrix/client` names.
//!
//! With a shared secret (coturn's `use-auth-secret` / `static-auth-secret`), each user
//! gets credentials of the TURN REST API scheme that coturn and Synapse use: the
//! username is `<expiry unix seconds>:<user id>`, the password the base64 HMAC-SHA1 of
//! the username under the secret, so the TURN server checks them without asking us.

use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};

use crate::config::VoipConfig;

/// How long shared-secret credentials last when the configuration does not say.
pub const DEFAULT_TURN_USER_LIFETIME: Duration = Duration::from_secs(24 * 60 * 60);

/// TURN credentials for a user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TurnCredentials {
    /// The TURN username.
    pub username: String,
    /// The TURN password.
    pub password: String,
    /// TURN URIs to try.
    pub uris: Vec<String>,
    /// Seconds the credentials stay valid.
    pub ttl: u64,
}

/// Credentials for `user_id` at unix time `now_secs`, or `None` when no TURN server is
/// configured (or it has neither a shared secret nor fixed credentials).
pub fn turn_credentials(
    config: &VoipConfig,
    user_id: &str,
    now_secs: u64,
) -> Option<TurnCredentials> {
    if config.turn_uris.is_empty() {
        return None;
    }
    let ttl = config
        .turn_user_lifetime
        .unwrap_or(DEFAULT_TURN_USER_LIFETIME)
        .as_secs();
    let (username, password) = match (&config.turn_shared_secret, &config.turn_username) {
        (Some(secret), _) => {
            let username = format!("{}:{user_id}", now_secs.saturating_add(ttl));
            (username.clone(), shared_secret_password(secret, &username))
        }
        (None, Some(user)) => (
            user.clone(),
            config.turn_password.clone().unwrap_or_default(),
        ),
        (None, None) => return None,
    };
    Some(TurnCredentials {
        username,
        password,
        uris: config.turn_uris.clone(),
        ttl,
    })
}

/// The TURN REST API password for `username`: base64(HMAC-SHA1(secret, username)).
pub fn shared_secret_password(secret: &str, username: &str) -> String {
    // HMAC takes a key of any length; this cannot fail.
    let mut mac = <Hmac<sha1::Sha1> as Mac>::new_from_slice(secret.as_bytes())
        .expect("HMAC accepts keys of any length");
    mac.update(username.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// The MatrixRTC foci for `/.well-known/matrix/client` (MSC4143), if one is configured.
pub fn rtc_foci(config: &VoipConfig) -> Option<Value> {
    let url = config.livekit_service_url.as_ref()?;
    Some(json!([{ "type": "livekit", "livekit_service_url": url }]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_turn_server_means_no_credentials() {
        assert_eq!(turn_credentials(&VoipConfig::default(), "@a:x", 0), None);
        let uris_only = VoipConfig {
            turn_uris: vec!["turn:t.example:3478".into()],
            ..VoipConfig::default()
        };
        assert_eq!(turn_credentials(&uris_only, "@a:x", 0), None);
    }

    #[test]
    fn shared_secret_credentials_follow_the_turn_rest_scheme() {
        let config = VoipConfig {
            turn_uris: vec!["turn:t.example:3478?transport=udp".into()],
            turn_shared_secret: Some("s3cret".into()),
            turn_user_lifetime: Some(Duration::from_secs(600)),
            ..VoipConfig::default()
        };
        let c = turn_credentials(&config, "@alice:x", 1_000).expect("credentials");
        assert_eq!(c.username, "1600:@alice:x");
        assert_eq!(c.ttl, 600);
        // Known answer: printf '1600:@alice:x' | openssl dgst -sha1 -hmac s3cret -binary | base64
        assert_eq!(c.password, "pSSujVLTAwDIJsuNiiR1k0QKlHE=");
        assert_ne!(c.password, shared_secret_password("other", "1600:@alice:x"));
    }

    #[test]
    fn fixed_credentials_when_there_is_no_secret() {
        let config = VoipConfig {
            turn_uris: vec!["turn:t.example".into()],
            turn_username: Some("u".into()),
            turn_password: Some("p".into()),
            ..VoipConfig::default()
        };
        let c = turn_credentials(&config, "@a:x", 0).expect("credentials");
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u", "p"));
    }
}
