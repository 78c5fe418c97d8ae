//! Anti-entropy (DESIGN.md §4): peers sharing a room compare forward extremities when
//! they connect and periodically, and pull what they miss.
//!
//! For each room this node shares with a connected peer, we ask the peer for its forward
//! extremities (`GET /_matrix/federation/unstable/org.warren.extremities/{roomId}`, a
//! Warren endpoint), and for those we do not have, `get_missing_events` with our own
//! extremities as `earliest_events`. What comes back goes through
//! [`receive_pdu`](crate::rooms::receive::receive_pdu) oldest first, with the peer as
//! the origin to fetch auth events from. Gaps in our live timeline are pulled the same
//! way: where an event was accepted with the state its sender gave because its prev
//! events could not be had, those prev events are backward extremities, which no
//! forward extremity names. Events are signed by their origins, so a peer
//! may relay events of a third server: this gives multi-hop delivery (A–B–C with no
//! A–C link) and catch-up after partitions. Our own events reach peers through the
//! durable outbox; anti-entropy covers everything else.
//!
//! Bounds: at most [`MAX_ROOMS_PER_PEER`] rooms per peer per pass, [`MAX_ROUNDS`]
//! rounds per room, each walking a gap back with at most [`MAX_GAP_CALLS`] calls of
//! [`MAX_EVENTS_PER_ROUND`] events, [`MAX_CONCURRENT_PEERS`] peers at once, one pass
//! per peer at a time, [`PASS_TIMEOUT`] per pass.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use rand::Rng;
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast};
use tokio::task::JoinHandle;

use super::PeerEvent;
use super::client::execute;
use super::remote::FederationRemote;
use super::visible::authorize_room_read;
use super::warren_api::Extremities;
use crate::error::Error;
use crate::rooms::{Outcome, RemoteEvents, receive_pdu};
use crate::server::Server;
use crate::storage::{self, EventStatus};

/// Most events one `get_missing_events` call asks for (what a Warren peer serves at
/// most).
pub const MAX_EVENTS_PER_ROUND: usize = 20;
/// Most `get_missing_events` calls made to walk back one gap.
pub const MAX_GAP_CALLS: usize = 10;
/// Most rounds (extremities compared, gap pulled) per room and pass.
pub const MAX_ROUNDS: usize = 3;
/// Most rooms compared with one peer per pass.
pub const MAX_ROOMS_PER_PEER: usize = 100;
/// Most peers synchronised at the same time.
pub const MAX_CONCURRENT_PEERS: usize = 4;
/// Most passes running or waiting for one of the [`MAX_CONCURRENT_PEERS`] slots. A peer
/// connecting or rediscovered past it gets no pass now (a hostile mesh can announce
/// fresh peers without end); the periodic pass over connected peers catches up.
pub const MAX_QUEUED_PASSES: usize = 64;
/// Most gaps in a room's live timeline (backward extremities) pulled per round.
pub const MAX_GAPS: usize = 20;
/// Most extremities served or used (the `get_missing_events` id limit).
pub const MAX_EXTREMITIES: usize = 100;
/// Longest one pass with one peer may take.
const PASS_TIMEOUT: Duration = Duration::from_secs(120);

/// This server's forward extremities of a room (the newest [`MAX_EXTREMITIES`]), for
/// `origin`, which must have joined members in it.
pub fn served_extremities(server: &Server, origin: &str, room: &str) -> Result<Vec<String>, Error> {
    server.db.read_tx(|c| {
        let read = authorize_room_read(c, room, origin)?;
        if !read.origin_joined {
            return Err(Error::Forbidden(format!(
                "server {origin} is not in room {room}"
            )));
        }
        let mut ids: Vec<(String, i64)> = storage::forward_extremities(c, room)?;
        // The newest first, if there are more than we serve.
        ids.sort_by_key(|e| std::cmp::Reverse(e.1));
        ids.truncate(MAX_EXTREMITIES);
        Ok(ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>())
    })
}

/// Start the anti-entropy task: a pass with a peer when it connects or is
/// rediscovered, and with every connected peer every `anti_entropy_interval`
/// (jittered by ±50 %).
pub fn start(server: Arc<Server>, mut events: broadcast::Receiver<PeerEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let limiter = Arc::new(Semaphore::new(MAX_CONCURRENT_PEERS));
        let running: Arc<Mutex<HashSet<String>>> = Arc::default();
        let mut next = tokio::time::Instant::now() + jittered(server.config.anti_entropy_interval);
        loop {
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {
                    next = tokio::time::Instant::now()
                        + jittered(server.config.anti_entropy_interval);
                    let Some(transport) = server.transport() else { continue };
                    for peer in transport.peers().await {
                        if let Some(name) = peer.server_name {
                            spawn_pass(&server, &limiter, &running, name);
                        }
                    }
                }
                event = events.recv() => match event {
                    Ok(PeerEvent::Connected { server_name })
                    | Ok(PeerEvent::Rediscovered { server_name }) => {
                        spawn_pass(&server, &limiter, &running, server_name);
                    }
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => {
                        // The transport is gone; the timer finds no peers from now on.
                        events = broadcast::channel(1).1;
                    }
                },
            }
        }
    })
}

