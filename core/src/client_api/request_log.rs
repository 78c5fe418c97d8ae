//! Request ids and one log line per request.
//!
//! Every request gets an id (returned as `x-request-id`, and set on a tracing span so every
//! log line written while handling it carries it). The line names the method, the path
//! without its query (clients may put `access_token=` there; tokens are never logged), the
//! status and the time taken: failures at `info`, successes at `debug` (a phone's log
//! would otherwise fill with `/sync` long-polls). The request is also counted for the
//! metrics (see [`crate::metrics`]) under its matched route template.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

use crate::metrics::Api;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The header carrying the request id back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware of the client listener: id, span, log line, metrics.
pub async fn log_request(request: Request, next: Next) -> Response {
    log(Api::Client, request, next).await
}

/// Middleware of the federation listener: id, span, log line, metrics.
pub async fn log_federation_request(request: Request, next: Next) -> Response {
    log(Api::Federation, request, next).await
}

async fn log(api: Api, request: Request, next: Next) -> Response {
    // The template, never the path: the metrics' labels stay bounded.
    let endpoint = request.extensions().get::<MatchedPath>().cloned();
    let api = match &endpoint {
        Some(e) if e.as_str().starts_with("/_warren/admin/") => Api::Admin,
        _ => api,
    };
    let id = format!("{:x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let elapsed = started.elapsed();
    crate::metrics::record_request(
        api,
        endpoint.as_ref().map(MatchedPath::as_str),
        &method,
        status,
        elapsed,
    );
    let ms = elapsed.as_secs_f64() * 1000.0;
    span.in_scope(|| {
        if status >= 400 {
            tracing::info!(status, ms, "request failed");
        } else {
            tracing::debug!(status, ms, "request done");
        }
    });
    if let Ok(value) = http::HeaderValue::from_str(&id) {
        response.headers_mut().insert(REQUEST_ID_HEADER, value);
    }
    response
}
