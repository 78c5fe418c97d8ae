//! Media repository metadata: which content hash a media id points at, and the cached
//! thumbnails of each media item.

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// One media item. `sha256` is `None` while an async upload (`/create`) is pending.
#[derive(Clone, Debug)]
pub struct MediaRow {
    /// The id in `mxc://server/<media_id>`.
    pub media_id: String,
    /// Hex sha256 of the bytes on disk, once uploaded.
    pub sha256: Option<String>,
    /// Content type given at upload (already sanitised).
    pub content_type: Option<String>,
    /// File name given at upload.
    pub filename: Option<String>,
    /// Size in bytes, once uploaded.
    pub size: Option<i64>,
    /// Who created the id.
    pub uploader: String,
    /// When the id was created.
    pub created_ts: i64,
    /// For pending uploads: when the reserved id lapses.
    pub unused_expires_ts: Option<i64>,
}

/// The content of an upload, for [`insert_media`] and [`complete_media`].
#[derive(Clone, Debug)]
pub struct MediaContent<'a> {
    /// Hex sha256 of the bytes.
    pub sha256: &'a str,
    /// Sanitised content type.
    pub content_type: &'a str,
    /// Optional file name.
    pub filename: Option<&'a str>,
    /// Size in bytes.
    pub size: i64,
}

/// Record a finished upload under a new media id.
pub fn insert_media(
    c: &Connection,
    media_id: &str,
    uploader: &str,
    content: &MediaContent<'_>,
    now: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO media (media_id, sha256, content_type, filename, size, uploader, created_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            media_id,
            content.sha256,
            content.content_type,
            content.filename,
            content.size,
            uploader,
            now
        ],
    )?;
    Ok(())
}

/// Reserve a media id for a later upload (`POST /create`).
pub fn insert_pending_media(
    c: &Connection,
    media_id: &str,
    uploader: &str,
    now: i64,
    expires: i64,
) -> Result<(), Error> {
    c.execute(
        "INSERT INTO media (media_id, uploader, created_ts, unused_expires_ts)
         VALUES (?1, ?2, ?3, ?4)",
        params![media_id, uploader, now, expires],
    )?;
    Ok(())
}

/// Pending (reserved, not uploaded, not expired) media ids of a user.
pub fn count_pending_media(c: &Connection, uploader: &str, now: i64) -> Result<i64, Error> {
    Ok(c.query_row(
        "SELECT COUNT(*) FROM media
         WHERE uploader = ?1 AND sha256 IS NULL AND unused_expires_ts > ?2",
        params![uploader, now],
        |r| r.get(0),
    )?)
}

/// Fill in a pending media id. Returns false if it was not pending (already uploaded).
pub fn complete_media(
    c: &Connection,
    media_id: &str,
    content: &MediaContent<'_>,
) -> Result<bool, Error> {
    let n = c.execute(
        "UPDATE media SET sha256 = ?2, content_type = ?3, filename = ?4, size = ?5,
             unused_expires_ts = NULL
         WHERE media_id = ?1 AND sha256 IS NULL",
        params![
            media_id,
            content.sha256,
            content.content_type,
            content.filename,
            content.size
        ],
    )?;
    Ok(n == 1)
}

/// Look a media id up.
pub fn get_media(c: &Connection, media_id: &str) -> Result<Option<MediaRow>, Error> {
    Ok(c.query_row(
        "SELECT media_id, sha256, content_type, filename, size, uploader, created_ts,
                unused_expires_ts
         FROM media WHERE media_id = ?1",
        params![media_id],
        |r| {
            Ok(MediaRow {
                media_id: r.get(0)?,
                sha256: r.get(1)?,
                content_type: r.get(2)?,
                filename: r.get(3)?,
                size: r.get(4)?,
                uploader: r.get(5)?,
                created_ts: r.get(6)?,
                unused_expires_ts: r.get(7)?,
            })
        },
    )
    .optional()?)
}

/// A cached thumbnail.
#[derive(Clone, Debug)]
pub struct ThumbnailRow {
    /// Hex sha256 of the thumbnail bytes on disk.
    pub sha256: String,
    /// `image/png` or `image/jpeg`.
    pub content_type: String,
    /// Size in bytes.
    pub size: i64,
}

