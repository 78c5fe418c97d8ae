//! The mailbox endpoints (a Warren extension; see [`crate::mailbox`]):
//!
//! - `PUT …/deposit/{owner}/{txnId}`: leave a transaction signed by the caller for
//!   `owner`, who has named this node as a mailbox;
//! - `GET …/deposits?limit=`: the caller's own mail, oldest first;
//! - `POST …/ack` (`{"ids": […]}`): the caller has applied these, forget them;
//! - `GET …/record/{owner}`: the mailbox record this node holds for `owner`.
//!
//! Every endpoint is signed (`X-Matrix`): the depositor and the owner are the verified
//! origin of the request, never something the body claims.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{FedJson, FedPath, FedQuery, Origin};
use crate::error::Error;
use crate::mailbox::{MAX_DRAIN_BATCH, MAX_DRAIN_BYTES, deposit, record};
use crate::server::Server;
use crate::storage;

pub(super) async fn put_deposit(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedPath((owner, txn_id)): FedPath<(String, String)>,
    FedJson(body): FedJson<Value>,
) -> Result<Json<Value>, Error> {
    crate::server::off_the_reactor(|| deposit::accept(&server, &origin, &owner, &txn_id, &body))?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
pub(super) struct Limit {
    limit: Option<usize>,
}

pub(super) async fn get_deposits(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedQuery(q): FedQuery<Limit>,
) -> Result<Json<Value>, Error> {
    let limit = q.limit.unwrap_or(MAX_DRAIN_BATCH).clamp(1, MAX_DRAIN_BATCH);
    let held = server
        .db
        .read(|c| storage::deposits_for(c, &origin, limit, MAX_DRAIN_BYTES))?;
    let mut deposits = Vec::with_capacity(held.len());
    for d in held {
        let transaction: Value = serde_json::from_str(&d.body)?;
        deposits.push(json!({
            "id": d.id,
            "depositor": d.depositor,
            "txn_id": d.txn_id,
            "transaction": transaction,
        }));
    }
    Ok(Json(json!({ "deposits": deposits })))
}

#[derive(Deserialize)]
pub(super) struct Ack {
    ids: Vec<i64>,
}

pub(super) async fn ack(
    State(server): State<Arc<Server>>,
    Origin(origin): Origin,
    FedJson(body): FedJson<Ack>,
) -> Result<Json<Value>, Error> {
    if body.ids.len() > MAX_DRAIN_BATCH {
        return Err(Error::BadJson(format!(
            "at most {MAX_DRAIN_BATCH} ids at once"
        )));
    }
    let deleted = server
        .db
        .write(|c| storage::delete_deposits(c, &origin, &body.ids))?;
    Ok(Json(json!({ "deleted": deleted })))
}

pub(super) async fn get_record(
    State(server): State<Arc<Server>>,
    FedPath(owner): FedPath<String>,
) -> Result<Json<Value>, Error> {
    match server.db.read(|c| record::held(c, &owner))? {
        Some((_, value)) => Ok(Json(value)),
        None => Err(Error::NotFound(format!("no mailbox record of {owner}"))),
    }
}
