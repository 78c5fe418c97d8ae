//! URL previews (`GET /_matrix/client/v1/media/preview_url`): fetch a page a client
//! names and answer with its OpenGraph data, its image stored as local media.
//!
//! Off unless `media.url_preview.enabled`: the node would fetch arbitrary URLs for any
//! local user from the device's own network. When on, Synapse's protections apply:
//! every address a URL or a redirect resolves to is checked against an IP range deny
//! list (private, loopback, link-local… by default, with an allow list for exceptions),
//! both before the request and in the resolver the HTTP client connects through (so a
//! name that resolves differently the second time is still caught); literal addresses
//! are checked the same way; no proxy is used; bodies are read up to a byte limit; the
//! whole preview has a time limit; and answers are kept in a bounded in-memory cache.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use reqwest::Url;
use serde_json::{Map, Value, json};

use crate::config::UrlPreviewConfig;
use crate::error::Error;
use crate::server::Server;

/// Redirects followed per fetch.
const MAX_REDIRECTS: usize = 5;
/// How long a preview is served from the cache.
const CACHE_TTL: Duration = Duration::from_secs(3600);
/// Bytes of a page that are parsed for its metadata (OpenGraph lives in `<head>`).
const MAX_PARSED_BYTES: usize = 1024 * 1024;
/// Characters kept of each OpenGraph value.
const MAX_VALUE_CHARS: usize = 1000;
/// OpenGraph properties kept per page.
const MAX_PROPERTIES: usize = 50;
/// Longest URL previewed.
const MAX_URL_LEN: usize = 2048;

/// Previews fetched at once (each may hold `max_bytes` in memory); others wait, within
/// their time limit.
const MAX_CONCURRENT: usize = 4;

/// The preview cache and the HTTP client previews use.
pub struct UrlPreviews {
    cache: Mutex<HashMap<String, (Instant, Value)>>,
    client: OnceLock<Result<reqwest::Client, String>>,
    permits: tokio::sync::Semaphore,
}

impl Default for UrlPreviews {
    fn default() -> Self {
        UrlPreviews {
            cache: Mutex::default(),
            client: OnceLock::new(),
            permits: tokio::sync::Semaphore::new(MAX_CONCURRENT),
        }
    }
}

impl UrlPreviews {
    fn cached(&self, url: &str) -> Option<Value> {
        let cache = self.cache.lock();
        cache
            .get(url)
            .filter(|(made, _)| made.elapsed() < CACHE_TTL)
            .map(|(_, v)| v.clone())
    }

    fn remember(&self, url: &str, value: &Value, capacity: usize) {
        if capacity == 0 {
            return;
        }
        let mut cache = self.cache.lock();
        if cache.len() >= capacity && !cache.contains_key(url) {
            cache.retain(|_, (made, _)| made.elapsed() < CACHE_TTL);
            while cache.len() >= capacity {
                let Some(oldest) = cache
                    .iter()
                    .min_by_key(|(_, (made, _))| *made)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                cache.remove(&oldest);
            }
        }
        cache.insert(url.to_owned(), (Instant::now(), value.clone()));
    }

    /// Previews in the cache (for tests and metrics).
    pub fn cached_count(&self) -> usize {
        self.cache.lock().len()
    }

    fn client(&self, config: &UrlPreviewConfig) -> Result<reqwest::Client, Error> {
        self.client
            .get_or_init(|| {
                reqwest::Client::builder()
                    .dns_resolver(Arc::new(GuardedResolver(config.clone())))
                    .no_proxy()
                    .redirect(reqwest::redirect::Policy::none())
                    .connect_timeout(config.timeout)
                    .timeout(config.timeout)
                    .pool_max_idle_per_host(1)
                    .user_agent(concat!(
                        "warren/",
                        env!("CARGO_PKG_VERSION"),
                        " (URL preview)"
                    ))
                    .build()
                    .map_err(|e| e.to_string())
            })
            .clone()
            .map_err(|e| Error::internal(format!("URL preview client: {e}")))
    }
}

