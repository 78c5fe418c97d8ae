//! Outbound federation requests: signed with `X-Matrix`, carried by the node's
//! [`FederationTransport`](super::FederationTransport).

use std::sync::Arc;

use bytes::Bytes;
use ruma::api::federation::authentication::{ServerSignatures, ServerSignaturesInput, XMatrix};
use ruma::api::path_builder::SinglePath;
use ruma::api::{IncomingResponse, OutgoingRequest};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::server::Server;

/// Percent-encode one path segment or query value (everything but RFC 3986 unreserved
/// characters), e.g. a user id in `?user_id=`.
pub fn encode(component: &str) -> String {
    const RESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(component, RESERVED).to_string()
}

/// A Matrix id (room, event, user, …) as a typed request names it; a malformed one is
/// a bad parameter.
pub fn parse_id<T>(id: &str) -> Result<T, Error>
where
    T: for<'a> TryFrom<&'a str, Error = ruma::IdParseError>,
{
    T::try_from(id).map_err(|e| Error::InvalidParam(format!("bad id {id:?}: {e}")))
}

/// Largest JSON response body we parse from another server. Transports should stop
/// reading a response past it (the P2P carriage does) rather than collect it first.
pub const MAX_RESPONSE_JSON: usize = 16 * 1024 * 1024;

/// What `X-Matrix` signs a request from this server to `destination` with (the
/// input of ruma's `ServerSignatures` scheme).
pub fn signature_input<'a>(
    server: &'a Server,
    destination: &str,
) -> Result<ServerSignaturesInput<'a>, Error> {
    let origin = ruma::OwnedServerName::try_from(server.server_name()).map_err(Error::internal)?;
    let destination = ruma::OwnedServerName::try_from(destination)
        .map_err(|e| Error::InvalidParam(format!("bad server name {destination}: {e}")))?;
    Ok(ServerSignaturesInput::new(
        origin,
        destination,
        server.identity.keypair(),
    ))
}

/// The `Authorization` header value for a request from this server.
pub fn sign_request(
    server: &Server,
    destination: &str,
    request: &http::Request<Bytes>,
) -> Result<http::HeaderValue, Error> {
    let x_matrix = XMatrix::try_from_http_request(request, signature_input(server, destination)?)
        .map_err(|e| Error::Internal(format!("signing a federation request: {e}")))?;
    Ok(http::HeaderValue::from(&x_matrix))
}

/// A signed request to `destination`, ready for the transport.
fn signed(
    server: &Server,
    destination: &str,
    method: http::Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<http::Request<Bytes>, Error> {
    let bytes = match body {
        Some(v) => Bytes::from(serde_json::to_vec(v)?),
        None => Bytes::new(),
    };
    let mut request = http::Request::builder()
        .method(method)
        .uri(path_and_query)
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(bytes)
        .map_err(|e| Error::Internal(format!("building a federation request: {e}")))?;
    let auth = sign_request(server, destination, &request)?;
    request
        .headers_mut()
        .insert(http::header::AUTHORIZATION, auth);
    Ok(request)
}

/// The transport to reach `destination` with. A name that is not 64 hex characters
/// names no node (a DNS homeserver, a typo): no transport could reach it, so the
/// request is at fault (400), not a peer (502).
fn transport<'a>(
    server: &'a Server,
    destination: &str,
) -> Result<&'a Arc<dyn super::FederationTransport>, Error> {
    if crate::identity::public_key_from_server_name(destination).is_none() {
        return Err(Error::InvalidParam(format!(
            "{destination:?} is not the server name of a P2P node (64 hex characters)"
        )));
    }
    server
        .transport()
        .ok_or_else(|| Error::RemoteServer("federation is not available on this node".into()))
}

