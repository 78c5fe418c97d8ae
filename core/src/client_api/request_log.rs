//! Request ids and one log line per request.
//!
//! Every request gets an id (returned as `x-request-id`, and set on a tracing span so every
//! log line written while handling it carries it). The line names the method, the path
//! without its query (clients may put `access_token=` there; tokens are never logged), the
//! status and the time taken: failures at `info`, successes at `debug` (a phone's log
//! would otherwise fill with `/sync` long-polls).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// The header carrying the request id back to the client.
pub const REQUEST_ID_HEADER: &str = "x-request-id";

/// Middleware: id, span, log line.
pub async fn log_request(request: Request, next: Next) -> Response {
    let id = format!("{:x}", NEXT_ID.fetch_add(1, Ordering::Relaxed));
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let span = tracing::info_span!("request", id = %id, %method, %path);
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let status = response.status().as_u16();
    let ms = started.elapsed().as_secs_f64() * 1000.0;
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