/// `period` ± 50 %, at least 100 ms.
fn jittered(period: Duration) -> Duration {
    let ms = period.as_millis().min(u64::MAX as u128) as u64;
    let ms = rand::thread_rng().gen_range(ms / 2..=ms + ms / 2);
    Duration::from_millis(ms.max(100))
}

/// Run one pass with `peer` in the background, unless one is already running.
fn spawn_pass(
    server: &Arc<Server>,
    limiter: &Arc<Semaphore>,
    running: &Arc<Mutex<HashSet<String>>>,
    peer: String,
) {
    if peer == server.server_name() || !claim(&mut running.lock(), &peer) {
        return;
    }
    let (server, limiter, running) = (server.clone(), limiter.clone(), running.clone());
    tokio::spawn(async move {
        if let Ok(_permit) = limiter.acquire().await {
            match tokio::time::timeout(PASS_TIMEOUT, sync_with_peer(&server, &peer)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(n)) => tracing::info!(%peer, events = n, "anti-entropy pulled events"),
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "anti-entropy pass failed"),
                Err(_) => tracing::info!(%peer, "anti-entropy pass timed out"),
            }
        }
        running.lock().remove(&peer);
    });
}

/// Mark a pass with `peer` as running, unless one already is or [`MAX_QUEUED_PASSES`]
/// are running or waiting.
fn claim(running: &mut HashSet<String>, peer: &str) -> bool {
    if running.contains(peer) {
        return false;
    }
    if running.len() >= MAX_QUEUED_PASSES {
        tracing::debug!(%peer, "too many anti-entropy passes queued; this one is skipped");
        return false;
    }
    running.insert(peer.to_owned())
}

/// Compare every room shared with `peer` and pull what we miss; returns how many events
/// joined a timeline.
pub async fn sync_with_peer(server: &Arc<Server>, peer: &str) -> Result<usize, Error> {
    let own = server.server_name().to_owned();
    let rooms = server
        .db
        .read(|c| storage::rooms_shared_with_server(c, &own, peer, MAX_ROOMS_PER_PEER))?;
    let remote = FederationRemote::new(server.clone());
    let mut pulled = 0;
    for room in rooms {
        match sync_room(server, &remote, peer, &room).await {
            Ok(n) => pulled += n,
            // One room's failure (the peer left it meanwhile) must not stop the others,
            // but an unreachable peer stops the pass.
            Err(e @ Error::RemoteServer(_)) => return Err(e),
            Err(e) => tracing::debug!(%peer, %room, error = %e, "anti-entropy skipped a room"),
        }
    }
    Ok(pulled)
}

/// Whether an event needs no pulling: in the timeline, soft-failed or rejected.
fn known(c: &rusqlite::Connection, event_id: &str) -> Result<bool, Error> {
    Ok(matches!(
        storage::event_status(c, event_id)?,
        Some(EventStatus::Timeline | EventStatus::SoftFailed | EventStatus::Rejected)
    ))
}

/// Pull what `peer` has in `room` and we do not, in bounded rounds.
async fn sync_room(
    server: &Arc<Server>,
    remote: &FederationRemote,
    peer: &str,
    room: &str,
) -> Result<usize, Error> {
    let Some((version, _)) = server.db.read(|c| storage::room_info(c, room))? else {
        return Ok(0);
    };
    let request = Extremities {
        room_id: room.to_owned(),
    };
    let mut pulled = 0;
    for round in 0..MAX_ROUNDS {
        let answer = execute(server, peer, request.clone()).await?;
        let theirs: Vec<String> = answer
            .extremities
            .iter()
            .filter_map(Value::as_str)
            .filter(|id| ruma::EventId::parse(*id).is_ok())
            .take(MAX_EXTREMITIES)
            .map(str::to_owned)
            .collect();
        let (missing, gaps, live_start) = server.db.read(|c| {
            let mut missing = Vec::new();
            for id in &theirs {
                if !known(c, id)? {
                    missing.push(id.clone());
                }
            }
            // Gaps in our live timeline (an event accepted with the state its sender
            // gave, its prev events missing): no extremity of anyone's names them, so
            // comparing extremities never would. Asked of the peer that sent that
            // event (which has what lies behind it).
            let mut gaps = HashSet::new();
            // (In the first round: the later ones go on with what it pulled.)
            let limit = if round == 0 { MAX_GAPS } else { 0 };
            for id in storage::live_backfill_extremities(c, room, peer, limit)? {
                if !missing.contains(&id) && !known(c, &id)? {
                    gaps.insert(id.clone());
                    missing.push(id);
                }
            }
            Ok((missing, gaps, storage::live_start_depth(c, room)?))
        })?;
        if missing.is_empty() {
            break;
        }
        let gap = collect_gap(server, remote, peer, room, &version, &missing).await?;
        let mut progress = 0;
        for pdu in gap {
            progress += receive(server, remote, peer, room, pdu).await?;
        }
        for id in &missing {
            match remote.get_event(peer, id).await {
                // A gap's depth is a guess (its child's, less one): one that turns out
                // to be from before our join is history, left to backfill, and never
                // asked for again here.
                Ok(pdu)
                    if gaps.contains(id)
                        && pdu["depth"]
                            .as_i64()
                            .zip(live_start)
                            .is_some_and(|(d, start)| d < start) =>
                {
                    let depth = pdu["depth"].as_i64().unwrap_or(0);
                    server.write(|c| storage::set_backfill_extremity_depth(c, room, id, depth))?;
                }
                Ok(pdu) => progress += receive(server, remote, peer, room, pdu).await?,
                Err(e) => tracing::debug!(%peer, event_id = %id, error = %e, "cannot fetch"),
            }
        }
        pulled += progress;
        if progress == 0 {
            break;
        }
    }
    Ok(pulled)
}

