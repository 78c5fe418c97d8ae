//! Evaluating an event against the push rules of a room's local members: before a local
//! message's write ([`plan`]) or inside a persisted event's write ([`on_event`]).

use futures::FutureExt;
use ruma::OwnedRoomId;
use ruma::push::{Action, FlattenedJson, PushConditionRoomCtx, Ruleset};
use ruma::serde::Raw;
use rusqlite::Connection;
use serde_json::{Value, json};

use super::context::room_context;
use super::{defaults, record};
use crate::error::Error;
use crate::storage::{self, StoredEvent};

/// Who an event notifies: (user, actions as JSON, highlight) for each member it does.
type Notified = Vec<(String, String, bool)>;

/// The push rules of a room's members evaluated for a local event before its write
/// ([`plan`]), recorded by the write that persists it ([`on_event`]).
#[derive(Debug)]
pub struct Planned {
    notified: Notified,
    /// The room's push context key the evaluation saw (`None`: none, or no room).
    key: Option<[i64; 3]>,
}

impl Planned {
    /// Whether the room's push context (members, display names, power levels, anyone's
    /// push rules) is still the one the plan was evaluated on, as `c` sees it: a plan
    /// made before a push rules change or a state redaction is evaluated again.
    pub fn still_current(&self, c: &Connection, room_id: &str) -> Result<bool, Error> {
        Ok(self.key.is_some() && storage::push_context_key(c, room_id)? == self.key)
    }

    /// Who the plan notifies.
    #[cfg(test)]
    pub(crate) fn notified_users(&self) -> Vec<String> {
        self.notified.iter().map(|(u, _, _)| u.clone()).collect()
    }
}

/// Evaluate a local event about to be sent against the push rules of every other
/// joined local member, on a reader, before its write: the single writer then only
/// records the result, instead of reading the members and their rules and evaluating
/// them while every other write waits (most of a send's time in the writer in a room
/// of ten, and growing with the room). The event is judged by what it will carry
/// (`type`, `content`, `sender`, `room_id`, `state_key`). The write records the plan
/// only when the event built on the same snapshot is still current (the room's state
/// and extremities unchanged, [`crate::rooms::Prebuilt`]); otherwise it evaluates again
/// itself, so a member who left or joined in between is judged as the room now
/// stands. `None` for a room this node does not know.
pub fn plan(
    c: &Connection,
    room_id: &str,
    ev: &crate::events::NewEvent,
) -> Result<Option<Planned>, Error> {
    let Some((version, _)) = storage::room_info(c, room_id)? else {
        return Ok(None);
    };
    let mut draft = json!({
        "type": ev.kind,
        "content": ev.content,
        "sender": ev.sender,
        "room_id": room_id,
    });
    if let Some(sk) = &ev.state_key {
        draft["state_key"] = json!(sk);
    }
    evaluate(c, room_id, &version, &ev.sender, &draft.to_string()).map(Some)
}

/// Evaluate a received event (its PDU JSON, as its write would evaluate it) against the
/// push rules of every other joined local member, on a reader, before its write. The
/// write records the plan only while the room's current state is the one it was planned
/// on (`rooms::receive`), so who is a member, their display names and the power levels
/// are the write's own.
pub fn plan_received(
    c: &Connection,
    room_id: &str,
    version: &str,
    sender: &str,
    json: &str,
) -> Result<Planned, Error> {
    evaluate(c, room_id, version, sender, json)
}

/// Record the notifications of a newly persisted event: those [`plan`]ned for it while
/// the room's push context is still the one planned on ([`Planned::still_current`];
/// the callers have checked the state and extremities), else those of an evaluation of
/// the push rules of every other joined local member now.
/// Runs in the event's write transaction.
///
/// The members, their rules and display names are read in one statement, and the
/// notifications of all of them written in a few (`storage::insert_notifications`,
/// `storage::enqueue_pushes_for`): the statements per event do not grow with the room,
/// and the rows of one event are written side by side.
pub fn on_event(
    c: &Connection,
    room_id: &str,
    version: &str,
    ev: &StoredEvent,
    planned: Option<Planned>,
) -> Result<(), Error> {
    let notified = match planned {
        Some(p) if p.still_current(c, room_id)? => p.notified,
        _ => evaluate(c, room_id, version, &ev.sender, &ev.json)?.notified,
    };
    record(c, room_id, ev, &notified)
}

/// Evaluate an event (its JSON) against the push rules of every joined local member of
/// the room but its sender.
fn evaluate(
    c: &Connection,
    room_id: &str,
    version: &str,
    sender: &str,
    json: &str,
) -> Result<Planned, Error> {
    let context = room_context(c, room_id)?;
    let nobody = Planned {
        notified: Vec::new(),
        key: context.key,
    };
    if context.members.iter().all(|m| m.user_id.as_str() == sender) {
        return Ok(nobody);
    }
    let Ok(room) = OwnedRoomId::try_from(room_id) else {
        tracing::debug!(
            room_id,
            "room id not understood by ruma; no push evaluation"
        );
        return Ok(nobody);
    };
    let raw: Raw<Value> =
        Raw::from_json(serde_json::value::RawValue::from_string(json.to_owned())?);
    let flat = FlattenedJson::from_raw(&raw);
    let power = context.power(version, sender)?;
    let has_mentions = defaults::has_mentions(json);
    let mut notified: Notified = Vec::new();
    for member in context
        .members
        .iter()
        .filter(|m| m.user_id.as_str() != sender)
    {
        let rules = if has_mentions {
            &member.rules.without_legacy_mentions
        } else {
            &member.rules.rules
        };
        let ctx = PushConditionRoomCtx::new(
            room.clone(),
            context.member_count,
            member.user_id.clone(),
            member.display_name.clone(),
        )
        .with_power_levels(power.clone());
        let Some(actions) = first_match(rules, &flat, &ctx) else {
            tracing::warn!(user = %member.user_id, "push rule evaluation did not complete at once; skipped");
            continue;
        };
        if !actions.iter().any(Action::should_notify) {
            continue;
        }
        let highlight = actions.iter().any(Action::is_highlight);
        notified.push((
            member.user_id.to_string(),
            serde_json::to_string(actions)?,
            highlight,
        ));
    }
    Ok(Planned {
        notified,
        key: context.key,
    })
}

/// The actions of the first rule that applies, like `Ruleset::get_actions` but on an
/// event flattened once for all recipients (ruma flattens it again on every call).
/// Evaluation is async only for optional hooks we do not install (thread
/// subscriptions), so it completes on the first poll; `None` if it ever did not, so the
/// writer is never blocked.
fn first_match<'r>(
    rules: &'r Ruleset,
    event: &FlattenedJson,
    ctx: &PushConditionRoomCtx,
) -> Option<&'r [Action]> {
    async {
        for rule in rules {
            if rule.applies(event, ctx).await {
                return rule.actions();
            }
        }
        &[]
    }
    .now_or_never()
}
