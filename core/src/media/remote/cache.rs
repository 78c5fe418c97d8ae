//! The bounded cache of other servers' media: a fetched item is kept (its file in the
//! shared store, its `remote_media` row), read with its last access noted at most every
//! [`TOUCH_AFTER_MS`], and the least recently read items are evicted past
//! [`MediaConfig::remote_cache_bytes`](crate::config::MediaConfig::remote_cache_bytes).

use super::TOUCH_AFTER_MS;
use crate::error::Error;
use crate::media::multipart;
use crate::server::Server;
use crate::storage::{self, RemoteMediaRow, now_ms};

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

/// Keep fetched bytes: the file (refused past `limit`), the row naming it, then
/// eviction down to the cap.
pub(super) async fn store_fetched<S>(
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
    let content_type = crate::media::sanitise_content_type(content_type);
    let filename = crate::media::sanitise_filename(
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

/// Evict least recently used remote media until the cache fits its cap, removing files
/// no row uses any more.
pub(in crate::media) async fn enforce_cap(server: &Server) -> Result<(), Error> {
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
pub(in crate::media) async fn remove_if_unused(server: &Server, sha256: &str) -> Result<(), Error> {
    let _exclusive = server.media.lock_for_collection().await;
    if !server.db.read(|c| storage::content_referenced(c, sha256))? {
        server.media.remove_content(sha256).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::test_node;
    use super::*;

    fn one(bytes: Vec<u8>) -> impl futures::Stream<Item = Result<bytes::Bytes, String>> + Unpin {
        futures::stream::iter([Ok(bytes::Bytes::from(bytes))])
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
        let (_dir, node) = test_node(3_000).await;
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
}
