//! The client API's accept loop: every connection bounded in number, time and buffer.
//!
//! `axum::serve` holds every connection it accepts for as long as the peer likes: 2,000
//! idle or half-sent connections were kept for ever, and at a 1,024 open-files limit the
//! node's own sends timed out. Here:
//!
//! - at most [`ConnectionLimits::max_connections`] are open; past the cap the connection
//!   idle longest is closed to admit the new one (a connection with a request in flight
//!   is never shed), and if none is idle the new one is closed at once;
//! - request headers must arrive within `header_read_timeout` (hyper closes the
//!   connection otherwise), a connection with nothing in flight is closed after
//!   `idle_timeout`, and a request is answered `504` after `request_timeout`;
//! - a connection buffers at most [`MAX_BUF`] of unparsed input;
//! - shedding is logged once per episode (when it starts, and how many when it ends).
//!
//! Each request carries the peer's address as `ConnectInfo`, for per-address rate limits.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use parking_lot::Mutex;
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;
use tower::ServiceExt;

use crate::config::ConnectionLimits;
use crate::error::Error;

/// Largest unparsed input a connection buffers (request line and headers must fit).
pub const MAX_BUF: usize = 64 * 1024;

/// One open connection, as the accept loop sees it.
struct Conn {
    /// Requests being answered (until their response body is sent).
    in_flight: AtomicUsize,
    /// Milliseconds since the listener started, at the last request's end.
    last_active: AtomicU64,
    /// Asks the connection to close.
    shed: Notify,
}

impl Conn {
    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        if self.in_flight.load(Ordering::Acquire) > 0 {
            return None;
        }
        let now = ms_since(epoch);
        Some(Duration::from_millis(
            now.saturating_sub(self.last_active.load(Ordering::Acquire)),
        ))
    }
}

fn ms_since(epoch: Instant) -> u64 {
    u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// The open connections and the shedding episode in progress.
struct Registry {
    epoch: Instant,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    /// Connections shed or refused in the current episode (0: none in progress).
    shed_in_episode: AtomicU64,
}

impl Registry {
    /// Register a new connection, making room past the cap; `None` if no room can be
    /// made (every connection has a request in flight).
    fn admit(&self, max: usize) -> Option<(u64, Arc<Conn>)> {
        let mut conns = self.conns.lock();
        if conns.len() >= max {
            let victim = conns
                .iter()
                .filter_map(|(id, c)| c.idle_for(self.epoch).map(|idle| (*id, idle)))
                .max_by_key(|(_, idle)| *idle);
            self.note_shed(max, conns.len());
            match victim {
                Some((id, _)) => {
                    if let Some(c) = conns.remove(&id) {
                        c.shed.notify_one();
                    }
                }
                None => return None,
            }
        } else if conns.len() < max / 2 {
            self.end_episode(conns.len());
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            in_flight: AtomicUsize::new(0),
            last_active: AtomicU64::new(ms_since(self.epoch)),
            shed: Notify::new(),
        });
        conns.insert(id, conn.clone());
        Some((id, conn))
    }

    fn note_shed(&self, max: usize, open: usize) {
        if self.shed_in_episode.fetch_add(1, Ordering::AcqRel) == 0 {
            tracing::warn!(
                max_connections = max,
                open,
                "client connections at the cap: closing the longest-idle ones"
            );
        }
    }

    fn end_episode(&self, open: usize) {
        let shed = self.shed_in_episode.swap(0, Ordering::AcqRel);
        if shed > 0 {
            tracing::info!(shed, open, "client connections back under the cap");
        }
    }

    fn remove(&self, id: u64) {
        self.conns.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.conns.lock().len()
    }
}

/// Marks a request in flight on its connection until dropped (with the response body).
struct InFlight {
    conn: Arc<Conn>,
    epoch: Instant,
}

impl InFlight {
    fn new(conn: Arc<Conn>, epoch: Instant) -> InFlight {
        conn.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight { conn, epoch }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.conn
            .last_active
            .store(ms_since(self.epoch), Ordering::Release);
        self.conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its request counted as in flight until it is sent, so a
/// slow download is not mistaken for an idle connection.
struct Tracked {
    inner: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Serve `app` on `listener` until `shutdown` resolves; then stop accepting, let requests
/// in flight finish and close idle connections. Dropping the returned future (aborting
/// its task) closes every connection.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        conns: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(0),
        shed_in_episode: AtomicU64::new(0),
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    tokio::pin!(shutdown);
    let mut accept_failing = false;
    loop {
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, addr) = match accepted {
            Ok(a) => {
                accept_failing = false;
                a
            }
            Err(e) => {
                // Out of descriptors (EMFILE) and the like: log once, back off briefly
                // instead of spinning on the error.
                if !accept_failing {
                    tracing::warn!(error = %e, open = registry.len(), "cannot accept client connections");
                    accept_failing = true;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Some((id, conn)) = registry.admit(limits.max_connections) else {
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        tasks.spawn(serve_connection(
            stream,
            addr,
            app.clone(),
            limits.clone(),
            (registry.clone(), id, conn),
            stop_rx.clone(),
        ));
    }
    drop(listener);
    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    addr: SocketAddr,
    app: Router,
    limits: ConnectionLimits,
    (registry, id, conn): (Arc<Registry>, u64, Arc<Conn>),
    mut stop: watch::Receiver<bool>,
) {
    let epoch = registry.epoch;
    let svc_conn = conn.clone();
    let request_timeout = limits.request_timeout;
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(addr));
        let in_flight = InFlight::new(svc_conn.clone(), epoch);
        let app = app.clone();
        async move {
            let answer = tokio::time::timeout(request_timeout, app.oneshot(req.map(Body::new)));
            let response = match answer.await {
                Ok(Ok(r)) => r,
                Ok(Err(never)) => match never {},
                Err(_) => timed_out(request_timeout),
            };
            Ok::<_, std::convert::Infallible>(response.map(|inner| {
                Body::new(Tracked {
                    inner,
                    _in_flight: in_flight,
                })
            }))
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_BUF)
        .keep_alive(true);
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    // Check for idleness a few times per idle timeout.
    let mut tick = tokio::time::interval((limits.idle_timeout / 4).max(Duration::from_millis(50)));
    let mut stopping = false;
    loop {
        tokio::select! {
            res = connection.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(error = %e, %addr, "client connection ended with an error");
                }
                break;
            }
            // Shed past the cap: only ever chosen while idle, so nothing is cut short.
            () = conn.shed.notified() => break,
            _ = tick.tick() => {
                if conn.idle_for(epoch).is_some_and(|idle| idle >= limits.idle_timeout) {
                    break;
                }
            }
            Ok(()) = stop.changed(), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
    registry.remove(id);
}

fn timed_out(after: Duration) -> Response<Body> {
    let mut r = Error::Timeout(format!(
        "the request took longer than {} s",
        after.as_secs()
    ))
    .into_response();
    // The client may have sent more than was read; do not reuse the connection.
    r.headers_mut().insert(
        http::header::CONNECTION,
        http::HeaderValue::from_static("close"),
    );
    r
}
