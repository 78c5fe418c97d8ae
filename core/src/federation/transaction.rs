//! Applying a transaction of PDUs and EDUs another server pushed (`/send`, or left in one
//! of this node's mailboxes).
//!
//! Each PDU goes through the room engine's full receipt checks
//! ([`receive_pdu`](crate::rooms::receive::receive_pdu)); its verdict is reported per
//! event id as the spec asks, and the transaction as a whole succeeds. A transaction id
//! seen before from the same origin gets the stored answer and is not applied again.

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::edu;
use super::outbox::{self, MAX_FORWARDED_PER_TXN};
use super::remote::FederationRemote;
use super::sender::{MAX_EDUS_PER_TXN, MAX_PDUS_PER_TXN};
use crate::error::Error;
use crate::ratelimit::Action;
use crate::rooms::{Outcome, receive_pdu};
use crate::server::Server;
use crate::storage;

/// Apply a transaction that `origin` sent, directly (`/send`) or through one of this
/// node's mailboxes (signed by `origin` itself; see [`crate::mailbox`]), and return the
/// spec's answer. A transaction id seen before from the same origin gets the stored
/// answer and is not applied again.
pub(crate) async fn apply_transaction(
    server: &Arc<Server>,
    origin: &str,
    txn_id: &str,
    body: &Value,
) -> Result<Value, Error> {
    if let Some(claimed) = body.get("origin").and_then(Value::as_str)
        && claimed != origin
    {
        return Err(Error::Forbidden(format!(
            "transaction claims origin {claimed} but was signed by {origin}"
        )));
    }
    let (origin, txn_id) = (origin.to_owned(), txn_id.to_owned());
    let pdus = list(body, "pdus", MAX_PDUS_PER_TXN)?;
    let edus = list(body, "edus", MAX_EDUS_PER_TXN)?;
    if let Some(answer) = server
        .db
        .read(|c| storage::inbound_txn_response(c, &origin, &txn_id))?
    {
        return Ok(answer);
    }
    // Refused whole, before any of it is processed: the sender keeps the transaction in
    // its outbox and retries it after `retry_after_ms`.
    let units = pdus.len() + edus.len();
    if units > 0 {
        server
            .limiter
            .take(Action::Federation, &origin, units as f64)?;
    }
    let remote = FederationRemote::new(server.clone());
    let mut results = Map::new();
    let mut forwarded = 0;
    for pdu in pdus {
        let room_id = pdu
            .get("room_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let event_origin = pdu
            .get("sender")
            .and_then(Value::as_str)
            .and_then(|s| s.split_once(':'))
            .map(|(_, s)| s.to_owned());
        let (event_id, result, accepted) = receive_one(server, &remote, &origin, pdu).await;
        if let (Some(event_id), Some(room_id)) = (&event_id, &room_id)
            && result.get("error").is_none()
        {
            let forward = accepted && forwarded < MAX_FORWARDED_PER_TXN;
            forwarded += usize::from(forward);
            if let Err(e) = after_receipt(
                server,
                &origin,
                room_id,
                event_id,
                event_origin.as_deref(),
                forward,
            ) {
                tracing::warn!(%origin, %event_id, error = %e, "could not forward a PDU");
            }
        }
        if let Some(event_id) = event_id {
            results.insert(event_id, result);
        }
    }
    for e in edus {
        edu::receive_edu(server, &origin, e).await;
    }
    let answer = json!({ "pdus": results });
    server.write(|c| storage::record_inbound_txn(c, &origin, &txn_id, &answer))?;
    Ok(answer)
}

/// What follows a PDU that `origin` sent us and we hold now: `origin` has it, so any
/// row still queued to send it there goes; and, when `forward`, push across hops: an
/// event accepted live that is still a forward extremity is queued for the room's other
/// servers (see [`outbox::forward_received`]). Old events that others have already
/// built on are left to anti-entropy and backfill.
fn after_receipt(
    server: &Server,
    origin: &str,
    room_id: &str,
    event_id: &str,
    event_origin: Option<&str>,
    forward: bool,
) -> Result<(), Error> {
    let forward = forward.then_some(event_origin).flatten();
    // Decided on a reader first: most receipts (a room of two servers) need no write.
    let (pending, forwarding) = server.db.read(|c| {
        let pending = storage::outbox_has_pdu(c, origin, event_id)?;
        let forwarding = match forward {
            Some(event_origin) => {
                storage::is_forward_extremity(c, room_id, event_id)?
                    && !outbox::forward_destinations(c, server, room_id, event_origin, origin)?
                        .is_empty()
            }
            None => false,
        };
        Ok((pending, forwarding))
    })?;
    if !pending && !forwarding {
        return Ok(());
    }
    server.write(|c| {
        if pending {
            storage::outbox_forget_pdu(c, origin, event_id)?;
        }
        if let Some(event_origin) = forward.filter(|_| forwarding)
            && storage::is_forward_extremity(c, room_id, event_id)?
        {
            let to =
                outbox::forward_received(c, server, room_id, event_id, event_origin, origin)?;
            if !to.is_empty() {
                tracing::debug!(%event_id, from = %origin, destinations = ?to, "forwarding a received PDU");
            }
        }
        Ok(())
    })
}

/// `body[key]` as a list of at most `max` entries (absent means empty).
fn list(body: &Value, key: &str, max: usize) -> Result<Vec<Value>, Error> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) if items.len() <= max => Ok(items.clone()),
        Some(Value::Array(items)) => Err(Error::BadJson(format!(
            "{key}: {} entries, at most {max} allowed",
            items.len()
        ))),
        Some(_) => Err(Error::BadJson(format!("{key} must be a list"))),
    }
}

