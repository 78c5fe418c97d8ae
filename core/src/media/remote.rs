//! Media of other servers: fetched from the origin over federation
//! (`/_matrix/federation/v1/media/download/{mediaId}`), kept in a bounded cache and
//! served from it afterwards.
//!
//! - **Cache.** `remote_media` rows keyed by (origin, media id); bytes by sha256 in the
//!   shared [`MediaStore`](super::MediaStore). Originals and the thumbnails made here
//!   from them count against [`MediaConfig::remote_cache_bytes`]; past it the least
//!   recently read items go first, and a file is removed from disk once no row (local or
//!   remote) names it. Local media is never evicted. A read rewrites `last_access_ts`
//!   only when it is older than [`TOUCH_AFTER_MS`], so reading costs no write.
//! - **Single flight.** Concurrent requests for one item share one fetch (a task of its
//!   own, so a client that gives up does not cancel it for the others). At most
//!   [`FETCH_CONCURRENCY`] fetches run at once, [`FETCHES_PER_ORIGIN`] of them from one
//!   origin, and [`MAX_IN_FLIGHT`] distinct items may be waited for; past that,
//!   `429 M_LIMIT_EXCEEDED`.
//! - **Prefetch.** When an event from another node references media (see
//!   [`references`]), the item is queued for a background fetch after the event is
//!   committed: a bounded queue ([`PREFETCH_QUEUE`], dropped when full — it is only a
//!   prefetch), [`PREFETCH_CONCURRENCY`] fetches at a time, files up to
//!   [`MediaConfig::prefetch_max_bytes`]; larger ones are fetched when a client asks.
//!   Media so outlives the device that sent it.
//!
//! A response that redirects (`Location`) is refused: this node reaches other servers
//! over the P2P transport only and has no HTTP client for arbitrary URLs.
//!
//! [`MediaConfig::remote_cache_bytes`]: crate::config::MediaConfig::remote_cache_bytes
//! [`MediaConfig::prefetch_max_bytes`]: crate::config::MediaConfig::prefetch_max_bytes

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use ruma::api::federation::authenticated_media::get_content;
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use futures::StreamExt;

use super::multipart::{self, Head};
use crate::error::Error;
use crate::events::Pdu;
use crate::federation::client;
use crate::server::Server;
use crate::storage::{self, RemoteMediaRow, now_ms};

/// A read rewrites an item's last access only when the stored one is older than this.
pub const TOUCH_AFTER_MS: i64 = 60_000;
/// Fetches from other servers running at once (each response is buffered by the
/// transport, up to its response cap).
pub const FETCH_CONCURRENCY: usize = 4;
/// Fetches from one origin running at once: a slow or hostile origin can hold no more
/// than this many of the [`FETCH_CONCURRENCY`] slots.
pub const FETCHES_PER_ORIGIN: usize = 2;
/// Distinct remote items being fetched or waited for at once.
pub const MAX_IN_FLIGHT: usize = 64;
/// Longest one fetch may take, whoever waits for it.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(180);
/// Most bytes of an origin's error answer read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long the origin is asked to wait for a pending upload.
const ORIGIN_WAIT_MS: u64 = 20_000;
/// Queued prefetches; more are dropped.
pub const PREFETCH_QUEUE: usize = 256;
/// Prefetches running at once.
pub const PREFETCH_CONCURRENCY: usize = 2;
/// Media references taken from one event.
const MAX_REFERENCES_PER_EVENT: usize = 4;

type Key = (String, String);

/// A fetch's outcome, shareable between the requests waiting for it.
#[derive(Clone, Debug)]
enum FetchError {
    NotFound(String),
    TooLarge(String),
    NotYetUploaded(String),
    Timeout(String),
    Remote(String),
    Internal(String),
}

impl From<Error> for FetchError {
    fn from(e: Error) -> Self {
        match e {
            Error::NotFound(m) => FetchError::NotFound(m),
            Error::TooLarge(m) => FetchError::TooLarge(m),
            Error::NotYetUploaded(m) => FetchError::NotYetUploaded(m),
            Error::Timeout(m) => FetchError::Timeout(m),
            Error::RemoteServer(m) => FetchError::Remote(m),
            other => FetchError::Internal(other.to_string()),
        }
    }
}

