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
    delay: Option<u64>,
}

impl TsQuery {
    /// The timestamp to use, honoured for application services only.
    pub(super) fn for_caller(&self, caller: &Requester) -> Option<i64> {
        caller.appservice.as_ref().and(self.ts).filter(|t| *t >= 0)
    }

    /// With a delay, the event is kept to be sent later (`{"delay_id": …}`) instead of
    /// sent now.
    pub(super) fn schedule(
        &self,
        server: &Server,
        caller: &Requester,
        room_id: &str,
        kind: &str,
        key: Key<'_>,
        content: &Value,
    ) -> Option<JsonResult> {
        let delay_ms = self.delay?;
        let (txn_id, state_key) = match key {
            Key::Txn(t) => (Some(t), None),
            Key::State(k) => (None, Some(k)),
        };
        Some(delayed_events::schedule(
            server,
            delayed_events::Schedule {
                user_id: &caller.user_id,
                device_id: &caller.device_id,
                txn_id,
                room_id,
                kind,
                state_key,
                content,
                delay_ms,
            },
        ))
    }
}

/// What tells a send from a state PUT: a message's transaction id, a state event's key.
pub(super) enum Key<'a> {
    Txn(&'a str),
    State(&'a str),
}

/// `PUT /rooms/{roomId}/send/{eventType}/{txnId}`.
pub(in crate::client_api) async fn send_message(
    State(server): State<Arc<Server>>,
    Auth(caller): Auth,
    P((room_id, kind, txn_id)): P<(String, String, String)>,
    Q(ts): Q<TsQuery>,
    Body(content): Body<Value>,
) -> JsonResult {
    if let Some(delayed) = ts.schedule(
        &server,
        &caller,
        &room_id,
        &kind,
        Key::Txn(&txn_id),
        &content,
    ) {
        return delayed;
    }
    let ts = ts.for_caller(&caller);
    let event_id =
        room_writes::send_message_async(&server, &caller, &room_id, kind, content, &txn_id, ts)
            .await?;
    Ok(Json(json!({"event_id": event_id})))
}
