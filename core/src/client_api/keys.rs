//! Key management (spec: end-to-end encryption): `/keys/upload`, `/keys/query`,
//! `/keys/claim`, `/keys/changes`, and cross-signing uploads.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::account::require_password_uiaa;
use super::extract::{Auth, Body, Q};
use crate::e2ee::{cross_signing, device_lists, keys};
use crate::error::Error;
use crate::server::Server;
use crate::streams::SyncToken;

type JsonResult = Result<Json<Value>, Error>;

/// `POST /keys/upload`.
pub(super) async fn upload(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<keys::UploadRequest>,
) -> JsonResult {
    // An application service acting without `device_id=` has no device to hold keys.
    if caller.device_id.is_empty() {
        return Err(Error::MissingParam(
            "keys belong to a device: an application service names one with device_id=".into(),
        ));
    }
    Ok(Json(keys::upload(&server, &caller, body)?))
}

/// `POST /keys/query`.
pub(super) async fn query(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<keys::QueryRequest>,
) -> JsonResult {
    Ok(Json(keys::query(&server, &caller, &body).await?))
}

/// `POST /keys/claim`.
pub(super) async fn claim(
    State(server): State<Arc<Server>>,
    Auth(_caller): Auth,
    Body(body): Body<keys::ClaimRequest>,
) -> JsonResult {
    Ok(Json(keys::claim(&server, &body).await?))
}

#[derive(Deserialize)]
pub(super) struct ChangesQuery {
    from: String,
    to: String,
}

fn token(t: &str) -> Result<SyncToken, Error> {
    SyncToken::parse(t).ok_or_else(|| Error::InvalidParam(format!("invalid token {t}")))
}

/// `GET /keys/changes?from=&to=`.
pub(super) async fn changes(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Q(q): Q<ChangesQuery>,
) -> JsonResult {
    let (from, to) = (token(&q.from)?, token(&q.to)?);
    // Never look past what has committed, whatever `to` says.
    let to = to.pos.min(server.notifier.current().pos);
    let found = server
        .db
        .read_tx(|c| device_lists::changes(c, &caller.user_id, from.pos, to))?;
    Ok(Json(json!({"changed": found.changed, "left": found.left})))
}

/// `POST /keys/device_signing/upload`: the first upload needs no UIAA; replacing keys
/// needs the password.
pub(super) async fn upload_signing_keys(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<cross_signing::SigningKeysRequest>,
) -> JsonResult {
    let prepared = cross_signing::prepare(&server, &caller, &body)?;
    if prepared.needs_auth {
        require_password_uiaa(&server, &caller, body.auth.as_ref()).await?;
    }
    cross_signing::commit(&server, &caller, &prepared)?;
    Ok(Json(json!({})))
}

/// `POST /keys/signatures/upload`.
pub(super) async fn upload_signatures(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    Body(body): Body<Map<String, Value>>,
) -> JsonResult {
    Ok(Json(cross_signing::upload_signatures(
        &server, &caller, &body,
    )?))
}
