//! Prefetching: the media of other servers that an event refers to is queued for a
//! background fetch once the event is committed, so media outlives the device that
//! sent it. The queue is bounded (an item offered to a full one is dropped: it is only a
//! prefetch) and [`PREFETCH_CONCURRENCY`] fetches run at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::mpsc;

use super::fetch::fetch_shared;
use super::{FETCH_TIMEOUT, Key, PREFETCH_CONCURRENCY, is_remote_server};
use crate::events::Pdu;
use crate::server::Server;
use crate::storage;

/// Media references taken from one event.
const MAX_REFERENCES_PER_EVENT: usize = 4;

/// The prefetch queue: bounded; an item offered to a full queue is dropped.
pub(crate) struct PrefetchQueue {
    tx: mpsc::Sender<Key>,
    rx: Mutex<Option<mpsc::Receiver<Key>>>,
    pub(super) dropped: AtomicU64,
}

impl PrefetchQueue {
    pub(super) fn new(capacity: usize) -> Self {
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

/// `(origin, media id)` of an `mxc://` URI, if well-formed.
pub fn parse_mxc(uri: &str) -> Option<(String, String)> {
    let (origin, media_id) = uri.strip_prefix("mxc://")?.split_once('/')?;
    crate::media::validate_media_id(media_id).ok()?;
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
    use serde_json::json;

    use super::*;

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
}
