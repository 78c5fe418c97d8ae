//! Media bytes on disk, addressed by their sha256.
//!
//! Layout: `<media>/ab/cd/abcdef…` (two levels of sharding keep directories small), and
//! `<media>/tmp/` for uploads in flight. A file is written to `tmp/`, fsynced, then
//! renamed into place, so a content path either holds the complete bytes or does not
//! exist. Paths are built only from hex hashes we computed, never from client input.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::error::{Error, StartError};

/// Bytes stored by [`MediaStore::write_stream`] / [`MediaStore::write_bytes`].
///
/// While it is alive it holds a share of the store's collection lock, so eviction cannot
/// remove the file between its commit and the database row that names it: keep it until
/// that row is written.
#[derive(Clone, Debug)]
pub struct Stored {
    /// Lowercase hex sha256.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
    /// Keeps eviction from removing these bytes until the row naming them is written.
    _hold: Arc<tokio::sync::OwnedRwLockReadGuard<()>>,
}

/// The on-disk content store.
#[derive(Debug)]
pub struct MediaStore {
    root: PathBuf,
    /// Thumbnailing is CPU- and memory-heavy; at most this many run at once.
    pub(super) thumbnail_permits: tokio::sync::Semaphore,
    /// Writers hold it shared from a file's commit until their row is written; eviction
    /// holds it exclusively while it decides which files no row uses and removes them.
    collect: Arc<tokio::sync::RwLock<()>>,
}

