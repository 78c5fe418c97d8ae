//! The `multipart/mixed` body of the federation media endpoints (spec v1.11,
//! `/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`): exactly two parts,
//! JSON metadata (`{}` today) and then either the bytes, with their `Content-Type` and
//! `Content-Disposition`, or a `Location` header naming where the bytes are.
//!
//! Writing is split in a head and a tail around the content, so the content can be
//! streamed from disk. Parsing works on a body already in memory (the transport bounds
//! it), looks at a bounded number of header bytes, and never panics on what a peer sent.

use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};

/// Longest boundary RFC 2046 allows.
const MAX_BOUNDARY_LEN: usize = 70;
/// Most header bytes read for one part.
const MAX_PART_HEADER_BYTES: usize = 8 * 1024;

/// A boundary for a response: random, so it cannot occur in content by accident.
pub fn new_boundary() -> String {
    crate::rooms::random_string(32)
}

/// The `Content-Type` of a response with this boundary.
pub fn content_type(boundary: &str) -> String {
    format!("multipart/mixed; boundary={boundary}")
}

/// Everything before the content: the metadata part and the content part's headers.
pub fn head(boundary: &str, content_type: &str, content_disposition: &str) -> String {
    format!(
        "--{boundary}\r\nContent-Type: application/json\r\n\r\n{{}}\r\n\
         --{boundary}\r\nContent-Type: {content_type}\r\n\
         Content-Disposition: {content_disposition}\r\n\r\n"
    )
}

/// Everything after the content.
pub fn tail(boundary: &str) -> String {
    format!("\r\n--{boundary}--\r\n")
}

/// The media part of a parsed response.
#[derive(Debug, PartialEq, Eq)]
pub enum MediaPart<'a> {
    /// The bytes themselves.
    Content {
        /// The part's `Content-Type`, if given.
        content_type: Option<String>,
        /// The part's `Content-Disposition`, if given.
        content_disposition: Option<String>,
        /// The bytes.
        body: &'a [u8],
    },
    /// The bytes are elsewhere (the spec's redirect).
    Location(String),
}

/// The `boundary` parameter of a `multipart/mixed` content type.
pub fn boundary_of(content_type: &str) -> Result<String, String> {
    let mut params = content_type.split(';');
    let essence = params.next().unwrap_or_default().trim();
    if !essence.eq_ignore_ascii_case("multipart/mixed") {
        return Err(format!("expected multipart/mixed, got {essence:?}"));
    }
    for p in params {
        let Some((name, value)) = p.split_once('=') else {
            continue;
        };
        if name.trim().eq_ignore_ascii_case("boundary") {
            let value = value.trim();
            let value = value
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(value);
            if value.is_empty()
                || value.len() > MAX_BOUNDARY_LEN
                || !value.bytes().all(|b| (0x20..0x7f).contains(&b))
            {
                return Err("invalid multipart boundary".into());
            }
            return Ok(value.to_owned());
        }
    }
    Err("multipart/mixed without a boundary".into())
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|i| i + from)
}

/// One part's headers (names lower-cased).
type Headers = Vec<(String, String)>;

/// What precedes the content: the media part's headers, or its redirect.
#[derive(Debug, PartialEq, Eq)]
pub enum Head {
    /// The bytes follow, starting at `offset` of the buffer given to [`parse_head`].
    Content {
        /// The part's `Content-Type`, if given.
        content_type: Option<String>,
        /// The part's `Content-Disposition`, if given.
        content_disposition: Option<String>,
        /// Where the content starts.
        offset: usize,
    },
    /// The bytes are elsewhere.
    Location(String),
}

/// Most bytes before the content: the metadata part and the media part's headers.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The opening delimiter and the one that ends each part (`CRLF--boundary`).
fn delimiters(boundary: &str) -> (String, String) {
    (format!("--{boundary}"), format!("\r\n--{boundary}"))
}

/// Skip a delimiter's transport padding and CRLF from `pos` (just after `--boundary`):
/// where the part starts, `None` when more bytes are needed.
fn after_delimiter(buf: &[u8], pos: usize) -> Result<Option<usize>, String> {
    let Some(line_end) = find(buf, b"\r\n", pos) else {
        return Ok(None);
    };
    if !buf[pos..line_end].iter().all(|b| *b == b' ' || *b == b'\t') {
        return Err("garbage after a multipart boundary".into());
    }
    Ok(Some(line_end + 2))
}

