//! The content repository API: authenticated media (`/_matrix/client/v1/media/…`, spec
//! v1.11) and the legacy `/_matrix/media/v3/…` endpoints.
//!
//! Downloads are streamed from disk with headers that keep uploaded content from ever
//! running in our origin: `nosniff`, a sandboxing CSP, and `attachment` for every type
//! that is not on the passive allow-list in [`media`].

use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Body as HttpBody;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use super::extract::{Auth, P, Q};
use crate::error::Error;
use crate::media::{self, Download, Method};
use crate::server::Server;

/// The spec's default for `timeout_ms`.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

/// Uploaded content must not be able to script, frame or load anything.
const MEDIA_CSP: &str = "sandbox; default-src 'none'; script-src 'none'; \
                         style-src 'unsafe-inline'; media-src 'self'; object-src 'self';";

/// `GET /media/config`.
pub(super) async fn config(State(server): State<Arc<Server>>, Auth(_): Auth) -> Json<Value> {
    Json(json!({ "m.upload.size": server.config.max_upload_bytes }))
}

#[derive(Deserialize)]
pub(super) struct PreviewQuery {
    url: Option<String>,
}

/// `GET /_matrix/client/v1/media/preview_url` (and the legacy `/_matrix/media/v3` one).
pub(super) async fn preview_url(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(query): Q<PreviewQuery>,
) -> Result<Json<Value>, Error> {
    let answer =
        media::preview::preview_url(&server, &caller.user_id, query.url.as_deref()).await?;
    Ok(Json(answer))
}

#[derive(Deserialize)]
pub(super) struct UploadQuery {
    filename: Option<String>,
}

/// Refuse a declared `Content-Length` over the limit before reading a byte of it.
fn check_declared_length(server: &Server, headers: &HeaderMap) -> Result<(), Error> {
    let limit = server.config.max_upload_bytes;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    match declared {
        Some(n) if n > limit => Err(Error::TooLarge(format!(
            "upload exceeds the limit of {limit} bytes"
        ))),
        _ => Ok(()),
    }
}