/// A resolver that drops every address the deny list covers, and fails when none is
/// left.
struct GuardedResolver(UrlPreviewConfig);

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let config = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let found = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let allowed: Vec<SocketAddr> = found.filter(|a| config.allows(a.ip())).collect();
            if allowed.is_empty() {
                return Err(format!("{host}: every address is denied for URL previews").into());
            }
            Ok(Box::new(allowed.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// The addresses `url`'s host stands for, refused when the deny list covers them all.
async fn check_host(config: &UrlPreviewConfig, url: &Url) -> Result<(), Error> {
    let denied = || Error::Forbidden(format!("{url}: the address is denied for URL previews"));
    let host = url
        .host_str()
        .ok_or_else(|| Error::InvalidParam(format!("{url} has no host")))?;
    // The URL parser has already normalised IPv4 spellings such as `0x7f.1`.
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let ips: Vec<IpAddr> = match bare.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            let port = url.port_or_known_default().unwrap_or(80);
            tokio::net::lookup_host((bare, port))
                .await
                .map_err(|e| Error::RemoteServer(format!("cannot resolve {bare}: {e}")))?
                .map(|a| a.ip())
                .collect()
        }
    };
    if ips.iter().any(|ip| config.allows(*ip)) {
        Ok(())
    } else {
        Err(denied())
    }
}

/// A fetched response body.
struct Fetched {
    url: Url,
    content_type: String,
    body: Vec<u8>,
}

/// GET `url`, following redirects (each hop checked), reading at most `max_bytes`.
async fn fetch(
    previews: &UrlPreviews,
    config: &UrlPreviewConfig,
    mut url: Url,
) -> Result<Fetched, Error> {
    let client = previews.client(config)?;
    for _ in 0..=MAX_REDIRECTS {
        check_scheme(&url)?;
        check_host(config, &url).await?;
        let mut response = client
            .get(url.clone())
            .header(
                reqwest::header::ACCEPT,
                "text/html,application/xhtml+xml,image/*;q=0.9,*/*;q=0.5",
            )
            .send()
            .await
            .map_err(|e| fetch_error(&url, "cannot fetch", &e))?;
        let status = response.status();
        if status.is_redirection() {
            let location = response
                .headers()
                .get(reqwest::header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .ok_or_else(|| {
                    Error::RemoteServer(format!("{url}: redirect without a location"))
                })?;
            url = url
                .join(location)
                .map_err(|e| Error::RemoteServer(format!("{url}: bad redirect: {e}")))?;
            continue;
        }
        if !status.is_success() {
            return Err(Error::RemoteServer(format!("{url} answered {status}")));
        }
        let too_large =
            || Error::RemoteServer(format!("{url} is larger than {} bytes", config.max_bytes));
        if response
            .content_length()
            .is_some_and(|n| n > config.max_bytes)
        {
            return Err(too_large());
        }
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/octet-stream")
            .to_owned();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| fetch_error(&url, "reading", &e))?
        {
            if body.len() as u64 + chunk.len() as u64 > config.max_bytes {
                return Err(too_large());
            }
            body.extend_from_slice(&chunk);
        }
        return Ok(Fetched {
            url,
            content_type,
            body,
        });
    }
    Err(Error::RemoteServer(format!(
        "more than {MAX_REDIRECTS} redirects"
    )))
}

/// A failed request: `504` when it ran out of time, `502` otherwise.
fn fetch_error(url: &Url, what: &str, e: &reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout(format!("{what} {url}: timed out"))
    } else {
        Error::RemoteServer(format!("{what} {url}: {e}"))
    }
}

fn check_scheme(url: &Url) -> Result<(), Error> {
    match url.scheme() {
        "http" | "https" => Ok(()),
        other => Err(Error::InvalidParam(format!(
            "only http and https URLs are previewed, not {other}"
        ))),
    }
}

/// `GET /preview_url?url=…`: the OpenGraph data of `url`, for `user`.
/// Disabled, it answers `404 M_UNRECOGNIZED`, as Synapse does (it does not serve the
/// endpoint at all then).
pub async fn preview_url(server: &Server, user: &str, url: Option<&str>) -> Result<Value, Error> {
    let config = &server.config.media.url_preview;
    if !config.enabled {
        return Err(Error::Unrecognized(
            http::StatusCode::NOT_FOUND,
            "URL previews are disabled on this node".into(),
        ));
    }
    let url = url.ok_or_else(|| Error::MissingParam("url is required".into()))?;
    if url.len() > MAX_URL_LEN {
        return Err(Error::InvalidParam(format!(
            "url is longer than {MAX_URL_LEN} bytes"
        )));
    }
    let parsed =
        Url::parse(url).map_err(|e| Error::InvalidParam(format!("url is not a URL: {e}")))?;
    check_scheme(&parsed)?;
    if let Some(hit) = server.url_previews.cached(url) {
        return Ok(hit);
    }
    server.rate_limit(crate::ratelimit::Action::MediaUpload, user)?;
    let answer = tokio::time::timeout(config.timeout, build(server, config, user, parsed))
        .await
        .map_err(|_| {
            Error::Timeout(format!(
                "the preview of {url} took longer than {:?}",
                config.timeout
            ))
        })??;
    server
        .url_previews
        .remember(url, &answer, config.cache_entries);
    Ok(answer)
}

