//! Stream positions and the notifier that wakes long-polling `/sync` calls.
//!
//! Every persisted row `/sync` can return (events, receipts, account data, membership)
//! takes a position from one monotonic sequence inside its write transaction. Typing
//! notifications are not persisted and count on their own in-memory serial. A sync token
//! carries both: `s{position}_{typing}`. When `/sync` delivered only part of a device's
//! to-device inbox (it caps each response), the token also says how far that inbox was
//! delivered: `s{position}_{typing}_{to_device}`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::{Notify, watch};

use crate::storage::effects::Touched;

/// A position in the persisted stream.
pub type StreamPosition = i64;

/// What a `/sync` `since` token or `/messages` `from` token encodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SyncToken {
    /// Persisted stream position.
    pub pos: StreamPosition,
    /// Typing serial.
    pub typing: u64,
    /// How far the device's to-device inbox was delivered, when that is behind `pos`.
    pub to_device: Option<StreamPosition>,
}

impl SyncToken {
    /// A token at a stream position (typing serial 0, to-device inbox at `pos`).
    pub fn at(pos: StreamPosition) -> SyncToken {
        SyncToken {
            pos,
            ..SyncToken::default()
        }
    }

    /// Parse `s{pos}_{typing}_{to_device}`; the last parts are optional.
    pub fn parse(s: &str) -> Option<SyncToken> {
        let mut parts = s.strip_prefix('s')?.split('_');
        let pos: StreamPosition = parts.next()?.parse().ok()?;
        let typing = parts.next().map(str::parse).transpose().ok()?.unwrap_or(0);
        let to_device: Option<StreamPosition> = parts.next().map(str::parse).transpose().ok()?;
        if parts.next().is_some() || pos < 0 || to_device.is_some_and(|t| t < 0 || t > pos) {
            return None;
        }
        Some(SyncToken {
            pos,
            typing,
            to_device,
        })
    }

    /// The to-device inbox position this token acknowledges.
    pub fn to_device_pos(&self) -> StreamPosition {
        self.to_device.unwrap_or(self.pos)
    }
}

impl std::fmt::Display for SyncToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s{}_{}", self.pos, self.typing)?;
        match self.to_device {
            Some(td) if td < self.pos => write!(f, "_{td}"),
            _ => Ok(()),
        }
    }
}

/// Backfilled events (history from before this node joined a room, fetched from other
/// servers with `/backfill`) take positions in their own range, below every other
/// position: below zero, so no `/sync` range (which starts at a token, never negative)
/// ever includes them, and below the negative positions of outliers, soft-failed and
/// rejected events. Inside the range a position encodes the event's DAG depth, so
/// backfilled events sort topologically whatever order they arrived in:
/// `BACKFILL_BASE + depth << BACKFILL_TIE_BITS + tie`, the tie counting events of one
/// depth (forks).
pub const BACKFILL_BASE: StreamPosition = i64::MIN / 2;
/// Bits of a backfill position that tell events of the same depth apart.
pub const BACKFILL_TIE_BITS: u32 = 20;
/// Events of a depth at or above this cannot be backfilled (a real room is nowhere near).
pub const MAX_BACKFILL_DEPTH: i64 = 1 << 41;
/// Every backfill position is below this (it is `-2^61`, far below any outlier's).
pub const BACKFILL_END: StreamPosition = BACKFILL_BASE + (MAX_BACKFILL_DEPTH << BACKFILL_TIE_BITS);

/// The backfill position of the `tie`-th event of depth `depth`; `None` out of range.
pub fn backfill_position(depth: i64, tie: i64) -> Option<StreamPosition> {
    if !(0..MAX_BACKFILL_DEPTH).contains(&depth) || !(0..1 << BACKFILL_TIE_BITS).contains(&tie) {
        return None;
    }
    Some(BACKFILL_BASE + (depth << BACKFILL_TIE_BITS) + tie)
}

/// Whether a position is one of a backfilled event (or a cursor between them).
pub fn is_backfill_position(pos: StreamPosition) -> bool {
    (BACKFILL_BASE..BACKFILL_END).contains(&pos)
}

/// A `/messages` (and `/context`, `/relations`) pagination token: a position in the live
/// stream (`s{pos}_…`, the `/sync` token format, always accepted) or among backfilled
/// events (`t{depth}_{tie}`, as Synapse's topological tokens). Backwards pagination runs
/// from the live stream (`s0` is before its first event) straight on into backfilled
/// history; the two kinds order as one sequence of positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PageToken(pub StreamPosition);

