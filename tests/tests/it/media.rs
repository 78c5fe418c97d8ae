//! The content repository against a real node: matrix-sdk uploads and downloads
//! (authenticated media, spec v1.11), thumbnails of a generated PNG, the async
//! `/create` + `PUT /upload` flow, and bad input over raw HTTP — oversized uploads,
//! path-traversal media ids, non-images to thumbnail, downloads without a token. Across
//! two nodes over libp2p: the federation media endpoints' multipart answers, and remote
//! media fetched, cached, prefetched and still served once its origin is gone.
//!
//! Each test starts its own node(s) on temporary directories.

use std::io::Cursor;
use std::path::Path;

use matrix_sdk::Client;
use matrix_sdk::media::{MediaFormat, MediaRequestParameters, MediaThumbnailSettings};
use matrix_sdk::ruma::events::room::MediaSource;
use matrix_sdk::ruma::media::Method;
use matrix_sdk::ruma::{OwnedMxcUri, UInt};
use reqwest::StatusCode;
use serde_json::Value;
use tempfile::TempDir;
use warren_core::Node;
use warren_tests::{
    FederatedNode, Framing, RawUser, Session, WAIT, client_socket_addr, connect_nodes, http_client,
    matrix_error, parse_matrix_error, path_segment, pseudo_random_bytes, raw_upload,
    register_client, register_raw, shutdown_node, start_federated_node, start_node,
    start_node_with, test_config, wait_until,
};

/// A PNG of `width`×`height` with a colour gradient.
fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbaImage::from_fn(width, height, |x, y| {
        image::Rgba([(x % 256) as u8, (y % 256) as u8, 90, 255])
    });
    let mut out = Cursor::new(Vec::new());
    image::DynamicImage::ImageRgba8(img)
        .write_to(&mut out, image::ImageFormat::Png)
        .expect("encode PNG");
    out.into_inner()
}

fn dimensions(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("the thumbnail decodes as an image");
    (img.width(), img.height())
}

async fn sdk_upload(client: &Client, content_type: &str, data: Vec<u8>) -> OwnedMxcUri {
    let mime: mime::Mime = content_type.parse().expect("mime");
    client
        .media()
        .upload(&mime, data, None)
        .await
        .expect("upload through matrix-sdk")
        .content_uri
}

async fn sdk_thumbnail(
    client: &Client,
    uri: &OwnedMxcUri,
    method: Method,
    w: u32,
    h: u32,
) -> Vec<u8> {
    let request = MediaRequestParameters {
        source: MediaSource::Plain(uri.clone()),
        format: MediaFormat::Thumbnail(MediaThumbnailSettings::with_method(
            method,
            UInt::from(w),
            UInt::from(h),
        )),
    };
    client
        .media()
        .get_media_content(&request, false)
        .await
        .unwrap_or_else(|e| panic!("thumbnail {w}x{h} failed: {e}"))
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The media id part of an `mxc://server/id` URI.
fn media_id(uri: &str) -> &str {
    uri.rsplit('/').next().expect("mxc uri has a media id")
}

struct Fixture {
    dir: TempDir,
    node: Node,
    http: reqwest::Client,
    base: String,
    alice: Session,
}

async fn fixture_with(max_upload_bytes: Option<u64>) -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = test_config(dir.path());
    if let Some(limit) = max_upload_bytes {
        config.max_upload_bytes = limit;
    }
    let node = start_node_with(config).await.expect("start node");
    let http = http_client().expect("http client");
    let base = node.client_url();
    let alice = register_raw(&http, &base, "alice", "alice's password")
        .await
        .expect("register alice");
    Fixture {
        dir,
        node,
        http,
        base,
        alice,
    }
}

impl Fixture {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn server_name(&self) -> &str {
        self.node.server_name()
    }

    /// Raw `POST /_matrix/media/v3/upload` as alice; returns the `mxc://` URI.
    async fn upload(&self, content_type: &str, body: Vec<u8>, filename: Option<&str>) -> String {
        let mut url = self.url("/_matrix/media/v3/upload");
        if let Some(name) = filename {
            url.push_str(&format!("?filename={name}"));
        }
        let response = self
            .http
            .post(url)
            .bearer_auth(&self.alice.access_token)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("POST /upload");
        assert_eq!(response.status(), StatusCode::OK, "upload");
        let json: Value = response.json().await.expect("upload answer is JSON");
        json["content_uri"]
            .as_str()
            .expect("content_uri")
            .to_owned()
    }

