//! The content repository: uploads, downloads and thumbnails of `mxc://` media.
//!
//! Bytes live on disk by sha256 ([`MediaStore`]); the `media` table maps media ids to
//! hashes. Media ids are random and checked against `[A-Za-z0-9_-]+` before anything
//! else happens, and disk paths are built only from hashes, so no request can name a
//! file outside the store.
//!
//! Media of other nodes (`mxc://<other server>/…`) is fetched from its origin over the
//! federation media API, kept in a bounded least-recently-used cache and served from it
//! afterwards ([`remote`]); media referenced by events arriving from other nodes is
//! prefetched within a budget, so it outlives its sender's device. Thumbnails of remote
//! media are made here from the cached original (the origin's thumbnails are not asked
//! for): one fetch serves every size, and thumbnails keep working once the origin is
//! gone. The federation endpoints serve only this node's own media
//! ([`multipart`] is their response format).

pub mod multipart;
pub mod preview;
pub mod remote;
mod store;
mod thumbnail;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

pub use remote::RemoteMedia;
pub use store::{MediaStore, Stored};
pub use thumbnail::Method;

use crate::error::Error;
use crate::server::Server;
use crate::storage::{self, MediaContent, MediaRow, ThumbnailRow, now_ms};

/// Length of the media ids we mint.
const MEDIA_ID_LEN: usize = 24;
/// Longest media id accepted in a request.
const MAX_MEDIA_ID_LEN: usize = 255;
/// How long a media id reserved with `/create` stays valid (the spec's 24 h).
const UNUSED_EXPIRY_MS: i64 = 24 * 60 * 60 * 1000;
/// Reserved, not yet uploaded ids a user may hold at once.
const MAX_PENDING_PER_USER: i64 = 20;
/// Longest a download waits for a pending upload (the spec's default is 20 s).
const MAX_WAIT: Duration = Duration::from_secs(20);
/// Pause between two looks at a pending upload.
const PENDING_POLL: Duration = Duration::from_millis(200);
/// Largest file we decode for a thumbnail.
const MAX_THUMBNAIL_SOURCE_BYTES: i64 = 32 * 1024 * 1024;
/// Longest file name kept.
const MAX_FILENAME_LEN: usize = 255;

/// Content types a browser may render inline from us. Everything else (HTML, SVG, PDF,
/// JavaScript, …) is served as an attachment so it can never run in our origin.
const INLINE_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

/// Fallback content type for anything unnamed or malformed.
pub const OCTET_STREAM: &str = "application/octet-stream";

/// What a download or thumbnail request gets: an open file and how to present it.
#[derive(Debug)]
pub struct Download {
    /// The bytes.
    pub file: tokio::fs::File,
    /// Size in bytes.
    pub size: u64,
    /// Content type to send (sanitised).
    pub content_type: String,
    /// File name for `Content-Disposition`, if any.
    pub filename: Option<String>,
    /// Whether the content may be shown inline.
    pub inline: bool,
}

/// Check a media id from a request: `[A-Za-z0-9_-]{1,255}`. Anything else cannot be one
/// of ours, and is refused before it gets near the disk or the database.
pub fn validate_media_id(media_id: &str) -> Result<(), Error> {
    let ok = !media_id.is_empty()
        && media_id.len() <= MAX_MEDIA_ID_LEN
        && media_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidParam("invalid media id".into()))
    }
}