/// Send one signed request, built by hand, to `destination` and return the raw
/// response. The node itself sends typed requests ([`execute`]); this and
/// [`request_json`] are for tests that need a request no type would build (a malformed
/// one, an endpoint under test).
pub async fn request(
    server: &Server,
    destination: &str,
    method: http::Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<http::Response<Bytes>, Error> {
    let transport = transport(server, destination)?;
    let request = signed(server, destination, method, path_and_query, body)?;
    transport
        .request(destination, request)
        .await
        .map_err(|e| Error::RemoteServer(e.to_string()))
}

/// Send a signed request and parse a successful JSON answer. A Matrix error from the
/// remote server keeps its status class: 4xx answers become `Forbidden`/`NotFound`/…
/// with the remote's message (and the restricted-join errcodes stay theirs), anything
/// else `RemoteServer`.
pub async fn request_json<T: DeserializeOwned>(
    server: &Server,
    destination: &str,
    method: http::Method,
    path_and_query: &str,
    body: Option<&Value>,
) -> Result<T, Error> {
    let response = request(server, destination, method, path_and_query, body).await?;
    let body = successful(destination, response)?.into_body();
    serde_json::from_slice(&body).map_err(|e| bad_json(destination, e))
}

/// Send a typed federation request (a ruma `…::v1::Request`, or one of Warren's own
/// endpoints declared the same way) to `destination`, signed with `X-Matrix`, and
/// parse the answer into its response type. Errors as [`request_json`]: a refusal keeps
/// its status class, a body over [`MAX_RESPONSE_JSON`] or of the wrong shape is the
/// peer's fault (`RemoteServer`).
pub async fn execute<R>(
    server: &Server,
    destination: &str,
    request: R,
) -> Result<R::IncomingResponse, Error>
where
    R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
{
    let (transport, request) = typed(server, destination, request)?;
    let response = transport
        .request(destination, request)
        .await
        .map_err(|e| Error::RemoteServer(e.to_string()))?;
    let response = successful(destination, response)?;
    R::IncomingResponse::try_from_http_response(response).map_err(|e| bad_json(destination, e))
}

/// Like [`execute`], but the response is handed over as it arrives, whatever its
/// status, for the caller to bound and parse (media: see
/// [`FederationTransport::request_streaming`](super::FederationTransport::request_streaming)).
pub async fn execute_streaming<R>(
    server: &Server,
    destination: &str,
    request: R,
) -> Result<http::Response<super::BodyStream>, Error>
where
    R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
{
    let (transport, request) = typed(server, destination, request)?;
    transport
        .request_streaming(destination, request)
        .await
        .map_err(|e| Error::RemoteServer(e.to_string()))
}

/// The transport to `destination` and `request` as the signed `http::Request` it
/// carries: the URI is the path and query only (the transport addresses the node), and
/// ruma signs it with the same `X-Matrix` input as [`sign_request`].
fn typed<'a, R>(
    server: &'a Server,
    destination: &str,
    request: R,
) -> Result<
    (
        &'a Arc<dyn super::FederationTransport>,
        http::Request<Bytes>,
    ),
    Error,
>
where
    R: OutgoingRequest<Authentication = ServerSignatures, PathBuilder = SinglePath>,
{
    let transport = transport(server, destination)?;
    let input = signature_input(server, destination)?;
    let request = request
        .try_into_http_request::<Vec<u8>>("", input, ())
        .map_err(|e| Error::Internal(format!("building a federation request: {e}")))?
        .map(Bytes::from);
    Ok((transport, request))
}

/// The response if it is a success of a size we parse; the remote's refusal otherwise.
fn successful(
    destination: &str,
    response: http::Response<Bytes>,
) -> Result<http::Response<Bytes>, Error> {
    let len = response.body().len();
    if len > MAX_RESPONSE_JSON {
        return Err(Error::RemoteServer(format!(
            "{destination} answered with {len} bytes"
        )));
    }
    let status = response.status();
    if !status.is_success() {
        return Err(remote_error(destination, status, response.body()));
    }
    Ok(response)
}

fn bad_json(destination: &str, e: impl std::fmt::Display) -> Error {
    Error::RemoteServer(format!("{destination} answered with bad JSON: {e}"))
}

fn remote_error(destination: &str, status: http::StatusCode, body: &[u8]) -> Error {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let message = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_str)
        .unwrap_or("no error message");
    let errcode = parsed
        .as_ref()
        .and_then(|v| v.get("errcode"))
        .and_then(Value::as_str)
        .unwrap_or("M_UNKNOWN");
    let text = format!("{destination} refused: {errcode}: {message}");
    match status.as_u16() {
        // Restricted joins: the spec asks that these reach the client as they are.
        400 if errcode == "M_UNABLE_TO_AUTHORISE_JOIN" => Error::UnableToAuthoriseJoin(text),
        400 if errcode == "M_UNABLE_TO_GRANT_JOIN" => Error::UnableToGrantJoin(text),
        403 => Error::Forbidden(text),
        404 => Error::NotFound(text),
        _ => Error::RemoteServer(format!("{text} (HTTP {status})")),
    }
}
