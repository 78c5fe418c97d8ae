//! Mailboxes: signed mailbox records, the mailboxes this node named, and the deposits it
//! holds for other nodes (see [`crate::mailbox`]).

use rusqlite::{Connection, OptionalExtension, params};

use crate::error::Error;

/// The peers this node named as its mailboxes, with the address given for each (if
/// any), oldest first.
pub fn own_mailboxes(c: &Connection) -> Result<Vec<(String, Option<String>)>, Error> {
    let mut st = c.prepare_cached(
        "SELECT server_name, address FROM own_mailboxes ORDER BY added_ts, server_name",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Name a mailbox (or update its address). Returns whether it is new.
pub fn add_own_mailbox(
    c: &Connection,
    server_name: &str,
    address: Option<&str>,
    now: i64,
) -> Result<bool, Error> {
    let existed = c
        .query_row(
            "SELECT 1 FROM own_mailboxes WHERE server_name = ?1",
            [server_name],
            |_| Ok(()),
        )
        .optional()?
        .is_some();
    c.execute(
        "INSERT INTO own_mailboxes (server_name, address, added_ts) VALUES (?1, ?2, ?3)
         ON CONFLICT (server_name) DO UPDATE SET address = COALESCE(?2, address)",
        params![server_name, address, now],
    )?;
    Ok(!existed)
}

/// Stop using a mailbox. Returns whether it was named.
pub fn remove_own_mailbox(c: &Connection, server_name: &str) -> Result<bool, Error> {
    Ok(c.execute(
        "DELETE FROM own_mailboxes WHERE server_name = ?1",
        [server_name],
    )? > 0)
}

/// The signed mailbox record of `owner` this node holds, with its `ts`.
pub fn mailbox_record(c: &Connection, owner: &str) -> Result<Option<(String, i64)>, Error> {
    Ok(
        c.prepare_cached("SELECT record, ts FROM mailbox_records WHERE owner = ?1")?
            .query_row([owner], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?,
    )
}

/// How a record is kept (see [`store_mailbox_record`]).
#[derive(Clone, Copy, Debug)]
pub struct RecordBounds<'a> {
    /// Records of owners that do not name this node, at most (least recently received
    /// dropped first).
    pub max_others: usize,
    /// Records naming this node (owners it holds mail for), at most: a new owner past it
    /// is refused, and these are never pushed out by other records.
    pub max_naming_this_node: usize,
    /// This node's own server name: its record is never dropped.
    pub this_node: &'a str,
}

/// What became of a record offered to [`store_mailbox_record`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordStored {
    /// Kept (new, or newer than the one held).
    Stored,
    /// One at least as new is held.
    Stale,
    /// It names this node, and as many owners as allowed already do.
    Full,
}

/// Keep `owner`'s record unless one at least as new is held, within `bounds`.
pub fn store_mailbox_record(
    c: &Connection,
    owner: &str,
    record: &str,
    ts: i64,
    now: i64,
    names_this_node: bool,
    bounds: RecordBounds<'_>,
) -> Result<RecordStored, Error> {
    let held: Option<(i64, bool)> = c
        .query_row(
            "SELECT ts, names_this_node FROM mailbox_records WHERE owner = ?1",
            [owner],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if held.is_some_and(|(held_ts, _)| held_ts >= ts) {
        return Ok(RecordStored::Stale);
    }
    if names_this_node && owner != bounds.this_node && !held.is_some_and(|(_, named)| named) {
        let naming: i64 = c.query_row(
            "SELECT COUNT(*) FROM mailbox_records WHERE names_this_node = 1",
            [],
            |r| r.get(0),
        )?;
        if naming as usize >= bounds.max_naming_this_node {
            return Ok(RecordStored::Full);
        }
    }
    c.execute(
        "INSERT INTO mailbox_records (owner, record, ts, received_ts, names_this_node)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (owner) DO UPDATE SET record = ?2, ts = ?3, received_ts = ?4,
             names_this_node = ?5",
        params![owner, record, ts, now, names_this_node],
    )?;
    c.execute(
        "DELETE FROM mailbox_records WHERE owner IN (
             SELECT owner FROM mailbox_records WHERE owner != ?1 AND names_this_node = 0
             ORDER BY received_ts DESC, owner LIMIT -1 OFFSET ?2)",
        params![bounds.this_node, bounds.max_others as i64],
    )?;
    Ok(RecordStored::Stored)
}

/// A deposit held for its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Deposit {
    /// Row id, to acknowledge it by.
    pub id: i64,
    /// Who left it (the signer of `body`).
    pub depositor: String,
    /// The depositor's transaction id.
    pub txn_id: String,
    /// The signed transaction, as received.
    pub body: String,
}