/// A content type safe to store and send back: `type/subtype` of token characters plus
/// optional parameters, printable ASCII only; anything else becomes octet-stream.
pub fn sanitise_content_type(declared: Option<&str>) -> String {
    let Some(ct) = declared.map(str::trim).filter(|c| !c.is_empty()) else {
        return OCTET_STREAM.to_owned();
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let well_formed = ct.len() <= 255
        && ct.bytes().all(|b| (0x20..0x7f).contains(&b))
        && essence
            .split_once('/')
            .is_some_and(|(t, s)| token(t) && token(s));
    if well_formed {
        ct.to_owned()
    } else {
        OCTET_STREAM.to_owned()
    }
}

/// Whether content of this (sanitised) type may be displayed inline.
pub fn inline_allowed(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// A file name fit to store: no control characters, bounded length; empty means none.
pub fn sanitise_filename(name: Option<&str>) -> Option<String> {
    let clean: String = name?
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_FILENAME_LEN)
        .collect();
    (!clean.trim().is_empty()).then_some(clean)
}

/// RFC 6266/8187 `Content-Disposition`: a plain ASCII `filename` for old agents and
/// `filename*` with the exact (percent-encoded UTF-8) name.
pub fn content_disposition(inline: bool, filename: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let Some(name) = filename else {
        return kind.to_owned();
    };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " ._-()".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    let mut encoded = String::new();
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    format!("{kind}; filename=\"{ascii}\"; filename*=utf-8''{encoded}")
}

fn mxc(server: &Server, media_id: &str) -> String {
    format!("mxc://{}/{media_id}", server.server_name())
}

/// Media ids uploaded to or waited for here are our own; a foreign server name is "not
/// found" (remote media is fetched by [`download`] and [`thumbnail`] only).
fn check_local(server: &Server, server_name: &str, media_id: &str) -> Result<(), Error> {
    validate_media_id(media_id)?;
    if server_name != server.server_name() {
        return Err(Error::NotFound("remote media is not available".into()));
    }
    Ok(())
}

/// `POST /upload`: store the body and mint a media id. Returns the `mxc://` URI.
pub async fn upload<S, E>(
    server: &Server,
    uploader: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    body: S,
) -> Result<String, Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    let stored = server
        .media
        .write_stream(body, server.config.max_upload_bytes)
        .await?;
    let content_type = sanitise_content_type(content_type);
    let filename = sanitise_filename(filename);
    let media_id = crate::rooms::random_string(MEDIA_ID_LEN);
    let content = media_content(&stored, &content_type, filename.as_deref());
    server
        .db
        .write(|tx| storage::insert_media(tx, &media_id, uploader, &content, now_ms()))?;
    Ok(mxc(server, &media_id))
}

/// Store `bytes` as this node's media on behalf of `uploader` (URL preview images).
/// Returns the `mxc://` URI.
pub async fn store_bytes(
    server: &Server,
    uploader: &str,
    content_type: &str,
    bytes: &[u8],
) -> Result<String, Error> {
    let stored = server.media.write_bytes(bytes).await?;
    let content_type = sanitise_content_type(Some(content_type));
    let media_id = crate::rooms::random_string(MEDIA_ID_LEN);
    let content = media_content(&stored, &content_type, None);
    server
        .db
        .write(|tx| storage::insert_media(tx, &media_id, uploader, &content, now_ms()))?;
    Ok(mxc(server, &media_id))
}

fn media_content<'a>(
    stored: &'a Stored,
    content_type: &'a str,
    filename: Option<&'a str>,
) -> MediaContent<'a> {
    MediaContent {
        sha256: &stored.sha256,
        content_type,
        filename,
        size: stored.size as i64,
    }
}

/// `POST /create`: reserve a media id for a later upload. Returns the URI and when it
/// expires unused.
pub fn create(server: &Server, uploader: &str) -> Result<(String, i64), Error> {
    let media_id = crate::rooms::random_string(MEDIA_ID_LEN);
    let now = now_ms();
    let expires = now + UNUSED_EXPIRY_MS;
    server.db.write(|tx| {
        if storage::count_pending_media(tx, uploader, now)? >= MAX_PENDING_PER_USER {
            return Err(Error::LimitExceeded(
                "too many pending media uploads; finish some first".into(),
            ));
        }
        storage::insert_pending_media(tx, &media_id, uploader, now, expires)
    })?;
    Ok((mxc(server, &media_id), expires))
}

/// Whether `row` can receive content from `uploader` now.
fn check_pending(row: Option<&MediaRow>, uploader: &str) -> Result<(), Error> {
    let row = row.ok_or_else(|| Error::NotFound("unknown media id".into()))?;
    if row.uploader != uploader {
        return Err(Error::Forbidden(
            "this media id was created by another user".into(),
        ));
    }
    if row.sha256.is_some() {
        return Err(Error::CannotOverwriteMedia("media already uploaded".into()));
    }
    if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
        return Err(Error::NotFound("this media id has expired".into()));
    }
    Ok(())
}

/// `PUT /upload/{serverName}/{mediaId}`: fill in a media id reserved with [`create`].
#[allow(clippy::too_many_arguments)]
pub async fn upload_to<S, E>(
    server: &Server,
    uploader: &str,
    server_name: &str,
    media_id: &str,
    content_type: Option<&str>,
    filename: Option<&str>,
    body: S,
) -> Result<(), Error>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    check_local(server, server_name, media_id)?;
    // Check before reading the body, so a refused upload costs no disk.
    let row = server.db.read(|c| storage::get_media(c, media_id))?;
    check_pending(row.as_ref(), uploader)?;
    let stored = server
        .media
        .write_stream(body, server.config.max_upload_bytes)
        .await?;
    let content_type = sanitise_content_type(content_type);
    let filename = sanitise_filename(filename);
    let content = media_content(&stored, &content_type, filename.as_deref());
    server.db.write(|tx| {
        if storage::complete_media(tx, media_id, &content)? {
            Ok(())
        } else {
            Err(Error::CannotOverwriteMedia("media already uploaded".into()))
        }
    })
}

