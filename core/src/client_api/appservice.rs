//! `POST /_matrix/client/v1/appservice/{appserviceId}/ping`: an application service
//! asks the node to check that the node can reach it.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::server::Server;

#[derive(Deserialize)]
pub(super) struct PingBody {
    transaction_id: Option<String>,
}

/// Only the appservice itself may ask (`403 M_FORBIDDEN` for anyone else).
pub(super) async fn ping(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(id): P<String>,
    Body(body): Body<PingBody>,
) -> Result<Json<Value>, Error> {
    let Some(a) = caller.appservice.filter(|a| a.id == id) else {
        return Err(Error::Forbidden(format!(
            "only the application service {id:?} may ping itself"
        )));
    };
    let _ = &server;
    let ms = crate::appservice::query::ping(&a, body.transaction_id.as_deref()).await?;
    Ok(Json(json!({"duration_ms": ms})))
}