impl From<FetchError> for Error {
    fn from(e: FetchError) -> Self {
        match e {
            FetchError::NotFound(m) => Error::NotFound(m),
            FetchError::TooLarge(m) => Error::TooLarge(m),
            FetchError::NotYetUploaded(m) => Error::NotYetUploaded(m),
            FetchError::Timeout(m) => Error::Timeout(m),
            FetchError::Remote(m) => Error::RemoteServer(m),
            FetchError::Internal(m) => Error::Internal(m),
        }
    }
}

type Flight = Shared<BoxFuture<'static, Result<(), FetchError>>>;

/// Concurrent work keyed by `K`, run once per key at a time, with a cap on keys.
/// A flight in the map: the limit it runs with, its shared outcome, its task.
type Entry = (u64, Flight, tokio::task::AbortHandle);

pub(crate) struct SingleFlight<K> {
    flights: Arc<Mutex<HashMap<K, Entry>>>,
    max: usize,
}

impl<K: std::hash::Hash + Eq + Clone + Send + 'static> SingleFlight<K> {
    pub(crate) fn new(max: usize) -> Self {
        SingleFlight {
            flights: Arc::default(),
            max,
        }
    }

    /// Join the flight for `key`, or start `work` (tagged with `limit`) as a task of its
    /// own. Returns the flight and the limit it runs with.
    fn join<F>(&self, key: K, limit: u64, work: F) -> Result<(u64, Flight), Error>
    where
        F: Future<Output = Result<(), Error>> + Send + 'static,
    {
        let mut map = self.flights.lock();
        if let Some((l, f, _)) = map.get(&key) {
            return Ok((*l, f.clone()));
        }
        if map.len() >= self.max {
            return Err(Error::LimitExceeded(
                "too many remote media downloads at once; try again shortly".into(),
            ));
        }
        let flights = self.flights.clone();
        let k = key.clone();
        let task = tokio::spawn(async move {
            let out = work.await.map_err(FetchError::from);
            flights.lock().remove(&k);
            out
        });
        let abort = task.abort_handle();
        let flight = async move {
            task.await
                .unwrap_or_else(|e| Err(FetchError::Internal(format!("media fetch task: {e}"))))
        }
        .boxed()
        .shared();
        map.insert(key, (limit, flight.clone(), abort));
        Ok((limit, flight))
    }

    /// Abort every flight (node shutdown); their waiters get an error.
    fn abort_all(&self) {
        for (_, (_, _, abort)) in self.flights.lock().drain() {
            abort.abort();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.flights.lock().len()
    }
}

/// The prefetch queue: bounded; an item offered to a full queue is dropped.
pub(crate) struct PrefetchQueue {
    tx: mpsc::Sender<Key>,
    rx: Mutex<Option<mpsc::Receiver<Key>>>,
    dropped: AtomicU64,
}

impl PrefetchQueue {
    fn new(capacity: usize) -> Self {
        let (tx, rx) = mpsc::channel(capacity);
        PrefetchQueue {
            tx,
            rx: Mutex::new(Some(rx)),
            dropped: AtomicU64::new(0),
        }
    }

    /// Queue an item; false (and counted) when the queue is full.
    fn offer(&self, key: Key) -> bool {
        match self.tx.try_send(key) {
            Ok(()) => true,
            Err(_) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }
}

/// The node's remote media state: fetches in flight and the prefetch queue.
pub struct RemoteMedia {
    flights: SingleFlight<Key>,
    fetch_permits: Arc<Semaphore>,
    /// [`FETCHES_PER_ORIGIN`] slots per origin, for the origins with a fetch in flight.
    origin_permits: crate::keyed::KeyedPermits,
    prefetch: PrefetchQueue,
}

impl Default for RemoteMedia {
    fn default() -> Self {
        RemoteMedia {
            flights: SingleFlight::new(MAX_IN_FLIGHT),
            fetch_permits: Arc::new(Semaphore::new(FETCH_CONCURRENCY)),
            origin_permits: crate::keyed::KeyedPermits::new(FETCHES_PER_ORIGIN, MAX_IN_FLIGHT),
            prefetch: PrefetchQueue::new(PREFETCH_QUEUE),
        }
    }
}

impl std::fmt::Debug for RemoteMedia {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteMedia")
            .field("prefetch_dropped", &self.prefetch_dropped())
            .finish_non_exhaustive()
    }
}

