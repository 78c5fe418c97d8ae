//! Per-connection state: what each connection was sent, as immutable snapshots named by
//! `pos`, bounded in connections per user and in all.

use super::*;

/// What was sent of one room on a connection.
#[derive(Clone, Debug)]
pub(super) struct RoomSent {
    /// The timeline was sent up to here.
    pub(super) pos: StreamPosition,
    /// The membership the room was sent with: a change (invite → join, a rejoin) sends
    /// the room afresh.
    pub(super) membership: String,
    /// The `required_state` it was sent with; a new one sends the state again. Shared
    /// between the rooms of a list, so a connection's memory grows with its rooms only
    /// by a few words each.
    pub(super) required_state: Arc<BTreeSet<(String, String)>>,
    /// Members already sent for `$LAZY`.
    pub(super) lazy: HashSet<String>,
}

/// One response's view of the connection.
#[derive(Clone, Default)]
pub(super) struct Snapshot {
    /// The stream and typing position the response was computed at; `None` before the
    /// first response.
    pub(super) token: Option<SyncToken>,
    pub(super) rooms: HashMap<String, RoomSent>,
    pub(super) counts: BTreeMap<String, usize>,
    /// Each joined room's bump stamp at `token`: a room unchanged since is not looked up
    /// again (the lists order every room the user is in, on every request).
    pub(super) bumps: HashMap<String, StreamPosition>,
}

pub(super) struct ConnState {
    pub(super) last_used: Instant,
    /// Recent snapshots by `pos`: the newest, and the one before it (the client may retry
    /// a request whose response it never got).
    pub(super) snapshots: Vec<(u64, Arc<Snapshot>)>,
}

/// All sliding sync connections of this node.
pub struct Connections {
    conns: Mutex<HashMap<(String, String, String), ConnState>>,
    next_pos: AtomicU64,
}

impl Default for Connections {
    fn default() -> Self {
        // Positions start from the clock so a `pos` issued before a restart is never
        // mistaken for one issued after.
        let start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as u64)
            .unwrap_or(1);
        Connections {
            conns: Mutex::new(HashMap::new()),
            next_pos: AtomicU64::new(start),
        }
    }
}

type ConnKey = (String, String, String);

impl Connections {
    /// The snapshot a request builds on: empty without `pos` (a new connection replaces
    /// any old one of that name), else the named one.
    pub(super) fn start(&self, key: &ConnKey, pos: Option<&str>) -> Result<Arc<Snapshot>, Error> {
        let mut conns = self.conns.lock();
        let Some(pos) = pos else {
            conns.remove(key);
            return Ok(Arc::new(Snapshot::default()));
        };
        let unknown = || Error::UnknownPos(pos.to_owned());
        let n: u64 = pos.parse().map_err(|_| unknown())?;
        let conn = conns.get_mut(key).ok_or_else(unknown)?;
        conn.last_used = Instant::now();
        let snap = conn
            .snapshots
            .iter()
            .find(|(p, _)| *p == n)
            .map(|(_, s)| s.clone())
            .ok_or_else(unknown)?;
        // Using `n` acknowledges it: anything older can no longer be asked for.
        conn.snapshots.retain(|(p, _)| *p >= n);
        Ok(snap)
    }

    /// Keep a response's snapshot, built on the one named `base`, and name it.
    pub(super) fn store(&self, key: ConnKey, base: Option<&str>, snap: Snapshot) -> u64 {
        let pos = self.next_pos.fetch_add(1, Ordering::Relaxed);
        let mut conns = self.conns.lock();
        if !conns.contains_key(&key) {
            conns.retain(|_, c| c.last_used.elapsed() < CONNECTION_TTL);
            let users = conns.keys().filter(|k| k.0 == key.0).count();
            let evict = if users >= MAX_USER_CONNECTIONS {
                conns
                    .iter()
                    .filter(|(k, _)| k.0 == key.0)
                    .min_by_key(|(_, c)| c.last_used)
            } else if conns.len() >= MAX_CONNECTIONS {
                conns.iter().min_by_key(|(_, c)| c.last_used)
            } else {
                None
            };
            if let Some(oldest) = evict.map(|(k, _)| k.clone()) {
                conns.remove(&oldest);
            }
        }
        let conn = conns.entry(key).or_insert_with(|| ConnState {
            last_used: Instant::now(),
            snapshots: Vec::new(),
        });
        conn.last_used = Instant::now();
        conn.snapshots.push((pos, Arc::new(snap)));
        // The snapshot this response was built on (the client retries it if the response
        // is lost) and the newest two; older ones go.
        let base: Option<u64> = base.and_then(|b| b.parse().ok());
        while conn.snapshots.len() > 3 {
            let Some(i) = conn.snapshots.iter().position(|(p, _)| Some(*p) != base) else {
                break;
            };
            conn.snapshots.remove(i);
        }
        pos
    }
}
