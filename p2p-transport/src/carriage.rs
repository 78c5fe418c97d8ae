//! Federation carriage: one HTTP/1.1 exchange per libp2p stream, protocol
//! [`PROTOCOL`].
//!
//! The dialer opens a stream, writes one request (with `Host: <destination server
//! name>`), reads one response, and the stream is closed. No keep-alive, no pipelining:
//! streams are cheap on QUIC and Yamux, and one exchange per stream means a stuck request
//! never blocks another. The listener serves each stream with the caller's axum router
//! and tags the request with the peer's authenticated server name.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use libp2p::{PeerId, Stream, StreamProtocol};
use parking_lot::Mutex;
use tokio::sync::Semaphore;
use tokio_util::compat::FuturesAsyncReadCompatExt;
use tower::ServiceExt;
use warren_core::federation::AuthenticatedOrigin;

use crate::identity::server_name_for_peer_id;

/// The libp2p protocol id of the federation carriage.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/matrix/federation/1");

/// Time a peer gets to send a complete request head after opening a stream.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// Size and time limits for one exchange.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    /// Largest inbound request body.
    pub max_body: usize,
    /// Largest response body read from a peer.
    pub max_response: usize,
    pub max_header: usize,
    pub request_timeout: Duration,
    pub per_peer: usize,
    pub total: usize,
}

/// What the inbound side shares across streams: the in-flight request slots and the
/// byte budget for request bodies (one permit a byte).
#[derive(Clone)]
pub(crate) struct Inbound {
    pub total: Arc<Semaphore>,
    pub body_budget: Arc<Semaphore>,
}

impl Inbound {
    pub(crate) fn new(total: usize, body_budget: usize) -> Inbound {
        Inbound {
            total: Arc::new(Semaphore::new(total)),
            body_budget: Arc::new(Semaphore::new(body_budget)),
        }
    }
}

/// Serve every inbound federation stream until `incoming` ends.
pub(crate) async fn serve(
    mut incoming: tokio::sync::mpsc::Receiver<(PeerId, Stream)>,
    router: Router,
    limits: Limits,
    inbound: Inbound,
) {
    let total = inbound.total.clone();
    let per_peer: Arc<Mutex<HashMap<PeerId, Arc<Semaphore>>>> = Arc::default();
    while let Some((peer, stream)) = incoming.recv().await {
        let Ok(origin) = server_name_for_peer_id(&peer) else {
            tracing::debug!(%peer, "federation stream from a non-Warren peer id; dropped");
            continue;
        };
        let peer_slots = {
            let mut map = per_peer.lock();
            // Forget idle peers so the map cannot grow with every peer ever seen.
            if map.len() > 1024 {
                map.retain(|_, s| s.available_permits() < limits.per_peer);
            }
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(limits.per_peer)))
                .clone()
        };
        // Over the limit, the stream is dropped (reset) at once: a peer flooding us with
        // streams only hurts itself.
        let (Ok(mine), Ok(all)) = (
            peer_slots.try_acquire_owned(),
            total.clone().try_acquire_owned(),
        ) else {
            tracing::warn!(%peer, "too many concurrent federation requests; stream reset");
            continue;
        };
        let router = router.clone();
        let budget = inbound.body_budget.clone();
        tokio::spawn(async move {
            serve_stream(stream, origin, router, limits, budget).await;
            drop((mine, all));
        });
    }
}

async fn serve_stream(
    stream: Stream,
    origin: String,
    router: Router,
    limits: Limits,
    budget: Arc<Semaphore>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        handle(
            req,
            origin.clone(),
            router.clone(),
            limits.max_body,
            budget.clone(),
        )
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .max_buf_size(limits.max_header)
        .keep_alive(false)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream.compat()), service);
    match tokio::time::timeout(limits.request_timeout, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "federation stream ended with an error"),
        Err(_) => tracing::debug!("federation request exceeded its time limit; stream closed"),
    }
}

/// Read one request's body within `max_body` and the shared byte `budget`, then hand the
/// request to `router`. Over the size limit: 413; over the budget: 503, both without
/// buffering what is left of the body.
async fn handle(
    req: Request<Incoming>,
    origin: String,
    router: Router,
    max_body: usize,
    budget: Arc<Semaphore>,
) -> Result<Response<axum::body::Body>, std::convert::Infallible> {
    let (mut parts, mut body) = req.into_parts();
    let declared = parts
        .headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_body as u64) {
        return Ok(refuse(
            http::StatusCode::PAYLOAD_TOO_LARGE,
            "M_TOO_LARGE",
            &format!("federation request bodies are limited to {max_body} bytes"),
        ));
    }
    let busy = || {
        tracing::debug!("inbound body budget spent; request refused with 503");
        let mut response = refuse(
            http::StatusCode::SERVICE_UNAVAILABLE,
            "M_UNKNOWN",
            "too many request bodies in flight; try again later",
        );
        // Bodies in flight finish within seconds; the sender's backoff does the rest.
        response.headers_mut().insert(
            http::header::RETRY_AFTER,
            http::HeaderValue::from_static("1"),
        );
        response
    };
    // `declared` fits in u32: it is at most `max_body`, which `validate` keeps there.
    let charge = |n: u64| u32::try_from(n).unwrap_or(u32::MAX);
    let mut held = match declared {
        Some(n) => match budget.clone().try_acquire_many_owned(charge(n)) {
            Ok(p) => Some(p),
            Err(_) => return Ok(busy()),
        },
        None => None,
    };
    let mut bytes = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    while let Some(frame) = body.frame().await {
        let frame = match frame {
            Ok(f) => f,
            Err(e) => {
                return Ok(refuse(
                    http::StatusCode::BAD_REQUEST,
                    "M_BAD_JSON",
                    &format!("cannot read the request body: {e}"),
                ));
            }
        };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if bytes.len() + data.len() > max_body {
            return Ok(refuse(
                http::StatusCode::PAYLOAD_TOO_LARGE,
                "M_TOO_LARGE",
                &format!("federation request bodies are limited to {max_body} bytes"),
            ));
        }
        // A chunked body is charged as it arrives (a declared length was charged whole).
        if declared.is_none() && !data.is_empty() {
            match budget
                .clone()
                .try_acquire_many_owned(charge(data.len() as u64))
            {
                Ok(p) => match held.as_mut() {
                    Some(h) => h.merge(p),
                    None => held = Some(p),
                },
                Err(_) => return Ok(busy()),
            }
        }
        bytes.extend_from_slice(&data);
    }
    parts.extensions.insert(AuthenticatedOrigin(origin.clone()));
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    let response = router.oneshot(request).await;
    // The body (and whatever the handler made of it) is gone once the response is
    // ready; only then is its charge returned.
    drop(held);
    response
}

