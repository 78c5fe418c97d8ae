//! Reporting content (spec v1.13): a user reports an event or a whole room; reports are
//! stored for the node's admins (`GET /_warren/admin/v1/reports`). Handlers in
//! `client_api/reporting.rs` parse the reason and score.

use crate::error::Error;
use crate::requester::Requester;
use crate::rooms::visibility::visibility_for;
use crate::server::Server;
use crate::storage::{self, Report, now_ms};

/// Report `event_id` of `room_id`. The event must be one the requester can see (else
/// 404, so a report does not tell whether an event exists). Returns the report's id.
pub fn report_event(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    event_id: &str,
    reason: Option<String>,
    score: Option<i64>,
) -> Result<i64, Error> {
    server.write(|c| {
        let not_found = || Error::NotFound(format!("event {event_id} not found"));
        let vis = visibility_for(c, room_id, &requester.user_id).map_err(|_| not_found())?;
        match storage::get_event(c, event_id)? {
            Some(e) if vis.allows(c, &e)? => {}
            _ => return Err(not_found()),
        }
        storage::insert_report(
            c,
            &Report {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.to_owned(),
                event_id: Some(event_id.to_owned()),
                user_id: requester.user_id.clone(),
                reason,
                score,
            },
        )
    })
}

/// Report a whole room; 404 for a room this node does not know. Returns the report's
/// id.
pub fn report_room(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    reason: Option<String>,
) -> Result<i64, Error> {
    server.write(|c| {
        if storage::room_info(c, room_id)?.is_none() {
            return Err(Error::NotFound(format!("room {room_id} not found")));
        }
        storage::insert_report(
            c,
            &Report {
                id: 0,
                received_ts: now_ms(),
                room_id: room_id.to_owned(),
                event_id: None,
                user_id: requester.user_id.clone(),
                reason,
                score: None,
            },
        )
    })
}
