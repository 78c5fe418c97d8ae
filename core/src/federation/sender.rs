//! The federation sender: one task per destination drains its outbox rows into
//! `PUT /_matrix/federation/v1/send/{txnId}` transactions.
//!
//! Nothing is dropped because a peer is away: rows stay in SQLite until the destination
//! acknowledges them, across restarts. A failed transaction is retried with full-jitter
//! exponential backoff, and the backoff ends the moment the transport reports the peer
//! connected or rediscovered (DESIGN.md §4).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use ruma::api::federation::transactions::send_transaction_message::v1::Request;
use serde_json::value::to_raw_value;
use tokio::sync::{Notify, broadcast};
use tokio::task::JoinHandle;

use super::PeerEvent;
use super::client;
use crate::server::Server;
use crate::storage::{self, now_ms};

/// Spec limits for one transaction.
pub const MAX_PDUS_PER_TXN: usize = 50;
/// Spec limits for one transaction.
pub const MAX_EDUS_PER_TXN: usize = 100;
/// First retry delay ceiling; doubled per failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Largest retry delay ceiling. Peers on a mesh come and go; rediscovery cuts it short.
/// A minute, not more: a link that fails for a while (loss, a flapping radio) without
/// the peer ever disconnecting produces no rediscovery, and its queue should not sit for
/// five minutes once the link is good again.
const BACKOFF_CAP: Duration = Duration::from_secs(60);
/// The ceiling while the transport still has a connection to the destination: the
/// failure was the link's (a lossy link timing a request out) or the peer's, not its
/// absence, so retry soon.
const CONNECTED_BACKOFF_CAP: Duration = Duration::from_secs(5);
/// While a destination's mailbox takes its mail, the destination itself is tried again
/// after its backoff, but not sooner than this: each try may wait out a dial timeout.
const MIN_DIRECT_RETRY: Duration = Duration::from_secs(2);
/// How often the outbox is rescanned even without a wake-up (belt and braces).
const RESCAN: Duration = Duration::from_secs(60);
/// A destination's task ends after this long with nothing to send; the next row queued
/// for it starts a new one. Keeps tasks to the destinations that are being talked to.
const IDLE_EXIT: Duration = Duration::from_secs(600);

/// One destination's task handles.
struct Destination {
    /// New rows were queued.
    wake: Arc<Notify>,
    /// The peer (re)appeared: retry now.
    retry_now: Arc<Notify>,
    /// The task; once finished (idle), the entry is replaced.
    task: JoinHandle<()>,
}

/// A destination's task ends with its entry: when the manager stops (the node shuts
/// down), so do all of them, instead of holding the server until they idle out.
impl Drop for Destination {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Start the sender manager.
pub fn start(server: Arc<Server>, mut events: broadcast::Receiver<PeerEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut destinations: HashMap<String, Destination> = HashMap::new();
        let mut rescan = tokio::time::interval(RESCAN);
        loop {
            tokio::select! {
                _ = server.federation.outbox_wake.notified() => wake_all(&server, &mut destinations),
                _ = rescan.tick() => wake_all(&server, &mut destinations),
                event = events.recv() => match event {
                    Ok(PeerEvent::Connected { server_name })
                    | Ok(PeerEvent::Rediscovered { server_name }) => {
                        if let Some(d) = destinations.get(&server_name) {
                            d.retry_now.notify_one();
                        }
                    }
                    Ok(_) => {}
                    // Missed events: retry everyone rather than wait out backoffs.
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        for d in destinations.values() {
                            d.retry_now.notify_one();
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        // The transport is gone; keep serving wake-ups until shutdown.
                        events = broadcast::channel(1).1;
                    }
                },
            }
        }
    })
}

