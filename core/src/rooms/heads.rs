//! Local messages built ahead one after another: where the sends built ahead of their
//! writes ([`super::prebuild`]) have taken each room.
//!
//! A message built ahead on the room's forward extremities as a reader sees them is
//! stale as soon as another send to the room commits first: with several clients in one
//! room that is nearly every send, and the single writer builds and signs them all
//! again. So each room keeps the chain of messages built ahead since its extremities
//! were last read: the next message is built on the newest of them (the tip), which the
//! writer will have persisted by the time it takes this one when the writes arrive in
//! the order they were built. Nothing here is trusted: the write still takes a prebuilt
//! event only if the room's extremities are exactly the ones it was built on
//! (`Prebuilt::still_current`), and builds it again otherwise (a send whose write failed
//! or was overtaken). A chain only grows while the database is where the chain leaves
//! it (at its base, at one of its events, or behind its base on an older snapshot) with
//! the same current state; anything else (a received event, a state event, a write that
//! built its event again) starts a new one from the database, once the writes of the
//! old one are done (see [`Head::extremities`]). Only messages chain, and not in rooms
//! of versions 1 and 2 (their prev events carry hashes read from stored events).
//!
//! The writes of a chain's events take the writer in the order they were built
//! ([`Turn`]).
//!
//! Bounds: [`MAX_ROOMS`] rooms, [`CHAIN_KEPT`] events per room, [`TURN_WAIT`] per send.
//! A room over the limit is built on the database's extremities, as without this.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::{Mutex, MutexGuard};

/// Most rooms with a chain kept.
pub const MAX_ROOMS: usize = 1_024;

/// Most events of one room's chain remembered (a database further behind than this
/// starts a new chain).
pub const CHAIN_KEPT: usize = 32;

/// The chains of the rooms sent to lately, bounded in rooms.
#[derive(Default)]
pub struct LocalHeads {
    rooms: Mutex<HashMap<String, Arc<RoomHead>>>,
    /// Local message sends under way (see [`LocalHeads::sending`]).
    sending: AtomicUsize,
}

/// A local message send under way; counted while it lives.
pub struct Sending<'a> {
    heads: &'a LocalHeads,
    /// Sends under way when this one began, itself included.
    under_way: usize,
}

impl Sending<'_> {
    /// Whether no other send was under way when this one began.
    pub fn alone(&self) -> bool {
        self.under_way == 1
    }
}

impl Drop for Sending<'_> {
    fn drop(&mut self) {
        self.heads.sending.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One room's chain, and the turns of the writes of the events built on it.
#[derive(Default)]
pub struct RoomHead {
    head: Mutex<Head>,
    /// The latest turn taken. Apart from the chain: the writer takes turns (a write
    /// drops its event's [`Turn`]) and must never wait for a build holding the chain.
    taken_up_to: Mutex<u64>,
    /// Signalled when a write takes its turn.
    taken: tokio::sync::Notify,
}

impl RoomHead {
    /// The chain, locked: held while building on it.
    pub fn lock(&self) -> MutexGuard<'_, Head> {
        self.head.lock()
    }

    /// The latest turn taken.
    pub fn taken_up_to(&self) -> u64 {
        *self.taken_up_to.lock()
    }
}

/// The place of an event built ahead among the writes of the room's chain. Writes come
/// to the single writer in the order their callers reach it, which is not always the
/// order the events were built in, and one overtaken breaks the chain for every event
/// built after it (each is built again in the writer, on other prev events). So a send
/// waits ([`Turn::wait_async`]) until the write of the event built before it has taken the
/// writer, at most [`TURN_WAIT`]. A turn is taken when it is dropped: when its write
/// takes the event, or when the send ends without a write.
pub struct Turn {
    room: Arc<RoomHead>,
    ticket: u64,
}

/// Longest a write waits for the one before it, which is on another thread between its
/// build and its write: evaluating the members' push rules, waiting for its own turn or
/// for the writer. Past it the write goes ahead, and is built again if overtaken.
pub const TURN_WAIT: Duration = Duration::from_millis(20);

impl Turn {
    /// The next turn of `room`, whose chain `head` (locked) just had an event built on.
    pub fn next(room: &Arc<RoomHead>, head: &mut Head) -> Turn {
        head.tickets += 1;
        Turn {
            room: Arc::clone(room),
            ticket: head.tickets,
        }
    }

    /// Wait until the write of the event built before this one has taken its turn, at
    /// most [`TURN_WAIT`], without holding a thread.
    pub async fn wait_async(&self) {
        let deadline = tokio::time::Instant::now() + TURN_WAIT;
        loop {
            // Registered before the check: a turn taken in between still wakes it.
            let taken = self.room.taken.notified();
            if self.is_due() {
                return;
            }
            if tokio::time::timeout_at(deadline, taken).await.is_err() {
                return;
            }
        }
    }