    /// `GET` a path as alice (or without a token).
    async fn get(&self, path: &str, token: Option<&str>) -> reqwest::Response {
        let mut request = self.http.get(self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("GET")
    }

    async fn finish(self) {
        shutdown_node(self.node).await.expect("shutdown");
    }
}

async fn expect_error(response: reqwest::Response, status: u16, errcode: &str) {
    let err = matrix_error(response).await.expect("a Matrix error");
    assert_eq!(
        (err.status, err.errcode.as_str()),
        (status, errcode),
        "{}",
        err.body
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_upload_and_download_are_byte_exact() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let client = register_client(&node.client_url(), "alice", "pw alice")
        .await
        .expect("register");

    let data = pseudo_random_bytes(0x3ED1A, 300 * 1024);
    let uri = sdk_upload(&client, "application/octet-stream", data.clone()).await;
    assert_eq!(
        uri.server_name().expect("server").as_str(),
        node.server_name()
    );

    // matrix-sdk sees v1.11 in /versions and so downloads via /_matrix/client/v1/media.
    let request = MediaRequestParameters {
        source: MediaSource::Plain(uri.clone()),
        format: MediaFormat::File,
    };
    let back = client
        .media()
        .get_media_content(&request, false)
        .await
        .expect("download through matrix-sdk");
    assert!(back == data, "downloaded bytes differ from the upload");

    // The bytes live once, by hash, under <data_dir>/media; nothing is left in tmp/.
    let files = files_under(&dir.path().join("media"));
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(std::fs::read(&files[0]).expect("read"), data);

    // Still there after a restart.
    shutdown_node(node).await.expect("shutdown");
    let node = start_node(dir.path()).await.expect("restart");
    let client = warren_tests::login_client(&node.client_url(), "alice", "pw alice")
        .await
        .expect("login");
    let back = client
        .media()
        .get_media_content(&request, false)
        .await
        .expect("download after restart");
    assert!(back == data, "downloaded bytes differ after restart");
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_thumbnails_have_the_right_dimensions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = start_node(dir.path()).await.expect("start node");
    let client = register_client(&node.client_url(), "alice", "pw alice")
        .await
        .expect("register");
    let uri = sdk_upload(&client, "image/png", png(1000, 500)).await;

    // Crop fills the (preset) box exactly; scale keeps the 2:1 aspect inside it.
    let crop = sdk_thumbnail(&client, &uri, Method::Crop, 32, 32).await;
    assert_eq!(dimensions(&crop), (32, 32));
    let crop = sdk_thumbnail(&client, &uri, Method::Crop, 90, 90).await;
    assert_eq!(dimensions(&crop), (96, 96), "snapped to the 96x96 preset");
    let scale = sdk_thumbnail(&client, &uri, Method::Scale, 320, 240).await;
    assert_eq!(dimensions(&scale), (320, 160));
    let scale = sdk_thumbnail(&client, &uri, Method::Scale, 640, 480).await;
    assert_eq!(dimensions(&scale), (640, 320));
    // A second request is served from the cache, identically.
    let again = sdk_thumbnail(&client, &uri, Method::Scale, 640, 480).await;
    assert!(again == scale, "cached thumbnail differs");

    // A small image is never upscaled by `scale`.
    let small = sdk_upload(&client, "image/png", png(50, 40)).await;
    let scale = sdk_thumbnail(&client, &small, Method::Scale, 320, 240).await;
    assert_eq!(dimensions(&scale), (50, 40));
    shutdown_node(node).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downloads_carry_safe_headers() {
    let f = fixture_with(None).await;
    let token = Some(f.alice.access_token.as_str());
    let config: Value = f
        .get("/_matrix/client/v1/media/config", token)
        .await
        .json()
        .await
        .expect("config JSON");
    assert_eq!(config["m.upload.size"], 50 * 1024 * 1024);

    // HTML is never inline, whatever the uploader claimed.
    let html = b"<html><script>alert(document.cookie)</script></html>".to_vec();
    let uri = f.upload("text/html", html.clone(), Some("page.html")).await;
    let path = format!(
        "/_matrix/client/v1/media/download/{}/{}",
        f.server_name(),
        media_id(&uri)
    );
    let response = f.get(&path, token).await;
    assert_eq!(response.status(), StatusCode::OK);
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    assert!(
        header("content-disposition").starts_with("attachment; filename=\"page.html\""),
        "{}",
        header("content-disposition")
    );
    assert_eq!(header("x-content-type-options"), "nosniff");
    assert!(header("content-security-policy").contains("sandbox"));
    assert!(header("content-security-policy").contains("default-src 'none'"));
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        html.as_slice()
    );

    // A PNG is inline; the file name in the path overrides the stored one.
    let uri = f.upload("image/png", png(4, 4), None).await;
    let response = f
        .get(
            &format!(
                "/_matrix/client/v1/media/download/{}/{}/shown.png",
                f.server_name(),
                media_id(&uri)
            ),
            token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        disposition.starts_with("inline; filename=\"shown.png\""),
        "{disposition}"
    );
    assert_eq!(
        response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("image/png")
    );

    // Thumbnails are inline PNGs with the same protections.
    let response = f
        .get(
            &format!(
                "/_matrix/client/v1/media/thumbnail/{}/{}?width=32&height=32&method=crop",
                f.server_name(),
                media_id(&uri)
            ),
            token,
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response
            .headers()
            .get("x-content-type-options")
            .and_then(|v| v.to_str().ok()),
        Some("nosniff")
    );
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(disposition.starts_with("inline"), "{disposition}");
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_uploads_are_413_and_leave_no_file() {
    let f = fixture_with(Some(64 * 1024)).await;
    let addr = client_socket_addr(&f.node).expect("addr");
    let auth = format!("Bearer {}", f.alice.access_token);
    let body = pseudo_random_bytes(7, 256 * 1024);
    for framing in [Framing::ContentLength, Framing::Chunked] {
        let response = raw_upload(
            addr,
            "POST",
            "/_matrix/media/v3/upload?filename=big.bin",
            &[
                ("Authorization", &auth),
                ("Content-Type", "application/octet-stream"),
            ],
            &body,
            framing,
        )
        .await
        .expect("raw upload");
        let err = parse_matrix_error(
            response.status,
            response.header("content-type"),
            &response.body,
        )
        .expect("a Matrix error");
        assert_eq!(
            (err.status, err.errcode.as_str()),
            (413, "M_TOO_LARGE"),
            "{framing:?}: {}",
            err.body
        );
    }
    let config: Value = f
        .get("/_matrix/media/v3/config", Some(&f.alice.access_token))
        .await
        .json()
        .await
        .expect("config");
    assert_eq!(config["m.upload.size"], 64 * 1024);
    let left = files_under(&f.dir.path().join("media"));
    assert!(left.is_empty(), "an oversized upload left files: {left:?}");

    // Exactly at the limit is fine.
    let uri = f
        .upload(
            "application/octet-stream",
            pseudo_random_bytes(8, 64 * 1024),
            None,
        )
        .await;
    assert!(uri.starts_with("mxc://"));
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_media_ids_are_refused() {
    let f = fixture_with(None).await;
    let addr = client_socket_addr(&f.node).expect("addr");
    let secret = b"top secret: not media";
    std::fs::write(f.dir.path().join("secret.txt"), secret).expect("write sentinel");
    std::fs::write(f.dir.path().join("media").join("secret.txt"), secret).expect("sentinel 2");
    let auth = format!("Bearer {}", f.alice.access_token);
    let server = f.server_name().to_owned();
    let mut paths = Vec::new();
    for prefix in ["/_matrix/client/v1/media", "/_matrix/media/v3"] {
        for endpoint in ["download", "thumbnail"] {
            let base = format!("{prefix}/{endpoint}/{server}");
            for id in [
                "..",
                "%2E%2E",
                "..%2F..%2Fsecret.txt",
                "..%2Fsecret.txt",
                "secret.txt",
                "a%2Fb",
                "%2E%2E%2F%2E%2E%2Fsecret.txt",
                "..%5Csecret.txt",
                "%00",
            ] {
                paths.push(format!("{base}/{id}?width=32&height=32"));
            }
            paths.push(format!("{base}/../../secret.txt?width=32&height=32"));
            paths.push(format!(
                "{prefix}/{endpoint}/../secret.txt?width=32&height=32"
            ));
            paths.push(format!(
                "{prefix}/{endpoint}/..%2F..%2F/secret.txt?width=32&height=32"
            ));
        }
    }
    for path in &paths {
        // Raw TCP, so nothing normalises `..` on the way.
        let response = raw_upload(
            addr,
            "GET",
            path,
            &[("Authorization", &auth)],
            b"",
            Framing::ContentLength,
        )
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert!(
            matches!(response.status, 400 | 404),
            "GET {path}: status {}",
            response.status
        );
        parse_matrix_error(
            response.status,
            response.header("content-type"),
            &response.body,
        )
        .unwrap_or_else(|e| panic!("GET {path}: {e:#}"));
        assert!(
            !response.body.windows(secret.len()).any(|w| w == secret),
            "GET {path} leaked the sentinel"
        );
    }

    // A well-formed id of another server is simply not here.
    let response = f
        .get(
            &format!(
                "/_matrix/client/v1/media/download/{}/abcdef",
                "a".repeat(64)
            ),
            Some(&f.alice.access_token),
        )
        .await;
    expect_error(response, 404, "M_NOT_FOUND").await;
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thumbnails_of_non_images_are_clean_errors() {
    let f = fixture_with(None).await;
    let token = Some(f.alice.access_token.as_str());
    let thumb = |uri: &str, query: &str| {
        format!(
            "/_matrix/client/v1/media/thumbnail/{}/{}?{query}",
            f.server_name(),
            media_id(uri)
        )
    };
    let text = f
        .upload("text/plain", b"hello, not an image".to_vec(), None)
        .await;
    let response = f.get(&thumb(&text, "width=32&height=32"), token).await;
    expect_error(response, 400, "M_UNKNOWN").await;

    // Claims to be a PNG, is half of one.
    let whole = png(64, 64);
    let cut = f
        .upload("image/png", whole[..whole.len() / 2].to_vec(), None)
        .await;
    let response = f
        .get(&thumb(&cut, "width=32&height=32&method=crop"), token)
        .await;
    expect_error(response, 400, "M_UNKNOWN").await;

    // Garbage that claims to be a JPEG.
    let junk = f
        .upload("image/jpeg", pseudo_random_bytes(3, 4096), None)
        .await;
    let response = f.get(&thumb(&junk, "width=32&height=32"), token).await;
    expect_error(response, 400, "M_UNKNOWN").await;

    // Bad parameters on a real image.
    let good = f.upload("image/png", png(8, 8), None).await;
    for query in [
        "width=0&height=32",
        "width=-5&height=32",
        "width=abc&height=32",
        "height=32",
        "width=32&height=32&method=stretch",
    ] {
        let response = f.get(&thumb(&good, query), token).await;
        let err = matrix_error(response).await.expect("a Matrix error");
        assert_eq!(err.status, 400, "{query}: {}", err.body);
    }
    let response = f.get(&thumb(&good, "width=32&height=32"), token).await;
    assert_eq!(
        response.status(),
        StatusCode::OK,
        "the node still thumbnails"
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticated_media_needs_a_token() {
    let f = fixture_with(None).await;
    let data = pseudo_random_bytes(11, 1000);
    let uri = f
        .upload("application/octet-stream", data.clone(), None)
        .await;
    let id = media_id(&uri);
    let server = f.server_name().to_owned();
    for path in [
        format!("/_matrix/client/v1/media/download/{server}/{id}"),
        format!("/_matrix/client/v1/media/download/{server}/{id}/x.bin"),
        format!("/_matrix/client/v1/media/thumbnail/{server}/{id}?width=32&height=32"),
        "/_matrix/client/v1/media/config".to_owned(),
    ] {
        expect_error(f.get(&path, None).await, 401, "M_MISSING_TOKEN").await;
        expect_error(
            f.get(&path, Some("not-a-token")).await,
            401,
            "M_UNKNOWN_TOKEN",
        )
        .await;
    }
    let response = f
        .http
        .post(f.url("/_matrix/media/v3/upload"))
        .body(b"x".to_vec())
        .send()
        .await
        .expect("POST /upload");
    expect_error(response, 401, "M_MISSING_TOKEN").await;

    // The deprecated unauthenticated endpoint still serves older clients.
    let response = f
        .get(&format!("/_matrix/media/v3/download/{server}/{id}"), None)
        .await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        data.as_slice()
    );
    f.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_then_put_upload() {
    let f = fixture_with(None).await;
    let bob = register_raw(&f.http, &f.base, "bob", "bob's password")
        .await
        .expect("register bob");
    let created: Value = f
        .http
        .post(f.url("/_matrix/media/v1/create"))
        .bearer_auth(&f.alice.access_token)
        .json(&serde_json::json!({}))
        .send()
        .await
        .expect("POST /create")
        .json()
        .await
        .expect("create JSON");
    let uri = created["content_uri"]
        .as_str()
        .expect("content_uri")
        .to_owned();
    assert!(created["unused_expires_at"].as_i64().is_some(), "{created}");
    let id = media_id(&uri).to_owned();
    let server = f.server_name().to_owned();
    let download = format!("/_matrix/client/v1/media/download/{server}/{id}?timeout_ms=0");
    expect_error(
        f.get(&download, Some(&f.alice.access_token)).await,
        504,
        "M_NOT_YET_UPLOADED",
    )
    .await;

    let put = |token: &str, body: &'static [u8]| {
        f.http
            .put(f.url(&format!(
                "/_matrix/media/v3/upload/{server}/{id}?filename=late.txt"
            )))
            .bearer_auth(token.to_owned())
            .header("content-type", "text/plain")
            .body(body)
            .send()
    };
    expect_error(
        put(&bob.access_token, b"bob's").await.expect("PUT"),
        403,
        "M_FORBIDDEN",
    )
    .await;
    let response = put(&f.alice.access_token, b"arrived late")
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::OK);
    expect_error(
        put(&f.alice.access_token, b"again").await.expect("PUT"),
        409,
        "M_CANNOT_OVERWRITE_MEDIA",
    )
    .await;

    let response = f.get(&download, Some(&f.alice.access_token)).await;
    assert_eq!(response.status(), StatusCode::OK);
    let disposition = response
        .headers()
        .get("content-disposition")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        disposition.starts_with("inline; filename=\"late.txt\""),
        "{disposition}"
    );
    assert_eq!(
        response.bytes().await.expect("body").as_ref(),
        b"arrived late"
    );

    // An id nobody created cannot be uploaded to.
    let response = f
        .http
        .put(f.url(&format!("/_matrix/media/v3/upload/{server}/nosuchid")))
        .bearer_auth(&f.alice.access_token)
        .body(b"x".to_vec())
        .send()
        .await
        .expect("PUT");
    expect_error(response, 404, "M_NOT_FOUND").await;
    f.finish().await;
}

// ---------------------------------------------------------------------------------------
// Media across nodes: fetched over federation, cached, prefetched, served multipart
// ---------------------------------------------------------------------------------------

/// A GET with an optional token: status, content type and body.
async fn fetch(url: &str, token: Option<&str>) -> (u16, String, Vec<u8>) {
    let mut request = http_client().expect("http").get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.expect("body").to_vec();
    (status, content_type, body)
}

/// The Matrix error of a GET: (status, errcode).
async fn fetch_error(url: &str, token: Option<&str>) -> (u16, String) {
    let (status, _, body) = fetch(url, token).await;
    let v: Value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{url}: {status} is not Matrix error JSON"));
    (status, v["errcode"].as_str().unwrap_or_default().to_owned())
}

/// Raw `POST /_matrix/media/v3/upload`: the `mxc://` URI.
async fn upload_as(user: &RawUser, content_type: &str, body: Vec<u8>) -> String {
    let response = http_client()
        .expect("http")
        .post(format!("{}/_matrix/media/v3/upload", user.base))
        .bearer_auth(&user.session.access_token)
        .header("content-type", content_type)
        .body(body)
        .send()
        .await
        .expect("POST /upload");
    assert_eq!(response.status(), StatusCode::OK, "upload");
    let v: Value = response.json().await.expect("JSON");
    v["content_uri"].as_str().expect("content_uri").to_owned()
}

async fn send_event(user: &RawUser, room: &str, txn: &str, content: Value) {
    user.ok(
        reqwest::Method::PUT,
        &format!("/rooms/{}/send/m.room.message/{txn}", path_segment(room)),
        content,
    )
    .await
    .expect("send");
}

fn is_cached(node: &FederatedNode, origin: &str, media_id: &str) -> bool {
    node.node
        .server()
        .db
        .read(|c| warren_core::storage::get_remote_media(c, origin, media_id))
        .expect("read the cache")
        .is_some()
}

/// Two connected nodes, alice on A with a public room, bob (matrix-sdk) on B in it.
async fn shared_room() -> (
    TempDir,
    TempDir,
    FederatedNode,
    FederatedNode,
    RawUser,
    Client,
    String,
) {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start_federated_node(da.path()).await.expect("node A");
    let b = start_federated_node(db.path()).await.expect("node B");
    connect_nodes(&b, &a).await.expect("connect");
    let alice = RawUser::register(a.node.client_url(), "alice")
        .await
        .expect("alice");
    let bob = register_client(&b.node.client_url(), "bob", "bob's password")
        .await
        .expect("bob");
    let room = alice
        .create_room(serde_json::json!({"preset": "public_chat"}))
        .await
        .expect("room");
    let room_id = matrix_sdk::ruma::OwnedRoomOrAliasId::try_from(room.as_str()).expect("room id");
    let via = matrix_sdk::ruma::OwnedServerName::try_from(a.name()).expect("server name");
    bob.join_room_by_id_or_alias(&room_id, &[via])
        .await
        .expect("bob joins over federation");
    (da, db, a, b, alice, bob, room)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_media_is_fetched_cached_and_outlives_its_origin() {
    let (_da, _db, a, b, alice, bob, room) = shared_room().await;
    let origin = a.name();
    let bob_token = bob.access_token().expect("bob's token");
    let base_b = b.node.client_url();

    // Alice sends a video larger than the prefetch budget (16 MiB) and than the
    // transport's cap on buffered responses, then three attachments: an image bob
    // opens, one he never opens, and an encrypted file (its `file.url`).
    let video = pseudo_random_bytes(0x71DE0, 20 * 1024 * 1024 + 7);
    let video_uri = upload_as(&alice, "video/mp4", video.clone()).await;
    send_event(
        &alice,
        &room,
        "vid0",
        serde_json::json!({"msgtype": "m.video", "body": "big.mp4", "url": video_uri}),
    )
    .await;
    let opened = png(400, 200);
    let unopened = png(120, 90);
    let cipher = pseudo_random_bytes(0xC1F, 40_000);
    let opened_uri = upload_as(&alice, "image/png", opened.clone()).await;
    let unopened_uri = upload_as(&alice, "image/png", unopened.clone()).await;
    let cipher_uri = upload_as(&alice, "application/octet-stream", cipher.clone()).await;
    send_event(
        &alice,
        &room,
        "img1",
        serde_json::json!({
            "msgtype": "m.image", "body": "opened.png", "url": opened_uri,
            "info": {"mimetype": "image/png", "w": 400, "h": 200}
        }),
    )
    .await;
    send_event(
        &alice,
        &room,
        "img2",
        serde_json::json!({
            "msgtype": "m.image", "body": "unopened.png", "url": unopened_uri
        }),
    )
    .await;
    send_event(
        &alice,
        &room,
        "file3",
        serde_json::json!({
            "msgtype": "m.file", "body": "secret.bin",
            "file": {"url": cipher_uri, "v": "v2", "key": {}, "iv": "", "hashes": {}}
        }),
    )
    .await;
    let (opened_id, unopened_id, cipher_id) = (
        media_id(&opened_uri),
        media_id(&unopened_uri),
        media_id(&cipher_uri),
    );

    // Bob opens the first picture: several at once through matrix-sdk (authenticated
    // media), then the legacy path; all the same bytes.
    let sdk_request = MediaRequestParameters {
        source: MediaSource::Plain(OwnedMxcUri::from(opened_uri.as_str())),
        format: MediaFormat::File,
    };
    let downloads = futures::future::join_all(
        (0..4).map(|_| async { bob.media().get_media_content(&sdk_request, false).await }),
    )
    .await;
    for d in downloads {
        assert!(d.expect("matrix-sdk download of remote media") == opened);
    }
    let v1 = format!("{base_b}/_matrix/client/v1/media");
    let v3 = format!("{base_b}/_matrix/media/v3");
    let (status, ct, body) = fetch(&format!("{v3}/download/{origin}/{opened_id}"), None).await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert!(body == opened, "legacy download differs");
    let (status, _, body) =
        fetch(&format!("{v3}/download/{origin}/{opened_id}/pic.png"), None).await;
    assert!(status == 200 && body == opened, "legacy named download");
    // Thumbnails, made on B from the cached original.
    let thumb = sdk_thumbnail(
        &bob,
        &OwnedMxcUri::from(opened_uri.as_str()),
        Method::Crop,
        96,
        96,
    )
    .await;
    assert_eq!(dimensions(&thumb), (96, 96));
    let (status, ct, body) = fetch(
        &format!("{v3}/thumbnail/{origin}/{opened_id}?width=320&height=240&method=scale"),
        None,
    )
    .await;
    assert_eq!((status, ct.as_str()), (200, "image/png"));
    assert_eq!(dimensions(&body), (320, 160));

    // What is not there, or not asked for, is a clean 404 (or 400 for a bad id).
    let token = Some(bob_token.as_str());
    for (url, expected) in [
        (
            format!("{v1}/download/{origin}/NoSuchMedia"),
            (404, "M_NOT_FOUND"),
        ),
        (
            format!("{v1}/thumbnail/{origin}/NoSuchMedia?width=32&height=32"),
            (404, "M_NOT_FOUND"),
        ),
        (
            format!("{v1}/download/{origin}/bad.id"),
            (400, "M_INVALID_PARAM"),
        ),
        (
            format!("{v1}/download/not-a-node/abc"),
            (404, "M_NOT_FOUND"),
        ),
        (
            format!("{v1}/download/{}/abc", "f".repeat(64)),
            (502, "M_UNKNOWN"),
        ),
        (
            format!("{v3}/download/{origin}/{opened_id}?allow_remote=false"),
            (404, "M_NOT_FOUND"),
        ),
    ] {
        let (status, errcode) = fetch_error(&url, token).await;
        assert_eq!((status, errcode.as_str()), expected, "{url}");
    }

    // `timeout_ms` bounds the wait, not the fetch: a download that gives up at once
    // still leaves the item cached.
    let late = png(50, 50);
    let late_id = media_id(&upload_as(&alice, "image/png", late.clone()).await).to_owned();
    let (status, errcode) = fetch_error(
        &format!("{v1}/download/{origin}/{late_id}?timeout_ms=0"),
        token,
    )
    .await;
    assert_eq!((status, errcode.as_str()), (504, "M_UNKNOWN"));
    wait_until(WAIT, "the abandoned fetch filled the cache", async || {
        Ok(is_cached(&b, &origin, &late_id))
    })
    .await
    .expect("fetch went on");

    // Without anyone asking, B fetched the other two as their events arrived.
    wait_until(
        WAIT,
        "B prefetched the unopened image and the file",
        async || Ok(is_cached(&b, &origin, unopened_id) && is_cached(&b, &origin, cipher_id)),
    )
    .await
    .expect("prefetch");
    // The video was over the prefetch budget: only fetched when asked for, streamed.
    let video_id = media_id(&video_uri);
    assert!(
        !is_cached(&b, &origin, video_id),
        "the video was not prefetched"
    );
    let (status, ct, body) = fetch(&format!("{v1}/download/{origin}/{video_id}"), token).await;
    assert_eq!((status, ct.as_str()), (200, "video/mp4"));
    assert!(body == video, "the video's bytes differ");

    // Alice's node goes away; bob still has everything, in every form.
    a.stop().await.expect("stop A");
    let again = bob
        .media()
        .get_media_content(&sdk_request, false)
        .await
        .expect("the opened picture from the cache");
    assert!(again == opened);
    for (id, bytes, ct) in [
        (late_id.as_str(), &late, "image/png"),
        (video_id, &video, "video/mp4"),
        (unopened_id, &unopened, "image/png"),
        (cipher_id, &cipher, "application/octet-stream"),
    ] {
        let (status, got_ct, body) = fetch(&format!("{v1}/download/{origin}/{id}"), token).await;
        assert_eq!((status, got_ct.as_str()), (200, ct), "{id}");
        assert!(body == *bytes, "{id}: bytes differ");
        let (status, _, body) = fetch(&format!("{v3}/download/{origin}/{id}"), None).await;
        assert!(status == 200 && body == *bytes, "{id} (legacy)");
    }
    let (status, _, body) = fetch(
        &format!("{v1}/thumbnail/{origin}/{unopened_id}?width=32&height=32&method=crop"),
        token,
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        dimensions(&body),
        (32, 32),
        "a thumbnail never asked for before"
    );
    // Something never fetched cannot be had now: a Matrix error, not a hang.
    let (status, errcode) = fetch_error(
        &format!("{v1}/download/{origin}/NeverSeen?timeout_ms=15000"),
        token,
    )
    .await;
    assert!(
        matches!(status, 502 | 504) && errcode == "M_UNKNOWN",
        "{status} {errcode}"
    );
    b.stop().await.expect("stop B");
}

/// One part of a multipart body: its headers (lower-case names) and bytes.
type Part = (Vec<(String, String)>, Vec<u8>);

/// The two parts of a federation media response, split independently of the node's
/// own parser.
fn split_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = content_type
        .strip_prefix("multipart/mixed; boundary=")
        .unwrap_or_else(|| panic!("content type {content_type:?}"));
    let text = body.to_vec();
    let open = format!("--{boundary}\r\n");
    let close = format!("\r\n--{boundary}--\r\n");
    assert!(text.starts_with(open.as_bytes()), "opens with the boundary");
    assert!(text.ends_with(close.as_bytes()), "closes with the boundary");
    let inner = &text[open.len()..text.len() - close.len()];
    let separator = format!("\r\n--{boundary}\r\n");
    let at = inner
        .windows(separator.len())
        .position(|w| w == separator.as_bytes())
        .expect("two parts");
    [&inner[..at], &inner[at + separator.len()..]]
        .into_iter()
        .map(|part| {
            let end = part
                .windows(4)
                .position(|w| w == b"\r\n\r\n")
                .expect("part headers end");
            let headers = std::str::from_utf8(&part[..end])
                .expect("headers are text")
                .split("\r\n")
                .map(|l| {
                    let (n, v) = l.split_once(':').expect("header line");
                    (n.trim().to_ascii_lowercase(), v.trim().to_owned())
                })
                .collect();
            (headers, part[end + 4..].to_vec())
        })
        .collect()
}

fn part_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn federation_media_endpoints_answer_multipart() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start_federated_node(da.path()).await.expect("node A");
    let b = start_federated_node(db.path()).await.expect("node B");
    connect_nodes(&b, &a).await.expect("connect");
    let alice = RawUser::register(a.node.client_url(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(b.node.client_url(), "bob")
        .await
        .expect("bob");
    let image = png(300, 300);
    let uri = upload_as(&alice, "image/png", image.clone()).await;
    let id = media_id(&uri).to_owned();
    let bobs = upload_as(&bob, "text/plain", b"bob's".to_vec()).await;

    let fed = async |to: &FederatedNode, path: &str| {
        let response = warren_core::federation::client::request(
            b.node.server(),
            &to.name(),
            http::Method::GET,
            path,
            None,
        )
        .await
        .expect("federation request");
        let ct = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        (
            response.status().as_u16(),
            ct,
            response.into_body().to_vec(),
        )
    };

    let (status, ct, body) = fed(&a, &format!("/_matrix/federation/v1/media/download/{id}")).await;
    assert_eq!(status, 200);
    let parts = split_multipart(&ct, &body);
    assert_eq!(
        part_header(&parts[0].0, "content-type"),
        Some("application/json")
    );
    assert_eq!(
        serde_json::from_slice::<Value>(&parts[0].1).expect("JSON"),
        serde_json::json!({})
    );
    assert_eq!(part_header(&parts[1].0, "content-type"), Some("image/png"));
    assert!(
        part_header(&parts[1].0, "content-disposition").is_some_and(|d| d.starts_with("inline"))
    );
    assert!(parts[1].1 == image, "the second part is the image");
    // The node's own parser agrees.
    assert!(matches!(
        warren_core::media::multipart::parse(&ct, &body),
        Ok(warren_core::media::multipart::MediaPart::Content { body, .. }) if body == image.as_slice()
    ));

    let (status, ct, body) = fed(
        &a,
        &format!("/_matrix/federation/v1/media/thumbnail/{id}?width=96&height=96&method=crop&animated=false&timeout_ms=1000"),
    )
    .await;
    assert_eq!(status, 200);
    let parts = split_multipart(&ct, &body);
    assert_eq!(part_header(&parts[1].0, "content-type"), Some("image/png"));
    assert_eq!(dimensions(&parts[1].1), (96, 96));

    // Unknown, hostile, or another server's media: Matrix errors.
    for (path, expected) in [
        (
            "/_matrix/federation/v1/media/download/NoSuchMedia".to_owned(),
            (404, "M_NOT_FOUND"),
        ),
        (
            format!("/_matrix/federation/v1/media/download/{}", media_id(&bobs)),
            (404, "M_NOT_FOUND"),
        ),
        (
            "/_matrix/federation/v1/media/download/..%2F..%2Fwarren.db".to_owned(),
            (400, "M_INVALID_PARAM"),
        ),
        (
            format!("/_matrix/federation/v1/media/thumbnail/{id}?width=0&height=5"),
            (400, "M_INVALID_PARAM"),
        ),
        (
            format!("/_matrix/federation/v1/media/thumbnail/{id}?width=5&height=5&method=zoom"),
            (400, "M_INVALID_PARAM"),
        ),
    ] {
        let (status, _, body) = fed(&a, &path).await;
        let v: Value = serde_json::from_slice(&body).expect("error JSON");
        assert_eq!(
            (status, v["errcode"].as_str().unwrap_or_default()),
            expected,
            "{path}: {v}"
        );
    }
    // Unsigned: refused like every federation request.
    let transport = b.node.server().transport().expect("transport").clone();
    let unsigned = http::Request::get(format!("/_matrix/federation/v1/media/download/{id}"))
        .body(bytes::Bytes::new())
        .expect("request");
    let response = transport
        .request(&a.name(), unsigned)
        .await
        .expect("carried");
    assert_eq!(response.status().as_u16(), 401);
    a.stop().await.expect("stop A");
    b.stop().await.expect("stop B");
}

/// The room's avatar and its members' avatars arrive with the state of a join, not as
/// events: they are prefetched all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn avatars_in_the_state_of_a_join_are_prefetched() {
    let (da, db) = (
        tempfile::tempdir().expect("tempdir"),
        tempfile::tempdir().expect("tempdir"),
    );
    let a = start_federated_node(da.path()).await.expect("node A");
    let b = start_federated_node(db.path()).await.expect("node B");
    connect_nodes(&b, &a).await.expect("connect");
    let alice = RawUser::register(a.node.client_url(), "alice")
        .await
        .expect("alice");
    let bob = RawUser::register(b.node.client_url(), "bob")
        .await
        .expect("bob");
    let png = |seed| {
        let mut bytes = Vec::new();
        image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([x as u8 * 30, y as u8 * 30, seed]))
            .write_to(
                &mut std::io::Cursor::new(&mut bytes),
                image::ImageFormat::Png,
            )
            .expect("png");
        bytes
    };
    let face = upload_as(&alice, "image/png", png(1)).await;
    let room_avatar = upload_as(&alice, "image/png", png(2)).await;
    alice
        .ok(
            reqwest::Method::PUT,
            &format!("/profile/{}/avatar_url", path_segment(alice.id())),
            serde_json::json!({"avatar_url": face}),
        )
        .await
        .expect("avatar");
    let room = alice
        .create_room(
            serde_json::json!({"preset": "public_chat", "initial_state": [
                {"type": "m.room.avatar", "state_key": "", "content": {"url": room_avatar}}
            ]}),
        )
        .await
        .expect("room");
    bob.post(
        &format!("/join/{}?server_name={}", path_segment(&room), a.name()),
        serde_json::json!({}),
    )
    .await
    .expect("bob joins");
    let id = |mxc: &str| mxc.rsplit('/').next().unwrap_or_default().to_owned();
    let origin = a.name();
    wait_until(WAIT, "both avatars in B's cache", async || {
        Ok(is_cached(&b, &origin, &id(&face)) && is_cached(&b, &origin, &id(&room_avatar)))
    })
    .await
    .expect("prefetched");
    a.stop().await.expect("stop A");
    b.stop().await.expect("stop B");
}