/// Make sure every destination with queued rows has a task, and wake them.
fn wake_all(server: &Arc<Server>, destinations: &mut HashMap<String, Destination>) {
    let pending = match server.db.read(storage::outbox_destinations) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the federation outbox");
            return;
        }
    };
    tracing::trace!(?pending, "federation outbox scan");
    destinations.retain(|_, d| !d.task.is_finished());
    for name in pending {
        let d = destinations.entry(name.clone()).or_insert_with(|| {
            let (wake, retry_now) = (Arc::new(Notify::new()), Arc::new(Notify::new()));
            let task = tokio::spawn(destination_task(
                server.clone(),
                name,
                wake.clone(),
                retry_now.clone(),
            ));
            Destination {
                wake,
                retry_now,
                task,
            }
        });
        d.wake.notify_one();
    }
}

/// Deliver `destination`'s queue until it has been empty for [`IDLE_EXIT`]. While the
/// destination fails, its queue is kept within [`crate::config::OutboxLimits`].
async fn destination_task(
    server: Arc<Server>,
    destination: String,
    wake: Arc<Notify>,
    retry_now: Arc<Notify>,
) {
    let mut failures: u32 = 0;
    // While the destination is away and one of its mailboxes takes its mail: when to
    // try the destination itself again (a reconnection ends it at once).
    let mut direct_after: Option<Instant> = None;
    loop {
        let batch = match server
            .db
            .read(|c| storage::outbox_batch(c, &destination, MAX_PDUS_PER_TXN, MAX_EDUS_PER_TXN))
        {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(%destination, error = %e, "cannot read the outbox");
                tokio::time::sleep(BACKOFF_BASE).await;
                continue;
            }
        };
        tracing::trace!(%destination, rows = batch.ids.len(), "outbox batch");
        if batch.ids.is_empty() {
            tokio::select! {
                () = wake.notified() => continue,
                () = retry_now.notified() => {
                    direct_after = None;
                    continue;
                }
                () = tokio::time::sleep(IDLE_EXIT) => return,
            }
        }
        let direct = direct_after.is_none_or(|t| Instant::now() >= t);
        let sent = if direct {
            send_transaction(&server, &destination, &batch).await
        } else {
            Err(crate::error::Error::RemoteServer(format!(
                "{destination} is away; its mail goes to its mailbox"
            )))
        };
        match sent {
            Ok(()) => {
                failures = 0;
                direct_after = None;
                delivered(&server, &destination, &batch);
            }
            Err(e) => {
                if direct {
                    failures = failures.saturating_add(1);
                }
                // Still connected: the link or the peer failed this once, and a mailbox
                // would only delay it. Away: its mailbox (if it named one) takes it.
                let connected = still_connected(&server, &destination).await;
                if !connected {
                    let txn = txn_id(&batch.ids);
                    match crate::mailbox::deposit::deposit(
                        &server,
                        &destination,
                        &txn,
                        &batch.pdus,
                        &batch.edus,
                    )
                    .await
                    {
                        Ok(mailbox) => {
                            match mailbox {
                                Some(mailbox) => {
                                    tracing::info!(%destination, %mailbox, txn_id = %txn, "left a transaction with the destination's mailbox")
                                }
                                None => {
                                    tracing::debug!(%destination, "dropped typing and presence for a destination that is away")
                                }
                            }
                            delivered(&server, &destination, &batch);
                            if direct {
                                direct_after = Some(
                                    Instant::now()
                                        + backoff(failures, BACKOFF_CAP).max(MIN_DIRECT_RETRY),
                                );
                            }
                            continue;
                        }
                        Err(why) => {
                            tracing::debug!(%destination, error = %why, "no mailbox took the transaction");
                        }
                    }
                }
                direct_after = None;
                trim(&server, &destination);
                let cap = if connected {
                    CONNECTED_BACKOFF_CAP
                } else {
                    BACKOFF_CAP
                };
                let delay = backoff(failures, cap);
                tracing::info!(%destination, error = %e, retry_in = ?delay, "federation transaction failed");
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = retry_now.notified() => {
                        tracing::debug!(%destination, "peer is back; retrying now");
                        failures = 0;
                    }
                }
            }
        }
    }
}

