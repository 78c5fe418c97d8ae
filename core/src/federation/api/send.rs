//! `PUT /_matrix/federation/v1/send/{txnId}`: PDUs and EDUs pushed by another server,
//! applied by [`crate::federation::transaction`].

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::Value;

use super::extract::{FedJson, FedPath, Origin};
use crate::error::Error;
use crate::server::Server;

pub(super) async fn send_transaction(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath(txn_id): FedPath<String>,
    FedJson(body): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    crate::federation::transaction::apply_transaction(&server, &origin, &txn_id, &body)
        .await
        .map(Json)
}