/// The cached thumbnail of a media item at one size and method.
pub fn get_thumbnail(
    c: &Connection,
    media_id: &str,
    width: u32,
    height: u32,
    method: &str,
) -> Result<Option<ThumbnailRow>, Error> {
    Ok(c.query_row(
        "SELECT sha256, content_type, size FROM media_thumbnails
         WHERE media_id = ?1 AND width = ?2 AND height = ?3 AND method = ?4",
        params![media_id, width, height, method],
        |r| {
            Ok(ThumbnailRow {
                sha256: r.get(0)?,
                content_type: r.get(1)?,
                size: r.get(2)?,
            })
        },
    )
    .optional()?)
}

/// Remember a generated thumbnail. A concurrent request that generated the same one
/// first wins; both produced identical bytes.
pub fn insert_thumbnail(
    c: &Connection,
    media_id: &str,
    width: u32,
    height: u32,
    method: &str,
    thumb: &ThumbnailRow,
) -> Result<(), Error> {
    c.execute(
        "INSERT OR IGNORE INTO media_thumbnails
             (media_id, width, height, method, sha256, content_type, size)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
        params![
            media_id,
            width,
            height,
            method,
            thumb.sha256,
            thumb.content_type,
            thumb.size
        ],
    )?;
    Ok(())
}

/// A cached copy of another server's media item.
#[derive(Clone, Debug)]
pub struct RemoteMediaRow {
    /// The server in `mxc://<origin>/<media_id>`.
    pub origin: String,
    /// The media id.
    pub media_id: String,
    /// Hex sha256 of the bytes on disk.
    pub sha256: String,
    /// Content type the origin gave (sanitised).
    pub content_type: String,
    /// File name the origin gave, if any.
    pub filename: Option<String>,
    /// Size in bytes.
    pub size: i64,
    /// Last time a client read it (only rewritten when older than a minute).
    pub last_access_ts: i64,
}

/// Look a cached remote media item up.
pub fn get_remote_media(
    c: &Connection,
    origin: &str,
    media_id: &str,
) -> Result<Option<RemoteMediaRow>, Error> {
    Ok(c.query_row(
        "SELECT origin, media_id, sha256, content_type, filename, size, last_access_ts
         FROM remote_media WHERE origin = ?1 AND media_id = ?2",
        params![origin, media_id],
        |r| {
            Ok(RemoteMediaRow {
                origin: r.get(0)?,
                media_id: r.get(1)?,
                sha256: r.get(2)?,
                content_type: r.get(3)?,
                filename: r.get(4)?,
                size: r.get(5)?,
                last_access_ts: r.get(6)?,
            })
        },
    )
    .optional()?)
}

