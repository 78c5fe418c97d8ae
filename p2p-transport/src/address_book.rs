//! The persistent address book, kept in the node's SQLite file through `warren-core`.
//!
//! The swarm task must never block on SQLite, so [`AddressBook::record`] only queues the
//! sighting; a writer task batches the queue into one transaction at a time and skips
//! sightings it wrote recently (identify and mDNS repeat themselves constantly).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use libp2p::{Multiaddr, PeerId};
use tokio::sync::mpsc;
use warren_core::server::Server;
use warren_core::storage::{
    MAX_PEERS, PeerAddress, now_ms, prune_peer_addresses, recent_peer_addresses,
    record_peer_address,
};

/// Addresses loaded at start: enough to reconnect to every recent peer.
const LOAD_LIMIT: i64 = 512;
/// A sighting of the same address is written at most this often.
const REWRITE_AFTER: Duration = Duration::from_secs(300);
/// Queued sightings before new ones are dropped (they are hints, not data).
const QUEUE: usize = 1024;

/// Handle to the address book.
#[derive(Clone)]
pub(crate) struct AddressBook {
    server: Arc<Server>,
    queue: mpsc::Sender<PeerAddress>,
}

impl AddressBook {
    /// Start the writer task.
    pub(crate) fn start(server: Arc<Server>) -> AddressBook {
        let (queue, rx) = mpsc::channel(QUEUE);
        tokio::spawn(writer(server.clone(), rx));
        AddressBook { server, queue }
    }

    /// Remembered addresses, newest first. Rows that no longer parse are skipped.
    pub(crate) fn load(&self) -> Vec<(PeerId, Multiaddr)> {
        let rows = match self
            .server
            .db
            .read(|c| recent_peer_addresses(c, LOAD_LIMIT))
        {
            Ok(rows) => rows,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the address book");
                return Vec::new();
            }
        };
        rows.into_iter()
            .filter_map(|r| Some((r.peer_id.parse().ok()?, r.address.parse().ok()?)))
            .collect()
    }

    /// Queue a sighting of `peer` at `addr`.
    pub(crate) fn record(&self, peer: PeerId, addr: &Multiaddr, source: &str) {
        let row = PeerAddress {
            peer_id: peer.to_base58(),
            // Stored without `/p2p/<id>` so one address is one row whatever reported it.
            address: crate::addr::without_peer(addr).to_string(),
            source: source.to_owned(),
            last_seen_ts: now_ms(),
        };
        if self.queue.try_send(row).is_err() {
            tracing::debug!(%peer, "address book queue full; sighting dropped");
        }
    }
}

async fn writer(server: Arc<Server>, mut rx: mpsc::Receiver<PeerAddress>) {
    let mut written: HashMap<(String, String), Instant> = HashMap::new();
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let now = Instant::now();
        batch.retain(|r| {
            let key = (r.peer_id.clone(), r.address.clone());
            let fresh = written
                .get(&key)
                .is_none_or(|t| now.duration_since(*t) >= REWRITE_AFTER);
            if fresh {
                written.insert(key, now);
            }
            fresh
        });
        if batch.is_empty() {
            continue;
        }
        if written.len() > 4 * LOAD_LIMIT as usize {
            written.retain(|_, t| now.duration_since(*t) < REWRITE_AFTER);
        }
        let server = server.clone();
        let result = tokio::task::spawn_blocking(move || {
            server.db.write(|tx| {
                for row in &batch {
                    record_peer_address(tx, row)?;
                }
                // Fresh peer ids are free: keep the table to the newest MAX_PEERS peers.
                prune_peer_addresses(tx, MAX_PEERS)?;
                Ok(())
            })
        })
        .await;
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot write the address book"),
            Err(e) => tracing::warn!(error = %e, "address book writer panicked"),
        }
    }
}