impl PageToken {
    /// Parse either form; `None` for anything else.
    pub fn parse(s: &str) -> Option<PageToken> {
        if let Some(rest) = s.strip_prefix('t') {
            let (depth, tie) = rest.split_once('_')?;
            let depth: i64 = depth.parse().ok()?;
            let tie: i64 = tie.parse().ok()?;
            return backfill_position(depth, tie).map(PageToken);
        }
        SyncToken::parse(s).map(|t| PageToken(t.pos))
    }

    /// The token for a cursor position: live positions as `s{pos}_0`, backfill positions
    /// as `t{depth}_{tie}`; a position between the two ranges (where only outliers live)
    /// is the bottom of the live stream, `s0_0`, from which backwards paging goes on into
    /// backfilled history.
    pub fn at(pos: StreamPosition) -> PageToken {
        if pos >= 0 || is_backfill_position(pos) {
            PageToken(pos)
        } else if pos < BACKFILL_BASE {
            PageToken(BACKFILL_BASE)
        } else {
            PageToken(0)
        }
    }
}

impl std::fmt::Display for PageToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if is_backfill_position(self.0) {
            let off = self.0 - BACKFILL_BASE;
            write!(
                f,
                "t{}_{}",
                off >> BACKFILL_TIE_BITS,
                off & ((1 << BACKFILL_TIE_BITS) - 1)
            )
        } else {
            SyncToken::at(self.0.max(0)).fmt(f)
        }
    }
}

/// Who is typing where, with expiry.
#[derive(Default)]
struct TypingState {
    serial: u64,
    rooms: HashMap<String, (u64, HashMap<String, Instant>)>,
    /// Rooms with nobody typing, and since when.
    quiet_since: HashMap<String, Instant>,
}

/// A room whose typing list has been empty this long is forgotten (its entry only told
/// syncs that the list had emptied; they have long heard it), so the map holds the rooms
/// typed in lately, not every room ever typed in.
const FORGET_EMPTY_TYPING_AFTER: Duration = Duration::from_secs(300);

impl TypingState {
    /// Drop rooms that have had nobody typing for [`FORGET_EMPTY_TYPING_AFTER`].
    fn forget_quiet_rooms(&mut self, now: Instant) {
        let rooms = &self.rooms;
        self.quiet_since
            .retain(|room, _| rooms.get(room).is_some_and(|(_, users)| users.is_empty()));
        for (room, (_, users)) in &self.rooms {
            if users.is_empty() {
                self.quiet_since.entry(room.clone()).or_insert(now);
            }
        }
        let forget: Vec<String> = self
            .quiet_since
            .iter()
            .filter(|(_, since)| now.duration_since(**since) >= FORGET_EMPTY_TYPING_AFTER)
            .map(|(room, _)| room.clone())
            .collect();
        for room in forget {
            self.rooms.remove(&room);
            self.quiet_since.remove(&room);
        }
    }
}

/// Who is still typing at `now`, sorted.
fn typing_now(users: &HashMap<String, Instant>, now: Instant) -> Vec<String> {
    let mut list: Vec<String> = users
        .iter()
        .filter(|(_, exp)| **exp > now)
        .map(|(u, _)| u.clone())
        .collect();
    list.sort();
    list
}

/// Publishes positions after commit and wakes waiters.
pub struct Notifier {
    tx: watch::Sender<SyncToken>,
    typing: Mutex<TypingState>,
    waiters: Arc<Mutex<Waiters>>,
    /// Wake-ups handed to waiting long-polls so far.
    wakeups: AtomicU64,
    /// Wake-up tasks spawned and not yet run ([`Notifier::wakes_pending`]).
    in_flight: Arc<AtomicUsize>,
}

/// Most rooms one long-poll is woken for by name; a user in more rooms is woken by any
/// change (and the build skips the rooms that did not change).
pub const MAX_WAITER_ROOMS: usize = 10_000;

/// The long-polls waiting now, indexed by what wakes them.
///
/// Bounded by the long-polls in flight (each a client request: the client listener caps
/// connections) times the rooms each names (at most [`MAX_WAITER_ROOMS`]).
#[derive(Default)]
struct Waiters {
    next_id: u64,
    entries: HashMap<u64, WaiterEntry>,
    by_user: HashMap<String, HashSet<u64>>,
    by_room: HashMap<String, HashSet<u64>>,
    /// Woken by anything.
    broad: HashSet<u64>,
}

struct WaiterEntry {
    user: String,
    rooms: Vec<String>,
    notify: Arc<Notify>,
}

