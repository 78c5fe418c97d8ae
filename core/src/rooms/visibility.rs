//! History visibility: which events of a room's timeline a user may read.
//!
//! Decided per event, as the spec's "Visibility of events" and Synapse do it, from the
//! room's state *at that event* (its state group before it): the
//! `m.room.history_visibility` then, and the user's membership then.
//!
//! - `world_readable` then: visible.
//! - the user was joined then: visible.
//! - `shared` then, and the user is joined now: visible (they joined after it). A user
//!   who has left is treated as never having joined, as Synapse does.
//! - `invited` then, and the user was invited then: visible.
//! - otherwise hidden; the user's own membership events are always visible.
//!
//! A history-visibility event is judged by the more permissive of the setting before
//! and after it, so the change itself is seen by those who could see either side. A user
//! who has left or been banned sees nothing after that point. Lookups are cached per
//! state group, and a page of events rarely spans more than a few groups, so the cost
//! follows the page, not the room's history.

use std::cell::RefCell;
use std::collections::HashMap;

use rusqlite::Connection;
use serde::Deserialize;

use crate::error::Error;
use crate::storage::{self, StoredEvent};

const HISTORY_VISIBILITY: &str = "m.room.history_visibility";

/// A `history_visibility` setting, ordered from most to least restrictive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Setting {
    Joined,
    Invited,
    Shared,
    WorldReadable,
}

impl Setting {
    /// Unknown or missing values mean `shared`, the spec's default.
    fn parse(v: Option<&str>) -> Setting {
        match v {
            Some("joined") => Setting::Joined,
            Some("invited") => Setting::Invited,
            Some("world_readable") => Setting::WorldReadable,
            _ => Setting::Shared,
        }
    }
}

/// The room's state at an event, as far as visibility needs it.
#[derive(Clone, Debug)]
struct At {
    setting: Setting,
    membership: Option<String>,
}

/// What one user may read of one room. Build with [`visibility_for`].
#[derive(Debug)]
pub struct Visibility {
    room_id: String,
    user_id: String,
    joined_now: bool,
    /// Nothing after this position is visible (a user who left or was banned).
    max: i64,
    /// State lookups by state group.
    cache: RefCell<HashMap<Option<i64>, At>>,
}

impl Visibility {
    /// No event after this position is visible (inclusive bound).
    pub fn max_pos(&self) -> i64 {
        self.max
    }

    /// No event at or before this position is visible (exclusive bound). Always the
    /// room's start, backfilled history included (it sorts below the live stream):
    /// which older events are visible is decided event by event.
    pub fn min_pos(&self) -> i64 {
        i64::MIN
    }

    /// Whether the user may read `ev`.
    pub fn allows(&self, c: &Connection, ev: &StoredEvent) -> Result<bool, Error> {
        if ev.room_id != self.room_id || ev.stream_ordering > self.max {
            return Ok(false);
        }
        if ev.kind == "m.room.member" && ev.state_key.as_deref() == Some(self.user_id.as_str()) {
            return Ok(true);
        }
        let at = self.at(c, ev.state_group_before)?;
        let mut setting = at.setting;
        if ev.kind == HISTORY_VISIBILITY && ev.state_key.as_deref() == Some("") {
            setting = setting.max(setting_of(&ev.json));
        }
        let membership = at.membership.as_deref();
        Ok(match setting {
            Setting::WorldReadable => true,
            _ if membership == Some("join") => true,
            Setting::Shared => self.joined_now,
            Setting::Invited => membership == Some("invite"),
            Setting::Joined => false,
        })
    }

    /// The user's membership at `ev` (MSC4115's `unsigned.membership`): after the event
    /// for the user's own member events, before it for the rest; `leave` when none.
    pub fn membership_at(&self, c: &Connection, ev: &StoredEvent) -> Result<String, Error> {
        if ev.kind == "m.room.member"
            && ev.state_key.as_deref() == Some(self.user_id.as_str())
            && let Some(m) = membership_of(&ev.json)
        {
            return Ok(m);
        }
        Ok(self
            .at(c, ev.state_group_before)?
            .membership
            .unwrap_or_else(|| "leave".to_owned()))
    }

