//! `X-Matrix` request authentication for the inbound server-server API.
//!
//! Every federation request except the self-describing ones (`/version`, `/key/v2/…`)
//! must carry an `Authorization: X-Matrix …` header signed by the origin's key. On a P2P
//! node the key is spelled by the origin's server name, so no key fetching is needed.
//! When the transport authenticated the peer (the [`AuthenticatedOrigin`] extension), the
//! signed origin must be that same peer: a node cannot relay requests in another node's
//! name, even with a valid signature replayed from it.
//!
//! Outbound requests are signed by the federation client
//! ([`sign_request`](crate::federation::client::sign_request)).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;
use ruma::api::federation::authentication::XMatrix;
use ruma::signatures::PublicKeyMap;

use crate::error::Error;
use crate::federation::transport::AuthenticatedOrigin;
use crate::identity::{KEY_ID, public_key_from_server_name};
use crate::ratelimit::Action;
use crate::server::Server;

/// Largest federation request body read for signature checking. A transaction holds at
/// most 50 PDUs (64 KiB each) and 100 EDUs.
pub const MAX_FEDERATION_BODY: usize = 8 * 1024 * 1024;

/// Request extension set once a request's `X-Matrix` signature checked out: the origin
/// server name handlers may trust.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FederationOrigin(pub String);

/// Middleware: verify `X-Matrix`, then hand the request on with [`FederationOrigin`].
pub async fn require_signature(
    State(server): State<Arc<Server>>,
    request: Request,
    next: Next,
) -> Response {
    match verify(&server, request).await {
        Ok(request) => next.run(request).await,
        Err(e) => e.into_response(),
    }
}

async fn verify(server: &Server, request: Request) -> Result<Request, Error> {
    let (parts, body) = request.into_parts();
    let bytes = read_body(body).await?;
    let header = parts
        .headers
        .get(http::header::AUTHORIZATION)
        .ok_or_else(|| Error::Unauthorized("missing X-Matrix Authorization header".into()))?;
    let x_matrix = XMatrix::try_from(header)
        .map_err(|e| Error::Unauthorized(format!("malformed X-Matrix header: {e}")))?;
    let origin = x_matrix.origin.to_string();
    if let Some(AuthenticatedOrigin(peer)) = parts.extensions.get::<AuthenticatedOrigin>()
        && *peer != origin
    {
        return Err(Error::Forbidden(format!(
            "request signed as {origin} arrived from {peer}"
        )));
    }
    if x_matrix.key.as_str() != KEY_ID {
        return Err(Error::Unauthorized(format!(
            "unknown key id {}; P2P servers sign with {KEY_ID}",
            x_matrix.key
        )));
    }
    let key = public_key_from_server_name(&origin)
        .ok_or_else(|| Error::Unauthorized(format!("{origin} is not a P2P server name")))?;
    let destination =
        <&ruma::ServerName>::try_from(server.server_name()).map_err(Error::internal)?;
    let keys: PublicKeyMap = BTreeMap::from([(
        origin.clone(),
        BTreeMap::from([(KEY_ID.to_owned(), ruma::serde::Base64::new(key.to_vec()))]),
    )]);
    let signed = http::Request::from_parts(parts, bytes);
    x_matrix
        .verify_request(&signed, destination, &keys)
        .map_err(|e| Error::Unauthorized(format!("X-Matrix signature rejected: {e}")))?;
    // Per-peer budget, charged once the origin is proven (nobody can spend another
    // server's): one token a request here, one per PDU and EDU in `/send`.
    server.rate_limit(Action::Federation, &origin)?;
    let (mut parts, bytes) = signed.into_parts();
    parts.extensions.insert(FederationOrigin(origin));
    Ok(Request::from_parts(parts, Body::from(bytes)))
}

async fn read_body(body: Body) -> Result<Bytes, Error> {
    let limited = http_body_util::Limited::new(body, MAX_FEDERATION_BODY);
    match limited.collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(Error::TooLarge(format!(
            "federation request bodies are limited to {MAX_FEDERATION_BODY} bytes"
        ))),
        Err(e) => Err(Error::BadJson(format!("cannot read the request body: {e}"))),
    }
}
