//! URL previews (issue 15, item 11): off by default (`404 M_UNRECOGNIZED`); when on,
//! OpenGraph data with the image stored as local media, redirects followed, the IP
//! range deny list (loopback refused unless allowed, also behind a redirect), the size
//! and time limits, and the cache. Pages come from a local HTTP server in the test; the
//! node's configuration allows `127.0.0.1` explicitly where the test needs it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use serde_json::Value;
use warren_core::config::IpRange;
use warren_tests::{
    RawUser, http_client, path_segment, shutdown_node, start_node_with, test_config,
};

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x * 30) as u8, (y * 40) as u8, 90, 255])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

const PAGE: &str = r#"<!doctype html>
<html><head>
<title>Fallback title</title>
<meta property="og:title" content="The Page">
<meta property="og:description" content="What the page is about">
<meta property="og:image" content="/img.png">
<meta property="og:image:width" content="9999">
<script>document.write('<meta property="og:site_name" content="injected">')</script>
</head><body><p>Hello</p></body></html>"#;

/// The test's web server: its base URL and a counter of `/counted` hits.
async fn web_server() -> (String, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind web server");
    let addr = listener.local_addr().expect("addr");
    // Loopback too, but an address the node's allow list does not name.
    let denied = format!("http://127.0.0.2:{}/page", addr.port());
    let app = axum::Router::new()
        .route(
            "/to-denied",
            get(move || async move { Redirect::temporary(&denied) }),
        )
        .route(
            "/page",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE) }),
        )
        .route(
            "/img.png",
            get(|| async { ([(header::CONTENT_TYPE, "image/png")], png(8, 6)) }),
        )
        .route(
            "/plain",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<html><title> Just a\n title </title><meta name=description content='Described'></html>",
                )
            }),
        )
        .route("/redirect", get(|| async { Redirect::temporary("/page") }))
        .route(
            "/big",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/html")],
                    "<p>".repeat(100_000),
                )
            }),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                "late"
            }),
        )
        .route(
            "/counted",
            get(move || {
                let counted = counted.clone();
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    ([(header::CONTENT_TYPE, "text/html")], "<title>counted</title>")
                }
            }),
        )
        .route(
            "/missing",
            get(|| async { (StatusCode::NOT_FOUND, "no").into_response() }),
        );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://127.0.0.1:{}", addr.port()), hits)
}

