//! One response: the lists over the user's rooms, the rooms in range, the extensions.

use super::*;

/// What to send for one room: the union of the configurations that selected it.
#[derive(Default, Clone)]
pub(super) struct RoomConfig {
    pub(super) timeline_limit: usize,
    pub(super) required_state: Arc<BTreeSet<(String, String)>>,
}

impl RoomConfig {
    fn merge(&mut self, d: &RoomDetails, me: &str) {
        self.timeline_limit = self
            .timeline_limit
            .max((d.timeline_limit as usize).min(MAX_TIMELINE_LIMIT));
        for (ty, sk) in &d.required_state {
            let sk = if sk == "$ME" { me } else { sk.as_str() };
            Arc::make_mut(&mut self.required_state).insert((ty.clone(), sk.to_owned()));
        }
    }

    pub(super) fn lazy(&self) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY")
    }

    /// Whether `(ty, sk)` is asked for (other than through `$LAZY`).
    pub(super) fn wants(&self, ty: &str, sk: &str) -> bool {
        self.required_state
            .iter()
            .any(|(t, k)| (t == "*" || t == ty) && (k == "*" || k == sk))
    }
}

/// A room the user has a current membership in.
pub(super) struct Candidate {
    pub(super) room_id: String,
    pub(super) membership: String,
    pub(super) event_id: String,
    pub(super) mpos: StreamPosition,
    pub(super) bump: StreamPosition,
}

/// The user's rooms: those the lists range over (joined, invited, knocked), newest bump
/// first, each joined room's bump, and the rooms left or banned from.
struct Ordered {
    candidates: Vec<Candidate>,
    bumps: HashMap<String, StreamPosition>,
    left: Vec<(String, String, StreamPosition)>,
}

/// What the lists and subscriptions selected.
pub(super) struct Selection {
    /// Each selected room with the union of the configurations that selected it.
    selected: BTreeMap<String, RoomConfig>,
    /// The rooms in range of each list.
    pub(super) list_rooms: BTreeMap<String, Vec<String>>,
    /// The subscribed rooms the user is in or invited to.
    pub(super) subscribed: Vec<String>,
    /// Each list's count of matching rooms.
    counts: BTreeMap<String, usize>,
}

/// Build one response from `prev` at `now`: body (without `pos`), the new snapshot and
/// whether it carries anything.
pub(super) fn build(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    req: &Request,
    prev: &Snapshot,
    now: SyncToken,
    to_device_since: Option<StreamPosition>,
) -> Result<(Value, Snapshot, bool), Error> {
    let me = caller.user_id.as_str();
    let direct = direct_rooms(c, me)?;
    let Ordered {
        candidates,
        bumps,
        left,
    } = order(c, server, me, prev, now)?;
    let selection = select(c, req, &candidates, &direct, me)?;
    let mut next = Snapshot {
        token: Some(now),
        rooms: prev.rooms.clone(),
        counts: selection.counts.clone(),
        bumps,
    };
    let (rooms, initial_rooms) = rooms(
        c,
        server,
        caller,
        &candidates,
        &selection,
        left,
        prev,
        &mut next,
        now,
        &direct,
    )?;
    let mut has_data = !rooms.is_empty() || prev.counts != selection.counts;
    let extensions = super::extensions::build(
        c,
        server,
        caller,
        req,
        prev,
        now,
        to_device_since,
        &selection,
        &initial_rooms,
        &mut has_data,
    )?;
    let lists: Map<String, Value> = selection
        .counts
        .iter()
        .map(|(name, count)| (name.clone(), json!({"count": count})))
        .collect();
    let body = json!({
        "lists": lists,
        "rooms": rooms,
        "extensions": extensions,
    });
    Ok((body, next, has_data))
}

/// The user's rooms by recency. A joined room unchanged since the previous response
/// keeps its bump without a lookup.
fn order(
    c: &Connection,
    server: &Server,
    me: &str,
    prev: &Snapshot,
    now: SyncToken,
) -> Result<Ordered, Error> {
    let mut candidates = Vec::new();
    let mut left = Vec::new();
    let changes = server.db.room_changes();
    let mut bumps = HashMap::new();
    for (room_id, membership, event_id, mpos) in storage::user_memberships(c, me)? {
        let bump = match membership.as_str() {
            "join" => {
                let known = prev
                    .token
                    .filter(|t| !changes.changed_since(&room_id, t.pos))
                    .and_then(|_| prev.bumps.get(&room_id).copied());
                let bump = match known {
                    Some(b) => b,
                    None => storage::newest_of_types(c, &room_id, BUMP_EVENT_TYPES, now.pos)?
                        .unwrap_or(mpos),
                };
                bumps.insert(room_id.clone(), bump);
                bump
            }
            "invite" | "knock" => mpos,
            _ => {
                left.push((room_id, membership, mpos));
                continue;
            }
        };
        candidates.push(Candidate {
            room_id,
            membership,
            event_id,
            mpos,
            bump,
        });
    }
    candidates.sort_by(|a, b| b.bump.cmp(&a.bump).then_with(|| a.room_id.cmp(&b.room_id)));
    Ok(Ordered {
        candidates,
        bumps,
        left,
    })
}