impl Waiters {
    fn unindex(&mut self, id: u64) {
        let Some(e) = self.entries.get(&id) else {
            return;
        };
        for room in &e.rooms {
            if let Some(set) = self.by_room.get_mut(room) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_room.remove(room);
                }
            }
        }
        self.broad.remove(&id);
    }

    /// The broad waiters and those of `users` and `rooms`.
    fn to_wake<'a>(
        &self,
        users: impl Iterator<Item = &'a String>,
        rooms: impl Iterator<Item = &'a String>,
    ) -> Vec<Arc<Notify>> {
        let mut woken: HashSet<u64> = self.broad.clone();
        for u in users {
            woken.extend(self.by_user.get(u).into_iter().flatten());
        }
        for r in rooms {
            woken.extend(self.by_room.get(r).into_iter().flatten());
        }
        woken
            .into_iter()
            .filter_map(|id| self.entries.get(&id).map(|e| e.notify.clone()))
            .collect()
    }
}

/// One waiting long-poll: woken (once, the wake-up kept until it is awaited) by a
/// committed change that concerns its user or one of its rooms. Unregistered on drop.
pub struct Waiter {
    id: u64,
    notify: Arc<Notify>,
    waiters: Arc<Mutex<Waiters>>,
}

impl Waiter {
    /// From now on, wake only for changes to the user's own data or to `rooms` (the
    /// rooms the user is in), no longer for anything at all. Changes committed before
    /// this call already woke the waiter.
    pub fn narrow(&self, rooms: Vec<String>) {
        if rooms.len() > MAX_WAITER_ROOMS {
            return;
        }
        let mut w = self.waiters.lock();
        w.unindex(self.id);
        for room in &rooms {
            w.by_room.entry(room.clone()).or_default().insert(self.id);
        }
        if let Some(e) = w.entries.get_mut(&self.id) {
            e.rooms = rooms;
        }
    }

    /// Wait for a wake-up (returns at once if one came since the last wait).
    pub async fn notified(&self) {
        self.notify.notified().await;
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        let mut w = self.waiters.lock();
        w.unindex(self.id);
        if let Some(e) = w.entries.remove(&self.id)
            && let Some(set) = w.by_user.get_mut(&e.user)
        {
            set.remove(&self.id);
            if set.is_empty() {
                w.by_user.remove(&e.user);
            }
        }
    }
}

impl Notifier {
    /// Start at the database's committed position.
    pub fn new(pos: StreamPosition) -> Notifier {
        let (tx, _) = watch::channel(SyncToken::at(pos));
        Notifier {
            tx,
            typing: Mutex::new(TypingState::default()),
            waiters: Arc::default(),
            wakeups: AtomicU64::new(0),
            in_flight: Arc::default(),
        }
    }

    /// Register a long-poll of `user_id`, woken by any change until it is
    /// [narrowed](Waiter::narrow) to the user's rooms. Register before reading the
    /// position to build at: a change committed after that position wakes it.
    pub fn waiter(&self, user_id: &str) -> Waiter {
        let notify = Arc::new(Notify::new());
        let mut w = self.waiters.lock();
        w.next_id += 1;
        let id = w.next_id;
        w.entries.insert(
            id,
            WaiterEntry {
                user: user_id.to_owned(),
                rooms: Vec::new(),
                notify: notify.clone(),
            },
        );
        w.by_user.entry(user_id.to_owned()).or_default().insert(id);
        w.broad.insert(id);
        Waiter {
            id,
            notify,
            waiters: self.waiters.clone(),
        }
    }

    /// Wake the long-polls a committed write concerns: call after [`Notifier::committed`]
    /// (so a waiter woken finds the new position), with what the write touched.
    pub fn wake(&self, touched: &Touched) {
        let woken: Vec<Arc<Notify>> = {
            let w = self.waiters.lock();
            if touched.everyone {
                w.entries.values().map(|e| e.notify.clone()).collect()
            } else {
                w.to_wake(
                    touched.users.iter(),
                    touched.rooms.iter().chain(&touched.members_of),
                )
            }
        };
        self.notify(woken);
    }

