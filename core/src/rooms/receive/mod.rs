//! Receiving a PDU from another server: the spec's "checks performed on receipt of a
//! PDU", in order.
//!
//! 1. Format: a JSON object within the size limits, the room version's required keys,
//!    the expected room, bounded `prev_events`/`auth_events` in the room version's
//!    reference format. The event id is the reference hash; in room versions 1 and 2
//!    the PDU's own `event_id`, of the sender's server (and an id already stored keeps
//!    its first event). `m.room.create` events are never accepted this way.
//! 2. Signatures: the servers the room version requires (the sender's, for everything
//!    but third-party invites) must have signed; the key comes from the server name.
//!    Failure drops the event.
//! 3. Content hash: on mismatch the event continues in its redacted form.
//! 4. Auth events: missing ones are fetched from the origin (bounded), checked the same
//!    way and stored as outliers; the event must pass auth against them, else it is
//!    stored as rejected.
//! 5. State before the event, from its prev events' states (resolved when they differ);
//!    missing prevs are asked for once with `get_missing_events`, and an event whose
//!    prevs are still missing becomes an outlier. It must pass auth against that state,
//!    else it is rejected.
//! 6. The current state: failing auth there soft-fails the event.
//! 7. Otherwise it joins the timeline like a local event (`append::persist_accepted`),
//!    and the room's current state becomes the resolution of its forward extremities.
//!
//!
//! Fetching is async and holds no database connection; the states 5 to 7 need are then
//! resolved on a read snapshot ([`ahead`]), and every check and write runs in one write
//! transaction, which takes the resolved states while they still hold. One module per step: [`check`] (1–3), [`fetch`] (what 4
//! and 5 lack), [`auth`] (4, and the checks against a state), [`state_before`] (5),
//! [`resolve`] (the current state after 7), [`persist`] (the verdict, stored), and
//! [`backfilled`] for history fetched with `/backfill`.

mod ahead;
mod auth;
mod backfilled;
mod check;
mod fetch;
mod persist;
mod resolve;
mod state_before;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::Value;

pub(super) use auth::check_against;
pub(super) use check::{Checked, check_pdu};
pub(super) use fetch::{checked_state_answer, dependency_order, with_auth_events};
pub(super) use persist::{Mode, Room};
pub(super) use state_before::has_state;

use crate::error::Error;
use crate::events::rules_for;
use crate::server::Server;
use crate::storage::{self, EventStatus};

/// A boxed future, as [`RemoteEvents`] returns.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where missing events come from (over the P2P federation client; in tests, memory).
pub trait RemoteEvents: Send + Sync {
    /// `GET /_matrix/federation/v1/event/{eventId}` on `origin`: the PDU JSON.
    fn get_event<'a>(
        &'a self,
        origin: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>>;

    /// `POST /_matrix/federation/v1/get_missing_events/{roomId}` on `origin`.
    fn get_missing_events<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        earliest: Vec<String>,
        latest: Vec<String>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Value>, Error>>;

    /// `GET /_matrix/federation/v1/state/{roomId}?event_id=` on `origin`: the state
    /// before the event (`pdus`) and its auth chain (`auth_chain`).
    fn state_before<'a>(
        &'a self,
        origin: &'a str,
        room_id: &'a str,
        event_id: &'a str,
    ) -> BoxFuture<'a, Result<Value, Error>> {
        let _ = (origin, room_id, event_id);
        Box::pin(async { Err(Error::NotFound("no state from this source".into())) })
    }
}

/// What became of a received PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// In the room's timeline.
    Accepted {
        /// The event id.
        event_id: String,
        /// Its stream position.
        stream_pos: i64,
    },
    /// Stored, but it failed auth against the current state: never served, never built on.
    SoftFailed {
        /// The event id.
        event_id: String,
    },
    /// Stored without a place in the timeline (its prev events are unknown).
    Outlier {
        /// The event id.
        event_id: String,
    },
    /// Dropped, or stored as rejected when it failed the auth rules.
    Rejected {
        /// The event id, when the PDU was well-formed enough to have one.
        event_id: Option<String>,
        /// Why.
        reason: String,
    },
    /// Already in the timeline (or soft-failed): nothing done.
    AlreadyKnown {
        /// The event id.
        event_id: String,
    },
}

/// Largest PDU accepted, in canonical JSON bytes.
pub const MAX_PDU_BYTES: usize = 65_536;
/// Most events fetched (auth events and gap events together) for one received PDU.
pub const MAX_FETCHES: usize = 100;
/// How many events one `get_missing_events` call asks for.
pub const MISSING_EVENTS_LIMIT: usize = 10;

/// Rejected events kept per room (see [`storage::trim_rejected`]): a peer sending signed
/// events that fail auth cannot grow the database without limit.
pub const MAX_REJECTED_PER_ROOM: usize = 1000;