impl RemoteMedia {
    /// Stop every fetch in flight (node shutdown).
    pub fn abort_fetches(&self) {
        self.flights.abort_all();
    }

    /// Prefetches dropped because the queue was full.
    pub fn prefetch_dropped(&self) -> u64 {
        self.prefetch.dropped.load(Ordering::Relaxed)
    }
}

/// Whether `name` could be another node: a P2P server name that is not ours.
pub fn is_remote_server(server: &Server, name: &str) -> bool {
    name != server.server_name() && crate::identity::public_key_from_server_name(name).is_some()
}

/// The largest file a client's request fetches.
fn on_demand_limit(server: &Server) -> u64 {
    server
        .config
        .max_upload_bytes
        .min(server.config.media.remote_cache_bytes)
}

/// A cached item with its file open, noting the read.
pub(super) async fn cached(
    server: &Server,
    origin: &str,
    media_id: &str,
) -> Result<Option<(RemoteMediaRow, tokio::fs::File, u64)>, Error> {
    let Some(row) = server
        .db
        .read(|c| storage::get_remote_media(c, origin, media_id))?
    else {
        return Ok(None);
    };
    // Evicted between the read and the open: fetch again.
    let Ok((file, size)) = server.media.open_content(&row.sha256).await else {
        return Ok(None);
    };
    let now = now_ms();
    if now - row.last_access_ts > TOUCH_AFTER_MS {
        server
            .db
            .write(|tx| storage::touch_remote_media(tx, origin, media_id, now))?;
    }
    Ok(Some((row, file, size)))
}

/// The original of a remote item: from the cache, else fetched (sharing a fetch already
/// under way), waiting at most `wait`.
pub(super) async fn original(
    server: &Arc<Server>,
    origin: &str,
    media_id: &str,
    wait: Duration,
) -> Result<(RemoteMediaRow, tokio::fs::File, u64), Error> {
    if let Some(hit) = cached(server, origin, media_id).await? {
        return Ok(hit);
    }
    if server.transport().is_none() {
        return Err(Error::NotFound(
            "remote media is not cached and this node has no federation to fetch it".into(),
        ));
    }
    fetch_shared(server, origin, media_id, on_demand_limit(server), wait).await?;
    cached(server, origin, media_id)
        .await?
        .ok_or_else(|| Error::NotFound("the remote media was evicted again at once".into()))
}

/// Fetch an item into the cache, or wait for the fetch already under way.
async fn fetch_shared(
    server: &Arc<Server>,
    origin: &str,
    media_id: &str,
    limit: u64,
    wait: Duration,
) -> Result<(), Error> {
    let start = |limit: u64| {
        let (s, o, m) = (server.clone(), origin.to_owned(), media_id.to_owned());
        server
            .remote_media
            .flights
            .join((o.clone(), m.clone()), limit, async move {
                fetch_and_store(&s, &o, &m, limit).await
            })
    };
    let deadline = tokio::time::Instant::now() + wait;
    let waited = |flight: Flight| async move {
        tokio::time::timeout_at(deadline, flight)
            .await
            .map_err(|_| {
                Error::Timeout(format!(
                    "{origin} did not deliver the media within {} ms",
                    wait.as_millis()
                ))
            })?
            .map_err(Error::from)
    };
    let (flight_limit, flight) = start(limit)?;
    match waited(flight).await {
        // We joined a prefetch with a smaller budget: fetch with ours.
        Err(Error::TooLarge(_)) if flight_limit < limit => {
            let (_, flight) = start(limit)?;
            waited(flight).await
        }
        other => other,
    }
}

/// One fetch: ask the origin, check the answer, stream the bytes to the store, record
/// the row, and evict what no longer fits. Bounded by [`FETCH_TIMEOUT`] as a whole.
async fn fetch_and_store(
    server: &Server,
    origin: &str,
    media_id: &str,
    limit: u64,
) -> Result<(), Error> {
    let media = &server.remote_media;
    let _origin = media.origin_permits.acquire(origin).await?;
    let _permit = media
        .fetch_permits
        .acquire()
        .await
        .map_err(Error::internal)?;
    fetch_bounded(server, origin, media_id, limit).await
}

