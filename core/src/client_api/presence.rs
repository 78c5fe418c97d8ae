//! Presence: `PUT` and `GET /presence/{userId}/status`.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::extract::{Auth, Body, P};
use crate::error::Error;
use crate::presence;
use crate::server::Server;

/// `PUT /presence/{userId}/status` body.
#[derive(Deserialize)]
pub(super) struct SetPresence {
    presence: String,
    /// Absent keeps the current message; `null` clears it.
    #[serde(default, deserialize_with = "present")]
    status_msg: Option<Option<String>>,
}

/// Tell an absent field (`None`) from an explicit `null` (`Some(None)`).
fn present<'de, D>(d: D) -> Result<Option<Option<String>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    Option::<String>::deserialize(d).map(Some)
}

/// `PUT /presence/{userId}/status`: only for the caller's own user.
pub(super) async fn set_status(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(user_id): P<String>,
    Body(body): Body<SetPresence>,
) -> Result<Json<Value>, Error> {
    if user_id != caller.user_id {
        return Err(Error::Forbidden(
            "you can only set your own presence".into(),
        ));
    }
    presence::set(&server, &user_id, &body.presence, body.status_msg)?;
    Ok(Json(json!({})))
}

/// `GET /presence/{userId}/status`.
pub(super) async fn get_status(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P(user_id): P<String>,
) -> Result<Json<Value>, Error> {
    ruma::UserId::parse(&user_id)
        .map_err(|_| Error::InvalidParam(format!("{user_id} is not a user id")))?;
    let answer = server
        .db
        .read(|c| presence::get(c, &caller.user_id, &user_id))?;
    Ok(Json(answer))
}