/// The events between our forward extremities and `missing` (the peer's extremities we
/// lack), oldest first: `get_missing_events` calls walking back from `missing` until a
/// call comes back short (the walk reached what we have) or [`MAX_GAP_CALLS`] calls
/// of at most [`MAX_EVENTS_PER_ROUND`] events were made.
async fn collect_gap(
    server: &Arc<Server>,
    remote: &FederationRemote,
    peer: &str,
    room: &str,
    version: &str,
    missing: &[String],
) -> Result<Vec<Value>, Error> {
    let ours: Vec<String> = server.db.read(|c| {
        let mut ours = storage::forward_extremities(c, room)?;
        ours.sort_by_key(|e| std::cmp::Reverse(e.1));
        ours.truncate(MAX_EXTREMITIES);
        Ok(ours.into_iter().map(|(id, _)| id).collect())
    })?;
    let mut have: HashSet<String> = missing.iter().cloned().collect();
    let mut collected: Vec<Value> = Vec::new();
    let mut frontier = missing.to_vec();
    for _ in 0..MAX_GAP_CALLS {
        let batch = remote
            .get_missing_events(
                peer,
                room,
                ours.clone(),
                frontier.clone(),
                MAX_EVENTS_PER_ROUND,
            )
            .await?;
        let full = batch.len() >= MAX_EVENTS_PER_ROUND;
        let mut new = 0;
        for pdu in batch.into_iter().take(MAX_EVENTS_PER_ROUND) {
            // An event whose id cannot be computed is left to `receive_pdu` to refuse.
            let id = crate::rooms::event_id_of(&pdu, version).unwrap_or_default();
            if id.is_empty() || have.insert(id) {
                collected.push(pdu);
                new += 1;
            }
        }
        if !full || new == 0 {
            break;
        }
        // Walk on from the prev events that are neither here nor already collected.
        let prevs: Vec<String> = collected
            .iter()
            .flat_map(|e| crate::events::reference_ids(e, "prev_events"))
            .filter(|id| !have.contains(id))
            .collect();
        frontier = server.db.read(|c| {
            let mut out = Vec::new();
            for id in prevs {
                if out.len() < MAX_EXTREMITIES && !out.contains(&id) && !known(c, &id)? {
                    out.push(id);
                }
            }
            Ok(out)
        })?;
        if frontier.is_empty() {
            break;
        }
    }
    // Oldest first, so each event's prev events are in place before it.
    collected.sort_by_key(|e| e["depth"].as_i64().unwrap_or(0));
    Ok(collected)
}

/// Receive one pulled PDU; 1 when it joined the timeline (or soft-failed: it is settled).
async fn receive(
    server: &Arc<Server>,
    remote: &FederationRemote,
    peer: &str,
    room: &str,
    pdu: Value,
) -> Result<usize, Error> {
    Ok(match receive_pdu(server, remote, peer, room, pdu).await? {
        Outcome::Accepted { .. } | Outcome::SoftFailed { .. } => 1,
        Outcome::Rejected { event_id, reason } => {
            tracing::debug!(%peer, ?event_id, %reason, "anti-entropy: event rejected");
            0
        }
        Outcome::AlreadyKnown { .. } | Outcome::Outlier { .. } => 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_a_period() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(60));
            assert!(d >= Duration::from_secs(30) && d <= Duration::from_secs(90));
        }
        assert!(jittered(Duration::ZERO) >= Duration::from_millis(100));
    }

    #[test]
    fn queued_passes_are_capped() {
        let mut running = HashSet::new();
        for i in 0..MAX_QUEUED_PASSES {
            assert!(claim(&mut running, &format!("peer{i}")));
        }
        assert!(!claim(&mut running, "peer0"), "one pass per peer at a time");
        assert!(
            !claim(&mut running, "one-too-many"),
            "past the cap a pass is dropped"
        );
        assert_eq!(running.len(), MAX_QUEUED_PASSES);
        running.remove("peer3");
        assert!(
            claim(&mut running, "one-too-many"),
            "a freed slot is reused"
        );
    }
}