    fn is_due(&self) -> bool {
        self.room.taken_up_to().saturating_add(1) >= self.ticket
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        let mut taken = self.room.taken_up_to.lock();
        *taken = (*taken).max(self.ticket);
        drop(taken);
        self.room.taken.notify_waiters();
    }
}

/// One room's chain of messages built ahead.
#[derive(Debug, Default)]
pub struct Head {
    /// Turns handed out ([`Turn`]).
    tickets: u64,
    /// The room version and current state group the chain was built on.
    at: Option<(String, Option<i64>)>,
    /// The room's forward extremities in the database when the chain began.
    base: Vec<String>,
    /// The greatest depth among them.
    base_depth: i64,
    /// The events built ahead since, oldest first, with their depth; the last is the tip.
    chain: VecDeque<(String, i64)>,
}

impl LocalHeads {
    /// A local message send begins: counted until the returned guard is dropped.
    pub fn sending(&self) -> Sending<'_> {
        Sending {
            heads: self,
            under_way: self.sending.fetch_add(1, Ordering::SeqCst) + 1,
        }
    }

    /// The chain of `room_id`. Holding its lock while building keeps two sends from
    /// building on the same tip. Over [`MAX_ROOMS`], the chains nobody holds are
    /// forgotten; if every one is held, an unshared chain is handed out (the send is
    /// built as it would be without chains).
    pub fn room(&self, room_id: &str) -> Arc<RoomHead> {
        let mut rooms = self.rooms.lock();
        if let Some(head) = rooms.get(room_id) {
            return Arc::clone(head);
        }
        if rooms.len() >= MAX_ROOMS {
            rooms.retain(|_, head| Arc::strong_count(head) > 1);
            if rooms.len() >= MAX_ROOMS {
                return Arc::default();
            }
        }
        Arc::clone(rooms.entry(room_id.to_owned()).or_default())
    }

    /// Rooms with a chain kept.
    pub fn len(&self) -> usize {
        self.rooms.lock().len()
    }

    /// Whether no room has a chain kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Head {
    /// The extremities to build the next message on, given the room's version, current
    /// state group and forward extremities (ordered, with depths) as the builder's
    /// snapshot sees them, and the latest turn taken ([`RoomHead::taken_up_to`]); and
    /// whether the message joins the chain (takes a [`Turn`]):
    /// - the chain's tip, when the database is at the chain's base, at one of its events
    ///   or behind the base (an older snapshot), with the same state;
    /// - else the database's own, and a new chain starts from them, unless messages of
    ///   the broken chain are still on their way to the writer: each will be built again
    ///   there and move the extremities once more, so a chain started now would be
    ///   overtaken by them, and the next, for as long as sends keep coming. The message
    ///   is then built on the database's extremities outside any chain (as without
    ///   chains), and a chain starts again once those writes are done.
    pub fn extremities(
        &mut self,
        version: &str,
        group: Option<i64>,
        in_db: Vec<(String, i64)>,
        taken_up_to: u64,
    ) -> (Vec<(String, i64)>, bool) {
        if let Some(tip) = self.continues(version, group, &in_db) {
            return (vec![tip], true);
        }
        self.chain.clear();
        if taken_up_to < self.tickets {
            self.at = None;
            return (in_db, false);
        }
        self.at = Some((version.to_owned(), group));
        self.base = in_db.iter().map(|(id, _)| id.clone()).collect();
        self.base_depth = max_depth(&in_db);
        (in_db, true)
    }

    fn continues(
        &self,
        version: &str,
        group: Option<i64>,
        in_db: &[(String, i64)],
    ) -> Option<(String, i64)> {
        let (v, g) = self.at.as_ref()?;
        let tip = self.chain.back()?;
        if v != version || *g != group {
            return None;
        }
        let at_base = in_db.iter().map(|(id, _)| id).eq(self.base.iter());
        let at_chain = match in_db {
            [(id, _)] => self.chain.iter().any(|(built, _)| built == id),
            _ => false,
        };
        // A snapshot taken before the chain's base was written: the database has moved
        // on since, to the base at least.
        let behind = max_depth(in_db) < self.base_depth;
        (at_base || at_chain || behind).then(|| tip.clone())
    }

    /// Record a message built on what [`Head::extremities`] gave, in the chain.
    pub fn built(&mut self, event_id: &str, depth: i64) {
        self.chain.push_back((event_id.to_owned(), depth));
        if self.chain.len() > CHAIN_KEPT {
            self.chain.pop_front();
        }
    }
}