/// The uploaded row for a media id, waiting up to `timeout` for a pending upload.
async fn uploaded_row(
    server: &Server,
    server_name: &str,
    media_id: &str,
    timeout: Duration,
) -> Result<MediaRow, Error> {
    check_local(server, server_name, media_id)?;
    let deadline = tokio::time::Instant::now() + timeout.min(MAX_WAIT);
    loop {
        let row = server
            .db
            .read(|c| storage::get_media(c, media_id))?
            .filter(|r| r.sha256.is_some() || r.unused_expires_ts.is_some_and(|t| t > now_ms()))
            .ok_or_else(|| Error::NotFound("media not found".into()))?;
        if row.sha256.is_some() {
            return Ok(row);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(Error::NotYetUploaded(
                "the media has not been uploaded yet".into(),
            ));
        }
        tokio::time::sleep(PENDING_POLL).await;
    }
}

/// Whether a download names another server's media, which may be fetched: checks the
/// media id first, then the server name (`allow_remote = false` or a name that cannot be
/// a node: 404).
fn remote_origin(
    server: &Server,
    server_name: &str,
    media_id: &str,
    allow_remote: bool,
) -> Result<bool, Error> {
    validate_media_id(media_id)?;
    if server_name == server.server_name() {
        return Ok(false);
    }
    if !allow_remote {
        return Err(Error::NotFound(
            "remote media was not asked for (allow_remote=false)".into(),
        ));
    }
    if !remote::is_remote_server(server, server_name) {
        return Err(Error::NotFound(format!(
            "{server_name:?} is not a server this node can reach"
        )));
    }
    Ok(true)
}

/// `GET /download`: open the content of a media id, fetching another server's media
/// into the cache first when `allow_remote`.
pub async fn download(
    server: &Arc<Server>,
    server_name: &str,
    media_id: &str,
    timeout: Duration,
    allow_remote: bool,
) -> Result<Download, Error> {
    if remote_origin(server, server_name, media_id, allow_remote)? {
        let (row, file, size) =
            remote::original(server, server_name, media_id, timeout.min(MAX_WAIT)).await?;
        return Ok(Download {
            file,
            size,
            inline: inline_allowed(&row.content_type),
            content_type: row.content_type,
            filename: row.filename,
        });
    }
    let row = uploaded_row(server, server_name, media_id, timeout).await?;
    let sha256 = row.sha256.as_deref().unwrap_or_default();
    let (file, size) = server.media.open_content(sha256).await?;
    let content_type = sanitise_content_type(row.content_type.as_deref());
    Ok(Download {
        file,
        size,
        inline: inline_allowed(&content_type),
        content_type,
        filename: row.filename,
    })
}

/// `GET /thumbnail`: a (cached) thumbnail of an image, snapped to a preset size. For
/// another server's media it is made here from the cached original.
pub async fn thumbnail(
    server: &Arc<Server>,
    server_name: &str,
    media_id: &str,
    (width, height): (u32, u32),
    method: Method,
    timeout: Duration,
    allow_remote: bool,
) -> Result<Download, Error> {
    if width == 0 || height == 0 {
        return Err(Error::InvalidParam(
            "width and height must be positive".into(),
        ));
    }
    let (w, h) = thumbnail::snap(width, height, method);
    let (thumb, file, size) = if remote_origin(server, server_name, media_id, allow_remote)? {
        remote_thumbnail(server, (server_name, media_id), (w, h), method, timeout).await?
    } else {
        let row = uploaded_row(server, server_name, media_id, timeout).await?;
        let cached = server
            .db
            .read(|c| storage::get_thumbnail(c, media_id, w, h, method.as_str()))?;
        let thumb = match cached {
            Some(t) => t,
            None => {
                let sha256 = row.sha256.as_deref().unwrap_or_default();
                let (thumb, stored) =
                    generate_thumbnail(server, sha256, row.size.unwrap_or(0), (w, h), method)
                        .await?;
                server.db.write(|tx| {
                    storage::insert_thumbnail(tx, media_id, w, h, method.as_str(), &thumb)
                })?;
                drop(stored);
                thumb
            }
        };
        let (file, size) = server.media.open_content(&thumb.sha256).await?;
        (thumb, file, size)
    };
    let ext = if thumb.content_type == "image/jpeg" {
        "jpg"
    } else {
        "png"
    };
    Ok(Download {
        file,
        size,
        content_type: thumb.content_type,
        filename: Some(format!("thumbnail.{ext}")),
        inline: true,
    })
}

