//! Request extractors that answer bad input with Matrix errors.
//!
//! `Auth` authenticates the access token (header or `access_token` query parameter),
//! `Body<T>` reads a JSON body under the configured size limit (413 `M_TOO_LARGE`,
//! 400 `M_NOT_JSON` for non-JSON, 400 `M_BAD_JSON` for the wrong shape), `P<T>` and
//! `Q<T>` are axum's path and query extractors with Matrix rejections.

use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request};
use http::request::Parts;
use serde::de::DeserializeOwned;

use crate::error::Error;
use crate::server::Server;
use crate::storage;

pub use crate::requester::Requester;

/// Requires a valid access token.
pub struct Auth(pub Requester);

fn access_token(parts: &Parts) -> Option<String> {
    if let Some(h) = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(t) = h.strip_prefix("Bearer ")
    {
        return Some(t.trim().to_owned());
    }
    // Tokens we issue are alphanumeric, so no percent-decoding is needed to match them.
    parts
        .uri
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("access_token=").map(str::to_owned))
}

impl FromRequestParts<Arc<Server>> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        let token = access_token(parts).ok_or(Error::MissingToken)?;
        if let Some(a) = server.appservices.by_token(&token) {
            return appservice_caller(parts, server, a.clone()).map(Auth);
        }
        let owner = server.db.token_owner(&token)?;
        match owner {
            Some(o) if o.deactivated => Err(Error::UnknownToken),
            Some(o) if o.expires_ts.is_some_and(|t| t <= storage::now_ms()) => {
                Err(Error::ExpiredToken)
            }
            Some(o) => {
                // The first use of a refreshed pair ends the refresh token it replaced.
                if o.replaces.is_some()
                    && let Some(refresh) = &o.refresh_token
                {
                    crate::account::first_use_after_refresh(server, refresh)?;
                }
                Ok(Auth(Requester::user(o.user_id, o.device_id)))
            }
            None => Err(Error::UnknownToken),
        }
    }
}

/// The application service whose `as_token` the request carries, if any (endpoints
/// that work without a token but treat an appservice differently: `/register`,
/// `/login`).
pub struct AppserviceToken(pub Option<Arc<crate::appservice::Registered>>);

impl FromRequestParts<Arc<Server>> for AppserviceToken {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        Ok(AppserviceToken(
            access_token(parts).and_then(|t| server.appservices.by_token(&t).cloned()),
        ))
    }
}

/// A query parameter, percent-decoded.
pub fn query_param(parts: &Parts, name: &str) -> Option<String> {
    parts.uri.query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| {
            percent_encoding::percent_decode_str(&v.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        })
    })
}

/// An appservice acting as its own user or, with `user_id=`, as a user in its
/// namespaces (who must exist); with `device_id=` (MSC3202, also under its unstable
/// name) as one of that user's devices.
fn appservice_caller(
    parts: &Parts,
    server: &Server,
    a: Arc<crate::appservice::Registered>,
) -> Result<Requester, Error> {
    let user_id = query_param(parts, "user_id").unwrap_or_else(|| a.sender.clone());
    if !server.is_local_user(&user_id) || !a.is_user_in_namespace(&user_id) {
        return Err(Error::Exclusive(format!(
            "the application service cannot act as {user_id}: not in its namespaces"
        )));
    }
    let device = query_param(parts, "device_id")
        .or_else(|| query_param(parts, "org.matrix.msc3202.device_id"));
    let (exists, device_ok) = server.db.read(|c| {
        let exists = match storage::user_password(c, &user_id)? {
            Some((_, deactivated)) => !deactivated,
            None => false,
        };
        let device_ok = match &device {
            Some(d) => storage::device_exists(c, &user_id, d)?,
            None => true,
        };
        Ok((exists, device_ok))
    })?;
    if !exists {
        return Err(Error::Forbidden(format!(
            "the application service has not registered {user_id}"
        )));
    }
    if !device_ok {
        return Err(Error::Forbidden(format!(
            "{user_id} has no device {}",
            device.as_deref().unwrap_or_default()
        )));
    }
    Ok(Requester {
        user_id,
        // Without `device_id=` the appservice acts with no device of the user's; its
        // transaction ids are scoped to this empty device.
        device_id: device.unwrap_or_default(),
        appservice: Some(a),
        by_node: false,
    })
}

/// The client's IP address as text (the rate-limit key of logins and registrations);
/// `"unknown"` where the connection did not record one (a router driven in-process).
pub struct ClientIp(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let ip = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or_else(|| "unknown".to_owned(), |c| c.0.ip().to_string());
        Ok(ClientIp(ip))
    }
}

/// A JSON body of type `T`.
pub struct Body<T>(pub T);

impl<T: DeserializeOwned> FromRequest<Arc<Server>> for Body<T> {
    type Rejection = Error;

    async fn from_request(req: Request, server: &Arc<Server>) -> Result<Self, Error> {
        let RawBody(bytes) = RawBody::from_request(req, server).await?;
        parse_json(if bytes.is_empty() { b"{}" } else { &bytes }).map(Body)
    }
}

/// A request body of at most the configured size, unparsed (413 `M_TOO_LARGE` past it).
pub struct RawBody(pub bytes::Bytes);

impl FromRequest<Arc<Server>> for RawBody {
    type Rejection = Error;

    async fn from_request(req: Request, server: &Arc<Server>) -> Result<Self, Error> {
        let limit = server.config.max_request_bytes;
        let too_large = || Error::TooLarge(format!("request body exceeds {limit} bytes"));
        if let Some(len) = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            && len.parse::<usize>().is_ok_and(|n| n > limit)
        {
            return Err(too_large());
        }
        axum::body::to_bytes(req.into_body(), limit)
            .await
            .map(RawBody)
            .map_err(|_| too_large())
    }
}

/// Parse JSON, telling "not JSON" apart from "JSON of the wrong shape".
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::NotJson(format!("request body is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(Error::BadJson("request body must be a JSON object".into()));
    }
    serde_json::from_value(value).map_err(|e| Error::BadJson(format!("invalid request body: {e}")))
}

/// Path parameters.
pub struct P<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<Server>> for P<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        Path::<T>::from_request_parts(parts, server)
            .await
            .map(|Path(v)| P(v))
            .map_err(|e| Error::InvalidParam(format!("invalid path: {e}")))
    }
}

/// Query parameters.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<Arc<Server>> for Q<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, server: &Arc<Server>) -> Result<Self, Error> {
        Query::<T>::from_request_parts(parts, server)
            .await
            .map(|Query(v)| Q(v))
            .map_err(|e| Error::InvalidParam(format!("invalid query: {e}")))
    }
}
