//! Extractors and parsers for the inbound server-server handlers: every rejection is a
//! Matrix error (`M_INVALID_PARAM`, `M_NOT_JSON`, …), never axum's plain-text one.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use super::auth::{FederationOrigin, MAX_FEDERATION_BODY};
use crate::client_api::parse_json;
use crate::error::Error;
use crate::server::Server;

/// The verified origin server of a signed request (set by `auth::require_signature`).
pub(in crate::federation) struct Origin(pub String);

impl FromRequestParts<Arc<Server>> for Origin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &Arc<Server>) -> Result<Self, Error> {
        parts
            .extensions
            .get::<FederationOrigin>()
            .map(|FederationOrigin(o)| Origin(o.clone()))
            .ok_or_else(|| Error::Unauthorized("request is not signed".into()))
    }
}

/// Path parameters.
pub(in crate::federation) struct FedPath<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<Server>> for FedPath<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        Path::<T>::from_request_parts(parts, server)
            .await
            .map(|Path(v)| FedPath(v))
            .map_err(|e| Error::InvalidParam(format!("invalid path: {e}")))
    }
}

/// Query parameters (single-valued; see [`query_pairs`] for repeated ones).
pub(in crate::federation) struct FedQuery<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<Server>> for FedQuery<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        Query::<T>::from_request_parts(parts, server)
            .await
            .map(|Query(v)| FedQuery(v))
            .map_err(|e| Error::InvalidParam(format!("invalid query: {e}")))
    }
}

/// A JSON object body. The signature check already bounded its size.
pub(in crate::federation) struct FedJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Server>> for FedJson<T> {
    type Rejection = Error;

    async fn from_request(req: Request, _: &Arc<Server>) -> Result<Self, Error> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_FEDERATION_BODY)
            .await
            .map_err(|_| {
                Error::TooLarge(format!(
                    "federation request bodies are limited to {MAX_FEDERATION_BODY} bytes"
                ))
            })?;
        parse_json(if bytes.is_empty() { b"{}" } else { &bytes }).map(FedJson)
    }
}

/// Decode `a=1&b=2&a=3` into pairs, keeping repeated keys (`/backfill?v=…&v=…`).
pub(in crate::federation) fn query_pairs(
    raw: Option<&str>,
) -> Result<Vec<(String, String)>, Error> {
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(&s.replace('+', " "))
            .decode_utf8()
            .map(|c| c.into_owned())
            .map_err(|_| Error::InvalidParam("query string is not UTF-8".into()))
    };
    raw.unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            Ok((decode(k)?, decode(v)?))
        })
        .collect()
}

/// A syntactically valid room id, or `400 M_INVALID_PARAM`.
pub(in crate::federation) fn room_id(s: &str) -> Result<&str, Error> {
    ruma::RoomId::parse(s)
        .map(|_| s)
        .map_err(|e| Error::InvalidParam(format!("invalid room id {s:?}: {e}")))
}

/// A syntactically valid event id, or `400 M_INVALID_PARAM`.
pub(in crate::federation) fn event_id(s: &str) -> Result<&str, Error> {
    ruma::EventId::parse(s)
        .map(|_| s)
        .map_err(|e| Error::InvalidParam(format!("invalid event id {s:?}: {e}")))
}

/// A syntactically valid user id, or `400 M_INVALID_PARAM`.
pub(in crate::federation) fn user_id(s: &str) -> Result<&str, Error> {
    ruma::UserId::parse(s)
        .map(|_| s)
        .map_err(|e| Error::InvalidParam(format!("invalid user id {s:?}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_query_keys_are_kept_and_decoded() {
        let pairs = query_pairs(Some("v=%24a&limit=5&v=%24b%3Ax&flag&x=a+b")).expect("pairs");
        assert_eq!(
            pairs,
            vec![
                ("v".into(), "$a".into()),
                ("limit".into(), "5".into()),
                ("v".into(), "$b:x".into()),
                ("flag".into(), String::new()),
                ("x".into(), "a b".into()),
            ]
        );
        assert!(query_pairs(Some("v=%ff")).is_err());
        assert!(query_pairs(None).expect("empty").is_empty());
    }

    #[test]
    fn ids_are_checked() {
        assert!(room_id("!abc:x").is_ok());
        assert!(room_id("abc").is_err());
        assert!(event_id("$abc").is_ok());
        assert!(event_id("abc").is_err());
        assert!(user_id("@a:x").is_ok());
        assert!(user_id("a").is_err());
    }
}