async fn build(
    server: &Server,
    config: &UrlPreviewConfig,
    user: &str,
    url: Url,
) -> Result<Value, Error> {
    let _permit = server
        .url_previews
        .permits
        .acquire()
        .await
        .map_err(|_| Error::internal("URL previews are shutting down"))?;
    let page = fetch(&server.url_previews, config, url).await?;
    let mime = page
        .content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    if mime.starts_with("image/") {
        let mut og = Map::new();
        store_image(server, user, &page.body, &mime, &mut og).await?;
        return Ok(Value::Object(og));
    }
    if mime != "text/html" && mime != "application/xhtml+xml" {
        // Nothing to describe (Synapse answers an empty object too).
        return Ok(json!({}));
    }
    let head = &page.body[..page.body.len().min(MAX_PARSED_BYTES)];
    let html = String::from_utf8_lossy(head).into_owned();
    let mut og = tokio::task::spawn_blocking(move || opengraph(&html))
        .await
        .map_err(|e| Error::internal(format!("HTML parsing: {e}")))?;
    // The image is fetched with the same checks and stored as this node's media, since
    // clients must not fetch arbitrary URLs themselves.
    if let Some(image) = og
        .remove("og:image")
        .and_then(|v| v.as_str().map(str::to_owned))
    {
        // The page's claims about its image give way to what is stored.
        for key in [
            "og:image:width",
            "og:image:height",
            "og:image:type",
            "og:image:url",
            "og:image:secure_url",
        ] {
            og.remove(key);
        }
        if let Ok(image_url) = page.url.join(&image)
            && let Ok(fetched) = fetch(&server.url_previews, config, image_url).await
        {
            let mime = fetched
                .content_type
                .split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase();
            if mime.starts_with("image/") {
                // A failure to store drops the image, not the preview.
                let _ = store_image(server, user, &fetched.body, &mime, &mut og).await;
            }
        }
    }
    Ok(Value::Object(og))
}

/// Store `bytes` as this node's media and describe it as the preview's image.
async fn store_image(
    server: &Server,
    user: &str,
    bytes: &[u8],
    mime: &str,
    og: &mut Map<String, Value>,
) -> Result<(), Error> {
    let uri = super::store_bytes(server, user, mime, bytes).await?;
    og.insert("og:image".into(), json!(uri));
    og.insert("og:image:type".into(), json!(mime));
    og.insert("matrix:image:size".into(), json!(bytes.len()));
    let dimensions = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .ok()
        .and_then(|r| r.into_dimensions().ok());
    if let Some((w, h)) = dimensions {
        og.insert("og:image:width".into(), json!(w));
        og.insert("og:image:height".into(), json!(h));
    }
    Ok(())
}

/// The OpenGraph properties of an HTML page (`<meta property="og:…" content>`, also
/// under `name=`), with `<title>` and `<meta name="description">` standing in for a
/// missing `og:title` / `og:description`.
///
/// Only html5ever's tokenizer runs (no tree is built, so deep nesting costs nothing);
/// the sink switches it into the raw text states the tree builder would (`<script>`,
/// `<style>`, `<title>`…), so markup inside a script is not mistaken for tags.
pub fn opengraph(html: &str) -> Map<String, Value> {
    use html5ever::tendril::StrTendril;
    use html5ever::tokenizer::{BufferQueue, Tokenizer, TokenizerOpts};

    let sink = MetaSink::default();
    let tokenizer = Tokenizer::new(sink, TokenizerOpts::default());
    let input = BufferQueue::default();
    input.push_back(StrTendril::from_slice(html));
    let _ = tokenizer.feed(&input);
    tokenizer.end();
    let scan = tokenizer.sink.scan.into_inner();
    let mut og = scan.og;
    if let Some(t) = scan.title {
        og.entry("og:title").or_insert(json!(t));
    }
    if let Some(d) = scan.description {
        og.entry("og:description").or_insert(json!(d));
    }
    og
}

#[derive(Default)]
struct Scan {
    og: Map<String, Value>,
    title: Option<String>,
    in_title: bool,
    title_text: String,
    description: Option<String>,
}

