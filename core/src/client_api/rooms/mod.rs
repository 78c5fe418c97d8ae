//! Room endpoints, one file per operation: create, send, state, redact, event,
//! context, messages, members, timestamp_to_event.

mod context;
mod create;
mod event;
mod members;
mod messages;
mod redact;
mod send;
mod state;
mod timestamp;

use axum::Json;
use serde_json::Value;

pub(super) use context::context;
pub(super) use create::create_room;
pub(super) use event::get_event;
pub(super) use members::{joined_members, members};
pub(super) use messages::messages;
pub(super) use redact::redact;
pub(super) use send::send_message;
pub(super) use state::{get_all_state, get_state, get_state_empty, put_state, put_state_empty};
pub(super) use timestamp::timestamp_to_event;

use super::extract::Requester;
use crate::error::Error;
use crate::events::{ClientEventOptions, client_event};
use crate::rooms::filter::RoomEventFilter;
use crate::rooms::state_at::state_at;
use crate::storage::{self, StoredEvent};
use crate::streams::PageToken;

type JsonResult = Result<Json<Value>, Error>;

pub fn opts(caller: &Requester) -> ClientEventOptions<'_> {
    caller.event_options()
}

/// The state a user may see: current state while joined, the state when they left otherwise.
pub(in crate::client_api) fn visible_state(
    c: &rusqlite::Connection,
    room_id: &str,
    user_id: &str,
) -> Result<storage::StateMap, Error> {
    match storage::membership(c, room_id, user_id)? {
        Some((m, _, _)) if m == "join" => storage::current_state(c, room_id),
        Some((m, _, pos)) if m == "leave" || m == "ban" => state_at(c, room_id, pos),
        _ => Err(Error::Forbidden(format!(
            "you are not a member of {room_id}"
        ))),
    }
}

fn parse_token(t: &str) -> Result<i64, Error> {
    PageToken::parse(t)
        .map(|t| t.0)
        .ok_or_else(|| Error::InvalidParam(format!("invalid pagination token {t}")))
}

/// The `filter` query parameter: a room event filter as JSON.
fn parse_filter(filter: Option<&str>) -> Result<RoomEventFilter, Error> {
    match filter {
        Some(f) => {
            serde_json::from_str(f).map_err(|e| Error::BadJson(format!("invalid filter: {e}")))
        }
        None => Ok(RoomEventFilter::default()),
    }
}

/// Members whose state a lazy-loading client needs for these events.
pub fn lazy_members(
    c: &rusqlite::Connection,
    state: &storage::StateMap,
    events: &[StoredEvent],
    caller: &Requester,
) -> Result<Vec<Value>, Error> {
    let mut senders: Vec<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    senders.sort();
    senders.dedup();
    let mut out = Vec::new();
    for s in senders {
        if let Some(id) = state.get(&("m.room.member".to_owned(), s.to_owned()))
            && let Some(ev) = storage::get_state_event(c, id)?
        {
            out.push(client_event(&ev, opts(caller)));
        }
    }
    Ok(out)
}
