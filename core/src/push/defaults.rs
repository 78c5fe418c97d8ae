//! The server-default ruleset: ruma's (spec v1.18) plus the legacy mention rules that
//! spec v1.11 — the newest version we advertise — still defines, for clients and bots
//! that do not send `m.mentions` yet.

use ruma::UserId;
use ruma::push::{ConditionalPushRule, PatternedPushRule, RuleKind, Ruleset};
use serde_json::{Value, json};

/// Legacy rules that the spec says to skip for events carrying `m.mentions`.
const LEGACY_MENTION_RULES: &[(RuleKind, &str)] = &[
    (RuleKind::Override, ".m.rule.contains_display_name"),
    (RuleKind::Override, ".m.rule.roomnotif"),
    (RuleKind::Content, ".m.rule.contains_user_name"),
];

fn highlight_actions() -> Value {
    json!(["notify", {"set_tweak": "sound", "value": "default"}, {"set_tweak": "highlight"}])
}

fn contains_display_name() -> Option<ConditionalPushRule> {
    serde_json::from_value(json!({
        "rule_id": ".m.rule.contains_display_name",
        "default": true,
        "enabled": true,
        "conditions": [{"kind": "contains_display_name"}],
        "actions": highlight_actions(),
    }))
    .ok()
}

fn roomnotif() -> Option<ConditionalPushRule> {
    serde_json::from_value(json!({
        "rule_id": ".m.rule.roomnotif",
        "default": true,
        "enabled": true,
        "conditions": [
            {"kind": "event_match", "key": "content.body", "pattern": "@room"},
            {"kind": "sender_notification_permission", "key": "room"},
        ],
        "actions": ["notify", {"set_tweak": "highlight"}],
    }))
    .ok()
}

fn contains_user_name(user_id: &UserId) -> Option<PatternedPushRule> {
    serde_json::from_value(json!({
        "rule_id": ".m.rule.contains_user_name",
        "default": true,
        "enabled": true,
        "pattern": user_id.localpart(),
        "actions": highlight_actions(),
    }))
    .ok()
}

/// Insert `rule` right after the rule with id `after` (or at the end).
fn insert_after(set: &mut ruma::push::Ruleset, after: &str, rule: ConditionalPushRule) {
    let at = set
        .override_
        .get_index_of(after)
        .map_or(set.override_.len(), |i| i + 1);
    set.override_.shift_insert(at, rule);
}

/// The rules a user has until they change one.
pub fn server_default(user_id: &UserId) -> Ruleset {
    let mut rules = Ruleset::server_default(user_id);
    if let Some(rule) = contains_display_name() {
        insert_after(&mut rules, ".m.rule.is_user_mention", rule);
    }
    if let Some(rule) = roomnotif() {
        insert_after(&mut rules, ".m.rule.is_room_mention", rule);
    }
    if let Some(rule) = contains_user_name(user_id) {
        rules.content.insert(rule);
    }
    rules
}

/// Whether an event's content carries `m.mentions` (then legacy rules do not apply).
pub fn has_mentions(event_json: &str) -> bool {
    serde_json::from_str::<Value>(event_json)
        .ok()
        .is_some_and(|v| v["content"].get("m.mentions").is_some())
}

/// Switch the legacy mention rules off, for evaluating an event with `m.mentions`.
pub fn disable_legacy_mentions(rules: &mut Ruleset) {
    for (kind, id) in LEGACY_MENTION_RULES {
        // Absent (a user's stored rules may predate them) is fine.
        let _ = rules.set_enabled(kind.clone(), id, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn legacy_rules_sit_next_to_their_successors() {
        let user = UserId::parse("@bob:example.org").expect("user");
        let rules = server_default(&user);
        let ids: Vec<&str> = rules.override_.iter().map(|r| r.rule_id.as_str()).collect();
        let pos = |id: &str| ids.iter().position(|i| *i == id).expect(id);
        assert_eq!(ids[0], ".m.rule.master");
        assert_eq!(
            pos(".m.rule.contains_display_name"),
            pos(".m.rule.is_user_mention") + 1
        );
        assert_eq!(pos(".m.rule.roomnotif"), pos(".m.rule.is_room_mention") + 1);
        let content = rules
            .content
            .get(".m.rule.contains_user_name")
            .expect("content rule");
        assert_eq!(content.pattern, "bob");
        let mut rules = rules;
        disable_legacy_mentions(&mut rules);
        assert!(
            rules
                .override_
                .iter()
                .all(|r| r.rule_id != ".m.rule.roomnotif" || !r.enabled)
        );
    }
}
