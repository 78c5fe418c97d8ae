//! Typed requests for endpoints ruma has no (fitting) type for, so they go through
//! [`execute`](super::client::execute) like every other outgoing request: Warren's own
//! (`org.warren.*`, unstable: anti-entropy and mailboxes) and `hierarchy`, whose ruma
//! response drops the children's `children_state` that the space walk follows.
//!
//! Each request implements [`Endpoint`] (its method, path template, concrete path and
//! JSON body); `typed!` turns that into ruma's `Metadata`, `OutgoingRequest` and
//! `IncomingResponse` (ruma's own `#[request]` macros cannot read this workspace's
//! manifests).

use bytes::BufMut;
use ruma::api::error::{Error as MatrixError, FromHttpResponseError, IntoHttpError};
use ruma::api::federation::authentication::{ServerSignatures, ServerSignaturesInput};
use ruma::api::{EndpointError, auth_scheme::AuthScheme};
use serde::de::DeserializeOwned;

use super::client::encode;

/// What a typed Warren request is on the wire.
trait Endpoint {
    const METHOD: http::Method;
    /// The path with `{placeholders}` (ruma's path builder checks it).
    const PATH: &'static str;
    /// The concrete path and query, segments percent-encoded.
    fn path_and_query(&self) -> String;
    /// The JSON body, if the method has one.
    fn body(&self) -> Result<Option<Vec<u8>>, serde_json::Error> {
        Ok(None)
    }
}

fn build<E: Endpoint, T: Default + BufMut + AsRef<[u8]>>(
    request: &E,
    base_url: &str,
    input: ServerSignaturesInput<'_>,
) -> Result<http::Request<T>, IntoHttpError> {
    let mut body = T::default();
    if let Some(bytes) = request.body()? {
        body.put_slice(&bytes);
    }
    let mut request = http::Request::builder()
        .method(E::METHOD)
        .uri(format!("{base_url}{}", request.path_and_query()))
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(body)?;
    ServerSignatures::add_authentication(&mut request, input)
        .map_err(|e| IntoHttpError::Authentication(e.into()))?;
    Ok(request)
}

fn parse<R: DeserializeOwned, T: AsRef<[u8]>>(
    response: http::Response<T>,
) -> Result<R, FromHttpResponseError<MatrixError>> {
    if response.status().as_u16() >= 400 {
        return Err(FromHttpResponseError::Server(
            MatrixError::from_http_response(response),
        ));
    }
    serde_json::from_slice(response.body().as_ref())
        .map_err(|e| FromHttpResponseError::Deserialization(e.into()))
}

macro_rules! typed {
    ($request:ty => $response:ty) => {
        impl ruma::api::Metadata for $request {
            const METHOD: http::Method = <$request as Endpoint>::METHOD;
            const RATE_LIMITED: bool = false;
            type Authentication = ServerSignatures;
            type PathBuilder = ruma::api::path_builder::SinglePath;
            const PATH_BUILDER: ruma::api::path_builder::SinglePath =
                ruma::api::path_builder::SinglePath::new(<$request as Endpoint>::PATH);
        }

        impl ruma::api::OutgoingRequest for $request {
            type EndpointError = MatrixError;
            type IncomingResponse = $response;

            fn try_into_http_request<T: Default + BufMut + AsRef<[u8]>>(
                self,
                base_url: &str,
                input: ServerSignaturesInput<'_>,
                _: (),
            ) -> Result<http::Request<T>, IntoHttpError> {
                build(&self, base_url, input)
            }
        }

        impl ruma::api::IncomingResponse for $response {
            type EndpointError = MatrixError;

            fn try_from_http_response<T: AsRef<[u8]>>(
                response: http::Response<T>,
            ) -> Result<Self, FromHttpResponseError<MatrixError>> {
                parse(response)
            }
        }
    };
}

/// The mailbox took the deposit (`{}`).
#[derive(Debug, serde::Deserialize)]
pub struct Deposited {}

/// The mailbox deleted the deposits (how many is not read).
#[derive(Debug, serde::Deserialize)]
pub struct Acknowledged {}

/// `GET /_matrix/federation/unstable/org.warren.extremities/{roomId}`: a peer's
/// forward extremities of a room (anti-entropy).
#[derive(Clone, Debug)]
pub struct Extremities {
    /// The room.
    pub room_id: String,
}

/// The peer's extremities, as it names them (the caller checks them).
#[derive(Debug, serde::Deserialize)]
pub struct ExtremitiesAnswer {
    /// Event ids.
    #[serde(default)]
    pub extremities: Vec<serde_json::Value>,
}