/// A thumbnail of a remote item, from the cache or made from its (fetched) original.
async fn remote_thumbnail(
    server: &Arc<Server>,
    (origin, media_id): (&str, &str),
    (w, h): (u32, u32),
    method: Method,
    timeout: Duration,
) -> Result<(ThumbnailRow, tokio::fs::File, u64), Error> {
    let (row, file, _) = remote::original(server, origin, media_id, timeout.min(MAX_WAIT)).await?;
    drop(file);
    let key = (origin, media_id);
    if let Some(t) = server
        .db
        .read(|c| storage::get_remote_thumbnail(c, key, w, h, method.as_str()))?
        && let Ok((file, size)) = server.media.open_content(&t.sha256).await
    {
        return Ok((t, file, size));
    }
    let (thumb, stored) = generate_thumbnail(server, &row.sha256, row.size, (w, h), method).await?;
    let kept = server
        .db
        .write(|tx| storage::insert_remote_thumbnail(tx, key, w, h, method.as_str(), &thumb))?;
    drop(stored);
    if !kept {
        // The original was evicted meanwhile (a cache far too small for its traffic):
        // keep nothing of it; the client may ask again.
        remote::remove_if_unused(server, &thumb.sha256).await?;
        return Err(Error::NotYetUploaded(
            "the remote media was evicted while thumbnailing; try again".into(),
        ));
    }
    // Open before eviction runs, so an open file is served whatever it removes.
    let (file, size) = server.media.open_content(&thumb.sha256).await?;
    remote::enforce_cap(server).await?;
    Ok((thumb, file, size))
}

/// Render a thumbnail of stored content and store it. The returned [`Stored`] must live
/// until the row naming the thumbnail is written.
async fn generate_thumbnail(
    server: &Server,
    sha256: &str,
    size: i64,
    (w, h): (u32, u32),
    method: Method,
) -> Result<(ThumbnailRow, Stored), Error> {
    if size > MAX_THUMBNAIL_SOURCE_BYTES {
        return Err(Error::TooLarge(
            "the content is too large to thumbnail".into(),
        ));
    }
    let _permit = server
        .media
        .thumbnail_permits
        .acquire()
        .await
        .map_err(Error::internal)?;
    let source = server.media.read_content(sha256).await?;
    let rendered = tokio::task::spawn_blocking(move || thumbnail::render(&source, w, h, method))
        .await
        .map_err(Error::internal)??;
    let stored = server.media.write_bytes(&rendered.bytes).await?;
    let thumb = ThumbnailRow {
        sha256: stored.sha256.clone(),
        content_type: rendered.content_type.to_owned(),
        size: stored.size as i64,
    };
    Ok((thumb, stored))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_ids_are_strict() {
        assert!(validate_media_id("abcXYZ019_-").is_ok());
        for bad in [
            "",
            "..",
            "a/b",
            "a%2Fb",
            "a.b",
            "a b",
            "ü",
            &"a".repeat(256),
        ] {
            assert!(validate_media_id(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn content_types_are_sanitised() {
        assert_eq!(sanitise_content_type(Some("image/png")), "image/png");
        assert_eq!(
            sanitise_content_type(Some("text/plain; charset=utf-8")),
            "text/plain; charset=utf-8"
        );
        assert_eq!(sanitise_content_type(None), OCTET_STREAM);
        assert_eq!(sanitise_content_type(Some("nonsense")), OCTET_STREAM);
        assert_eq!(
            sanitise_content_type(Some("text/html\r\nX: y")),
            OCTET_STREAM
        );
        assert_eq!(sanitise_content_type(Some("a b/c")), OCTET_STREAM);
    }

    #[test]
    fn only_passive_types_are_inline() {
        assert!(inline_allowed("image/png"));
        assert!(inline_allowed("TEXT/PLAIN; charset=utf-8"));
        for active in [
            "text/html",
            "image/svg+xml",
            "application/pdf",
            "text/javascript",
        ] {
            assert!(!inline_allowed(active), "{active}");
        }
    }

    #[test]
    fn dispositions_are_quoted_safely() {
        assert_eq!(content_disposition(true, None), "inline");
        assert_eq!(
            content_disposition(false, Some("a \"b\";c.html")),
            "attachment; filename=\"a _b__c.html\"; filename*=utf-8''a%20%22b%22%3Bc.html"
        );
        assert_eq!(
            content_disposition(true, Some("ü.png")),
            "inline; filename=\"_.png\"; filename*=utf-8''%C3%BC.png"
        );
    }

    #[test]
    fn filenames_lose_control_characters() {
        assert_eq!(
            sanitise_filename(Some("a\nb.txt")).as_deref(),
            Some("ab.txt")
        );
        assert_eq!(sanitise_filename(Some("  ")), None);
        assert_eq!(sanitise_filename(None), None);
    }
}
