//! `PUT /rooms/{roomId}/send/{eventType}/{txnId}`: a message event.

use std::sync::Arc;

use axum::{Json, extract::State};
use serde::Deserialize;
use serde_json::{Value, json};

use super::JsonResult;
use crate::client_api::delayed_events;
use crate::client_api::extract::{Auth, Body, P, Q, Requester};
use crate::room_writes;
use crate::server::Server;

/// The query parameters of sends and state: `ts`, with which an application service
/// sets the event's `origin_server_ts` (a bridged message keeps its original time), and
/// MSC4140's delay, which makes it a delayed event.
#[derive(Deserialize)]
pub(in crate::client_api) struct TsQuery {
    ts: Option<i64>,
    #[serde(rename = "org.matrix.msc4140.delay")]
    pub(super) delay: Option<u64>,
}

impl TsQuery {
    /// The timestamp to use, honoured for application services only.
    pub(super) fn for_caller(&self, caller: &Requester) -> Option<i64> {
        caller.appservice.as_ref().and(self.ts).filter(|t| *t >= 0)
    }
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
pub(in crate::client_api) async fn send_message(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, txn_id)): P<(String, String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    if let Some(delay) = ts.delay {
        return delayed_events::schedule(
            &server,
            delayed_events::Schedule {
                user_id: &caller.user_id,
                device_id: &caller.device_id,
                txn_id: Some(&txn_id),
                room_id: &room_id,
                kind: &kind,
                state_key: None,
                content: &content,
                delay_ms: delay,
            },
        );
    }
    let ts = ts.for_caller(&caller);
    let event_id =
        room_writes::send_message(&server, &caller, &room_id, kind, content, &txn_id, ts)?;
    Ok(Json(json!({"event_id": event_id})))
}
