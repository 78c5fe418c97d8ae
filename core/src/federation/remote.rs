//! [`RemoteEvents`] over the federation client: how the room engine fetches events it
//! is missing from the server that sent it something.

use std::sync::Arc;

use ruma::api::federation::event::{get_event, get_missing_events, get_room_state};
use serde_json::{Value, json};

use super::client::{execute, parse_id as id};
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

fn ids(list: Vec<String>) -> Result<Vec<ruma::OwnedEventId>, Error> {
    list.iter().map(|e| id(e)).collect()
}

impl RemoteEvents for FederationRemote {
    fn get_event<'a>(
        &'a self,
        origin: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>> {
        Box::pin(async move {
            let request = get_event::v1::Request::new(id(event_id)?);
            let answer = execute(&self.server, origin, request).await?;
            Ok(serde_json::from_str(answer.pdu.get())?)
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
            // Nothing from before this node joined: that history is not ours to take
            // into the live timeline (backfill fetches it, into backfill positions). A
            // walk into it would put the room's old state events, held here as
            // outliers, into the timeline as forward extremities no other node has.
            let min_depth = self
                .server
                .db
                .read(|c| crate::storage::live_start_depth(c, room_id))?
                .unwrap_or(0);
            let mut request =
                get_missing_events::v1::Request::new(id(room_id)?, ids(earliest)?, ids(latest)?);
            request.limit = ruma::UInt::new_saturating(limit as u64);
            request.min_depth = ruma::UInt::new_saturating(u64::try_from(min_depth).unwrap_or(0));
            let answer = execute(&self.server, origin, request).await?;
            Ok(answer
                .events
                .iter()
                .filter_map(|e| serde_json::from_str::<Value>(e.get()).ok())
                .filter(|e| e["depth"].as_i64().is_none_or(|d| d >= min_depth))
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
            let request = get_room_state::v1::Request::new(id(event_id)?, id(room_id)?);
            let answer = execute(&self.server, origin, request).await?;
            Ok(json!({ "pdus": answer.pdus, "auth_chain": answer.auth_chain }))
        })
    }
}
