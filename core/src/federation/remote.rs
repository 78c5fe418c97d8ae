//! [`RemoteEvents`] over the federation client: how the room engine fetches events it
//! is missing from the server that sent it something.

use std::sync::Arc;

use serde_json::{Value, json};

use super::client::{encode, request_json};
use crate::error::Error;
use crate::rooms::{BoxFuture, RemoteEvents};
use crate::server::Server;

/// Fetches missing events from other servers with signed federation requests.
pub struct FederationRemote {
    server: Arc<Server>,
}

impl FederationRemote {
    /// A fetcher acting as `server`.
    pub fn new(server: Arc<Server>) -> FederationRemote {
        FederationRemote { server }
    }
}

impl RemoteEvents for FederationRemote {
    fn get_event<'a>(
        &'a self,
        origin: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            let path = format!("/_matrix/federation/v1/event/{}", encode(event_id));
            let answer: Value =
                request_json(&self.server, origin, http::Method::GET, &path, None).await?;
            answer
                .get("pdus")
                .and_then(Value::as_array)
                .and_then(|pdus| pdus.first())
                .cloned()
                .ok_or_else(|| Error::RemoteServer(format!("{origin} sent no PDU for {event_id}")))
        })
    }

    fn get_missing_events<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        earliest: Vec<String>,
        latest: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Value>, Error>> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/get_missing_events/{}",
                encode(room_id)
            );
            // Nothing from before this node joined: that history is not ours to take
            // into the live timeline (backfill fetches it, into backfill positions). A
            // walk into it would put the room's old state events, held here as
            // outliers, into the timeline as forward extremities no other node has.
            let min_depth = self
                .server
                .db
                .read(|c| crate::storage::live_start_depth(c, room_id))?
                .unwrap_or(0);
            let body = json!({
                "earliest_events": earliest,
                "latest_events": latest,
                "limit": limit,
                "min_depth": min_depth,
            });
            let answer: Value =
                request_json(&self.server, origin, http::Method::POST, &path, Some(&body)).await?;
            Ok(answer
                .get("events")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
                .filter(|e| e["depth"].as_i64().is_none_or(|d| d >= min_depth))
                .cloned()
                .collect())
        })
    }

    fn state_before<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            let path = format!(
                "/_matrix/federation/v1/state/{}?event_id={}",
                encode(room_id),
                encode(event_id)
            );
            request_json(&self.server, origin, http::Method::GET, &path, None).await
        })
    }
}