/// Removes a temporary file when dropped, unless it was moved into place.
struct TempFile {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

fn is_hex_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl MediaStore {
    /// Open (creating) the store under `root`, discarding uploads a crash left behind.
    pub fn open(root: &Path) -> Result<MediaStore, StartError> {
        let tmp = root.join("tmp");
        let err = |e: std::io::Error| {
            StartError::Other(format!(
                "cannot prepare media directory {}: {e}",
                tmp.display()
            ))
        };
        std::fs::create_dir_all(&tmp).map_err(err)?;
        for entry in std::fs::read_dir(&tmp).map_err(err)?.flatten() {
            let _ = std::fs::remove_file(entry.path());
        }
        Ok(MediaStore {
            root: root.to_path_buf(),
            thumbnail_permits: tokio::sync::Semaphore::new(2),
            collect: Arc::default(),
        })
    }

    /// Where the bytes with this hash live.
    fn content_path(&self, sha256: &str) -> Result<PathBuf, Error> {
        // The hash comes from our own database, but a path is only ever built from
        // something that cannot contain a separator or `..`.
        if !is_hex_sha256(sha256) {
            return Err(Error::internal(format!("bad content hash {sha256:?}")));
        }
        Ok(self
            .root
            .join(&sha256[..2])
            .join(&sha256[2..4])
            .join(sha256))
    }

    async fn new_temp(&self) -> Result<(tokio::fs::File, TempFile), Error> {
        let path = self.root.join("tmp").join(crate::rooms::random_string(24));
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
            .map_err(|e| Error::internal(format!("creating {}: {e}", path.display())))?;
        Ok((file, TempFile { path, keep: false }))
    }

    /// Write a stream of chunks to the store, refusing more than `limit` bytes
    /// (413 `M_TOO_LARGE`) without keeping anything of it.
    pub async fn write_stream<S, E>(&self, mut body: S, limit: u64) -> Result<Stored, Error>
    where
        S: Stream<Item = Result<Bytes, E>> + Unpin,
        E: std::fmt::Display,
    {
        let (mut file, temp) = self.new_temp().await?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        while let Some(chunk) = body.next().await {
            let chunk =
                chunk.map_err(|e| Error::BadContent(format!("reading the upload failed: {e}")))?;
            size += chunk.len() as u64;
            if size > limit {
                return Err(Error::TooLarge(format!(
                    "upload exceeds the limit of {limit} bytes"
                )));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(Error::internal)?;
        }
        let sha256 = hex::encode(hasher.finalize());
        let hold = self.commit(file, temp, &sha256).await?;
        Ok(Stored {
            sha256,
            size,
            _hold: hold,
        })
    }

    /// Store bytes already in memory (thumbnails).
    pub async fn write_bytes(&self, bytes: &[u8]) -> Result<Stored, Error> {
        let (mut file, temp) = self.new_temp().await?;
        file.write_all(bytes).await.map_err(Error::internal)?;
        let sha256 = hex::encode(Sha256::digest(bytes));
        let hold = self.commit(file, temp, &sha256).await?;
        Ok(Stored {
            sha256,
            size: bytes.len() as u64,
            _hold: hold,
        })
    }

    /// Make a finished temp file durable and move it to its content path. Returns the
    /// shared collection lock, held until the caller's row names the content.
    async fn commit(
        &self,
        file: tokio::fs::File,
        mut temp: TempFile,
        sha256: &str,
    ) -> Result<Arc<tokio::sync::OwnedRwLockReadGuard<()>>, Error> {
        file.sync_all().await.map_err(Error::internal)?;
        drop(file);
        let hold = Arc::new(self.collect.clone().read_owned().await);
        let dest = self.content_path(sha256)?;
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            // Same hash, same bytes: keep the copy we have (the temp file is dropped).
            return Ok(hold);
        }
        let dir = dest
            .parent()
            .ok_or_else(|| Error::internal("content path has no parent"))?;
        tokio::fs::create_dir_all(dir)
            .await
            .map_err(Error::internal)?;
        tokio::fs::rename(&temp.path, &dest)
            .await
            .map_err(|e| Error::internal(format!("moving upload into place: {e}")))?;
        temp.keep = true;
        // Persist the rename itself before the database row points at the file.
        if let Ok(d) = tokio::fs::File::open(dir).await {
            let _ = d.sync_all().await;
        }
        Ok(hold)
    }

    /// Take the collection lock exclusively: no writer is between committing a file and
    /// writing the row that names it while the guard lives.
    pub async fn lock_for_collection(&self) -> tokio::sync::OwnedRwLockWriteGuard<()> {
        self.collect.clone().write_owned().await
    }

    /// Remove stored bytes no row uses any more (call with
    /// [`lock_for_collection`](Self::lock_for_collection) held). Missing files are fine.
    pub async fn remove_content(&self, sha256: &str) -> Result<(), Error> {
        let path = self.content_path(sha256)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::internal(format!("removing {}: {e}", path.display()))),
        }
    }

    /// Whether the bytes with this hash are on disk.
    pub async fn has_content(&self, sha256: &str) -> bool {
        match self.content_path(sha256) {
            Ok(p) => tokio::fs::try_exists(&p).await.unwrap_or(false),
            Err(_) => false,
        }
    }

    /// Open stored bytes for reading; also returns their size on disk.
    pub async fn open_content(&self, sha256: &str) -> Result<(tokio::fs::File, u64), Error> {
        let path = self.content_path(sha256)?;
        let missing =
            |e: std::io::Error| Error::internal(format!("media file {}: {e}", path.display()));
        let file = tokio::fs::File::open(&path).await.map_err(missing)?;
        let size = file.metadata().await.map_err(missing)?.len();
        Ok((file, size))
    }

    /// Read stored bytes into memory (for thumbnailing; callers bound the size first).
    pub async fn read_content(&self, sha256: &str) -> Result<Vec<u8>, Error> {
        let path = self.content_path(sha256)?;
        tokio::fs::read(&path)
            .await
            .map_err(|e| Error::internal(format!("media file {} missing: {e}", path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(parts: &[&'static [u8]]) -> impl Stream<Item = Result<Bytes, String>> + Unpin {
        futures::stream::iter(
            parts
                .iter()
                .map(|p| Ok(Bytes::from_static(p)))
                .collect::<Vec<_>>(),
        )
    }

    fn tmp_is_empty(root: &Path) -> bool {
        std::fs::read_dir(root.join("tmp"))
            .map(|mut d| d.next().is_none())
            .unwrap_or(false)
    }

    #[tokio::test]
    async fn stream_is_stored_by_hash_and_deduplicated() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MediaStore::open(dir.path()).expect("open");
        let a = store
            .write_stream(chunks(&[b"hello ", b"world"]), 100)
            .await
            .expect("write");
        assert_eq!(a.size, 11);
        assert_eq!(
            a.sha256,
            "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
        );
        let b = store.write_bytes(b"hello world").await.expect("again");
        assert_eq!(a.sha256, b.sha256);
        let back = store.read_content(&a.sha256).await.expect("read");
        assert_eq!(back, b"hello world");
        assert!(dir.path().join("b9/4d").join(&a.sha256).is_file());
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn oversized_stream_leaves_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MediaStore::open(dir.path()).expect("open");
        let err = store
            .write_stream(chunks(&[b"0123456789", b"0123456789"]), 15)
            .await
            .expect_err("too large");
        assert!(matches!(err, Error::TooLarge(_)), "{err:?}");
        assert!(tmp_is_empty(dir.path()));
    }

    #[tokio::test]
    async fn non_hash_paths_are_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = MediaStore::open(dir.path()).expect("open");
        assert!(store.read_content("../../etc/passwd").await.is_err());
        assert!(store.read_content(&"A".repeat(64)).await.is_err());
    }
}