/// Remember a fetched remote media item (replacing an older copy of it).
pub fn insert_remote_media(c: &Connection, row: &RemoteMediaRow, now: i64) -> Result<(), Error> {
    c.execute(
        "INSERT INTO remote_media
             (origin, media_id, sha256, content_type, filename, size, created_ts, last_access_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
         ON CONFLICT (origin, media_id) DO UPDATE SET sha256 = excluded.sha256,
             content_type = excluded.content_type, filename = excluded.filename,
             size = excluded.size, last_access_ts = excluded.last_access_ts",
        params![
            row.origin,
            row.media_id,
            row.sha256,
            row.content_type,
            row.filename,
            row.size,
            now,
            row.last_access_ts
        ],
    )?;
    Ok(())
}

/// Note that a cached remote media item was read now.
pub fn touch_remote_media(
    c: &Connection,
    origin: &str,
    media_id: &str,
    now: i64,
) -> Result<(), Error> {
    c.execute(
        "UPDATE remote_media SET last_access_ts = ?3 WHERE origin = ?1 AND media_id = ?2",
        params![origin, media_id, now],
    )?;
    Ok(())
}

/// The cached thumbnail of a remote media item at one size and method.
pub fn get_remote_thumbnail(
    c: &Connection,
    (origin, media_id): (&str, &str),
    width: u32,
    height: u32,
    method: &str,
) -> Result<Option<ThumbnailRow>, Error> {
    Ok(c.query_row(
        "SELECT sha256, content_type, size FROM remote_media_thumbnails
         WHERE origin = ?1 AND media_id = ?2 AND width = ?3 AND height = ?4 AND method = ?5",
        params![origin, media_id, width, height, method],
        |r| {
            Ok(ThumbnailRow {
                sha256: r.get(0)?,
                content_type: r.get(1)?,
                size: r.get(2)?,
            })
        },
    )
    .optional()?)
}

/// Remember a thumbnail made from a cached remote original. Returns false when the
/// original is no longer cached (evicted meanwhile): nothing is stored then.
pub fn insert_remote_thumbnail(
    c: &Connection,
    (origin, media_id): (&str, &str),
    width: u32,
    height: u32,
    method: &str,
    thumb: &ThumbnailRow,
) -> Result<bool, Error> {
    let n = c.execute(
        "INSERT OR IGNORE INTO remote_media_thumbnails
             (origin, media_id, width, height, method, sha256, content_type, size)
         SELECT ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8
         WHERE EXISTS (SELECT 1 FROM remote_media WHERE origin = ?1 AND media_id = ?2)",
        params![
            origin,
            media_id,
            width,
            height,
            method,
            thumb.sha256,
            thumb.content_type,
            thumb.size
        ],
    )?;
    Ok(n == 1 || get_remote_thumbnail(c, (origin, media_id), width, height, method)?.is_some())
}

/// Bytes the remote media cache holds: originals and their thumbnails.
pub fn remote_media_total(c: &Connection) -> Result<i64, Error> {
    Ok(c.query_row(
        "SELECT (SELECT COALESCE(SUM(size), 0) FROM remote_media)
              + (SELECT COALESCE(SUM(size), 0) FROM remote_media_thumbnails)",
        [],
        |r| r.get(0),
    )?)
}

/// Whether any media row (local or remote, original or thumbnail) uses this content.
pub fn content_referenced(c: &Connection, sha256: &str) -> Result<bool, Error> {
    Ok(c.query_row(
        "SELECT EXISTS (SELECT 1 FROM media WHERE sha256 = ?1)
             OR EXISTS (SELECT 1 FROM media_thumbnails WHERE sha256 = ?1)
             OR EXISTS (SELECT 1 FROM remote_media WHERE sha256 = ?1)
             OR EXISTS (SELECT 1 FROM remote_media_thumbnails WHERE sha256 = ?1)",
        params![sha256],
        |r| r.get(0),
    )?)
}

/// Evict least recently used remote media (with their thumbnails) until the cache holds
/// at most `cap` bytes. Local media is never touched. Returns the content hashes no row
/// uses any more, for the caller to remove from disk, and how many items went.
pub fn evict_remote_media(c: &Connection, cap: i64) -> Result<(Vec<String>, usize), Error> {
    let mut total = remote_media_total(c)?;
    let mut freed = Vec::new();
    let mut evicted = 0;
    while total > cap {
        let victim: Option<(String, String, String, i64)> = c
            .query_row(
                "SELECT origin, media_id, sha256, size FROM remote_media
                 ORDER BY last_access_ts, created_ts LIMIT 1",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()?;
        let Some((origin, media_id, sha256, size)) = victim else {
            break;
        };
        let mut st = c.prepare(
            "SELECT sha256, size FROM remote_media_thumbnails WHERE origin = ?1 AND media_id = ?2",
        )?;
        let thumbs = st
            .query_map(params![origin, media_id], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })?
            .collect::<Result<Vec<_>, _>>()?;
        c.execute(
            "DELETE FROM remote_media WHERE origin = ?1 AND media_id = ?2",
            params![origin, media_id],
        )?;
        total -= size;
        freed.push(sha256);
        for (sha, size) in thumbs {
            total -= size;
            freed.push(sha);
        }
        evicted += 1;
    }
    freed.sort();
    freed.dedup();
    let mut unused = Vec::new();
    for sha in freed {
        if !content_referenced(c, &sha)? {
            unused.push(sha);
        }
    }
    Ok((unused, evicted))
}