#[derive(Default)]
struct MetaSink {
    scan: std::cell::RefCell<Scan>,
}

impl html5ever::tokenizer::TokenSink for MetaSink {
    type Handle = ();

    fn process_token(
        &self,
        token: html5ever::tokenizer::Token,
        _line: u64,
    ) -> html5ever::tokenizer::TokenSinkResult<()> {
        use html5ever::tokenizer::states::RawKind;
        use html5ever::tokenizer::{TagKind, Token, TokenSinkResult};

        let mut scan = self.scan.borrow_mut();
        match token {
            Token::TagToken(tag) => match (tag.kind, &*tag.name) {
                (TagKind::StartTag, "meta") => {
                    let attr = |key: &str| {
                        tag.attrs
                            .iter()
                            .find(|a| &*a.name.local == key)
                            .map(|a| a.value.to_string())
                    };
                    let key = attr("property").or_else(|| attr("name"));
                    if let (Some(key), Some(content)) = (key, attr("content")) {
                        let key = key.trim().to_owned();
                        if key.starts_with("og:") {
                            if scan.og.len() < MAX_PROPERTIES && !scan.og.contains_key(&key) {
                                scan.og.insert(key, json!(clip(&content)));
                            }
                        } else if key.eq_ignore_ascii_case("description")
                            && scan.description.is_none()
                        {
                            scan.description = Some(clip(&content));
                        }
                    }
                }
                (TagKind::StartTag, "title") if !tag.self_closing => {
                    scan.in_title = scan.title.is_none();
                    return TokenSinkResult::RawData(RawKind::Rcdata);
                }
                (TagKind::EndTag, "title") => {
                    if scan.in_title {
                        let text = scan
                            .title_text
                            .split_whitespace()
                            .collect::<Vec<_>>()
                            .join(" ");
                        if !text.is_empty() {
                            scan.title = Some(clip(&text));
                        }
                        scan.title_text.clear();
                    }
                    scan.in_title = false;
                }
                (TagKind::StartTag, "textarea") if !tag.self_closing => {
                    return TokenSinkResult::RawData(RawKind::Rcdata);
                }
                (TagKind::StartTag, "script") if !tag.self_closing => {
                    return TokenSinkResult::RawData(RawKind::ScriptData);
                }
                (
                    TagKind::StartTag,
                    "style" | "xmp" | "iframe" | "noembed" | "noframes" | "noscript",
                ) if !tag.self_closing => {
                    return TokenSinkResult::RawData(RawKind::Rawtext);
                }
                (TagKind::StartTag, "plaintext") => return TokenSinkResult::Plaintext,
                _ => {}
            },
            Token::CharacterTokens(text)
                if scan.in_title && scan.title_text.len() < 4 * MAX_VALUE_CHARS =>
            {
                scan.title_text.push_str(&text);
            }
            _ => {}
        }
        TokenSinkResult::Continue
    }
}

fn clip(s: &str) -> String {
    s.trim().chars().take(MAX_VALUE_CHARS).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opengraph_reads_meta_title_and_description() {
        let og = opengraph(
            r#"<!doctype html><html><head>
            <title>  Fallback
              title </title>
            <meta property="og:title" content="The Title">
            <meta property="og:image" content="/img.png">
            <meta name="description" content="A page">
            <script>var x = "<meta property='og:evil' content='no'>";</script>
            </head><body><p>text</p></body></html>"#,
        );
        assert_eq!(og["og:title"], "The Title");
        assert_eq!(og["og:image"], "/img.png");
        assert_eq!(og["og:description"], "A page");
        assert!(og.get("og:evil").is_none(), "{og:?}");

        let og = opengraph("<title>Only a title</title><p>hi");
        assert_eq!(og["og:title"], "Only a title");
        assert!(opengraph("not html at all <<<>>>").is_empty());
    }

    #[test]
    fn deep_nesting_costs_nothing() {
        let html = format!(
            "{}<meta property=\"og:title\" content=\"deep\">",
            "<div>".repeat(200_000)
        );
        assert_eq!(opengraph(&html)["og:title"], "deep");
    }

    #[test]
    fn the_cache_is_bounded() {
        let previews = UrlPreviews::default();
        for i in 0..10 {
            previews.remember(&format!("http://x/{i}"), &json!({"i": i}), 4);
        }
        assert_eq!(previews.cached_count(), 4);
        assert!(previews.cached("http://x/9").is_some());
        assert!(previews.cached("http://x/0").is_none());
    }
}