    fn at(&self, c: &Connection, group: Option<i64>) -> Result<At, Error> {
        if let Some(at) = self.cache.borrow().get(&group) {
            return Ok(at.clone());
        }
        // The event's JSON of one state key at the group, if any.
        let json = |ty: &str, sk: &str| -> Result<Option<String>, Error> {
            let Some(g) = group else { return Ok(None) };
            match storage::state_group_lookup(c, g, ty, sk)? {
                Some(id) => storage::event_json(c, &id),
                None => Ok(None),
            }
        };
        let setting = json(HISTORY_VISIBILITY, "")?.map_or(Setting::Shared, |j| setting_of(&j));
        let membership = json("m.room.member", &self.user_id)?.and_then(|j| membership_of(&j));
        let at = At {
            setting,
            membership,
        };
        self.cache.borrow_mut().insert(group, at.clone());
        Ok(at)
    }
}

/// An event's content, parsed into `T` (the fields it names; the rest is skipped).
#[derive(Deserialize)]
struct Pdu<T> {
    content: T,
}

fn setting_of(json: &str) -> Setting {
    #[derive(Deserialize)]
    struct Content {
        history_visibility: Option<String>,
    }
    let pdu: Option<Pdu<Content>> = serde_json::from_str(json).ok();
    Setting::parse(pdu.and_then(|p| p.content.history_visibility).as_deref())
}

/// `content.membership` of a member event's JSON.
fn membership_of(json: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct Content {
        membership: Option<String>,
    }
    serde_json::from_str::<Pdu<Content>>(json)
        .ok()?
        .content
        .membership
}

/// Work out what `user_id` may read of `room_id`: forbidden for someone who has never
/// been in the room or was only ever invited to a room whose history is not readable
/// by invitees.
pub fn visibility_for(c: &Connection, room_id: &str, user_id: &str) -> Result<Visibility, Error> {
    let found = storage::membership(c, room_id, user_id)?;
    let membership = found.as_ref().map(|(m, _, _)| m.as_str());
    let max = match (membership, found.as_ref().map(|(_, _, p)| *p)) {
        (Some("join"), _) => i64::MAX,
        // An invitee may read only rooms whose history invitees may see (as Synapse).
        (Some("invite"), _) if current_setting(c, room_id)? >= Setting::Invited => i64::MAX,
        (Some("leave" | "ban"), Some(pos)) => pos,
        // Anyone may read a world-readable room (event by event: only what was
        // world-readable when it was sent).
        _ if current_setting(c, room_id)? == Setting::WorldReadable => i64::MAX,
        _ => {
            return Err(Error::Forbidden(format!(
                "you are not a member of {room_id}"
            )));
        }
    };
    let membership = membership.unwrap_or_default().to_owned();
    Ok(Visibility {
        room_id: room_id.to_owned(),
        user_id: user_id.to_owned(),
        joined_now: membership == "join",
        max,
        cache: RefCell::new(HashMap::new()),
    })
}

fn current_setting(c: &Connection, room_id: &str) -> Result<Setting, Error> {
    Ok(
        match storage::current_state_event(c, room_id, HISTORY_VISIBILITY, "")? {
            Some(id) => {
                storage::get_state_event(c, &id)?.map_or(Setting::Shared, |e| setting_of(&e.json))
            }
            None => Setting::Shared,
        },
    )
}

/// Keep the events of `events` the user may read.
pub fn visible_events(
    c: &Connection,
    vis: &Visibility,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>, Error> {
    let mut out = Vec::with_capacity(events.len());
    for e in events {
        if vis.allows(c, &e)? {
            out.push(e);
        }
    }
    Ok(out)
}