/// Receive one PDU from `origin` for `room_id`: check it, fetch what it needs, store it
/// as the spec says (timeline, soft-failed, outlier or rejected).
///
/// `Err` is only for our own failures (database); everything a peer can cause is an
/// [`Outcome`].
pub async fn receive_pdu(
    server: &Arc<Server>,
    remote: &dyn RemoteEvents,
    origin: &str,
    room_id: &str,
    pdu: Value,
) -> Result<Outcome, Error> {
    let Some((version, _)) = server.db.read(|c| storage::room_info(c, room_id))? else {
        return Ok(Outcome::Rejected {
            event_id: None,
            reason: format!("this server is not in room {room_id}"),
        });
    };
    let rules = match rules_for(&version) {
        Ok((_, rules)) => rules,
        Err(e) => {
            return Ok(Outcome::Rejected {
                event_id: None,
                reason: e.public_message(),
            });
        }
    };
    if let Some(outcome) = settled_copy(server, room_id, &version, &pdu)? {
        return Ok(outcome);
    }
    let checked = match check_pdu(pdu, room_id, &rules) {
        Ok(c) => c,
        Err((event_id, reason)) => {
            tracing::info!(%origin, ?event_id, %reason, "dropped received PDU");
            return Ok(Outcome::Rejected { event_id, reason });
        }
    };
    if let Some(outcome) = stored_verdict(server, &checked.event_id)? {
        return Ok(outcome);
    }

    // Fetching phase: no connection is held across an await.
    let source = fetch::Source {
        server,
        remote,
        origin,
        room_id,
        rules: &rules,
    };
    let (fetched, gap) = source.auth_events_and_gap(&checked).await?;

    // Resolution phase, on a read snapshot: what the write can take as it is.
    // A failure here is left to the write, which does it all itself.
    let ahead = if fetched.is_empty() {
        ahead::work_ahead(server, room_id, &version, &rules, &checked).unwrap_or_else(|e| {
            tracing::debug!(event_id = %checked.event_id, error = %e, "nothing worked out ahead");
            ahead::Ahead::default()
        })
    } else {
        ahead::Ahead::default()
    };

    // Check-and-persist phase: one write transaction.
    let media = crate::media::remote::remote_references(server, &checked.pdu);
    let gathered = persist::Gathered {
        fetched,
        gap,
        ahead,
    };
    let outcome = persist::process_received(server, room_id, &version, &rules, gathered, &checked)?;
    // Prev events that stayed missing (the gap reaches back further than one
    // `get_missing_events`, or into history from before our join, known here only as
    // state): the state before the event comes from the server that sent it, checked
    // event by event as a join's state, as Synapse does for missing prevs. Without it
    // the event would stay an outlier, out of every timeline, for good.
    let outcome = match outcome {
        Outcome::Outlier { .. } => source
            .with_state_from(&version, checked)
            .await?
            .unwrap_or(outcome),
        other => other,
    };
    // After the commit, off the PDU's path: queue the media it refers to for prefetching.
    if matches!(outcome, Outcome::Accepted { .. }) {
        crate::media::remote::prefetch(server, media);
    }
    Ok(outcome)
}

/// A copy of an event already settled here (forwarding and anti-entropy bring the
/// same event many times: in a mesh of n nodes each new event arrives up to n - 1
/// times): its id alone (the reference hash, which covers the room and everything
/// the signatures do) says so, without checking signatures again. In room versions 1
/// and 2 the id is the sender's choice, and another event under a settled id is
/// ignored the same way: the first one stays (see [`check::is_another_event`]).
fn settled_copy(
    server: &Server,
    room_id: &str,
    version: &str,
    pdu: &Value,
) -> Result<Option<Outcome>, Error> {
    if pdu.get("room_id").and_then(Value::as_str) == Some(room_id)
        && let Ok(event_id) = super::event_id_of(pdu, version)
        && matches!(
            server.db.read(|c| storage::event_status(c, &event_id))?,
            Some(EventStatus::Timeline | EventStatus::SoftFailed)
        )
    {
        return Ok(Some(Outcome::AlreadyKnown { event_id }));
    }
    Ok(None)
}

/// The verdict already stored for a checked event: in the timeline (or soft-failed), or
/// rejected. `None` when it is new here or only an outlier.
fn stored_verdict(server: &Server, event_id: &str) -> Result<Option<Outcome>, Error> {
    let event_id = event_id.to_owned();
    Ok(
        match server.db.read(|c| storage::get_event_any(c, &event_id))? {
            Some(e) if matches!(e.status, EventStatus::Timeline | EventStatus::SoftFailed) => {
                Some(Outcome::AlreadyKnown { event_id })
            }
            Some(e) if e.status == EventStatus::Rejected => Some(Outcome::Rejected {
                event_id: Some(event_id),
                reason: e.rejection_reason.unwrap_or_else(|| "rejected".into()),
            }),
            _ => None,
        },
    )
}
