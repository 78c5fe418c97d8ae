//! The `/pushrules` operations on one user's ruleset. Every change is a
//! read-modify-write of `m.push_rules` inside one write transaction.

use ruma::api::client::push::PushRule;
use ruma::push::{
    Action, InsertPushRuleError, NewConditionalPushRule, NewPatternedPushRule, NewPushRule,
    NewSimplePushRule, PushCondition, RemovePushRuleError, RuleKind, Ruleset,
};
use ruma::{OwnedRoomId, OwnedUserId, UserId};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::{ruleset, save_ruleset};
use crate::error::Error;
use crate::server::Server;

/// Which rule a request names: `/pushrules/{scope}/{kind}/{ruleId}`.
#[derive(Clone, Copy, Debug)]
pub struct RuleAddress<'a> {
    /// Only `global` exists.
    pub scope: &'a str,
    /// `override`, `underride`, `sender`, `room` or `content`.
    pub kind: &'a str,
    /// The rule id.
    pub rule_id: &'a str,
}

impl RuleAddress<'_> {
    /// The kind of an existing rule to read or change: a rule under an unknown scope
    /// or kind does not exist (404 `M_NOT_FOUND`, as the spec's "the push rule does
    /// not exist").
    fn kind(&self) -> Result<RuleKind, Error> {
        self.parse_kind().map_err(Error::NotFound)
    }

    /// The kind of a rule to create: an unknown scope or kind is a bad request
    /// (400 `M_INVALID_PARAM`).
    fn new_kind(&self) -> Result<RuleKind, Error> {
        self.parse_kind().map_err(Error::InvalidParam)
    }

    fn parse_kind(&self) -> Result<RuleKind, String> {
        if self.scope != "global" {
            return Err(format!(
                "unknown push rule scope {:?} (only global)",
                self.scope
            ));
        }
        match self.kind {
            "override" => Ok(RuleKind::Override),
            "underride" => Ok(RuleKind::Underride),
            "sender" => Ok(RuleKind::Sender),
            "room" => Ok(RuleKind::Room),
            "content" => Ok(RuleKind::Content),
            other => Err(format!("unknown push rule kind {other:?}")),
        }
    }
}

fn user(user_id: &str) -> Result<OwnedUserId, Error> {
    UserId::parse(user_id).map_err(|e| Error::Internal(format!("caller user id: {e}")))
}

fn not_found() -> Error {
    Error::NotFound("push rule not found".into())
}

fn read_rules(server: &Server, user_id: &str) -> Result<Ruleset, Error> {
    let uid = user(user_id)?;
    server.db.read(|c| ruleset(c, &uid))
}

/// Apply `change` to the user's rules and store them, atomically.
fn modify(
    server: &Server,
    user_id: &str,
    change: impl FnOnce(&mut Ruleset) -> Result<(), Error>,
) -> Result<(), Error> {
    let uid = user(user_id)?;
    server.write(|tx| {
        let mut rules = ruleset(tx, &uid)?;
        change(&mut rules)?;
        save_ruleset(tx, user_id, &rules)
    })
}

/// `GET /pushrules/{scope}/{kind}/{ruleId}`.
pub fn get_rule(server: &Server, user_id: &str, at: RuleAddress<'_>) -> Result<Value, Error> {
    let kind = at.kind()?;
    let rules = read_rules(server, user_id)?;
    let rule = rules.get(kind, at.rule_id).ok_or_else(not_found)?;
    Ok(serde_json::to_value(PushRule::from(rule))?)
}

/// `GET .../enabled`.
pub fn rule_enabled(server: &Server, user_id: &str, at: RuleAddress<'_>) -> Result<bool, Error> {
    let kind = at.kind()?;
    let rules = read_rules(server, user_id)?;
    Ok(rules.get(kind, at.rule_id).ok_or_else(not_found)?.enabled())
}

/// `GET .../actions`.
pub fn rule_actions(
    server: &Server,
    user_id: &str,
    at: RuleAddress<'_>,
) -> Result<Vec<Action>, Error> {
    let kind = at.kind()?;
    let rules = read_rules(server, user_id)?;
    Ok(rules
        .get(kind, at.rule_id)
        .ok_or_else(not_found)?
        .actions()
        .to_vec())
}

/// `PUT .../enabled`.
pub fn set_rule_enabled(
    server: &Server,
    user_id: &str,
    at: RuleAddress<'_>,
    enabled: bool,
) -> Result<(), Error> {
    let kind = at.kind()?;
    modify(server, user_id, |rules| {
        rules
            .set_enabled(kind, at.rule_id, enabled)
            .map_err(|_| not_found())
    })
}

/// `PUT .../actions`.
pub fn set_rule_actions(
    server: &Server,
    user_id: &str,
    at: RuleAddress<'_>,
    actions: Vec<Action>,
) -> Result<(), Error> {
    let kind = at.kind()?;
    modify(server, user_id, |rules| {
        rules
            .set_actions(kind, at.rule_id, actions)
            .map_err(|_| not_found())
    })
}

/// A field of a rule body, parsed into a ruma type.
fn field<T: DeserializeOwned>(body: &Value, name: &str) -> Result<Option<T>, Error> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => serde_json::from_value(v.clone())
            .map(Some)
            .map_err(|e| Error::BadJson(format!("invalid `{name}`: {e}"))),
    }
}

fn required<T: DeserializeOwned>(body: &Value, name: &str) -> Result<T, Error> {
    field(body, name)?.ok_or_else(|| Error::MissingParam(format!("`{name}` is required")))
}

