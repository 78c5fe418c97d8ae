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
//! Here: the state ([`RemoteMedia`]) and serving an item (`original`); the steps are
//! beside it: `flight.rs` (single flight), `fetch.rs` (asking the origin and reading its
//! answer), `cache.rs` (keeping the bytes, reading and evicting them) and
//! `prefetch.rs` (the references in events and the prefetch queue and worker).
//!
//! [`MediaConfig::remote_cache_bytes`]: crate::config::MediaConfig::remote_cache_bytes
//! [`MediaConfig::prefetch_max_bytes`]: crate::config::MediaConfig::prefetch_max_bytes

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::error::Error;
use crate::server::Server;
use crate::storage::RemoteMediaRow;

mod cache;
mod fetch;
mod flight;
mod prefetch;

use cache::cached;
pub(super) use cache::{enforce_cap, remove_if_unused};
use fetch::fetch_shared;
use flight::SingleFlight;
use prefetch::PrefetchQueue;
pub use prefetch::{parse_mxc, prefetch, references, remote_references, start_prefetch};

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
/// Queued prefetches; more are dropped.
pub const PREFETCH_QUEUE: usize = 256;
/// Prefetches running at once.
pub const PREFETCH_CONCURRENCY: usize = 2;

/// A remote item: (origin, media id).
type Key = (String, String);

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

/// A started node with a remote media cache of `cap` bytes (tests of the parts).
#[cfg(test)]
async fn test_node(cap: u64) -> (tempfile::TempDir, crate::Node) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = crate::Config::new(dir.path());
    config.client_addr = "127.0.0.1:0".parse().expect("addr");
    config.media.remote_cache_bytes = cap;
    let node = crate::Node::start(config).await.expect("start");
    (dir, node)
}