/// The rooms each list's filters and ranges select, and the subscribed ones; rooms
/// selected the same way share one `required_state` set.
fn select(
    c: &Connection,
    req: &Request,
    candidates: &[Candidate],
    direct: &HashSet<String>,
    me: &str,
) -> Result<Selection, Error> {
    let mut selected: BTreeMap<String, RoomConfig> = BTreeMap::new();
    let mut list_rooms = BTreeMap::new();
    let mut counts = BTreeMap::new();
    let mut encrypted: HashMap<String, bool> = HashMap::new();
    for (name, list) in &req.lists {
        let mut matching = Vec::new();
        for cand in candidates {
            if list_allows(c, list.filters.as_ref(), cand, direct, &mut encrypted)? {
                matching.push(cand);
            }
        }
        // Overlapping ranges name a room once: each is merged once per list.
        let mut indices = BTreeSet::new();
        if let Some(last) = matching.len().checked_sub(1) {
            for (start, end) in &list.ranges {
                let start = usize::try_from(*start).unwrap_or(usize::MAX);
                let end = usize::try_from((*end).min(last as u64)).unwrap_or(last);
                indices.extend(start..=end);
            }
        }
        let mut in_range = Vec::new();
        for i in indices {
            let Some(cand) = matching.get(i) else { break };
            selected
                .entry(cand.room_id.clone())
                .or_default()
                .merge(&list.details, me);
            in_range.push(cand.room_id.clone());
        }
        list_rooms.insert(name.clone(), in_range);
        counts.insert(name.clone(), matching.len());
    }
    let mut subscribed = Vec::new();
    for (room_id, details) in &req.room_subscriptions {
        // Only rooms the user is in or invited to; anything else is silently ignored.
        if candidates.iter().any(|c| &c.room_id == room_id) {
            selected
                .entry(room_id.clone())
                .or_default()
                .merge(details, me);
            subscribed.push(room_id.clone());
        }
    }
    let mut interned: Vec<Arc<BTreeSet<(String, String)>>> = Vec::new();
    for cfg in selected.values_mut() {
        match interned.iter().find(|a| **a == cfg.required_state) {
            Some(a) => cfg.required_state = a.clone(),
            None => interned.push(cfg.required_state.clone()),
        }
    }
    Ok(Selection {
        selected,
        list_rooms,
        subscribed,
        counts,
    })
}

/// The selected rooms' updates, recorded in `next`, and which of them are new to the
/// client; and the rooms the client was sent and has since left (the timeline up to the
/// leave, so the client sees its own membership change).
#[allow(clippy::too_many_arguments)]
fn rooms(
    c: &Connection,
    server: &Server,
    caller: &Requester,
    candidates: &[Candidate],
    selection: &Selection,
    left: Vec<(String, String, StreamPosition)>,
    prev: &Snapshot,
    next: &mut Snapshot,
    now: SyncToken,
    direct: &HashSet<String>,
) -> Result<(Map<String, Value>, HashSet<String>), Error> {
    let changes = server.db.room_changes();
    let by_id: HashMap<&str, &Candidate> =
        candidates.iter().map(|c| (c.room_id.as_str(), c)).collect();
    let mut rooms = Map::new();
    let mut initial_rooms = HashSet::new();
    for (room_id, cfg) in &selection.selected {
        let Some(cand) = by_id.get(room_id.as_str()) else {
            continue;
        };
        let sent = prev
            .rooms
            .get(room_id)
            .filter(|s| s.membership == cand.membership);
        let update = match cand.membership.as_str() {
            // Sent before with the same state asked for, and unchanged since (the
            // writer's record of changed rooms): nothing to send, nothing to look up.
            "join"
                if sent.is_some_and(|s| {
                    s.required_state == cfg.required_state && !changes.changed_since(room_id, s.pos)
                }) =>
            {
                None
            }
            "join" => joined_room(c, server, caller, cand, cfg, sent, now, direct)?,
            _ => invited_room(c, cand, cfg, sent)?,
        };
        if sent.is_none() {
            initial_rooms.insert(room_id.clone());
        }
        if let Some((body, record)) = update {
            rooms.insert(room_id.clone(), body);
            next.rooms.insert(room_id.clone(), record);
        }
    }
    for (room_id, membership, mpos) in left {
        if let Some(sent) = prev.rooms.get(&room_id)
            && sent.membership != membership
        {
            let (body, record) = left_room(c, caller, &room_id, &membership, mpos, sent)?;
            rooms.insert(room_id.clone(), body);
            next.rooms.insert(room_id, record);
        }
    }
    Ok((rooms, initial_rooms))
}

/// Rooms named in the user's `m.direct` account data.
fn direct_rooms(c: &Connection, me: &str) -> Result<HashSet<String>, Error> {
    let Some(raw) = storage::account_data(c, me, "", "m.direct")? else {
        return Ok(HashSet::new());
    };
    let content: Value = serde_json::from_str(&raw).unwrap_or(Value::Null);
    Ok(content
        .as_object()
        .into_iter()
        .flat_map(|m| m.values())
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect())
}

fn list_allows(
    c: &Connection,
    filters: Option<&ListFilters>,
    cand: &Candidate,
    direct: &HashSet<String>,
    encrypted: &mut HashMap<String, bool>,
) -> Result<bool, Error> {
    let Some(f) = filters else {
        return Ok(true);
    };
    if f.is_invite
        .is_some_and(|want| want != (cand.membership == "invite"))
    {
        return Ok(false);
    }
    if f.is_dm
        .is_some_and(|want| want != direct.contains(&cand.room_id))
    {
        return Ok(false);
    }
    if let Some(want) = f.is_encrypted {
        let is = match encrypted.get(&cand.room_id) {
            Some(v) => *v,
            None => {
                let v = storage::current_state_event(c, &cand.room_id, "m.room.encryption", "")?
                    .is_some();
                encrypted.insert(cand.room_id.clone(), v);
                v
            }
        };
        if is != want {
            return Ok(false);
        }
    }
    Ok(true)
}