/// `GET {prefix}/preview_url?url=…` with the user's token: status and body.
async fn preview(user: &RawUser, prefix: &str, url: Option<&str>) -> (u16, Value) {
    let query = url.map_or(String::new(), |u| format!("?url={}", path_segment(u)));
    let response = http_client()
        .expect("client")
        .get(format!("{}{prefix}/preview_url{query}", user.base))
        .bearer_auth(&user.session.access_token)
        .send()
        .await
        .expect("preview request");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

const V1: &str = "/_matrix/client/v1/media";
const LEGACY: &str = "/_matrix/media/v3";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_previews_are_off_by_default() {
    let (web, hits) = web_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node_with(test_config(dir.path()))
        .await
        .expect("node");
    let alice = RawUser::register(node.client_url(), "alice")
        .await
        .expect("alice");
    for prefix in [V1, LEGACY] {
        let (status, body) = preview(&alice, prefix, Some(&format!("{web}/counted"))).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (404, Some("M_UNRECOGNIZED")),
            "{prefix}: {body}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0);
    shutdown_node(node).await.expect("shutdown");

    // Switched on with the default deny list, loopback is refused before any request.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    config.media.url_preview.enabled = true;
    let node = start_node_with(config).await.expect("node");
    let alice = RawUser::register(node.client_url(), "alice")
        .await
        .expect("alice");
    let port = web.rsplit(':').next().expect("port");
    for url in [
        format!("{web}/counted"),
        format!("http://localhost:{port}/counted"),
        format!("http://[::1]:{port}/counted"),
        format!("http://0x7f.1:{port}/counted"),
    ] {
        let (status, body) = preview(&alice, V1, Some(&url)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{url}: {body}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 0, "nothing was fetched");
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_previews_read_opengraph_within_limits() {
    let (web, hits) = web_server().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    let p = &mut config.media.url_preview;
    p.enabled = true;
    // Only the test server's address is let through the default deny list.
    p.ip_range_whitelist = vec!["127.0.0.1/32".parse::<IpRange>().expect("range")];
    p.max_bytes = 64 * 1024;
    p.timeout = Duration::from_secs(2);
    let node = start_node_with(config).await.expect("node");
    let alice = RawUser::register(node.client_url(), "alice")
        .await
        .expect("alice");

    let (status, og) = preview(&alice, V1, Some(&format!("{web}/page"))).await;
    assert_eq!(status, 200, "{og}");
    assert_eq!(og["og:title"], "The Page", "{og}");
    assert_eq!(og["og:description"], "What the page is about", "{og}");
    assert!(
        og.get("og:site_name").is_none(),
        "script text is not markup: {og}"
    );
    assert_eq!(og["og:image:type"], "image/png", "{og}");
    assert_eq!(og["og:image:width"], 8, "the stored image's size: {og}");
    assert_eq!(og["og:image:height"], 6, "{og}");
    let expected = png(8, 6);
    assert_eq!(og["matrix:image:size"], expected.len(), "{og}");
    // The image is this node's media now.
    let mxc = og["og:image"].as_str().expect("og:image");
    let path = mxc.strip_prefix("mxc://").expect("an mxc URI");
    let image = http_client()
        .expect("client")
        .get(format!("{}{V1}/download/{path}", alice.base))
        .bearer_auth(&alice.session.access_token)
        .send()
        .await
        .expect("download");
    assert_eq!(image.status().as_u16(), 200);
    assert_eq!(image.bytes().await.expect("bytes").to_vec(), expected);

    // The legacy path, a redirect, through a name (`localhost` also resolves to ::1,
    // which the resolver drops), and the title/description fallbacks.
    let port = web.rsplit(':').next().expect("port");
    for url in [
        format!("{web}/redirect"),
        format!("http://localhost:{port}/page"),
    ] {
        let (status, og) = preview(&alice, LEGACY, Some(&url)).await;
        assert_eq!(
            (status, &og["og:title"]),
            (200, &Value::from("The Page")),
            "{url}: {og}"
        );
    }
    let (status, og) = preview(&alice, V1, Some(&format!("{web}/plain"))).await;
    assert_eq!(status, 200, "{og}");
    assert_eq!(og["og:title"], "Just a title", "{og}");
    assert_eq!(og["og:description"], "Described", "{og}");
    // A direct image.
    let (status, og) = preview(&alice, V1, Some(&format!("{web}/img.png"))).await;
    assert_eq!(
        (status, &og["og:image:type"]),
        (200, &Value::from("image/png")),
        "{og}"
    );

    // The cache: the second preview does not fetch again.
    for _ in 0..2 {
        let (status, og) = preview(&alice, V1, Some(&format!("{web}/counted"))).await;
        assert_eq!(
            (status, &og["og:title"]),
            (200, &Value::from("counted")),
            "{og}"
        );
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    // Limits: size, time, a redirect to a denied address, errors of the page.
    let (status, body) = preview(&alice, V1, Some(&format!("{web}/big"))).await;
    assert_eq!(status, 502, "over max_bytes: {body}");
    let started = Instant::now();
    let (status, body) = preview(&alice, V1, Some(&format!("{web}/slow"))).await;
    assert_eq!(status, 504, "over the time limit: {body}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    let (status, body) = preview(&alice, V1, Some(&format!("{web}/missing"))).await;
    assert_eq!(status, 502, "{body}");
    for url in [
        format!("{web}/to-denied"),
        format!("http://127.0.0.2:{port}/page"),
    ] {
        let (status, body) = preview(&alice, V1, Some(&url)).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (403, Some("M_FORBIDDEN")),
            "{url}: {body}"
        );
    }

    // Bad input.
    for (url, code) in [
        (None, "M_MISSING_PARAM"),
        (Some("not a url"), "M_INVALID_PARAM"),
        (Some("ftp://127.0.0.1/file"), "M_INVALID_PARAM"),
        (Some("file:///etc/passwd"), "M_INVALID_PARAM"),
    ] {
        let (status, body) = preview(&alice, V1, url).await;
        assert_eq!(
            (status, body["errcode"].as_str()),
            (400, Some(code)),
            "{url:?}: {body}"
        );
    }
    let anonymous = http_client()
        .expect("client")
        .get(format!(
            "{}{V1}/preview_url?url={}",
            alice.base,
            path_segment(&web)
        ))
        .send()
        .await
        .expect("request");
    assert_eq!(anonymous.status().as_u16(), 401);
    shutdown_node(node).await.expect("shutdown");
}
