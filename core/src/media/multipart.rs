//! The `multipart/mixed` body of the federation media endpoints (spec v1.11,
//! `/_matrix/federation/v1/media/{download,thumbnail}/{mediaId}`): exactly two parts,
//! JSON metadata (`{}` today) and then either the bytes, with their `Content-Type` and
//! `Content-Disposition`, or a `Location` header naming where the bytes are.
//!
//! Writing is split in a head and a tail around the content, so the content can be
//! streamed from disk. Parsing works on a body already in memory (the transport bounds
//! it), looks at a bounded number of header bytes, and never panics on what a peer sent.

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

/// One part: its headers (names lower-cased) and body.
type Part<'a> = (Vec<(String, String)>, &'a [u8]);

/// The parts of a multipart body.
fn parts<'a>(boundary: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
    let delimiter = format!("--{boundary}");
    let inner = format!("\r\n--{boundary}");
    // The first delimiter opens the body or follows the preamble's CRLF.
    let mut pos = if body.starts_with(delimiter.as_bytes()) {
        0
    } else {
        find(body, inner.as_bytes(), 0).ok_or("no multipart boundary in the body")? + 2
    };
    let mut out = Vec::new();
    loop {
        pos += delimiter.len();
        let rest = body.get(pos..).ok_or("truncated multipart body")?;
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        // Transport padding, then CRLF.
        let line_end = find(body, b"\r\n", pos).ok_or("truncated multipart body")?;
        if !body[pos..line_end]
            .iter()
            .all(|b| *b == b' ' || *b == b'\t')
        {
            return Err("garbage after a multipart boundary".into());
        }
        let start = line_end + 2;
        let end = find(body, inner.as_bytes(), start)
            .ok_or("a multipart part is not terminated by its boundary")?;
        out.push(part(&body[start..end])?);
        if out.len() > 2 {
            return Err("more than two parts".into());
        }
        pos = end + 2;
    }
}

fn part(raw: &[u8]) -> Result<Part<'_>, String> {
    let (head, body) = if raw.starts_with(b"\r\n") {
        (&raw[..0], &raw[2..])
    } else {
        let end = find(raw, b"\r\n\r\n", 0).ok_or("a multipart part has no header end")?;
        (&raw[..end], &raw[end + 4..])
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
    Ok((headers, body))
}

fn header(headers: &[(String, String)], name: &str) -> Option<String> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

/// Parse a federation media response body given its `Content-Type` header.
pub fn parse<'a>(content_type: &str, body: &'a [u8]) -> Result<MediaPart<'a>, String> {
    let boundary = boundary_of(content_type)?;
    let mut parts = parts(&boundary, body)?.into_iter();
    let (Some((meta_headers, meta)), Some((headers, content))) = (parts.next(), parts.next())
    else {
        return Err("expected two parts (metadata and media)".into());
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
    if !serde_json::from_slice::<serde_json::Value>(meta).is_ok_and(|v| v.is_object()) {
        return Err("the metadata part is not a JSON object".into());
    }
    if let Some(location) = header(&headers, "location") {
        return Ok(MediaPart::Location(location));
    }
    Ok(MediaPart::Content {
        content_type: header(&headers, "content-type"),
        content_disposition: header(&headers, "content-disposition"),
        body: content,
    })
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
