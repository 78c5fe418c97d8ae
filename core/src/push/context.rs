//! What evaluating an event against the push rules of a room's local members needs of
//! the room: who they are, their display names and prepared rules, the member count and
//! the power levels. Every message in a room is evaluated for every other member, and
//! reading this for each one (a join of the members, their rules, their member events'
//! JSON) was a third of the evaluation. It is kept per room instead, and used while
//! [`storage::push_context_key`] is unchanged: the same state group (members, display
//! names, power levels), no redaction since (which changes what a state event says
//! without changing the group) and no push rules change of anyone since. The key is
//! read in the caller's own snapshot, so a context is never used with a newer or older
//! database state than it was read from.
//!
//! Bounds: [`MAX_ROOMS`] rooms and [`MAX_BYTES`] in all, least recently used dropped
//! first; a room larger than that is read for each event as before.
//!
//! Process-wide, like the prepared rulesets: entries are told apart by the database
//! file as well as the room (two nodes of one process share rooms, not state groups),
//! and a node starting forgets those of its file ([`forget_database`]). Only contexts
//! read on a committed snapshot are kept ([`storage::is_committed_snapshot`]).

use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use ruma::push::PushConditionPowerLevelsCtx;
use ruma::{OwnedUserId, UInt, UserId};
use rusqlite::Connection;

use super::{Prepared, power_ctx_from, prepared};
use crate::error::Error;
use crate::lru::Lru;
use crate::rooms::PowerLevels;
use crate::storage;

/// Rooms whose context is kept at most.
pub const MAX_ROOMS: usize = 256;
/// Bytes of all kept contexts together at most, each member counted as [`MEMBER_BYTES`]
/// plus their user id, display name and stored push rules: about 4,096 members of
/// short names, as many as the prepared rulesets kept (`push::CACHE_USERS`), since each
/// member holds one, so the two together pin at most twice that many.
pub const MAX_BYTES: usize = 4 << 20;
/// What a member counts for beyond their strings (their share of a prepared ruleset
/// and the entry itself).
pub const MEMBER_BYTES: usize = 1024;

/// A joined local member, ready for evaluation.
pub(super) struct Member {
    pub(super) user_id: OwnedUserId,
    pub(super) display_name: String,
    pub(super) rules: Arc<Prepared>,
}

/// A room's push context at one [`storage::push_context_key`].
pub(super) struct RoomContext {
    pub(super) key: Option<[i64; 3]>,
    /// Every joined local member, the sender of an event included (skipped at use).
    pub(super) members: Vec<Member>,
    pub(super) member_count: UInt,
    levels: Arc<PowerLevels>,
    /// What it counts for against [`MAX_BYTES`].
    bytes: usize,
}

impl RoomContext {
    /// The power-level context for an event from `sender`.
    pub(super) fn power(
        &self,
        version: &str,
        sender: &str,
    ) -> Result<PushConditionPowerLevelsCtx, Error> {
        power_ctx_from(&self.levels, version, sender)
    }
}

type Key = (String, String);

static CONTEXTS: LazyLock<Mutex<Lru<Key, Arc<RoomContext>>>> =
    LazyLock::new(|| Mutex::new(Lru::new(MAX_ROOMS, MAX_BYTES)));

/// How many members' push rules an event of `room_id` is evaluated against, if the
/// room's push context as `c` has it is kept in memory: then evaluating reads no
/// member's rules, and costs about that many rulesets' evaluations (what decides
/// whether it is cheap enough to do inside the single writer). `None` if not kept.
pub fn kept_members(c: &Connection, room_id: &str) -> Result<Option<usize>, Error> {
    let key = storage::push_context_key(c, room_id)?;
    Ok(kept_at(c, room_id, key).map(|hit| hit.members.len()))
}

/// Whether a push context of `room_id` in the database `file` is kept with at most
/// `max` members, whatever state it was read at: a hint that needs no connection, for
/// deciding whether to try [`kept_members`] (which checks it is current) at all.
pub fn may_be_kept_with_at_most(file: &str, room_id: &str, max: usize) -> bool {
    kept_in(file, room_id).is_some_and(|hit| hit.members.len() <= max)
}

/// The context of `room_id` kept for the database `file`, read at whatever state.
fn kept_in(file: &str, room_id: &str) -> Option<Arc<RoomContext>> {
    CONTEXTS
        .lock()
        .get(&(file.to_owned(), room_id.to_owned()))
        .cloned()
}

/// The context of `room_id` kept for `c`'s database at `key`, if any.
fn kept_at(c: &Connection, room_id: &str, key: Option<[i64; 3]>) -> Option<Arc<RoomContext>> {
    let file = key.and(storage::file_of(c))?;
    kept_in(file, room_id).filter(|hit| hit.key == key)
}

/// The push context of `room_id` as this snapshot (`c`) has it.
pub(super) fn room_context(c: &Connection, room_id: &str) -> Result<Arc<RoomContext>, Error> {
    let key = storage::push_context_key(c, room_id)?;
    if let Some(hit) = kept_at(c, room_id, key) {
        return Ok(hit);
    }
    let context = Arc::new(read(c, room_id, key)?);
    // The writer may use what readers kept, never keep what it read itself.
    if let Some(file) = key.and(storage::file_of(c))
        && storage::is_committed_snapshot(c)
    {
        let k = (file.to_owned(), room_id.to_owned());
        CONTEXTS.lock().put(k, context.clone(), context.bytes);
    }
    Ok(context)
}

fn read(c: &Connection, room_id: &str, key: Option<[i64; 3]>) -> Result<RoomContext, Error> {
    let mut bytes = MEMBER_BYTES;
    let members = storage::push_recipients(c, room_id)?
        .into_iter()
        .filter_map(|r| {
            let user_id = UserId::parse(&r.user_id).ok()?;
            bytes += MEMBER_BYTES
                + r.user_id.len()
                + r.display_name.len()
                + r.push_rules.as_ref().map_or(0, String::len);
            Some(Member {
                rules: prepared(&user_id, r.push_rules),
                user_id,
                display_name: r.display_name,
            })
        })
        .collect();
    let (member_count, _) = storage::member_counts(c, room_id)?;
    Ok(RoomContext {
        key,
        members,
        member_count: UInt::try_from(member_count).unwrap_or(UInt::MAX),
        levels: crate::rooms::power_levels(c, room_id)?,
        bytes,
    })
}

/// Forget every context kept for the database at `path`: a database opened there now
/// may be another one (a node's data wiped, or restored from a copy, and started again
/// in the same process) whose state group ids and counts repeat those of the last.
pub fn forget_database(path: &str) {
    CONTEXTS.lock().retain(|(p, _), _| p.as_str() != path);
}

/// How many rooms' contexts are kept (for tests of the bound).
#[cfg(test)]
pub(super) fn kept() -> usize {
    CONTEXTS.lock().len()
}