    /// Wake these long-polls. On a runtime worker (a write that ran on the handler's
    /// thread), a task woken here would wait in this worker's next-task slot until the
    /// writing request has finished its answer: they are woken from a task of their own
    /// instead, which an idle worker picks up at once.
    fn notify(&self, woken: Vec<Arc<Notify>>) {
        if woken.is_empty() {
            return;
        }
        self.wakeups
            .fetch_add(woken.len() as u64, Ordering::Relaxed);
        match tokio::runtime::Handle::try_current() {
            Ok(h) if h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                let in_flight = self.in_flight.clone();
                in_flight.fetch_add(1, Ordering::SeqCst);
                h.spawn(async move {
                    for n in woken {
                        n.notify_one();
                    }
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            _ => {
                for n in woken {
                    n.notify_one();
                }
            }
        }
    }

    /// How many wake-ups were handed to waiting long-polls so far.
    pub fn wakeups(&self) -> u64 {
        self.wakeups.load(Ordering::Relaxed)
    }

    /// Wake-up tasks handed to the runtime and not yet run: zero means every wake-up of
    /// the writes committed so far has reached its long-polls.
    pub fn wakes_pending(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// How many long-polls are waiting.
    pub fn waiting(&self) -> usize {
        self.waiters.lock().entries.len()
    }

    /// How many of them any change wakes (not yet narrowed to their rooms).
    pub fn waiting_for_anything(&self) -> usize {
        self.waiters.lock().broad.len()
    }

    /// The newest fully committed token.
    pub fn current(&self) -> SyncToken {
        *self.tx.borrow()
    }

    /// Subscribe to token changes.
    pub fn subscribe(&self) -> watch::Receiver<SyncToken> {
        self.tx.subscribe()
    }

    /// Call after a write transaction that took `pos` has committed.
    pub fn committed(&self, pos: StreamPosition) {
        self.tx.send_if_modified(|t| {
            if pos > t.pos {
                t.pos = pos;
                true
            } else {
                false
            }
        });
    }

    /// Set or clear a user's typing flag in a room.
    pub fn set_typing(&self, room_id: &str, user_id: &str, timeout: Option<Duration>) {
        let serial = {
            let mut st = self.typing.lock();
            st.serial += 1;
            let serial = st.serial;
            let entry = st.rooms.entry(room_id.to_owned()).or_default();
            entry.0 = serial;
            match timeout {
                Some(t) => {
                    entry.1.insert(
                        user_id.to_owned(),
                        Instant::now() + t.min(Duration::from_secs(120)),
                    );
                }
                None => {
                    entry.1.remove(user_id);
                }
            }
            serial
        };
        self.tx.send_modify(|t| t.typing = serial);
        let room = room_id.to_owned();
        let woken = self
            .waiters
            .lock()
            .to_wake(std::iter::empty(), std::iter::once(&room));
        self.notify(woken);
    }

    /// Users typing in a room now, if the room's typing changed after `since_serial`
    /// (or always when `force`).
    pub fn typing_since(
        &self,
        room_id: &str,
        since_serial: u64,
        force: bool,
    ) -> Option<Vec<String>> {
        let st = self.typing.lock();
        let (serial, users) = st.rooms.get(room_id)?;
        // A serial from before a restart is larger than ours: treat it as stale.
        if !force && *serial <= since_serial && since_serial <= st.serial {
            return None;
        }
        Some(typing_now(users, Instant::now()))
    }

    /// The typing serial now, and each room whose typing list changed after
    /// `since_serial` with who is typing there now (an application service's view; a
    /// serial from before a restart counts as nothing seen).
    pub fn typing_changes_since(&self, since_serial: u64) -> (u64, Vec<(String, Vec<String>)>) {
        let st = self.typing.lock();
        let since = if since_serial > st.serial {
            0
        } else {
            since_serial
        };
        let now = Instant::now();
        let mut out: Vec<(String, Vec<String>)> = st
            .rooms
            .iter()
            .filter(|(_, (serial, _))| *serial > since)
            .map(|(room, (_, users))| (room.clone(), typing_now(users, now)))
            .collect();
        out.sort();
        (st.serial, out)
    }

    /// Expire typing notices whose timeout passed, bumping the serial so syncs see it.
    pub fn expire_typing(&self) {
        let changed = {
            let mut st = self.typing.lock();
            let now = Instant::now();
            let mut changed = Vec::new();
            let mut next = st.serial;
            for (room, (serial, users)) in st.rooms.iter_mut() {
                let before = users.len();
                users.retain(|_, exp| *exp > now);
                if users.len() != before {
                    next += 1;
                    *serial = next;
                    changed.push(room.clone());
                }
            }
            st.serial = next;
            st.forget_quiet_rooms(now);
            (!changed.is_empty()).then_some((next, changed))
        };
        if let Some((serial, rooms)) = changed {
            self.tx.send_modify(|t| t.typing = serial);
            let woken = self
                .waiters
                .lock()
                .to_wake(std::iter::empty(), rooms.iter());
            self.notify(woken);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooms_quiet_for_long_are_forgotten() {
        let mut st = TypingState::default();
        let t0 = Instant::now();
        st.rooms.insert("!quiet:x".into(), (1, HashMap::new()));
        st.rooms.insert(
            "!busy:x".into(),
            (
                2,
                HashMap::from([("@a:x".to_owned(), t0 + Duration::from_secs(3600))]),
            ),
        );
        st.forget_quiet_rooms(t0);
        assert_eq!(st.rooms.len(), 2, "a room just emptied is kept");
        st.forget_quiet_rooms(t0 + FORGET_EMPTY_TYPING_AFTER);
        assert!(st.rooms.contains_key("!busy:x"));
        assert!(!st.rooms.contains_key("!quiet:x"));
        assert!(st.quiet_since.is_empty());
    }

    #[test]
    fn tokens_round_trip() {
        let t = SyncToken {
            pos: 42,
            typing: 7,
            to_device: None,
        };
        assert_eq!(SyncToken::parse(&t.to_string()), Some(t));
        assert_eq!(SyncToken::parse("s5"), Some(SyncToken::at(5)));
        assert_eq!(SyncToken::parse("x5"), None);
        assert_eq!(SyncToken::parse("s-1_0"), None);
        let capped = SyncToken {
            to_device: Some(40),
            ..t
        };
        assert_eq!(capped.to_string(), "s42_7_40");
        assert_eq!(SyncToken::parse("s42_7_40"), Some(capped));
        assert_eq!(capped.to_device_pos(), 40);
        assert_eq!(t.to_device_pos(), 42);
        // The inbox cannot be ahead of the stream; no fourth part.
        assert_eq!(SyncToken::parse("s42_7_43"), None);
        assert_eq!(SyncToken::parse("s42_7_40_1"), None);
    }

    #[test]
    fn page_tokens_cover_the_live_stream_and_backfilled_history() {
        // Live positions keep the /sync format, both ways.
        assert_eq!(PageToken::parse("s42_7"), Some(PageToken(42)));
        assert_eq!(PageToken::at(42).to_string(), "s42_0");
        // Backfilled positions are topological: depth, then a tie counter.
        let p = backfill_position(120, 3).expect("in range");
        assert_eq!(PageToken::at(p).to_string(), "t120_3");
        assert_eq!(PageToken::parse("t120_3"), Some(PageToken(p)));
        assert!(p < 0 && is_backfill_position(p));
        // Deeper is later; every backfill position is below every live and outlier one.
        let deeper = backfill_position(121, 0).expect("in range");
        assert!(p < deeper && deeper < BACKFILL_END && BACKFILL_END < -(1 << 60));
        // One before the first tie of a depth is the last tie of the depth below.
        assert_eq!(
            PageToken::at(deeper - 1).to_string(),
            format!("t120_{}", (1 << BACKFILL_TIE_BITS) - 1)
        );
        // Between the ranges (outliers) reads as the bottom of the live stream.
        assert_eq!(PageToken::at(-5).to_string(), "s0_0");
        assert_eq!(PageToken::at(i64::MIN), PageToken(BACKFILL_BASE));
        // Out of range or malformed: refused; /sync never takes a backfill position.
        assert_eq!(PageToken::parse("t-1_0"), None);
        assert_eq!(PageToken::parse(&format!("t{MAX_BACKFILL_DEPTH}_0")), None);
        assert_eq!(PageToken::parse("t5_1048576"), None);
        assert_eq!(PageToken::parse("t5"), None);
        assert_eq!(SyncToken::parse("t120_3"), None);
        assert_eq!(backfill_position(0, 0), Some(BACKFILL_BASE));
    }

    #[test]
    fn positions_only_move_forward() {
        let n = Notifier::new(10);
        n.committed(12);
        n.committed(11);
        assert_eq!(n.current().pos, 12);
    }

    #[tokio::test]
    async fn typing_wakes_waiters() {
        let n = Notifier::new(0);
        let mut rx = n.subscribe();
        n.set_typing("!r:x", "@a:x", Some(Duration::from_secs(30)));
        rx.changed().await.expect("changed");
        assert_eq!(
            n.typing_since("!r:x", 0, false),
            Some(vec!["@a:x".to_owned()])
        );
        let serial = n.current().typing;
        assert_eq!(n.typing_since("!r:x", serial, false), None);
        n.set_typing("!r:x", "@a:x", None);
        assert_eq!(n.typing_since("!r:x", serial, false), Some(vec![]));
    }
}
