//! `GET /_matrix/federation/v1/media/download/{mediaId}` and
//! `GET /_matrix/federation/v1/media/thumbnail/{mediaId}` (spec v1.11): this node's own
//! media for other servers, as `multipart/mixed` with two parts — `{}` metadata as
//! `application/json`, then the bytes with their `Content-Type` and
//! `Content-Disposition` (never a `Location` redirect). The content is streamed from
//! disk between the two halves of the multipart framing.
//!
//! Only local media is served here: a server does not proxy media of a third one, so
//! another server's media id is simply unknown (404 `M_NOT_FOUND`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures::StreamExt;
use http::{HeaderValue, header};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use super::extract::{FedPath, FedQuery, Origin};
use crate::error::Error;
use crate::media::{self, Download, Method, multipart};
use crate::server::Server;

/// The spec's default `timeout_ms`.
const DEFAULT_TIMEOUT_MS: u64 = 20_000;

#[derive(Deserialize)]
pub(super) struct DownloadQuery {
    timeout_ms: Option<u64>,
}

#[derive(Deserialize)]
pub(super) struct ThumbnailQuery {
    width: u32,
    height: u32,
    method: Option<String>,
    timeout_ms: Option<u64>,
    // `animated` is accepted; thumbnails are static, which the spec allows.
}

fn timeout(ms: Option<u64>) -> Duration {
    Duration::from_millis(ms.unwrap_or(DEFAULT_TIMEOUT_MS))
}

/// The two-part response around a download streamed from disk.
fn multipart_response(download: Download) -> Response {
    let boundary = multipart::new_boundary();
    let disposition = media::content_disposition(download.inline, download.filename.as_deref());
    let head = multipart::head(&boundary, &download.content_type, &disposition);
    let tail = multipart::tail(&boundary);
    let length = head.len() as u64 + download.size + tail.len() as u64;
    let body = futures::stream::once(async move { Ok(Bytes::from(head)) })
        .chain(ReaderStream::new(download.file))
        .chain(futures::stream::once(async move { Ok(Bytes::from(tail)) }));
    let content_type = HeaderValue::from_str(&multipart::content_type(&boundary))
        .unwrap_or(HeaderValue::from_static("multipart/mixed"));
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_LENGTH, HeaderValue::from(length)),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

/// `GET /_matrix/federation/v1/media/download/{mediaId}`.
pub(super) async fn download(
    State(server): State<Arc<Server>>,
    Origin(_): Origin,
    FedPath(media_id): FedPath<String>,
    FedQuery(query): FedQuery<DownloadQuery>,
) -> Result<Response, Error> {
    let own = server.server_name().to_owned();
    let d = media::download(&server, &own, &media_id, timeout(query.timeout_ms), false).await?;
    Ok(multipart_response(d))
}

/// `GET /_matrix/federation/v1/media/thumbnail/{mediaId}`.
pub(super) async fn thumbnail(
    State(server): State<Arc<Server>>,
    Origin(_): Origin,
    FedPath(media_id): FedPath<String>,
    FedQuery(query): FedQuery<ThumbnailQuery>,
) -> Result<Response, Error> {
    let method = Method::parse(query.method.as_deref())?;
    let own = server.server_name().to_owned();
    let d = media::thumbnail(
        &server,
        &own,
        &media_id,
        (query.width, query.height),
        method,
        timeout(query.timeout_ms),
        false,
    )
    .await?;
    Ok(multipart_response(d))
}
