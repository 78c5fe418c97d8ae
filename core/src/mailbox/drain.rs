//! The owner's side: collecting mail from its mailboxes, and the task that does it and
//! hands this node's record to the peers it meets.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use super::{MAX_DRAIN_BATCH, record};
use crate::error::Error;
use crate::federation::PeerEvent;
use crate::federation::client::execute;
use crate::federation::warren_api::{Ack, Deposits};
use crate::federation::{keys, outbox};
use crate::server::Server;
use crate::storage;

/// Mailboxes are drained this often even without a reconnection (and at start).
const DRAIN_INTERVAL: Duration = Duration::from_secs(300);
/// Peers remembered as having this node's current record (cleared past it).
const MAX_SHARED: usize = 4096;

/// Start the task: drain every mailbox at start, every [`DRAIN_INTERVAL`] and whenever
/// `mailbox_wake` fires; drain one when it connects; hand the current record to each
/// peer that connects, once per record.
pub fn start(server: Arc<Server>, mut events: broadcast::Receiver<PeerEvent>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(DRAIN_INTERVAL);
        let mut shared = Shared::default();
        loop {
            tokio::select! {
                _ = every.tick() => drain_all(&server).await,
                () = server.federation.mailbox_wake.notified() => drain_all(&server).await,
                event = events.recv() => match event {
                    Ok(PeerEvent::Connected { server_name })
                    | Ok(PeerEvent::Rediscovered { server_name }) => {
                        shared.share(&server, &server_name);
                        if is_own_mailbox(&server, &server_name) {
                            drain_logged(&server, &server_name).await;
                        }
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => drain_all(&server).await,
                    Err(broadcast::error::RecvError::Closed) => {
                        events = broadcast::channel(1).1;
                    }
                },
            }
        }
    })
}

/// Which peers have been handed which version of this node's record.
#[derive(Default)]
struct Shared {
    ts: i64,
    peers: HashSet<String>,
}

impl Shared {
    /// Queue this node's record for `peer` unless it has this version already (or this
    /// node names no mailbox).
    fn share(&mut self, server: &Server, peer: &str) {
        let own = match server.db.read(|c| record::held(c, server.server_name())) {
            Ok(Some((own, value))) if !own.mailboxes.is_empty() => (own, value),
            Ok(_) => return,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read this node's mailbox record");
                return;
            }
        };
        if own.0.ts != self.ts || self.peers.len() >= MAX_SHARED {
            self.ts = own.0.ts;
            self.peers.clear();
        }
        if !self.peers.insert(peer.to_owned()) {
            return;
        }
        let edu = record::edu(&own.1);
        if let Err(e) = server.write(|c| outbox::enqueue_edu(c, server, peer, &edu)) {
            tracing::warn!(%peer, error = %e, "could not queue the mailbox record");
        }
    }
}

fn is_own_mailbox(server: &Server, name: &str) -> bool {
    server
        .db
        .read(storage::own_mailboxes)
        .is_ok_and(|m| m.iter().any(|(n, _)| n == name))
}

async fn drain_all(server: &Arc<Server>) {
    let mailboxes = match server.db.read(storage::own_mailboxes) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read this node's mailboxes");
            return;
        }
    };
    for (mailbox, _) in mailboxes {
        drain_logged(server, &mailbox).await;
    }
}

async fn drain_logged(server: &Arc<Server>, mailbox: &str) {
    match drain_from(server, mailbox).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(%mailbox, deposits = n, "collected mail"),
        Err(e) => tracing::debug!(%mailbox, error = %e, "could not collect mail"),
    }
}

/// Collect everything `mailbox` holds for this node, in the order it was left: apply
/// each deposit as a transaction from its depositor, then acknowledge it. Returns how
/// many deposits were taken.
pub async fn drain_from(server: &Arc<Server>, mailbox: &str) -> Result<usize, Error> {
    let mut taken = 0;
    loop {
        let request = Deposits {
            limit: MAX_DRAIN_BATCH,
        };
        let answer = execute(server, mailbox, request).await?;
        if answer.deposits.is_empty() {
            return Ok(taken);
        }
        let mut done = Vec::new();
        let mut stop = None;
        for deposit in &answer.deposits {
            match apply(server, &deposit.transaction).await {
                Ok(()) => done.push(deposit.id),
                Err(Error::RateLimited(wait)) => {
                    stop = Some(Ok(wait));
                    break;
                }
                // This node failed (its database, a fetch the PDU needed), not the deposit:
                // take it again next time.
                Err(e @ (Error::Internal(_) | Error::RemoteServer(_))) => {
                    stop = Some(Err(e));
                    break;
                }
                Err(e) => {
                    // It will never be valid: drop it.
                    tracing::warn!(%mailbox, id = deposit.id, error = %e, "dropped a bad deposit");
                    done.push(deposit.id);
                }
            }
        }
        taken += done.len();
        if !done.is_empty() {
            execute(server, mailbox, Ack { ids: done }).await?;
        }
        match stop {
            None => {}
            Some(Ok(wait)) => tokio::time::sleep(wait).await,
            Some(Err(e)) => return Err(e),
        }
    }
}

/// Check one deposit (for this node, signed by its origin) and apply it as that
/// origin's transaction.
async fn apply(server: &Arc<Server>, transaction: &Value) -> Result<(), Error> {
    let field = |k: &str| transaction.get(k).and_then(Value::as_str);
    let (Some(origin), Some(txn_id)) = (field("origin"), field("txn_id")) else {
        return Err(Error::BadJson("a deposit without origin or txn_id".into()));
    };
    if field("destination") != Some(server.server_name()) {
        return Err(Error::BadJson("a deposit for another node".into()));
    }
    let object: ruma::CanonicalJsonObject = serde_json::from_value(transaction.clone())
        .map_err(|e| Error::BadJson(format!("a deposit that is not canonical JSON: {e}")))?;
    keys::verify_signed_by(origin, &object)?;
    crate::federation::transaction::apply_transaction(server, origin, txn_id, transaction).await?;
    Ok(())
}