fn content_type(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// `POST /_matrix/media/v3/upload`.
pub(super) async fn upload(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(query): Q<UploadQuery>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Json<Value>, Error> {
    super::rate_limit(&server, crate::ratelimit::Action::MediaUpload, &caller)?;
    check_declared_length(&server, &headers)?;
    let uri = media::upload(
        &server,
        &caller.user_id,
        content_type(&headers),
        query.filename.as_deref(),
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(json!({ "content_uri": uri })))
}

/// `POST /_matrix/media/v1/create`.
pub(super) async fn create(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
) -> Result<Json<Value>, Error> {
    super::rate_limit(&server, crate::ratelimit::Action::MediaUpload, &caller)?;
    let (uri, expires) = media::create(&server, &caller.user_id)?;
    Ok(Json(
        json!({ "content_uri": uri, "unused_expires_at": expires }),
    ))
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`.
pub(super) async fn upload_to(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((server_name, media_id)): P<(String, String)>,
    Q(query): Q<UploadQuery>,
    headers: HeaderMap,
    body: HttpBody,
) -> Result<Json<Value>, Error> {
    super::rate_limit(&server, crate::ratelimit::Action::MediaUpload, &caller)?;
    check_declared_length(&server, &headers)?;
    media::upload_to(
        &server,
        &caller.user_id,
        &server_name,
        &media_id,
        content_type(&headers),
        query.filename.as_deref(),
        body.into_data_stream(),
    )
    .await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct DownloadQuery {
    timeout_ms: Option<u64>,
    /// Legacy endpoints only in the spec; honoured on both (default true).
    allow_remote: Option<bool>,
}

impl DownloadQuery {
    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS))
    }
}

#[derive(Deserialize)]
pub(super) struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    timeout_ms: Option<u64>,
    allow_remote: Option<bool>,
    // `animated` is accepted; thumbnails are always static, which the spec allows.
}

/// Stream a download with its safety headers.
fn media_response(download: Download, name_override: Option<String>) -> Response {
    let filename = media::sanitise_filename(name_override.as_deref()).or(download.filename);
    let disposition = media::content_disposition(download.inline, filename.as_deref());
    let content_type = HeaderValue::from_str(&download.content_type)
        .unwrap_or(HeaderValue::from_static(media::OCTET_STREAM));
    let disposition =
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment"));
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_LENGTH, HeaderValue::from(download.size)),
        (header::CONTENT_DISPOSITION, disposition),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(MEDIA_CSP),
        ),
        (
            header::HeaderName::from_static("cross-origin-resource-policy"),
            HeaderValue::from_static("cross-origin"),
        ),
        // Content behind a media id never changes.
        (
            header::CACHE_CONTROL,
            HeaderValue::from_static("private, max-age=31536000, immutable"),
        ),
    ];
    let body = HttpBody::from_stream(ReaderStream::new(download.file));
    (headers, body).into_response()
}

async fn download_inner(
    server: &Arc<Server>,
    (server_name, media_id): (String, String),
    name_override: Option<String>,
    query: &DownloadQuery,
) -> Result<Response, Error> {
    let d = media::download(
        server,
        &server_name,
        &media_id,
        query.timeout(),
        query.allow_remote.unwrap_or(true),
    )
    .await?;
    Ok(media_response(d, name_override))
}

async fn thumbnail_inner(
    server: &Arc<Server>,
    (server_name, media_id): (String, String),
    query: &ThumbnailQuery,
) -> Result<Response, Error> {
    let method = Method::parse(query.method.as_deref())?;
    let timeout = Duration::from_millis(query.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let d = media::thumbnail(
        server,
        &server_name,
        &media_id,
        (query.width, query.height),
        method,
        timeout,
        query.allow_remote.unwrap_or(true),
    )
    .await?;
    Ok(media_response(d, None))
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}`.
pub(super) async fn download_authed(
    State(server): State<Arc<Server>>,
    Auth(_): Auth,
    P(path): P<(String, String)>,
    Q(query): Q<DownloadQuery>,
) -> Result<Response, Error> {
    download_inner(&server, path, None, &query).await
}

/// `GET /_matrix/client/v1/media/download/{serverName}/{mediaId}/{fileName}`.
pub(super) async fn download_authed_named(
    State(server): State<Arc<Server>>,
    Auth(_): Auth,
    P((server_name, media_id, name)): P<(String, String, String)>,
    Q(query): Q<DownloadQuery>,
) -> Result<Response, Error> {
    download_inner(&server, (server_name, media_id), Some(name), &query).await
}

/// `GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}`.
pub(super) async fn thumbnail_authed(
    State(server): State<Arc<Server>>,
    Auth(_): Auth,
    P(path): P<(String, String)>,
    Q(query): Q<ThumbnailQuery>,
) -> Result<Response, Error> {
    thumbnail_inner(&server, path, &query).await
}

/// Legacy `GET /_matrix/media/v3/download/{serverName}/{mediaId}` (unauthenticated,
/// deprecated by the spec; kept for older clients).
pub(super) async fn download_legacy(
    State(server): State<Arc<Server>>,
    P(path): P<(String, String)>,
    Q(query): Q<DownloadQuery>,
) -> Result<Response, Error> {
    download_inner(&server, path, None, &query).await
}

/// Legacy `GET /_matrix/media/v3/download/{serverName}/{mediaId}/{fileName}`.
pub(super) async fn download_legacy_named(
    State(server): State<Arc<Server>>,
    P((server_name, media_id, name)): P<(String, String, String)>,
    Q(query): Q<DownloadQuery>,
) -> Result<Response, Error> {
    download_inner(&server, (server_name, media_id), Some(name), &query).await
}

/// Legacy `GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId}`.
pub(super) async fn thumbnail_legacy(
    State(server): State<Arc<Server>>,
    P(path): P<(String, String)>,
    Q(query): Q<ThumbnailQuery>,
) -> Result<Response, Error> {
    thumbnail_inner(&server, path, &query).await
}