/// Forget rows the destination (or its mailbox) has taken.
fn delivered(server: &Server, destination: &str, batch: &storage::OutboxBatch) {
    if let Err(e) = server.db.write(|c| storage::outbox_delete(c, &batch.ids)) {
        tracing::warn!(%destination, error = %e, "cannot clear delivered rows");
    }
}

/// Keep a failing destination's queue within its bounds.
fn trim(server: &Server, destination: &str) {
    let limits = &server.config.outbox;
    let older_than =
        now_ms().saturating_sub(i64::try_from(limits.max_age.as_millis()).unwrap_or(i64::MAX));
    match server
        .db
        .write(|c| storage::trim_outbox(c, destination, limits.max_rows, older_than))
    {
        Ok(0) => {}
        Ok(dropped) => tracing::info!(
            %destination,
            dropped,
            "outbox over its bounds for an unreachable destination; anti-entropy will recover the events"
        ),
        Err(e) => tracing::warn!(%destination, error = %e, "cannot trim the outbox"),
    }
}

/// Whether the transport reports a connection to `destination` right now.
async fn still_connected(server: &Server, destination: &str) -> bool {
    let Some(transport) = server.transport() else {
        return false;
    };
    transport
        .peers()
        .await
        .iter()
        .any(|p| p.server_name.as_deref() == Some(destination))
}

/// Full jitter: a uniform delay up to `min(cap, base · 2^(failures-1))`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let ceiling = BACKOFF_BASE
        .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
        .min(cap);
    let ms = rand::thread_rng().gen_range(0..=ceiling.as_millis() as u64);
    Duration::from_millis(ms)
}

/// The transaction id names the first and last rows it carries, so a retry of the same
/// rows reuses the id (and the receiver's deduplication applies) across restarts.
fn txn_id(ids: &[i64]) -> String {
    match (ids.first(), ids.last()) {
        (Some(a), Some(b)) => format!("w{a}-{b}"),
        _ => "w0".to_owned(),
    }
}

async fn send_transaction(
    server: &Server,
    destination: &str,
    batch: &storage::OutboxBatch,
) -> Result<(), crate::error::Error> {
    let origin = ruma::OwnedServerName::try_from(server.server_name())
        .map_err(crate::error::Error::internal)?;
    let ts = ruma::UInt::new_saturating(u64::try_from(now_ms()).unwrap_or(0));
    let mut request = Request::new(
        txn_id(&batch.ids).into(),
        origin,
        ruma::MilliSecondsSinceUnixEpoch(ts),
    );
    request.pdus = batch
        .pdus
        .iter()
        .map(to_raw_value)
        .collect::<Result<_, _>>()?;
    request.edus = batch
        .edus
        .iter()
        .map(|edu| to_raw_value(edu).map(ruma::serde::Raw::from_json))
        .collect::<Result<_, _>>()?;
    let answer = client::execute(server, destination, request).await?;
    // Per-PDU errors are the receiver's verdict on our events; retrying cannot change it.
    for (event_id, result) in answer.pdus {
        if let Err(error) = result {
            tracing::warn!(%destination, %event_id, %error, "destination refused a PDU");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for failures in 1..40 {
            let ceiling = BACKOFF_BASE
                .saturating_mul(1u32 << (failures - 1).min(20))
                .min(BACKOFF_CAP);
            for _ in 0..20 {
                assert!(backoff(failures, BACKOFF_CAP) <= ceiling);
                assert!(backoff(failures, CONNECTED_BACKOFF_CAP) <= CONNECTED_BACKOFF_CAP);
            }
        }
        assert!(backoff(1, BACKOFF_CAP) <= BACKOFF_BASE);
        assert_eq!(txn_id(&[3, 4, 9]), "w3-9");
    }
}
