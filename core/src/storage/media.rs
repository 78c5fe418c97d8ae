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
