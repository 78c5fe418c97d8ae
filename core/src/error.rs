//! The one error enum of the homeserver, mapped to Matrix error JSON.
//!
//! Every failure a client can cause ends up here and leaves as
//! `{"errcode": "...", "error": "..."}` with the right HTTP status.

use axum::response::{IntoResponse, Response};
use http::StatusCode;

/// What a client or peer is told of an internal error (the detail stays in the log).
pub const INTERNAL_MESSAGE: &str = "internal server error";

/// An error answered to a client (or logged, for internal failures).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// 400 `M_NOT_JSON`: the body is not JSON at all.
    #[error("{0}")]
    NotJson(String),
    /// 400 `M_BAD_JSON`: JSON of the wrong shape.
    #[error("{0}")]
    BadJson(String),
    /// 400 `M_INVALID_PARAM`: a parameter with a bad value.
    #[error("{0}")]
    InvalidParam(String),
    /// 400 `M_MISSING_PARAM`.
    #[error("{0}")]
    MissingParam(String),
    /// 401 `M_MISSING_TOKEN`.
    #[error("missing access token")]
    MissingToken,
    /// 401 `M_UNKNOWN_TOKEN`.
    #[error("unknown or expired access token")]
    UnknownToken,
    /// 401 `M_UNKNOWN_TOKEN` with `soft_logout: true`: a refreshable access token that
    /// has expired (the client refreshes it and keeps its device).
    #[error("the access token has expired")]
    ExpiredToken,
    /// 403 `M_FORBIDDEN`: auth rules or policy say no.
    #[error("{0}")]
    Forbidden(String),
    /// 403 `M_USER_DEACTIVATED`.
    #[error("this account has been deactivated")]
    UserDeactivated,
    /// 404 `M_NOT_FOUND`.
    #[error("{0}")]
    NotFound(String),
    /// 404/405 `M_UNRECOGNIZED`.
    #[error("{1}")]
    Unrecognized(StatusCode, String),
    /// 413 `M_TOO_LARGE`.
    #[error("{0}")]
    TooLarge(String),
    /// 400 `M_UNKNOWN`: input the server cannot work with and no errcode fits better
    /// (the spec's answer for content that cannot be thumbnailed).
    #[error("{0}")]
    BadContent(String),
    /// 409 `M_CANNOT_OVERWRITE_MEDIA`: the media id already has content.
    #[error("{0}")]
    CannotOverwriteMedia(String),
    /// 504 `M_NOT_YET_UPLOADED`: the media id exists but its content has not arrived.
    #[error("{0}")]
    NotYetUploaded(String),
    /// 409 `M_UNKNOWN`: the resource exists already (a room alias that is taken).
    #[error("{0}")]
    Conflict(String),
    /// 429 `M_LIMIT_EXCEEDED`.
    #[error("{0}")]
    LimitExceeded(String),
    /// 429 `M_LIMIT_EXCEEDED` from a rate limit: the client should retry after this long
    /// (answered as `retry_after_ms` and a `Retry-After` header).
    #[error("too many requests; retry in {} ms", .0.as_millis().max(1))]
    RateLimited(std::time::Duration),
    /// 400 `M_DUPLICATE_ANNOTATION` (Synapse's code): the sender already reacted to the
    /// event with the same key.
    #[error("{0}")]
    DuplicateAnnotation(String),
    /// 400 `M_USER_IN_USE`.
    #[error("user id already taken")]
    UserInUse,
    /// 400 `M_INVALID_USERNAME`.
    #[error("{0}")]
    InvalidUsername(String),
    /// 400 `M_EXCLUSIVE`... not used yet; 400 `M_ROOM_IN_USE`.
    #[error("{0}")]
    RoomInUse(String),
    /// 400 `M_UNSUPPORTED_ROOM_VERSION`.
    #[error("{0}")]
    UnsupportedRoomVersion(String),
    /// 400 `M_INCOMPATIBLE_ROOM_VERSION`: the joining server does not support the room's
    /// version (carries the room version, answered as `room_version`).
    #[error("this room's version ({0}) is not one the joining server supports")]
    IncompatibleRoomVersion(String),
    /// 400 `M_INVALID_ROOM_STATE`.
    #[error("{0}")]
    InvalidRoomState(String),
    /// 400 `M_INVALID_SIGNATURE`: a key's signature is missing or does not verify.
    #[error("{0}")]
    InvalidSignature(String),
    /// 403 `M_WRONG_ROOM_KEYS_VERSION`: a key backup write names a version that is not
    /// the current one; carries the current version.
    #[error("the backup version is not the current one")]
    WrongRoomKeysVersion(Option<String>),
    /// 401 `M_UNAUTHORIZED`: a federation request without a valid `X-Matrix` signature.
    #[error("{0}")]
    Unauthorized(String),
    /// 502 `M_UNKNOWN`: another server could not be reached or answered badly.
    #[error("{0}")]
    RemoteServer(String),
    /// 401 UIAA: more authentication stages are needed; the body is the UIAA object.
    #[error("additional authentication required")]
    Uiaa(serde_json::Value),
    /// 403 `M_FORBIDDEN` for wrong passwords (spec: login failures are 403).
    #[error("invalid username or password")]
    InvalidCredentials,
    /// 403 `M_FORBIDDEN` registration closed.
    #[error("registration is disabled on this node")]
    RegistrationDisabled,
    /// 400 `M_UNKNOWN_POS`: a sliding sync `pos` this node does not know (expired, from
    /// before a restart, or never issued); the client starts the connection afresh.
    #[error("unknown or expired sliding sync position {0}")]
    UnknownPos(String),
    /// 400 `M_THREEPID_MEDIUM_NOT_SUPPORTED`: this server handles no third-party ids.
    #[error("{0}")]
    ThreepidMediumNotSupported(String),
    /// 400 `M_THREEPID_AUTH_FAILED`: no validated third-party id session.
    #[error("{0}")]
    ThreepidAuthFailed(String),
    /// 400 `M_THREEPID_NOT_FOUND`: the account has no such third-party id.
    #[error("{0}")]
    ThreepidNotFound(String),
    /// 400 `M_UNABLE_TO_AUTHORISE_JOIN`: a restricted room's resident cannot tell whether
    /// the joining user satisfies an allow condition (it is in none of the allowed rooms).
    #[error("{0}")]
    UnableToAuthoriseJoin(String),
    /// 400 `M_UNABLE_TO_GRANT_JOIN`: the user may join a restricted room, but no user of
    /// this server can authorise it; another server should be tried.
    #[error("{0}")]
    UnableToGrantJoin(String),
    /// 504 `M_UNKNOWN`: the request was not answered within the request timeout.
    #[error("{0}")]
    Timeout(String),
    /// A canonical alias that does not exist or names another room (`400 M_BAD_ALIAS`).
    #[error("{0}")]
    BadAlias(String),
    /// Data only the server may change (`405 M_BAD_JSON`, e.g. `m.fully_read` account data).
    #[error("{0}")]
    ServerControlled(String),
    /// 400 `M_EXCLUSIVE`: a user id or alias an application service holds exclusively.
    #[error("{0}")]
    Exclusive(String),
    /// An application service could not be reached (`ping`): the status and errcode
    /// the spec gives (`M_URL_NOT_SET`, `M_CONNECTION_FAILED`, `M_CONNECTION_TIMEOUT`).
    #[error("{2}")]
    AppserviceFailed(StatusCode, &'static str, String),
    /// 502 `M_BAD_STATUS`: an application service answered a ping with an error; its
    /// status and body are passed on.
    #[error("the appservice answered {0}")]
    AppserviceBadStatus(u16, String),
    /// 500 `M_UNKNOWN`: our own fault. The detail is logged, not sent.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// Shorthand for an internal error from any displayable cause.
    pub fn internal(e: impl std::fmt::Display) -> Error {
        Error::Internal(e.to_string())
    }

    /// The message fit for the outside (a client, a peer): an internal error's detail
    /// (database or JSON text) is logged here and answered as [`INTERNAL_MESSAGE`].
    pub fn public_message(&self) -> String {
        match self {
            Error::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                INTERNAL_MESSAGE.to_owned()
            }
            other => other.to_string(),
        }
    }

    /// The HTTP status and Matrix `errcode`.
    pub fn status_and_code(&self) -> (StatusCode, &'static str) {
        use Error::*;
        match self {
            NotJson(_) => (StatusCode::BAD_REQUEST, "M_NOT_JSON"),
            BadJson(_) => (StatusCode::BAD_REQUEST, "M_BAD_JSON"),
            InvalidParam(_) => (StatusCode::BAD_REQUEST, "M_INVALID_PARAM"),
            MissingParam(_) => (StatusCode::BAD_REQUEST, "M_MISSING_PARAM"),
            MissingToken => (StatusCode::UNAUTHORIZED, "M_MISSING_TOKEN"),
            UnknownToken | ExpiredToken => (StatusCode::UNAUTHORIZED, "M_UNKNOWN_TOKEN"),
            Forbidden(_) | InvalidCredentials | RegistrationDisabled => {
                (StatusCode::FORBIDDEN, "M_FORBIDDEN")
            }
            UserDeactivated => (StatusCode::FORBIDDEN, "M_USER_DEACTIVATED"),
            NotFound(_) => (StatusCode::NOT_FOUND, "M_NOT_FOUND"),
            Unrecognized(status, _) => (*status, "M_UNRECOGNIZED"),
            TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "M_TOO_LARGE"),
            BadContent(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN"),
            CannotOverwriteMedia(_) => (StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA"),
            NotYetUploaded(_) => (StatusCode::GATEWAY_TIMEOUT, "M_NOT_YET_UPLOADED"),
            Conflict(_) => (StatusCode::CONFLICT, "M_UNKNOWN"),
            LimitExceeded(_) | RateLimited(_) => {
                (StatusCode::TOO_MANY_REQUESTS, "M_LIMIT_EXCEEDED")
            }
            DuplicateAnnotation(_) => (StatusCode::BAD_REQUEST, "M_DUPLICATE_ANNOTATION"),
            UserInUse => (StatusCode::BAD_REQUEST, "M_USER_IN_USE"),
            InvalidUsername(_) => (StatusCode::BAD_REQUEST, "M_INVALID_USERNAME"),
            RoomInUse(_) => (StatusCode::BAD_REQUEST, "M_ROOM_IN_USE"),
            UnsupportedRoomVersion(_) => (StatusCode::BAD_REQUEST, "M_UNSUPPORTED_ROOM_VERSION"),
            IncompatibleRoomVersion(_) => (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"),
            InvalidRoomState(_) => (StatusCode::BAD_REQUEST, "M_INVALID_ROOM_STATE"),
            InvalidSignature(_) => (StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE"),
            WrongRoomKeysVersion(_) => (StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION"),
            Uiaa(_) => (StatusCode::UNAUTHORIZED, "M_FORBIDDEN"),
            Unauthorized(_) => (StatusCode::UNAUTHORIZED, "M_UNAUTHORIZED"),
            RemoteServer(_) => (StatusCode::BAD_GATEWAY, "M_UNKNOWN"),
            UnknownPos(_) => (StatusCode::BAD_REQUEST, "M_UNKNOWN_POS"),
            ThreepidMediumNotSupported(_) => {
                (StatusCode::BAD_REQUEST, "M_THREEPID_MEDIUM_NOT_SUPPORTED")
            }
            ThreepidAuthFailed(_) => (StatusCode::BAD_REQUEST, "M_THREEPID_AUTH_FAILED"),
            ThreepidNotFound(_) => (StatusCode::BAD_REQUEST, "M_THREEPID_NOT_FOUND"),
            UnableToAuthoriseJoin(_) => (StatusCode::BAD_REQUEST, "M_UNABLE_TO_AUTHORISE_JOIN"),
            UnableToGrantJoin(_) => (StatusCode::BAD_REQUEST, "M_UNABLE_TO_GRANT_JOIN"),
            Timeout(_) => (StatusCode::GATEWAY_TIMEOUT, "M_UNKNOWN"),
            BadAlias(_) => (StatusCode::BAD_REQUEST, "M_BAD_ALIAS"),
            ServerControlled(_) => (StatusCode::METHOD_NOT_ALLOWED, "M_BAD_JSON"),
            Exclusive(_) => (StatusCode::BAD_REQUEST, "M_EXCLUSIVE"),
            AppserviceFailed(status, code, _) => (*status, code),
            AppserviceBadStatus(..) => (StatusCode::BAD_GATEWAY, "M_BAD_STATUS"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "M_UNKNOWN"),
        }
    }
}

impl From<crate::ratelimit::Limited> for Error {
    fn from(l: crate::ratelimit::Limited) -> Self {
        Error::RateLimited(l.retry_after)
    }
}

impl From<rusqlite::Error> for Error {
    fn from(e: rusqlite::Error) -> Self {
        Error::Internal(format!("database: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Internal(format!("json: {e}"))
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let (status, errcode) = self.status_and_code();
        let body = match self {
            Error::Uiaa(body) => body,
            Error::ExpiredToken => serde_json::json!({
                "errcode": errcode,
                "error": self.to_string(),
                "soft_logout": true,
            }),
            Error::WrongRoomKeysVersion(current) => serde_json::json!({
                "errcode": errcode,
                "error": "the backup version is not the current one",
                "current_version": current,
            }),
            Error::IncompatibleRoomVersion(ref version) => serde_json::json!({
                "errcode": errcode,
                "error": self.to_string(),
                "room_version": version,
            }),
            Error::RateLimited(after) => {
                let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
                let body = serde_json::json!({
                    "errcode": errcode,
                    "error": self.to_string(),
                    "retry_after_ms": ms,
                });
                // Whole seconds, rounded up, as RFC 9110 wants.
                let secs = ms.div_ceil(1000).to_string();
                return (
                    status,
                    [(http::header::RETRY_AFTER, secs)],
                    axum::Json(body),
                )
                    .into_response();
            }
            Error::AppserviceBadStatus(code, ref body) => serde_json::json!({
                "errcode": errcode,
                "error": self.to_string(),
                "status": code,
                "body": body,
            }),
            Error::Internal(_) => {
                serde_json::json!({"errcode": errcode, "error": self.public_message()})
            }
            other => serde_json::json!({"errcode": errcode, "error": other.to_string()}),
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Why a node could not start. Its `Display` is one human line, fit for a CLI.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Another process holds the data directory's lock.
    #[error("data directory {0} is in use by another warren node")]
    Locked(String),
    /// The client API address is taken.
    #[error("address {0} is already in use")]
    AddrInUse(String),
    /// Could not bind for another reason.
    #[error("cannot listen on {0}: {1}")]
    Bind(String, String),
    /// The signing key file is unreadable or malformed.
    #[error("cannot read signing key {0}: {1}")]
    Key(String, String),
    /// The database schema is newer than this build understands.
    #[error(
        "database {path} was written by a newer version of warren (schema {found}, this build knows up to {known}); upgrade warren"
    )]
    NewerDatabase {
        /// Database file.
        path: String,
        /// Schema version in the file.
        found: i64,
        /// Newest schema this build knows.
        known: i64,
    },
    /// Any other I/O or database failure at start.
    #[error("{0}")]
    Other(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_never_leave_the_node() {
        let db = Error::from(rusqlite::Error::InvalidColumnName("secret_column".into()));
        assert!(db.to_string().contains("secret_column"), "kept for the log");
        assert_eq!(db.public_message(), INTERNAL_MESSAGE);
        let bad = Error::BadJson("missing field".into());
        assert_eq!(bad.public_message(), bad.to_string());
    }

    /// What a peer (or client) reads when a handler fails on our side: the status and
    /// a fixed message, none of the database text.
    #[tokio::test]
    async fn a_peer_gets_a_sanitized_internal_error() {
        let db = Error::from(rusqlite::Error::InvalidColumnName("secret_column".into()));
        let response = db.into_response();
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains("secret_column"), "{text}");
        assert!(!text.contains("database"), "{text}");
        let body: serde_json::Value = serde_json::from_slice(&body).expect("json");
        assert_eq!(
            body,
            serde_json::json!({"errcode": "M_UNKNOWN", "error": INTERNAL_MESSAGE})
        );
        // Other errors keep their message: it is the peer's own fault.
        let response = Error::Forbidden("not in the room".into()).into_response();
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        assert!(String::from_utf8_lossy(&body).contains("not in the room"));
    }
}
