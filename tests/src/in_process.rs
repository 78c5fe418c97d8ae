//! A node's client API driven in-process: no socket, no HTTP client.
//!
//! A node from [`Node::start_unbound`] binds nothing; [`InProcessApi`] hands requests to
//! its client router ([`Node::client_router`]) with `tower::ServiceExt::oneshot`, JSON in,
//! status and JSON out. Tests that need a real homeserver URL (matrix-sdk, raw sockets)
//! use a listening node instead.

use anyhow::{Context as _, bail, ensure};
use http::Method;
use serde_json::Value;
use tower::ServiceExt as _;
use warren_core::node::Unbound;
use warren_core::{Config, Node};

use crate::{REQUEST_TIMEOUT, Session, start_with};

/// Largest response body an in-process call reads.
const MAX_RESPONSE_BYTES: usize = 64 * 1024 * 1024;

/// Starts a node on `data_dir` with [`crate::test_config`] whose client API binds no
/// socket ([`Node::start_unbound`]).
pub async fn start_unbound_node(data_dir: &std::path::Path) -> anyhow::Result<Node<Unbound>> {
    start_unbound_node_with(crate::test_config(data_dir)).await
}

/// Starts a node with the given configuration whose client API binds no socket
/// (`client_addr` is ignored), failing if start-up takes longer than [`crate::WAIT`].
pub async fn start_unbound_node_with(config: Config) -> anyhow::Result<Node<Unbound>> {
    let data_dir = config.data_dir.clone();
    start_with(&data_dir, Node::start_unbound(config)).await
}

/// A node's client API, called in-process.
#[derive(Clone)]
pub struct InProcessApi {
    router: axum::Router,
}

impl InProcessApi {
    /// The client API of `node` (listening or not).
    pub fn new<L>(node: &Node<L>) -> InProcessApi {
        InProcessApi {
            router: node.client_router(),
        }
    }

    /// One request to `path` (from the root: `/_matrix/client/v3/…`), with `token` as
    /// the bearer token if given and `body` as JSON (`null` is sent as JSON `null`, which
    /// GET handlers ignore): the status and the JSON body (`null` when the body is not
    /// JSON). The request runs in a task of its own; it fails (and is cancelled) if no
    /// answer comes within the ordinary request timeout.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: &Value,
    ) -> anyhow::Result<(u16, Value)> {
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(path)
            .header(http::header::CONTENT_TYPE, "application/json");
        if let Some(token) = token {
            request = request.header(http::header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request
            .body(axum::body::Body::from(serde_json::to_vec(body)?))
            .with_context(|| format!("building {method} {path}"))?;
        // A task of its own, as a listening node serves each connection: concurrent calls
        // from one task (a `buffer_unordered` of them) then run in parallel, and one that
        // blocks its thread holds up no other.
        let task = tokio::spawn(self.router.clone().oneshot(request));
        let abort = task.abort_handle();
        let response = match tokio::time::timeout(REQUEST_TIMEOUT, task).await {
            Ok(Ok(Ok(response))) => response,
            Ok(Ok(Err(never))) => match never {},
            Ok(Err(e)) => bail!("{method} {path}: the handler's task failed: {e}"),
            Err(_) => {
                abort.abort();
                bail!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}");
            }
        };
        let status = response.status().as_u16();
        let bytes = axum::body::to_bytes(response.into_body(), MAX_RESPONSE_BYTES)
            .await
            .with_context(|| format!("{method} {path}: reading the response body"))?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Registers `localpart` (see [`crate::register_raw`]) and returns the user.
    pub async fn register(&self, localpart: &str) -> anyhow::Result<InProcessUser> {
        let session = crate::register_with(localpart, "secret-password", async |body| {
            self.call(Method::POST, "/_matrix/client/v3/register", None, body)
                .await
        })
        .await?;
        Ok(InProcessUser {
            api: self.clone(),
            session,
        })
    }
}

/// A registered user of a node's in-process client API: [`crate::RawUser`] without
/// HTTP.
pub struct InProcessUser {
    pub api: InProcessApi,
    pub session: Session,
}

impl InProcessUser {
    /// `@localpart:server`.
    pub fn id(&self) -> &str {
        &self.session.user_id
    }

    /// One request under `/_matrix/client/v3` with the user's token: the status and the
    /// JSON body (see [`InProcessApi::call`]).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Value,
    ) -> anyhow::Result<(u16, Value)> {
        self.api
            .call(
                method,
                &format!("/_matrix/client/v3{path}"),
                Some(&self.session.access_token),
                &body,
            )
            .await
    }

    /// A request that must answer 200: its JSON body.
    pub async fn ok(&self, method: Method, path: &str, body: Value) -> anyhow::Result<Value> {
        let (status, answer) = self.call(method.clone(), path, body).await?;
        ensure!(status == 200, "{method} {path}: {status} {answer}");
        Ok(answer)
    }

    /// `POST /createRoom`: the new room's id.
    pub async fn create_room(&self, body: Value) -> anyhow::Result<String> {
        let answer = self.ok(Method::POST, "/createRoom", body).await?;
        Ok(answer["room_id"].as_str().context("room_id")?.to_owned())
    }
}