async fn fetch_bounded(
    server: &Server,
    origin: &str,
    media_id: &str,
    limit: u64,
) -> Result<(), Error> {
    tokio::time::timeout(FETCH_TIMEOUT, fetch_inner(server, origin, media_id, limit))
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "fetching media from {origin} took longer than {FETCH_TIMEOUT:?}"
            ))
        })?
}

async fn fetch_inner(
    server: &Server,
    origin: &str,
    media_id: &str,
    limit: u64,
) -> Result<(), Error> {
    let mut request = get_content::v1::Request::new(media_id.to_owned());
    request.timeout_ms = Duration::from_millis(ORIGIN_WAIT_MS);
    let response = client::execute_streaming(server, origin, request).await?;
    let status = response.status();
    let content_type = response
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let declared = response
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let mut body = response.into_body();
    let remote = |e: String| Error::RemoteServer(format!("{origin}: {e}"));
    if !status.is_success() {
        let mut text = Vec::new();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| remote(e.to_string()))?;
            text.extend_from_slice(&chunk);
            if text.len() > MAX_ERROR_BODY {
                break;
            }
        }
        return Err(origin_error(origin, status, &text));
    }
    // The whole response may not exceed the content limit by more than the framing.
    if declared.is_some_and(|n| n > limit.saturating_add(multipart::MAX_HEAD_BYTES as u64)) {
        return Err(Error::TooLarge(format!(
            "the remote media is larger than {limit} bytes"
        )));
    }
    let boundary = multipart::boundary_of(&content_type)
        .map_err(|e| remote(format!("a malformed media response: {e}")))?;
    let mut buf = Vec::new();
    let head = loop {
        if let Some(head) = multipart::parse_head(&boundary, &buf)
            .map_err(|e| remote(format!("a malformed media response: {e}")))?
        {
            break head;
        }
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(e)) => return Err(remote(e.to_string())),
            None => return Err(remote("the media response ended early".into())),
        }
    };
    let (part_type, disposition, offset) = match head {
        Head::Content {
            content_type,
            content_disposition,
            offset,
        } => (content_type, content_disposition, offset),
        Head::Location(url) => {
            return Err(Error::RemoteServer(format!(
                "{origin} redirected the download to {url}; this node fetches media \
                 over the P2P transport only"
            )));
        }
    };
    let first = bytes::Bytes::from(buf).slice(offset..);
    let content = multipart::content(&boundary, first, body);
    store_fetched(
        server,
        (origin, media_id),
        part_type.as_deref(),
        disposition.as_deref(),
        content,
        limit,
    )
    .await
}

/// Keep fetched bytes: the file (refused past `limit`), the row naming it, then
/// eviction down to the cap.
async fn store_fetched<S>(
    server: &Server,
    (origin, media_id): (&str, &str),
    content_type: Option<&str>,
    disposition: Option<&str>,
    content: S,
    limit: u64,
) -> Result<(), Error>
where
    S: futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin,
{
    let stored = match server.media.write_stream(content, limit).await {
        Ok(s) => s,
        Err(Error::TooLarge(_)) => {
            return Err(Error::TooLarge(format!(
                "the remote media is larger than {limit} bytes"
            )));
        }
        // The stream failed: the origin's fault, not the client's.
        Err(Error::BadContent(e)) => return Err(Error::RemoteServer(format!("{origin}: {e}"))),
        Err(e) => return Err(e),
    };
    let content_type = super::sanitise_content_type(content_type);
    let filename = super::sanitise_filename(
        disposition
            .and_then(multipart::disposition_filename)
            .as_deref(),
    );
    let now = now_ms();
    let row = RemoteMediaRow {
        origin: origin.to_owned(),
        media_id: media_id.to_owned(),
        sha256: stored.sha256.clone(),
        content_type,
        filename,
        size: stored.size as i64,
        last_access_ts: now,
    };
    server
        .db
        .write(|tx| storage::insert_remote_media(tx, &row, now))?;
    // The row names the file now; eviction may run.
    drop(stored);
    tracing::debug!(%origin, %media_id, size = row.size, "cached remote media");
    enforce_cap(server).await
}

