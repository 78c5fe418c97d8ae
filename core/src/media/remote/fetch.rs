//! One fetch from the origin: `/_matrix/federation/v1/media/download/{mediaId}` over
//! the transport, bounded per origin, in number and in time; the multipart answer is
//! checked and its content streamed into the cache.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use ruma::api::federation::authenticated_media::get_content;
use serde_json::Value;

use super::FETCH_TIMEOUT;
use super::cache::store_fetched;
use super::flight::Flight;
use crate::error::Error;
use crate::federation::client;
use crate::media::multipart::{self, Head};
use crate::server::Server;

/// Most bytes of an origin's error answer read.
const MAX_ERROR_BODY: usize = 64 * 1024;
/// How long the origin is asked to wait for a pending upload.
const ORIGIN_WAIT_MS: u64 = 20_000;

/// Fetch an item into the cache, or wait for the fetch already under way.
pub(super) async fn fetch_shared(
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use parking_lot::Mutex;

    use super::super::{FETCHES_PER_ORIGIN, test_node};
    use super::*;

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
        let (_dir, node) = test_node(1 << 20).await;
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
}