impl Endpoint for Extremities {
    const METHOD: http::Method = http::Method::GET;
    const PATH: &'static str = "/_matrix/federation/unstable/org.warren.extremities/{room_id}";
    fn path_and_query(&self) -> String {
        format!(
            "/_matrix/federation/unstable/org.warren.extremities/{}",
            encode(&self.room_id)
        )
    }
}
typed!(Extremities => ExtremitiesAnswer);

/// `PUT /_matrix/federation/unstable/org.warren.mailbox/deposit/{owner}/{txnId}`:
/// leave a transaction for `owner` with one of its mailboxes.
#[derive(Clone, Debug)]
pub struct Deposit {
    /// The server the mail is for.
    pub owner: String,
    /// The transaction id.
    pub txn_id: String,
    /// The transaction, signed by the depositor.
    pub transaction: serde_json::Value,
}

impl Endpoint for Deposit {
    const METHOD: http::Method = http::Method::PUT;
    const PATH: &'static str =
        "/_matrix/federation/unstable/org.warren.mailbox/deposit/{owner}/{txn_id}";
    fn path_and_query(&self) -> String {
        format!(
            "{}/deposit/{}/{}",
            crate::mailbox::PREFIX,
            encode(&self.owner),
            encode(&self.txn_id)
        )
    }
    fn body(&self) -> Result<Option<Vec<u8>>, serde_json::Error> {
        serde_json::to_vec(&self.transaction).map(Some)
    }
}
typed!(Deposit => Deposited);

/// `GET /_matrix/federation/unstable/org.warren.mailbox/deposits?limit=`: the caller's
/// own mail, oldest first.
#[derive(Clone, Debug)]
pub struct Deposits {
    /// Most deposits in the answer.
    pub limit: usize,
}

/// One held deposit.
#[derive(Debug, serde::Deserialize)]
pub struct HeldDeposit {
    /// The mailbox's id for it (acknowledged with [`Ack`]).
    pub id: i64,
    /// The transaction as deposited.
    pub transaction: serde_json::Value,
}

/// The deposits, oldest first.
#[derive(Debug, serde::Deserialize)]
pub struct DepositsAnswer {
    /// The deposits.
    pub deposits: Vec<HeldDeposit>,
}

impl Endpoint for Deposits {
    const METHOD: http::Method = http::Method::GET;
    const PATH: &'static str = "/_matrix/federation/unstable/org.warren.mailbox/deposits";
    fn path_and_query(&self) -> String {
        format!("{}/deposits?limit={}", crate::mailbox::PREFIX, self.limit)
    }
}
typed!(Deposits => DepositsAnswer);

/// `POST /_matrix/federation/unstable/org.warren.mailbox/ack`: the deposits the owner
/// has taken, to delete.
#[derive(Clone, Debug)]
pub struct Ack {
    /// Their ids.
    pub ids: Vec<i64>,
}

impl Endpoint for Ack {
    const METHOD: http::Method = http::Method::POST;
    const PATH: &'static str = "/_matrix/federation/unstable/org.warren.mailbox/ack";
    fn path_and_query(&self) -> String {
        format!("{}/ack", crate::mailbox::PREFIX)
    }
    fn body(&self) -> Result<Option<Vec<u8>>, serde_json::Error> {
        serde_json::to_vec(&serde_json::json!({ "ids": self.ids })).map(Some)
    }
}
typed!(Ack => Acknowledged);

/// `GET /_matrix/federation/v1/hierarchy/{roomId}?suggested_only=`, answered as JSON:
/// the caller reads each child's `children_state`, which ruma's response type drops.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// The space.
    pub room_id: String,
    /// Only the children marked suggested.
    pub suggested_only: bool,
}

/// The space and its children as the peer describes them (the caller checks them).
#[derive(Debug, serde::Deserialize)]
pub struct HierarchyAnswer {
    /// The space's summary, with its `children_state`.
    pub room: serde_json::Value,
    /// The children's summaries, each with its `children_state`.
    #[serde(default)]
    pub children: Vec<serde_json::Value>,
}

impl Endpoint for Hierarchy {
    const METHOD: http::Method = http::Method::GET;
    const PATH: &'static str = "/_matrix/federation/v1/hierarchy/{room_id}";
    fn path_and_query(&self) -> String {
        format!(
            "/_matrix/federation/v1/hierarchy/{}?suggested_only={}",
            encode(&self.room_id),
            self.suggested_only
        )
    }
}
typed!(Hierarchy => HierarchyAnswer);