/// The error for an origin's non-success answer, keeping "not found" a 404.
fn origin_error(origin: &str, status: http::StatusCode, body: &[u8]) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (errcode, message) = (field("errcode"), field("error"));
    let text = format!("{origin} answered {status}: {errcode} {message}");
    match (status.as_u16(), errcode.as_str()) {
        (404, _) => Error::NotFound(text),
        (_, "M_TOO_LARGE") => Error::TooLarge(text),
        (504, "M_NOT_YET_UPLOADED") => Error::NotYetUploaded(text),
        (429, _) => Error::RemoteServer(text),
        _ => Error::RemoteServer(text),
    }
}

/// Evict least recently used remote media until the cache fits its cap, removing files
/// no row uses any more.
pub(super) async fn enforce_cap(server: &Server) -> Result<(), Error> {
    let cap = i64::try_from(server.config.media.remote_cache_bytes).unwrap_or(i64::MAX);
    if server.db.read(storage::remote_media_total)? <= cap {
        return Ok(());
    }
    let _exclusive = server.media.lock_for_collection().await;
    let (unused, evicted) = server.db.write(|tx| storage::evict_remote_media(tx, cap))?;
    for sha256 in &unused {
        if let Err(e) = server.media.remove_content(sha256).await {
            tracing::warn!(error = %e, "could not remove evicted media");
        }
    }
    tracing::debug!(evicted, files = unused.len(), "evicted remote media");
    Ok(())
}

/// Remove stored bytes that no row names (a thumbnail whose original went meanwhile).
pub(super) async fn remove_if_unused(server: &Server, sha256: &str) -> Result<(), Error> {
    let _exclusive = server.media.lock_for_collection().await;
    if !server.db.read(|c| storage::content_referenced(c, sha256))? {
        server.media.remove_content(sha256).await?;
    }
    Ok(())
}