fn max_depth(extremities: &[(String, i64)]) -> i64 {
    extremities.iter().map(|(_, d)| *d).max().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(ids: &[(&str, i64)]) -> Vec<(String, i64)> {
        ids.iter().map(|(id, d)| ((*id).to_owned(), *d)).collect()
    }

    /// A chain and the latest turn taken.
    #[derive(Default)]
    struct Chain {
        head: Head,
        taken: u64,
    }

    impl Chain {
        /// `head.extremities(..)` for room version 10, and a turn handed out when it
        /// chained.
        fn next(
            &mut self,
            group: Option<i64>,
            in_db: &[(&str, i64)],
        ) -> (Vec<(String, i64)>, bool) {
            let (on, chained) = self.head.extremities("10", group, ext(in_db), self.taken);
            if chained {
                self.head.tickets += 1;
            }
            (on, chained)
        }

        fn built(&mut self, id: &str, depth: i64) {
            self.head.built(id, depth);
        }

        /// Every turn handed out taken (the writes done).
        fn written(&mut self) {
            self.taken = self.head.tickets;
        }
    }

    #[test]
    fn messages_chain_while_the_database_is_where_the_chain_leaves_it() {
        let mut head = Chain::default();
        let db = [("$a", 5)];
        assert_eq!(head.next(Some(1), &db), (ext(&db), true), "no chain yet");
        head.built("$m1", 6);
        // Not committed yet: the database is still at the base.
        assert_eq!(head.next(Some(1), &db), (ext(&[("$m1", 6)]), true));
        head.built("$m2", 7);
        // The first committed: the database is at an event of the chain.
        assert_eq!(
            head.next(Some(1), &[("$m1", 6)]),
            (ext(&[("$m2", 7)]), true)
        );
        head.built("$m3", 8);
        // Read on a snapshot older than the chain's base: still the tip.
        assert_eq!(
            head.next(Some(1), &[("$old", 4)]),
            (ext(&[("$m3", 8)]), true)
        );
        head.built("$m4", 9);
        head.written();
        // Another state: the database's extremities, and a new chain.
        let other = [("$s", 9)];
        assert_eq!(head.next(Some(2), &other), (ext(&other), true));
        head.built("$m5", 10);
        head.written();
        // An event from elsewhere (not in the chain): the database's, a new chain.
        let forked = [("$r", 10), ("$m5", 10)];
        assert_eq!(head.next(Some(2), &forked), (ext(&forked), true));
    }

    #[test]
    fn no_chain_starts_while_the_writes_of_a_broken_one_are_on_their_way() {
        let mut head = Chain::default();
        head.next(None, &[("$a", 1)]);
        head.built("$m1", 2);
        head.next(None, &[("$a", 1)]);
        head.built("$m2", 3);
        // $m1 was built again in the writer ($x): the chain is broken, and $m2's write
        // (which will be built again too) is still to come.
        head.taken = 1;
        let db = [("$x", 2)];
        assert_eq!(head.next(None, &db), (ext(&db), false), "outside any chain");
        assert_eq!(head.next(None, &db), (ext(&db), false), "still");
        // $m2's write done: a new chain from what the database holds.
        head.written();
        let db = [("$y", 3)];
        assert_eq!(head.next(None, &db), (ext(&db), true));
        head.built("$m3", 4);
        assert_eq!(head.next(None, &db), (ext(&[("$m3", 4)]), true));
    }

    #[test]
    fn a_chain_remembers_its_newest_events_only() {
        let mut head = Chain::default();
        head.next(None, &[("$a", 1)]);
        for i in 0..CHAIN_KEPT + 5 {
            head.built(&format!("$m{i}"), 2 + i as i64);
        }
        assert_eq!(head.head.chain.len(), CHAIN_KEPT);
        head.written();
        // Committed only up to an event the chain no longer holds: start again.
        let behind = [("$m2", 4)];
        assert_eq!(head.next(None, &behind), (ext(&behind), true));
    }

    /// A send waits for the turn of the event built before it: woken when that turn is
    /// taken, and going ahead after [`TURN_WAIT`] when it never is.
    #[tokio::test]
    async fn an_async_send_waits_for_its_turn_without_a_thread() {
        let room = Arc::new(RoomHead::default());
        let first = Turn::next(&room, &mut room.lock());
        let second = Turn::next(&room, &mut room.lock());
        first.wait_async().await;
        let waiter = tokio::spawn(async move {
            second.wait_async().await;
            second
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "the second went ahead of the first");
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("the second goes once the first took its turn")
            .expect("waiter");

        let third = Turn::next(&room, &mut room.lock());
        let fourth = Turn::next(&room, &mut room.lock());
        drop(second);
        let started = std::time::Instant::now();
        fourth.wait_async().await;
        assert!(started.elapsed() >= TURN_WAIT, "went ahead of the third");
        drop(third);
    }

    #[test]
    fn rooms_are_bounded_and_chains_in_use_are_kept() {
        let heads = LocalHeads::default();
        let held = heads.room("!held");
        for i in 0..MAX_ROOMS + 10 {
            heads.room(&format!("!r{i}"));
        }
        assert!(heads.len() <= MAX_ROOMS, "{} rooms kept", heads.len());
        assert!(
            Arc::ptr_eq(&held, &heads.room("!held")),
            "a chain being built on is never forgotten"
        );
    }
}