/// Headers from `raw` (a part's start): the headers and where its body starts, `None`
/// when more bytes are needed.
fn part_headers(raw: &[u8]) -> Result<Option<(Headers, usize)>, String> {
    let (head, body_start) = if raw.starts_with(b"\r\n") {
        (&raw[..0], 2)
    } else if let Some(end) = find(raw, b"\r\n\r\n", 0) {
        (&raw[..end], end + 4)
    } else if raw.len() > MAX_PART_HEADER_BYTES {
        return Err("multipart part headers are too large".into());
    } else {
        return Ok(None);
    };
    if head.len() > MAX_PART_HEADER_BYTES {
        return Err("multipart part headers are too large".into());
    }
    let head = std::str::from_utf8(head).map_err(|_| "multipart headers are not UTF-8")?;
    let mut headers = Vec::new();
    for line in head.split("\r\n").filter(|l| !l.is_empty()) {
        let (name, value) = line
            .split_once(':')
            .ok_or_else(|| format!("bad multipart header line {line:?}"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    Ok(Some((headers, body_start)))
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Parse what precedes the content of a federation media response from the start of
/// its body: `Ok(None)` while more bytes are needed (the caller reads on, up to
/// [`MAX_HEAD_BYTES`]).
pub fn parse_head(boundary: &str, buf: &[u8]) -> Result<Option<Head>, String> {
    let (delimiter, inner) = delimiters(boundary);
    let more = |buf: &[u8]| {
        if buf.len() >= MAX_HEAD_BYTES {
            Err(format!(
                "no media content within the first {MAX_HEAD_BYTES} bytes"
            ))
        } else {
            Ok(None)
        }
    };
    // The first delimiter opens the body or follows the preamble's CRLF.
    let open = if buf.starts_with(delimiter.as_bytes()) {
        0
    } else if let Some(i) = find(buf, inner.as_bytes(), 0) {
        i + 2
    } else {
        return more(buf);
    };
    let Some(meta_start) = after_delimiter(buf, open + delimiter.len())? else {
        return more(buf);
    };
    let Some(meta_end) = find(buf, inner.as_bytes(), meta_start) else {
        return more(buf);
    };
    let meta = &buf[meta_start..meta_end];
    let (meta_headers, meta_body) = match part_headers(meta)? {
        Some((h, start)) => (h, &meta[start..]),
        None => return Err("the metadata part has no header end".into()),
    };
    let meta_type = header(&meta_headers, "content-type").unwrap_or_default();
    if !meta_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .eq_ignore_ascii_case("application/json")
    {
        return Err(format!(
            "the metadata part is {meta_type:?}, not application/json"
        ));
    }
    if !serde_json::from_slice::<serde_json::Value>(meta_body).is_ok_and(|v| v.is_object()) {
        return Err("the metadata part is not a JSON object".into());
    }
    let second = meta_end + inner.len();
    let Some(rest) = buf.get(second..second + 2) else {
        return more(buf);
    };
    if rest == b"--" {
        return Err("expected two parts (metadata and media)".into());
    }
    let Some(part_start) = after_delimiter(buf, second)? else {
        return more(buf);
    };
    let Some((headers, body_start)) = part_headers(&buf[part_start..])? else {
        return more(buf);
    };
    if let Some(location) = header(&headers, "location") {
        return Ok(Some(Head::Location(location)));
    }
    Ok(Some(Head::Content {
        content_type: header(&headers, "content-type"),
        content_disposition: header(&headers, "content-disposition"),
        offset: part_start + body_start,
    }))
}

/// Parse a whole federation media response body given its `Content-Type` header.
pub fn parse<'a>(content_type: &str, body: &'a [u8]) -> Result<MediaPart<'a>, String> {
    let boundary = boundary_of(content_type)?;
    let head = parse_head(&boundary, body)?.ok_or("truncated multipart body")?;
    let (content_type, content_disposition, offset) = match head {
        Head::Location(l) => return Ok(MediaPart::Location(l)),
        Head::Content {
            content_type,
            content_disposition,
            offset,
        } => (content_type, content_disposition, offset),
    };
    let (_, inner) = delimiters(&boundary);
    let end = find(body, inner.as_bytes(), offset)
        .ok_or("a multipart part is not terminated by its boundary")?;
    let after = &body[end + inner.len()..];
    if !after.starts_with(b"--") {
        return Err("more than two parts".into());
    }
    Ok(MediaPart::Content {
        content_type,
        content_disposition,
        body: &body[offset..end],
    })
}

/// The content of the media part as it arrives: the bytes after the head (`first`,
/// what [`parse_head`] saw past its offset) and then `rest`, up to the closing
/// delimiter. The last `CRLF--boundary` bytes are held back until it is clear they are
/// not the delimiter; a body that ends without one is an error. Nothing after the
/// delimiter is read.
pub fn content<S, E>(
    boundary: &str,
    first: Bytes,
    rest: S,
) -> impl Stream<Item = Result<Bytes, String>> + Send + Unpin + use<S, E>
where
    S: Stream<Item = Result<Bytes, E>> + Send + Unpin + 'static,
    E: std::fmt::Display,
{
    struct State<S> {
        held: BytesMut,
        rest: S,
        inner: Vec<u8>,
        pending_first: bool,
        done: bool,
    }
    let (_, inner) = delimiters(boundary);
    let state = State {
        held: BytesMut::from(&first[..]),
        rest,
        inner: inner.into_bytes(),
        pending_first: true,
        done: false,
    };
    Box::pin(futures::stream::unfold(state, |mut st| async move {
        loop {
            if st.done {
                return None;
            }
            if !st.pending_first {
                match st.rest.next().await {
                    Some(Ok(chunk)) => st.held.extend_from_slice(&chunk),
                    Some(Err(e)) => {
                        st.done = true;
                        return Some((Err(e.to_string()), st));
                    }
                    None => {
                        st.done = true;
                        let e = "the media part ended without its closing boundary".to_owned();
                        return Some((Err(e), st));
                    }
                }
            }
            st.pending_first = false;
            // Search only where a delimiter can start: the held-back tail and the new
            // bytes.
            if let Some(i) = find(&st.held, &st.inner, 0) {
                st.done = true;
                let out = st.held.split_to(i).freeze();
                return Some((Ok(out), st));
            }
            let keep = st.inner.len() - 1;
            if st.held.len() > keep {
                let out = st.held.split_to(st.held.len() - keep).freeze();
                return Some((Ok(out), st));
            }
        }
    }))
}

/// The file name in a `Content-Disposition` value: `filename*=utf-8''…` (RFC 8187)
/// when present, else `filename=` (quoted or a token).
pub fn disposition_filename(value: &str) -> Option<String> {
    let mut plain = None;
    for p in value.split(';').skip(1) {
        let Some((name, v)) = p.split_once('=') else {
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        let v = v.trim();
        if name == "filename*" {
            let (charset, rest) = v.split_once('\'')?;
            let (_lang, encoded) = rest.split_once('\'')?;
            if charset.eq_ignore_ascii_case("utf-8") {
                let bytes: Vec<u8> = percent_encoding::percent_decode_str(encoded).collect();
                if let Ok(s) = String::from_utf8(bytes) {
                    return Some(s);
                }
            }
        } else if name == "filename" {
            let v = v
                .strip_prefix('"')
                .and_then(|s| s.strip_suffix('"'))
                .unwrap_or(v);
            plain = Some(v.to_owned());
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(content: &[u8]) -> (String, Vec<u8>) {
        let b = "AbCdEf0123";
        let mut body = head(b, "image/png", "inline; filename=\"a.png\"").into_bytes();
        body.extend_from_slice(content);
        body.extend_from_slice(tail(b).as_bytes());
        (content_type(b), body)
    }

    #[test]
    fn what_we_write_we_parse() {
        let bytes = b"\x89PNG\r\n--AbCdEf012 not quite a boundary\r\n\r\n\0\xff";
        let (ct, body) = response(bytes);
        assert_eq!(
            parse(&ct, &body),
            Ok(MediaPart::Content {
                content_type: Some("image/png".into()),
                content_disposition: Some("inline; filename=\"a.png\"".into()),
                body: bytes,
            })
        );
        let (ct, body) = response(b"");
        assert!(matches!(
            parse(&ct, &body),
            Ok(MediaPart::Content { body: b"", .. })
        ));
    }

    #[test]
    fn other_servers_spellings_parse() {
        // A preamble, a quoted boundary, padding after a delimiter, an epilogue,
        // lower-case headers, and the redirect form.
        let body = b"preamble\r\n--xyz  \r\ncontent-type: application/json\r\n\r\n{\"a\":1}\r\n\
--xyz\r\nLOCATION: https://example.org/m\r\n\r\n\r\n--xyz--\r\nepilogue";
        assert_eq!(
            parse("Multipart/Mixed; boundary=\"xyz\"", body),
            Ok(MediaPart::Location("https://example.org/m".into()))
        );
        // A part without headers is octet-stream content.
        let body = b"--q\r\nContent-Type: application/json\r\n\r\n{}\r\n--q\r\n\r\nraw\r\n--q--";
        assert_eq!(
            parse("multipart/mixed;boundary=q", body),
            Ok(MediaPart::Content {
                content_type: None,
                content_disposition: None,
                body: b"raw",
            })
        );
    }

    #[test]
    fn hostile_bodies_are_errors() {
        let ct = "multipart/mixed; boundary=b";
        for body in [
            &b""[..],
            b"--b",
            b"--b\r\n",
            b"--b\r\nContent-Type: application/json\r\n\r\n{}",
            b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b--",
            b"--b\r\nContent-Type: text/plain\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b--",
            b"--b\r\nContent-Type: application/json\r\n\r\n[]\r\n--b\r\n\r\nx\r\n--b--",
            b"--bjunk\r\n\r\n{}\r\n--b--",
            b"--b\r\nno colon\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b--",
            b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--",
            b"--b\r\nContent-Type: application/json\r\n\r\n{}\r\n--b\r\n\r\nno end",
        ] {
            assert!(parse(ct, body).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let long = format!("multipart/mixed; boundary={}", "x".repeat(71));
        for bad in [
            "application/json",
            "multipart/mixed",
            "multipart/mixed; boundary=",
            &long,
        ] {
            assert!(parse(bad, b"--x\r\n").is_err(), "{bad}");
        }
        let huge = format!(
            "--b\r\nX: {}\r\n\r\n{{}}\r\n--b\r\n\r\nx\r\n--b--",
            "y".repeat(MAX_PART_HEADER_BYTES)
        );
        assert!(parse(ct, huge.as_bytes()).is_err());
    }

    /// `content` over `body` cut into chunks of `size`.
    fn streamed(boundary: &str, body: &[u8], size: usize) -> Result<Vec<u8>, String> {
        let head = parse_head(boundary, body)?.ok_or("no head")?;
        let Head::Content { offset, .. } = head else {
            return Err("redirect".into());
        };
        // Like a transport: the first chunk read for the head holds some content too.
        let first_len = (offset + size).min(body.len());
        let first = Bytes::copy_from_slice(&body[offset..first_len]);
        let rest: Vec<Result<Bytes, String>> = body[first_len..]
            .chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        let stream = content(boundary, first, futures::stream::iter(rest));
        futures::executor::block_on(async move {
            let mut out = Vec::new();
            let mut stream = stream;
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok(out)
        })
    }

    #[test]
    fn streamed_content_stops_at_the_boundary_whatever_the_chunking() {
        let bytes: Vec<u8> = b"\r\n--AbCdEf012 almost\r\n--AbCdEf0124x"
            .iter()
            .chain(&[0u8, 255, 13, 10, 45, 45][..])
            .copied()
            .cycle()
            .take(300)
            .collect();
        let (_, mut body) = response(&bytes);
        body.extend_from_slice(b"epilogue that is never read");
        for size in [1, 2, 3, 7, 13, 64, 1000] {
            assert_eq!(
                streamed("AbCdEf0123", &body, size).as_deref(),
                Ok(&bytes[..]),
                "{size}"
            );
        }
        let (_, body) = response(b"");
        assert_eq!(streamed("AbCdEf0123", &body, 1).as_deref(), Ok(&b""[..]));
        // Cut short: an error, never a silently truncated file.
        let (_, body) = response(&bytes);
        for size in [1, 5, 100] {
            assert!(streamed("AbCdEf0123", &body[..body.len() - 16], size).is_err());
        }
    }

    #[test]
    fn heads_need_their_bytes() {
        let (_, body) = response(b"xyz");
        for cut in 0..body.len() - 3 - tail("AbCdEf0123").len() {
            assert_eq!(parse_head("AbCdEf0123", &body[..cut]), Ok(None), "{cut}");
        }
        assert!(matches!(
            parse_head("AbCdEf0123", &body),
            Ok(Some(Head::Content { .. }))
        ));
        assert!(parse_head("b", &vec![b'x'; MAX_HEAD_BYTES]).is_err());
    }

    #[test]
    fn filenames_come_from_dispositions() {
        assert_eq!(
            disposition_filename("inline; filename=\"a b.png\"").as_deref(),
            Some("a b.png")
        );
        assert_eq!(
            disposition_filename("attachment; filename=\"_.png\"; filename*=utf-8''%C3%BC.png")
                .as_deref(),
            Some("ü.png")
        );
        assert_eq!(
            disposition_filename("attachment; filename=x.txt").as_deref(),
            Some("x.txt")
        );
        assert_eq!(disposition_filename("inline"), None);
    }
}