/// What one owner's deposits use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DepositUsage {
    /// Deposits held for the owner.
    pub owner_count: i64,
    /// Their bytes.
    pub owner_bytes: i64,
    /// Bytes of them left by one depositor.
    pub depositor_bytes: i64,
    /// Owners with at least one deposit, this one included.
    pub owners: i64,
}

/// The usage a new deposit for `owner` by `depositor` is judged against.
pub fn deposit_usage(c: &Connection, owner: &str, depositor: &str) -> Result<DepositUsage, Error> {
    let (owner_count, owner_bytes, depositor_bytes) = c.query_row(
        "SELECT COUNT(*), COALESCE(SUM(bytes), 0),
                COALESCE(SUM(CASE WHEN depositor = ?2 THEN bytes ELSE 0 END), 0)
         FROM mailbox_deposits WHERE owner = ?1",
        params![owner, depositor],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    let owners = c.query_row(
        "SELECT COUNT(DISTINCT owner) FROM mailbox_deposits",
        [],
        |r| r.get(0),
    )?;
    Ok(DepositUsage {
        owner_count,
        owner_bytes,
        depositor_bytes,
        owners,
    })
}

/// Hold a deposit. A repeated one (same owner, depositor and transaction id) is kept
/// once. Returns whether it was new.
pub fn insert_deposit(
    c: &Connection,
    owner: &str,
    depositor: &str,
    txn_id: &str,
    body: &str,
    now: i64,
) -> Result<bool, Error> {
    Ok(c.execute(
        "INSERT OR IGNORE INTO mailbox_deposits (owner, depositor, txn_id, body, bytes, received_ts)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
        params![owner, depositor, txn_id, body, body.len() as i64, now],
    )? > 0)
}

/// Whether this deposit is held already.
pub fn has_deposit(
    c: &Connection,
    owner: &str,
    depositor: &str,
    txn_id: &str,
) -> Result<bool, Error> {
    Ok(c.prepare_cached(
        "SELECT 1 FROM mailbox_deposits WHERE owner = ?1 AND depositor = ?2 AND txn_id = ?3",
    )?
    .query_row(params![owner, depositor, txn_id], |_| Ok(()))
    .optional()?
    .is_some())
}

/// The oldest deposits for `owner`: at most `limit`, and no more than `max_bytes` in
/// all unless the first alone is larger (it is still handed over, alone).
pub fn deposits_for(
    c: &Connection,
    owner: &str,
    limit: usize,
    max_bytes: usize,
) -> Result<Vec<Deposit>, Error> {
    let mut st = c.prepare_cached(
        "SELECT id, depositor, txn_id, body FROM mailbox_deposits WHERE owner = ?1
         ORDER BY id LIMIT ?2",
    )?;
    let mut rows = st.query(params![owner, limit as i64])?;
    let (mut out, mut bytes) = (Vec::new(), 0usize);
    while let Some(r) = rows.next()? {
        let body: String = r.get(3)?;
        if !out.is_empty() && bytes + body.len() > max_bytes {
            break;
        }
        bytes += body.len();
        out.push(Deposit {
            id: r.get(0)?,
            depositor: r.get(1)?,
            txn_id: r.get(2)?,
            body,
        });
    }
    Ok(out)
}

/// Forget deposits `owner` has taken. Returns how many went.
pub fn delete_deposits(c: &Connection, owner: &str, ids: &[i64]) -> Result<usize, Error> {
    let mut st = c.prepare_cached("DELETE FROM mailbox_deposits WHERE owner = ?1 AND id = ?2")?;
    let mut n = 0;
    for id in ids {
        n += st.execute(params![owner, id])?;
    }
    Ok(n)
}

/// Drop deposits received before `older_than` (their time to live is over). Returns
/// how many went.
pub fn expire_deposits(c: &Connection, older_than: i64) -> Result<usize, Error> {
    Ok(c.execute(
        "DELETE FROM mailbox_deposits WHERE received_ts < ?1",
        [older_than],
    )?)
}

/// Per owner: deposits held and their bytes, for `warren mailbox list`.
pub fn mailbox_holdings(c: &Connection) -> Result<Vec<(String, i64, i64)>, Error> {
    let mut st = c.prepare(
        "SELECT owner, COUNT(*), SUM(bytes) FROM mailbox_deposits GROUP BY owner ORDER BY owner",
    )?;
    let rows = st.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The other servers that share a joined room with any local user of `server_name`.
pub fn servers_sharing_rooms_with(c: &Connection, server_name: &str) -> Result<Vec<String>, Error> {
    let mut st = c.prepare(
        "SELECT DISTINCT m2.user_id FROM memberships m1 JOIN memberships m2 ON m1.room_id = m2.room_id
         WHERE m1.membership = 'join' AND m2.membership = 'join' AND m1.user_id LIKE ?1",
    )?;
    let rows = st.query_map([format!("%:{server_name}")], |r| r.get::<_, String>(0))?;
    let mut servers = super::servers_of(rows)?;
    servers.retain(|s| s != server_name);
    Ok(servers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let mut c = Connection::open_in_memory().expect("open");
        super::super::migrations::run(&mut c, "mem").expect("migrate");
        c
    }

    #[test]
    fn records_keep_the_newest_and_stay_within_their_bounds() {
        let c = db();
        let bounds = RecordBounds {
            max_others: 1,
            max_naming_this_node: 1,
            this_node: "me",
        };
        let store = |owner: &str, record: &str, ts: i64, now: i64, names: bool| {
            store_mailbox_record(&c, owner, record, ts, now, names, bounds).expect("store")
        };
        assert_eq!(store("me", "{}", 1, 1, false), RecordStored::Stored);
        assert_eq!(store("a", "a1", 5, 2, false), RecordStored::Stored);
        // An older or equal record does not replace a newer one.
        assert_eq!(store("a", "a0", 4, 3, false), RecordStored::Stale);
        assert_eq!(store("a", "a0", 5, 3, false), RecordStored::Stale);
        assert_eq!(
            mailbox_record(&c, "a").expect("read"),
            Some(("a1".into(), 5))
        );
        // One other at most: the least recently received goes; ours never does.
        assert_eq!(store("b", "b1", 1, 4, false), RecordStored::Stored);
        assert!(mailbox_record(&c, "a").expect("a").is_none());
        // An owner naming this node is not pushed out by others...
        assert_eq!(store("o", "o1", 1, 5, true), RecordStored::Stored);
        assert_eq!(store("c", "c1", 1, 6, false), RecordStored::Stored);
        assert_eq!(store("d", "d1", 1, 7, false), RecordStored::Stored);
        assert!(mailbox_record(&c, "o").expect("o").is_some());
        assert!(mailbox_record(&c, "c").expect("c").is_none());
        assert!(mailbox_record(&c, "me").expect("me").is_some());
        // ...and a second one past the bound is refused, while the first may renew.
        assert_eq!(store("p", "p1", 1, 8, true), RecordStored::Full);
        assert_eq!(store("o", "o2", 2, 9, true), RecordStored::Stored);
        // Once it stops naming this node it is an ordinary record again.
        assert_eq!(store("o", "o3", 3, 10, false), RecordStored::Stored);
        assert_eq!(store("p", "p1", 1, 11, true), RecordStored::Stored);
    }

    #[test]
    fn deposits_are_kept_once_handed_over_in_order_and_expire() {
        let c = db();
        assert!(insert_deposit(&c, "o", "d1", "t1", "aaaa", 10).expect("1"));
        assert!(!insert_deposit(&c, "o", "d1", "t1", "aaaa", 11).expect("repeat"));
        assert!(insert_deposit(&c, "o", "d2", "t1", "bbbbbb", 12).expect("2"));
        assert!(insert_deposit(&c, "p", "d1", "t9", "cc", 13).expect("3"));
        let u = deposit_usage(&c, "o", "d1").expect("usage");
        assert_eq!(
            u,
            DepositUsage {
                owner_count: 2,
                owner_bytes: 10,
                depositor_bytes: 4,
                owners: 2
            }
        );
        // A byte budget cuts the batch, but the first deposit always goes.
        let first = deposits_for(&c, "o", 10, 5).expect("batch");
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].depositor, "d1");
        assert_eq!(deposits_for(&c, "o", 10, 1).expect("alone").len(), 1);
        assert_eq!(deposits_for(&c, "o", 10, 100).expect("all").len(), 2);
        // Another owner cannot delete them.
        assert_eq!(delete_deposits(&c, "p", &[first[0].id]).expect("other"), 0);
        assert_eq!(delete_deposits(&c, "o", &[first[0].id]).expect("own"), 1);
        assert_eq!(expire_deposits(&c, 13).expect("expire"), 1);
        assert_eq!(
            mailbox_holdings(&c).expect("holdings"),
            vec![("p".to_owned(), 1, 2)]
        );
    }
}