/// `(origin, media id)` of an `mxc://` URI, if well-formed.
pub fn parse_mxc(uri: &str) -> Option<(String, String)> {
    let (origin, media_id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    super::validate_media_id(media_id).ok()?;
    (!origin.is_empty()).then(|| (origin.to_owned(), media_id.to_owned()))
}

/// The `mxc://` URIs an event of type `kind` refers to: attachments (`url`,
/// `info.thumbnail_url`), encrypted attachments (`file.url`,
/// `info.thumbnail_file.url`), stickers, member and room avatars.
pub fn references(kind: &str, content: &Value) -> Vec<String> {
    let paths: &[&[&str]] = match kind {
        "m.room.message" | "m.sticker" => &[
            &["url"],
            &["file", "url"],
            &["info", "thumbnail_url"],
            &["info", "thumbnail_file", "url"],
        ],
        "m.room.member" => &[&["avatar_url"]],
        "m.room.avatar" => &[&["url"], &["info", "thumbnail_url"]],
        _ => &[],
    };
    let mut out: Vec<String> = Vec::new();
    for path in paths {
        let found = path
            .iter()
            .try_fold(content, |v, k| v.get(k))
            .and_then(Value::as_str);
        if let Some(uri) = found
            && uri.starts_with("mxc://")
            && !out.iter().any(|u| u == uri)
        {
            out.push(uri.to_owned());
        }
    }
    out.truncate(MAX_REFERENCES_PER_EVENT);
    out
}

/// The media of other servers that `pdu` refers to, when prefetching is on and
/// federation is up (empty for most events, and cheap then).
pub fn remote_references(server: &Server, pdu: &Pdu) -> Vec<(String, String)> {
    if !server.config.media.prefetch || server.transport().is_none() {
        return Vec::new();
    }
    let kind = pdu.kind.to_string();
    if !matches!(
        kind.as_str(),
        "m.room.message" | "m.sticker" | "m.room.member" | "m.room.avatar"
    ) {
        return Vec::new();
    }
    let Ok(content) = serde_json::from_str::<Value>(pdu.content.get()) else {
        return Vec::new();
    };
    references(&kind, &content)
        .iter()
        .filter_map(|uri| parse_mxc(uri))
        .filter(|(origin, _)| is_remote_server(server, origin))
        .collect()
}

/// After the event naming them was committed: queue media for prefetching. Never
/// blocks; what does not fit in the queue is dropped.
pub fn prefetch(server: &Server, items: Vec<(String, String)>) {
    for key in items {
        if !server.remote_media.prefetch.offer(key) {
            tracing::debug!("prefetch queue full; dropped");
        }
    }
}

/// The prefetch worker: takes queued items, [`PREFETCH_CONCURRENCY`] at a time. Its
/// fetches end with it (abort the handle on shutdown).
pub fn start_prefetch(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
    let rx = server.remote_media.prefetch.rx.lock().take();
    tokio::spawn(async move {
        let Some(mut rx) = rx else {
            return;
        };
        let mut running = tokio::task::JoinSet::new();
        while let Some((origin, media_id)) = rx.recv().await {
            while running.len() >= PREFETCH_CONCURRENCY {
                running.join_next().await;
            }
            while running.try_join_next().is_some() {}
            let server = server.clone();
            running.spawn(async move { prefetch_one(&server, &origin, &media_id).await });
        }
    })
}

async fn prefetch_one(server: &Arc<Server>, origin: &str, media_id: &str) {
    let known = server
        .db
        .read(|c| storage::get_remote_media(c, origin, media_id));
    if !matches!(known, Ok(None)) {
        return;
    }
    let limit = server
        .config
        .media
        .prefetch_max_bytes
        .min(server.config.media.remote_cache_bytes);
    match fetch_shared(server, origin, media_id, limit, FETCH_TIMEOUT).await {
        Ok(()) => tracing::debug!(%origin, %media_id, "prefetched remote media"),
        Err(e) => tracing::debug!(%origin, %media_id, error = %e, "prefetch failed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn one(bytes: Vec<u8>) -> impl futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter([Ok(bytes::Bytes::from(bytes))])
    }

    async fn node(cap: u64) -> (tempfile::TempDir, crate::Node) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::Config::new(dir.path());
        config.client_addr = "127.0.0.1:0".parse().expect("addr");
        config.media.remote_cache_bytes = cap;
        let node = crate::Node::start(config).await.expect("start");
        (dir, node)
    }

    fn set_access(server: &Server, origin: &str, media_id: &str, ts: i64) {
        server
            .db
            .write(|tx| storage::touch_remote_media(tx, origin, media_id, ts))
            .expect("set access time");
    }

    /// Which of m1…m7 are cached.
    fn cached_ids(server: &Server, origin: &str) -> Vec<String> {
        (1..=7)
            .map(|i| format!("m{i}"))
            .filter(|id| {
                server
                    .db
                    .read(|c| storage::get_remote_media(c, origin, id))
                    .expect("read")
                    .is_some()
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cache_evicts_least_recently_used_past_its_cap() {
        let (_dir, node) = node(3_000).await;
        let server = node.server();
        let origin = "b".repeat(64);
        let blob = |seed: u8| vec![seed; 1_000];
        // Local media sharing bytes with a remote item, and local media of its own.
        let local_shared = crate::media::upload(
            server,
            "@alice:x",
            Some("application/octet-stream"),
            None,
            futures::stream::iter([Ok::<_, std::io::Error>(bytes::Bytes::from(blob(1)))]),
        )
        .await
        .expect("local upload");
        for (i, id) in ["m1", "m2", "m3"].iter().enumerate() {
            store_fetched(
                server,
                (&origin, id),
                Some("image/png"),
                None,
                one(blob(i as u8 + 1)),
                10_000,
            )
            .await
            .expect("store");
            set_access(server, &origin, id, 1_000 + i as i64);
        }
        assert_eq!(
            server.db.read(storage::remote_media_total).expect("total"),
            3_000
        );
        let sha = |seed: u8| hex::encode(sha2::Sha256::digest(blob(seed)));
        use sha2::Digest;
        // m1 is read (its old access time is rewritten), so m2 is the oldest now.
        let (row, _, _) = cached(server, &origin, "m1")
            .await
            .expect("read")
            .expect("hit");
        assert_eq!(row.size, 1_000);
        store_fetched(server, (&origin, "m4"), None, None, one(blob(4)), 10_000)
            .await
            .expect("store past the cap");
        assert_eq!(cached_ids(server, &origin), ["m1", "m3", "m4"]);
        assert!(
            !server.media.has_content(&sha(2)).await,
            "m2's file is gone"
        );
        assert!(server.media.has_content(&sha(4)).await);
        // Three more push out everything older, but a file local media uses stays.
        for (i, id) in ["m5", "m6", "m7"].iter().enumerate() {
            store_fetched(
                server,
                (&origin, id),
                None,
                None,
                one(blob(i as u8 + 5)),
                10_000,
            )
            .await
            .expect("store");
        }
        assert_eq!(cached_ids(server, &origin), ["m5", "m6", "m7"]);
        assert!(server.db.read(storage::remote_media_total).expect("total") <= 3_000);
        assert!(
            server.media.has_content(&sha(1)).await,
            "local media is never evicted"
        );
        let local_id = local_shared.rsplit('/').next().expect("media id");
        let own = server.server_name().to_owned();
        let local = crate::media::download(server, &own, local_id, Duration::ZERO, false)
            .await
            .expect("local media still downloads");
        assert_eq!(local.size, 1_000);
        for seed in [3, 4] {
            assert!(
                !server.media.has_content(&sha(seed)).await,
                "blob {seed} removed"
            );
        }
        // Larger than the per-file limit: refused, nothing kept.
        let err = store_fetched(server, (&origin, "big"), None, None, one(blob(9)), 999)
            .await
            .expect_err("too large");
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
        assert!(!server.media.has_content(&sha(9)).await);
        crate::Node::shutdown(node).await.expect("shutdown");
    }

    #[test]
    fn references_cover_attachments_avatars_and_encrypted_files() {
        let image = json!({
            "msgtype": "m.image", "url": "mxc://a/1",
            "info": {"thumbnail_url": "mxc://a/2"}
        });
        assert_eq!(
            references("m.room.message", &image),
            ["mxc://a/1", "mxc://a/2"]
        );
        let encrypted = json!({
            "msgtype": "m.file", "file": {"url": "mxc://a/3"},
            "info": {"thumbnail_file": {"url": "mxc://a/4"}}
        });
        assert_eq!(
            references("m.room.message", &encrypted),
            ["mxc://a/3", "mxc://a/4"]
        );
        assert_eq!(
            references("m.sticker", &json!({"url": "mxc://a/5"})),
            ["mxc://a/5"]
        );
        assert_eq!(
            references("m.room.member", &json!({"avatar_url": "mxc://a/6"})),
            ["mxc://a/6"]
        );
        assert_eq!(
            references("m.room.avatar", &json!({"url": "mxc://a/7"})),
            ["mxc://a/7"]
        );
        assert!(references("m.room.message", &json!({"url": "https://x/y"})).is_empty());
        assert!(references("m.room.message", &json!({"url": 5})).is_empty());
        assert!(references("m.room.topic", &json!({"url": "mxc://a/1"})).is_empty());
    }

    #[test]
    fn mxc_uris_parse_strictly() {
        assert_eq!(
            parse_mxc("mxc://srv/abc_-1"),
            Some(("srv".into(), "abc_-1".into()))
        );
        for bad in [
            "mxc://srv/",
            "mxc:///id",
            "mxc://srv/a/b",
            "mxc://srv/../x",
            "http://s/i",
        ] {
            assert_eq!(parse_mxc(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_full_prefetch_queue_drops() {
        let q = PrefetchQueue::new(3);
        let accepted = (0..5)
            .filter(|i| q.offer(("o".into(), format!("m{i}"))))
            .count();
        assert_eq!(accepted, 3);
        assert_eq!(q.dropped.load(Ordering::Relaxed), 2);
        let mut rx = q.rx.lock().take().expect("receiver");
        assert_eq!(rx.try_recv().ok(), Some(("o".into(), "m0".into())));
        assert!(
            q.offer(("o".into(), "m5".into())),
            "room again after one is taken"
        );
    }

    /// A transport whose answers never come, counting requests per destination.
    struct Stalled {
        asked: Mutex<HashMap<String, usize>>,
        peers: tokio::sync::broadcast::Sender<crate::federation::PeerEvent>,
    }

    impl crate::federation::FederationTransport for Stalled {
        fn request(
            &self,
            dest: &str,
            _request: http::Request<bytes::Bytes>,
        ) -> crate::federation::TransportFuture<'_> {
            *self.asked.lock().entry(dest.to_owned()).or_default() += 1;
            Box::pin(futures::future::pending())
        }

        fn subscribe(&self) -> tokio::sync::broadcast::Receiver<crate::federation::PeerEvent> {
            self.peers.subscribe()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn one_slow_origin_holds_at_most_its_share_of_the_fetch_slots() {
        let (_dir, node) = node(1 << 20).await;
        let server = node.server().clone();
        let stalled = Arc::new(Stalled {
            asked: Mutex::new(HashMap::new()),
            peers: tokio::sync::broadcast::channel(4).0,
        });
        assert!(node.set_transport(stalled.clone()));
        let name = |seed| {
            crate::identity::Identity::from_seed([seed; 32])
                .expect("identity")
                .server_name()
                .to_owned()
        };
        let (slow, other) = (name(3), name(4));
        let mut tasks = Vec::new();
        for i in 0..4 {
            let (server, slow) = (server.clone(), slow.clone());
            tasks.push(tokio::spawn(async move {
                fetch_and_store(&server, &slow, &format!("m{i}"), 1024).await
            }));
        }
        let (s, o) = (server.clone(), other.clone());
        tasks.push(tokio::spawn(async move {
            fetch_and_store(&s, &o, "x", 1024).await
        }));
        let asked = |dest: &str| stalled.asked.lock().get(dest).copied().unwrap_or(0);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while (asked(&slow) < FETCHES_PER_ORIGIN || asked(&other) < 1)
            && tokio::time::Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(asked(&other), 1, "another origin is not kept waiting");
        // Give the waiting fetches every chance to (wrongly) start.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert_eq!(asked(&slow), FETCHES_PER_ORIGIN, "the slow origin's share");
        assert_eq!(server.remote_media.origin_permits.len(), 2);
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        assert!(
            server.remote_media.origin_permits.is_empty(),
            "aborted fetches forget their origins"
        );
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn single_flight_runs_once_and_is_bounded() {
        let flights = SingleFlight::<u32>::new(2);
        let runs = Arc::new(AtomicU64::new(0));
        let (release, gate) = tokio::sync::watch::channel(false);
        let work = |runs: Arc<AtomicU64>, mut gate: tokio::sync::watch::Receiver<bool>| async move {
            runs.fetch_add(1, Ordering::SeqCst);
            let _ = gate.wait_for(|open| *open).await;
            Ok(())
        };
        let (_, a) = flights
            .join(1, 10, work(runs.clone(), gate.clone()))
            .expect("first");
        let (limit, b) = flights
            .join(1, 99, work(runs.clone(), gate.clone()))
            .expect("joined");
        assert_eq!(limit, 10, "the second caller joins the first flight");
        let (_, c) = flights
            .join(2, 10, work(runs.clone(), gate.clone()))
            .expect("second key");
        let over = flights.join(3, 10, work(runs.clone(), gate.clone()));
        assert!(
            matches!(over, Err(Error::LimitExceeded(_))),
            "cap of two keys"
        );
        release.send(true).expect("release");
        assert!(a.await.is_ok() && b.await.is_ok() && c.await.is_ok());
        assert_eq!(runs.load(Ordering::SeqCst), 2, "one run per key");
        // Finished flights leave the map, so a later request fetches afresh.
        for _ in 0..100 {
            if flights.len() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(flights.len(), 0);
        // Shutdown aborts what is in flight; its waiters get an error, not a hang.
        let (_held_shut, shut) = tokio::sync::watch::channel(false);
        let (_, stuck) = flights
            .join(4, 10, work(runs.clone(), shut))
            .expect("flight");
        flights.abort_all();
        assert!(matches!(stuck.await, Err(FetchError::Internal(_))));
        assert_eq!(flights.len(), 0);
    }
}
