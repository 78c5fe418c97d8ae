//! The P2P address book: addresses at which peers were seen, with when and how.
//!
//! The transport crate records every address it learns (config, mDNS, identify, DHT,
//! successful connections) and reads them back on start so known peers are redialled
//! without any discovery. Peers and addresses are opaque strings here (`PeerId` and
//! multiaddr text); `core` knows nothing about libp2p.

use rusqlite::{Connection, params};

use crate::error::Error;

/// Most addresses kept per peer: a peer that rotates ports must not grow the table
/// without bound.
const MAX_ADDRESSES_PER_PEER: i64 = 16;

/// Most peers kept in the address book. Past it, [`prune_peer_addresses`] forgets the
/// peers seen longest ago (by their newest address), so spoofed mDNS or DHT sightings of
/// fresh peer ids cannot grow the table without bound.
pub const MAX_PEERS: i64 = 4096;

/// One remembered address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerAddress {
    /// The peer's libp2p id (base58).
    pub peer_id: String,
    /// A multiaddr, without the trailing `/p2p/<peer_id>`.
    pub address: String,
    /// How it was learned: `config`, `mdns`, `identify`, `dht`, `connected`.
    pub source: String,
    /// Last time it was seen or used, in ms since the epoch.
    pub last_seen_ts: i64,
}

/// Insert or refresh an address, then trim the peer's oldest addresses past the cap.
pub fn record_peer_address(c: &Connection, a: &PeerAddress) -> Result<(), Error> {
    c.execute(
        "INSERT INTO peer_addresses (peer_id, address, source, last_seen_ts)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (peer_id, address)
         DO UPDATE SET source = excluded.source,
                       last_seen_ts = max(last_seen_ts, excluded.last_seen_ts)",
        params![a.peer_id, a.address, a.source, a.last_seen_ts],
    )?;
    c.execute(
        "DELETE FROM peer_addresses WHERE peer_id = ?1 AND address NOT IN (
             SELECT address FROM peer_addresses WHERE peer_id = ?1
             ORDER BY last_seen_ts DESC LIMIT ?2)",
        params![a.peer_id, MAX_ADDRESSES_PER_PEER],
    )?;
    Ok(())
}

/// Forget whole peers, the ones seen longest ago first, until at most `max_peers` remain.
/// Returns how many rows were deleted.
pub fn prune_peer_addresses(c: &Connection, max_peers: i64) -> Result<usize, Error> {
    let peers: i64 = c.query_row(
        "SELECT count(DISTINCT peer_id) FROM peer_addresses",
        [],
        |r| r.get(0),
    )?;
    if peers <= max_peers {
        return Ok(0);
    }
    let deleted = c.execute(
        "DELETE FROM peer_addresses WHERE peer_id IN (
             SELECT peer_id FROM peer_addresses GROUP BY peer_id
             ORDER BY max(last_seen_ts) DESC LIMIT -1 OFFSET ?1)",
        params![max_peers],
    )?;
    Ok(deleted)
}

/// The most recently seen addresses, newest first, at most `limit`.
pub fn recent_peer_addresses(c: &Connection, limit: i64) -> Result<Vec<PeerAddress>, Error> {
    let mut stmt = c.prepare_cached(
        "SELECT peer_id, address, source, last_seen_ts FROM peer_addresses
         ORDER BY last_seen_ts DESC LIMIT ?1",
    )?;
    let rows = stmt.query_map([limit], |r| {
        Ok(PeerAddress {
            peer_id: r.get(0)?,
            address: r.get(1)?,
            source: r.get(2)?,
            last_seen_ts: r.get(3)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Forget one address (e.g. after it failed to dial with a permanent error).
pub fn forget_peer_address(c: &Connection, peer_id: &str, address: &str) -> Result<(), Error> {
    c.execute(
        "DELETE FROM peer_addresses WHERE peer_id = ?1 AND address = ?2",
        params![peer_id, address],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(peer: &str, address: &str, ts: i64) -> PeerAddress {
        PeerAddress {
            peer_id: peer.into(),
            address: address.into(),
            source: "identify".into(),
            last_seen_ts: ts,
        }
    }

    #[test]
    fn records_refreshes_and_caps_addresses() -> Result<(), Error> {
        let mut c = Connection::open_in_memory()?;
        super::super::migrations::run(&mut c, "memory")
            .map_err(|e| Error::Internal(e.to_string()))?;
        record_peer_address(&c, &addr("p", "/ip4/1.2.3.4/tcp/1", 10))?;
        record_peer_address(&c, &addr("p", "/ip4/1.2.3.4/tcp/1", 5))?;
        let got = recent_peer_addresses(&c, 10)?;
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].last_seen_ts, 10,
            "an older sighting must not move time back"
        );
        for i in 0..40 {
            record_peer_address(
                &c,
                &addr("p", &format!("/ip4/1.2.3.4/tcp/{}", 100 + i), 100 + i),
            )?;
        }
        let got = recent_peer_addresses(&c, 100)?;
        assert_eq!(got.len() as i64, MAX_ADDRESSES_PER_PEER);
        assert_eq!(got[0].address, "/ip4/1.2.3.4/tcp/139");
        forget_peer_address(&c, "p", "/ip4/1.2.3.4/tcp/139")?;
        assert_eq!(
            recent_peer_addresses(&c, 1)?[0].address,
            "/ip4/1.2.3.4/tcp/138"
        );
        Ok(())
    }

    #[test]
    fn prunes_the_peers_seen_longest_ago() -> Result<(), Error> {
        let mut c = Connection::open_in_memory()?;
        super::super::migrations::run(&mut c, "memory")
            .map_err(|e| Error::Internal(e.to_string()))?;
        for i in 0..20 {
            // Two addresses a peer; the second is the newer one.
            record_peer_address(&c, &addr(&format!("p{i:02}"), "/ip4/1.2.3.4/tcp/1", i))?;
            record_peer_address(
                &c,
                &addr(&format!("p{i:02}"), "/ip4/1.2.3.4/tcp/2", 100 + i),
            )?;
        }
        assert_eq!(prune_peer_addresses(&c, 20)?, 0, "at the cap nothing goes");
        assert_eq!(prune_peer_addresses(&c, 5)?, 30, "15 peers, 2 rows each");
        let mut left: Vec<String> = recent_peer_addresses(&c, 100)?
            .into_iter()
            .map(|a| a.peer_id)
            .collect();
        left.sort();
        left.dedup();
        assert_eq!(left, ["p15", "p16", "p17", "p18", "p19"]);
        Ok(())
    }
}