/// Receive one PDU; the per-event answer the spec asks for (`{}` or `{"error": …}`),
/// and whether it was accepted into the timeline just now.
async fn receive_one(
    server: &Arc<Server>,
    remote: &FederationRemote,
    origin: &str,
    pdu: Value,
) -> (Option<String>, Value, bool) {
    let (event_id, result) = receive_inner(server, remote, origin, pdu).await;
    let accepted = matches!(result, Received::Accepted);
    let answer = match result {
        Received::Accepted | Received::Fine => json!({}),
        Received::Error(e) => e,
    };
    (event_id, answer, accepted)
}

/// What became of one received PDU.
enum Received {
    /// Newly in the timeline.
    Accepted,
    /// Known already, soft-failed, stored as an outlier, or an out-of-band membership.
    Fine,
    /// The per-event error answer.
    Error(Value),
}

async fn receive_inner(
    server: &Arc<Server>,
    remote: &FederationRemote,
    origin: &str,
    pdu: Value,
) -> (Option<String>, Received) {
    let Some(room_id) = pdu
        .get("room_id")
        .and_then(Value::as_str)
        .map(str::to_owned)
    else {
        return (
            None,
            Received::Error(json!({ "error": "PDU without a room_id" })),
        );
    };
    // A refused knock or withdrawn invite for a room this node is not in.
    match crate::rooms::receive_out_of_band_membership(server, origin, &room_id, &pdu) {
        Ok(Some(event_id)) => return (Some(event_id), Received::Fine),
        Ok(None) => {}
        Err(e) => {
            return (
                None,
                Received::Error(json!({ "error": e.public_message() })),
            );
        }
    }
    // A server the room's ACL denies may not put anything into it (checked on every PDU
    // of a transaction; the rest of the transaction still counts).
    if let Err(e) = server
        .db
        .read(|c| super::visible::check_server_acl(c, &room_id, origin))
    {
        let version = server
            .db
            .read(|c| storage::room_info(c, &room_id))
            .ok()
            .flatten()
            .map(|(v, _)| v);
        let event_id = version.and_then(|v| crate::rooms::event_id_of(&pdu, &v).ok());
        return (
            event_id,
            Received::Error(json!({ "error": e.public_message() })),
        );
    }
    match receive_pdu(server, remote, origin, &room_id, pdu).await {
        Ok(Outcome::Accepted { event_id, .. }) => (Some(event_id), Received::Accepted),
        Ok(Outcome::AlreadyKnown { event_id })
        | Ok(Outcome::Outlier { event_id })
        // Soft-failed events are accepted as far as the sender is concerned (spec).
        | Ok(Outcome::SoftFailed { event_id }) => (Some(event_id), Received::Fine),
        Ok(Outcome::Rejected { event_id, reason }) => {
            tracing::info!(%origin, ?event_id, %reason, "rejected a PDU");
            (event_id, Received::Error(json!({ "error": reason })))
        }
        Err(e) => {
            tracing::warn!(%origin, %room_id, error = %e, "could not process a PDU");
            (None, Received::Error(json!({ "error": e.public_message() })))
        }
    }
}