/// Build the new rule a `PUT` body describes.
fn new_rule(kind: RuleKind, rule_id: &str, body: &Value) -> Result<NewPushRule, Error> {
    let actions: Vec<Action> = required(body, "actions")?;
    let id = rule_id.to_owned();
    let conditions = || -> Result<Vec<PushCondition>, Error> {
        Ok(field(body, "conditions")?.unwrap_or_default())
    };
    Ok(match kind {
        RuleKind::Override => {
            NewPushRule::Override(NewConditionalPushRule::new(id, conditions()?, actions))
        }
        RuleKind::Underride => {
            NewPushRule::Underride(NewConditionalPushRule::new(id, conditions()?, actions))
        }
        RuleKind::Content => NewPushRule::Content(NewPatternedPushRule::new(
            id,
            required(body, "pattern")?,
            actions,
        )),
        RuleKind::Room => {
            let room = OwnedRoomId::try_from(rule_id).map_err(|e| {
                Error::InvalidParam(format!("a room rule's id must be a room id: {e}"))
            })?;
            NewPushRule::Room(NewSimplePushRule::new(room, actions))
        }
        RuleKind::Sender => {
            let sender = UserId::parse(rule_id).map_err(|e| {
                Error::InvalidParam(format!("a sender rule's id must be a user id: {e}"))
            })?;
            NewPushRule::Sender(NewSimplePushRule::new(sender, actions))
        }
        _ => return Err(Error::InvalidParam("unknown push rule kind".into())),
    })
}

fn insert_error(e: InsertPushRuleError) -> Error {
    match e {
        InsertPushRuleError::UnknownRuleId => {
            Error::NotFound("the `before` or `after` rule does not exist".into())
        }
        other => Error::InvalidParam(other.to_string()),
    }
}

/// `PUT /pushrules/{scope}/{kind}/{ruleId}` with optional `before`/`after`.
pub fn put_rule(
    server: &Server,
    user_id: &str,
    at: RuleAddress<'_>,
    before: Option<&str>,
    after: Option<&str>,
    body: &Value,
) -> Result<(), Error> {
    let kind = at.new_kind()?;
    let rule = new_rule(kind, at.rule_id, body)?;
    modify(server, user_id, |rules| {
        rules.insert(rule, after, before).map_err(insert_error)
    })
}

/// `DELETE /pushrules/{scope}/{kind}/{ruleId}`.
pub fn delete_rule(server: &Server, user_id: &str, at: RuleAddress<'_>) -> Result<(), Error> {
    let kind = at.kind()?;
    modify(server, user_id, |rules| {
        rules.remove(kind, at.rule_id).map_err(|e| match e {
            RemovePushRuleError::NotFound => not_found(),
            other => Error::InvalidParam(other.to_string()),
        })
    })
}

/// Room upgrades: `user_id`'s rules for `old_room` — its `room` rule, and `override` /
/// `underride` rules with an `event_match` on `room_id` naming it — copied for
/// `new_room`, enabled or not as they were, as Synapse's
/// `copy_push_rules_from_room_to_room_for_user`. Rules already there are left alone.
pub fn copy_room_rules(
    c: &rusqlite::Connection,
    user_id: &str,
    old_room: &str,
    new_room: &str,
) -> Result<(), Error> {
    let uid = user(user_id)?;
    let Ok(new_id) = OwnedRoomId::try_from(new_room) else {
        return Ok(());
    };
    let mut rules = ruleset(c, &uid)?;
    let mut copies: Vec<(RuleKind, NewPushRule, bool)> = Vec::new();
    if let Some(r) = rules.room.iter().find(|r| r.rule_id.as_str() == old_room) {
        copies.push((
            RuleKind::Room,
            NewPushRule::Room(NewSimplePushRule::new(new_id, r.actions.clone())),
            r.enabled,
        ));
    }
    for (kind, set) in [
        (RuleKind::Override, &rules.override_),
        (RuleKind::Underride, &rules.underride),
    ] {
        for r in set.iter().filter(|r| !r.default) {
            let names_old = r.conditions.iter().any(|cond| {
                matches!(cond, PushCondition::EventMatch(m) if m.key == "room_id" && m.pattern == old_room)
            });
            if !names_old {
                continue;
            }
            let conditions = r
                .conditions
                .iter()
                .map(|cond| match cond {
                    PushCondition::EventMatch(m) if m.key == "room_id" && m.pattern == old_room => {
                        let mut m = m.clone();
                        m.pattern = new_room.to_owned();
                        PushCondition::EventMatch(m)
                    }
                    other => other.clone(),
                })
                .collect();
            // Synapse names the copy after the new room.
            let rule_id = if r.rule_id.contains(old_room) {
                r.rule_id.replace(old_room, new_room)
            } else {
                new_room.to_owned()
            };
            let rule = NewConditionalPushRule::new(rule_id, conditions, r.actions.clone());
            let rule = match &kind {
                RuleKind::Override => NewPushRule::Override(rule),
                _ => NewPushRule::Underride(rule),
            };
            copies.push((kind.clone(), rule, r.enabled));
        }
    }
    let mut changed = false;
    for (kind, rule, enabled) in copies {
        let id = rule.rule_id().to_owned();
        if rules.get(kind.clone(), &id).is_some() {
            continue;
        }
        if rules.insert(rule, None, None).is_ok() {
            let _ = rules.set_enabled(kind, &id, enabled);
            changed = true;
        }
    }
    if changed {
        save_ruleset(c, user_id, &rules)?;
    }
    Ok(())
}