/// A Matrix error response.
fn refuse(status: http::StatusCode, errcode: &str, error: &str) -> Response<axum::body::Body> {
    let body = serde_json::json!({ "errcode": errcode, "error": error }).to_string();
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

/// Why an exchange failed.
#[derive(Debug)]
pub(crate) enum ExchangeError {
    /// The stream closed before any response head arrived. The listener drops streams it
    /// cannot take (over a limit, or arriving faster than it accepts them) before
    /// reading them, so such a request was not processed and may be sent again.
    NoResponse(String),
    /// Anything else: the response was cut short, too big or malformed.
    Failed(String),
}

impl std::fmt::Display for ExchangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExchangeError::NoResponse(e) | ExchangeError::Failed(e) => f.write_str(e),
        }
    }
}

/// Write `request` on `stream` and read the response head. The connection task must
/// live while the body is read, and be aborted after.
async fn exchange_head(
    stream: Stream,
    host: &str,
    request: Request<Bytes>,
    limits: Limits,
) -> Result<
    (
        Response<Incoming>,
        tokio::task::JoinHandle<hyper::Result<()>>,
    ),
    ExchangeError,
> {
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        .max_buf_size(limits.max_header)
        .handshake::<_, Full<Bytes>>(TokioIo::new(stream.compat()))
        .await
        .map_err(|e| ExchangeError::NoResponse(format!("HTTP handshake: {e}")))?;
    let conn = tokio::spawn(conn);
    let (mut parts, body) = request.into_parts();
    if let Ok(value) = http::HeaderValue::from_str(host) {
        parts.headers.insert(http::header::HOST, value);
    }
    let response = sender
        .send_request(Request::from_parts(parts, Full::new(body)))
        .await
        .map_err(|e| ExchangeError::NoResponse(format!("no response: {e}")));
    match response {
        Ok(r) => Ok((r, conn)),
        Err(e) => {
            conn.abort();
            Err(e)
        }
    }
}

/// Write `request` on `stream` and read the response, within the limits.
pub(crate) async fn exchange(
    stream: Stream,
    host: &str,
    request: Request<Bytes>,
    limits: Limits,
) -> Result<Response<Bytes>, ExchangeError> {
    let (response, conn) = exchange_head(stream, host, request, limits).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, limits.max_response)
        .collect()
        .await
        .map_err(|e| ExchangeError::Failed(format!("reading response body: {e}")));
    conn.abort();
    Ok(Response::from_parts(parts, body?.to_bytes()))
}

/// Write `request` on `stream` and read the response head; the body is left to the
/// caller, as a stream of data chunks that keeps the connection (and `hold`) alive
/// until it ends or is dropped.
pub(crate) async fn exchange_streaming<H: Send + 'static>(
    stream: Stream,
    host: &str,
    request: Request<Bytes>,
    limits: Limits,
    hold: H,
) -> Result<Response<BodyChunks<H>>, ExchangeError> {
    let (response, conn) = exchange_head(stream, host, request, limits).await?;
    let (parts, body) = response.into_parts();
    Ok(Response::from_parts(
        parts,
        BodyChunks {
            body,
            conn,
            _hold: hold,
        },
    ))
}

/// A response body read as it arrives (data frames only); aborts its connection when
/// dropped.
pub(crate) struct BodyChunks<H> {
    body: Incoming,
    conn: tokio::task::JoinHandle<hyper::Result<()>>,
    _hold: H,
}

impl<H> Drop for BodyChunks<H> {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

impl<H: Unpin> futures::Stream for BodyChunks<H> {
    type Item = Result<Bytes, String>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use hyper::body::Body as _;
        use std::task::Poll;
        loop {
            match std::pin::Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if let Ok(data) = frame.into_data() {
                        return Poll::Ready(Some(Ok(data)));
                    }
                    // Trailers: skip.
                }
                Poll::Ready(Some(Err(e))) => {
                    return Poll::Ready(Some(Err(format!("reading response body: {e}"))));
                }
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
