//! Push rules: each user's ruleset, its evaluation on every new event, and the
//! notifications (and unread counts) that follow from it, the http pushers they are
//! delivered to (`delivery.rs`) and the notifications an embedding app shows itself
//! (`local.rs`).
//!
//! A user's rules are the global account data `m.push_rules` (what clients read in
//! `/sync`); until a user changes a rule they are the server defaults (`defaults.rs`). Every
//! event persisted in a room is evaluated for each other joined local member, inside its
//! write transaction, or for a local message just before it on a reader ([`plan`]);
//! actions that notify become a `push_notifications` row, and
//! unread counts are the rows after the member's read receipt, kept per (user, room) and
//! folded from the rows every 25 notifying events of the room. The rows are bounded per
//! room, not per message: each room keeps the rows of its newest 50 notifying events
//! (and of its newest mentions past them; see `storage/push.rs`).
//!
//! In the same transaction, each notification is queued for each of the user's http
//! pushers (`push_queue`), and, while someone subscribes, kept for
//! [`LocalNotifications`]; both take effect after the commit (`Server::write`).

mod context;
pub use context::{forget_database, kept_members, may_be_kept_with_at_most};
#[cfg(test)]
mod context_tests;
mod defaults;
pub mod delivery;
mod evaluate;
pub mod local;
mod pushers;
mod rules;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, LazyLock};

use parking_lot::Mutex;
use ruma::power_levels::NotificationPowerLevels;
use ruma::push::{PushConditionPowerLevelsCtx, Ruleset};
use ruma::room_version_rules::RoomPowerLevelsRules;
use ruma::{Int, UserId};
use rusqlite::Connection;
use serde_json::{Value, json};

pub use evaluate::{Planned, on_event, plan, plan_received};
pub use local::{LocalNotification, LocalNotifications};
pub use pushers::{get_pushers, set_pusher};
pub use rules::{
    RuleAddress, copy_room_rules, delete_rule, get_rule, put_rule, rule_actions, rule_enabled,
    set_rule_actions, set_rule_enabled,
};

use crate::error::Error;
use crate::events::rules_for;
use crate::storage::{self, StoredEvent, next_stream_position, now_ms};

/// The account data type holding a user's push rules.
pub const PUSH_RULES: &str = "m.push_rules";

/// A user's push rules: the stored ones, else the server defaults.
pub fn ruleset(c: &Connection, user_id: &UserId) -> Result<Ruleset, Error> {
    let stored = storage::account_data(c, user_id.as_str(), "", PUSH_RULES)?;
    Ok(ruleset_from(user_id, stored.as_deref()))
}

/// The rules in a stored `m.push_rules` content, else the server defaults.
fn ruleset_from(user_id: &UserId, stored: Option<&str>) -> Ruleset {
    let parsed = stored.and_then(|s| {
        let global = serde_json::from_str::<Value>(s).ok()?.get("global")?.clone();
        match serde_json::from_value::<Ruleset>(global) {
            Ok(rules) => Some(rules),
            Err(e) => {
                tracing::warn!(%user_id, error = %e, "stored push rules unreadable; using defaults");
                None
            }
        }
    });
    parsed.unwrap_or_else(|| defaults::server_default(user_id))
}

/// A user's rules ready for evaluation, as parsed from one stored content: as they are,
/// and with the legacy mention rules off (for events that carry `m.mentions`).
struct Prepared {
    stored: Option<String>,
    rules: Arc<Ruleset>,
    without_legacy_mentions: Arc<Ruleset>,
}

/// Parsed rulesets by user id. Every event is evaluated for every other local member,
/// and building the defaults or parsing the stored rules costs more than evaluating
/// them; an entry is used only while the stored content it came from is unchanged, so
/// there is nothing to invalidate. Bounded: cleared when it grows past [`CACHE_USERS`].
static PREPARED: LazyLock<Mutex<HashMap<String, Arc<Prepared>>>> = LazyLock::new(Default::default);
const CACHE_USERS: usize = 4096;

/// A user's prepared rules, from their stored `m.push_rules` content (`None`: none
/// stored, the defaults).
fn prepared(user_id: &UserId, stored: Option<String>) -> Arc<Prepared> {
    if let Some(p) = PREPARED.lock().get(user_id.as_str())
        && p.stored == stored
    {
        return p.clone();
    }
    let rules = ruleset_from(user_id, stored.as_deref());
    let mut without = rules.clone();
    defaults::disable_legacy_mentions(&mut without);
    let p = Arc::new(Prepared {
        stored,
        rules: Arc::new(rules),
        without_legacy_mentions: Arc::new(without),
    });
    let mut cache = PREPARED.lock();
    if cache.len() >= CACHE_USERS {
        cache.clear();
    }
    cache.insert(user_id.as_str().to_owned(), p.clone());
    p
}

/// The `m.push_rules` content for a ruleset.
pub fn rules_content(rules: &Ruleset) -> Value {
    json!({ "global": rules })
}

/// Store a user's rules as account data at a new stream position, so `/sync` carries
/// the change.
fn save_ruleset(c: &Connection, user_id: &str, rules: &Ruleset) -> Result<(), Error> {
    let content = rules_content(rules).to_string();
    let pos = next_stream_position(c)?;
    storage::set_account_data(c, user_id, "", PUSH_RULES, &content, pos)
}

/// The `m.push_rules` content of a user, defaults included (for `/sync` and
/// `GET /account_data/m.push_rules`).
pub fn rules_json(c: &Connection, user_id: &str) -> Result<Value, Error> {
    let uid = UserId::parse(user_id).map_err(|e| Error::InvalidParam(format!("user id: {e}")))?;
    Ok(rules_content(&ruleset(c, &uid)?))
}

/// Who may use `@room`: the sender's power and the room's `notifications.room` level,
/// in ruma's shape. Only the sender is ever looked up.
fn power_ctx_from(
    levels: &crate::rooms::PowerLevels,
    version: &str,
    sender: &str,
) -> Result<PushConditionPowerLevelsCtx, Error> {
    let clamp = |v: i64| Int::try_from(v).unwrap_or(if v < 0 { Int::MIN } else { Int::MAX });
    let mut users = BTreeMap::new();
    if let Ok(sender_id) = UserId::parse(sender) {
        users.insert(sender_id, clamp(levels.user_level(sender)));
    }
    let mut notifications = NotificationPowerLevels::new();
    notifications.room = clamp(levels.notification_level("room"));
    let (_, rules) = rules_for(version)?;
    let power_rules = RoomPowerLevelsRules::new(&rules.authorization, std::iter::empty());
    Ok(PushConditionPowerLevelsCtx::new(
        users,
        Int::from(0u8),
        notifications,
        power_rules,
    ))
}

/// A member's display name in the room (from their member event), else none.
pub(crate) fn display_name(c: &Connection, room_id: &str, user_id: &str) -> Result<String, Error> {
    let Some(id) = storage::current_state_event(c, room_id, "m.room.member", user_id)? else {
        return Ok(String::new());
    };
    let Some(ev) = storage::get_state_event(c, &id)? else {
        return Ok(String::new());
    };
    let json: Value = serde_json::from_str(&ev.json)?;
    Ok(json["content"]["displayname"]
        .as_str()
        .unwrap_or_default()
        .to_owned())
}

/// The parts of a local notification that are the same for every recipient.
struct About {
    body: Option<String>,
    sender_display_name: Option<String>,
    room_name: Option<String>,
}

impl About {
    fn of(c: &Connection, room_id: &str, ev: &StoredEvent) -> Result<About, Error> {
        let json: Value = serde_json::from_str(&ev.json)?;
        let name = display_name(c, room_id, &ev.sender)?;
        Ok(About {
            body: json["content"]["body"].as_str().map(str::to_owned),
            sender_display_name: (!name.is_empty()).then_some(name),
            room_name: room_name(c, room_id)?,
        })
    }
}

/// Record the notifications of one event: rows and unread counts, the queue of each
/// user's http pushers, and local notifications while someone subscribes.
fn record(
    c: &Connection,
    room_id: &str,
    ev: &StoredEvent,
    notified: &[(String, String, bool)],
) -> Result<(), Error> {
    if notified.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let rows: Vec<storage::UserNotification<'_>> = notified
        .iter()
        .map(|(user, actions, highlight)| storage::UserNotification {
            user_id: user,
            actions,
            highlight: *highlight,
        })
        .collect();
    storage::insert_notifications(c, room_id, ev.stream_ordering, &rows, now)?;
    // Rows queued here wake the deliverer once the write commits (storage::effects).
    let queued: Vec<(&str, &str)> = notified
        .iter()
        .map(|(user, actions, _)| (user.as_str(), actions.as_str()))
        .collect();
    storage::enqueue_pushes_for(c, &queued, room_id, &ev.event_id, now)?;
    if local::wanted() {
        // What local notifications say about the event, looked up once for all.
        let about = About::of(c, room_id, ev)?;
        for (user, _, highlight) in notified {
            let (notification_count, highlight_count) = storage::unread_counts(c, room_id, user)?;
            local::add(LocalNotification {
                user_id: user.clone(),
                room_id: room_id.to_owned(),
                event_id: ev.event_id.clone(),
                event_type: ev.kind.clone(),
                sender: ev.sender.clone(),
                sender_display_name: about.sender_display_name.clone(),
                room_name: about.room_name.clone(),
                body: about.body.clone(),
                highlight: *highlight,
                notification_count,
                highlight_count,
            });
        }
    }
    Ok(())
}

/// The room's `m.room.name`, if it has a non-empty one.
pub(crate) fn room_name(c: &Connection, room_id: &str) -> Result<Option<String>, Error> {
    let Some(id) = storage::current_state_event(c, room_id, "m.room.name", "")? else {
        return Ok(None);
    };
    let Some(ev) = storage::get_state_event(c, &id)? else {
        return Ok(None);
    };
    let json: Value = serde_json::from_str(&ev.json)?;
    Ok(json["content"]["name"]
        .as_str()
        .filter(|n| !n.is_empty())
        .map(str::to_owned))
}

/// A page of `GET /notifications`: (notification rows with their events, next token).
pub struct NotificationPage {
    /// Each notification with its stored event.
    pub items: Vec<(storage::NotificationRow, StoredEvent)>,
    /// Where the next page starts, if there may be one.
    pub next_token: Option<i64>,
}

/// A user's notifications, newest first.
pub fn notifications(
    c: &Connection,
    user_id: &str,
    from: Option<i64>,
    limit: i64,
    only_highlight: bool,
) -> Result<NotificationPage, Error> {
    let limit = limit.clamp(1, 100);
    let rows = storage::notifications(c, user_id, from.unwrap_or(i64::MAX), limit, only_highlight)?;
    let next_token = (rows.len() as i64 == limit)
        .then(|| rows.last().map(|r| r.stream_ordering))
        .flatten();
    let mut items = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(ev) = storage::get_event(c, &row.event_id)? {
            items.push((row, ev));
        }
    }
    Ok(NotificationPage { items, next_token })
}

#[cfg(test)]
mod bounds_tests;
#[cfg(test)]
mod plan_tests;

#[cfg(test)]
mod delivery_tests;

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::events::NewEvent;
    use crate::rooms::{CreateRoom, append_event, create_room};
    use crate::storage::{self, Receipt, next_stream_position};

    fn message(sender: &str, body: &str) -> NewEvent {
        NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            sender: sender.into(),
            redacts: None,
        }
    }

    /// The kept counts follow new events and read receipts the way counting the
    /// notifications after the receipt would.
    #[tokio::test]
    async fn unread_counts_follow_notifications_and_receipts() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        server
            .write(|tx| {
                for u in [&alice, &bob] {
                    tx.execute(
                        "INSERT INTO users (user_id, created_ts) VALUES (?1, 0)",
                        [u.as_str()],
                    )?;
                }
                Ok(())
            })
            .expect("users");
        let room = server
            .write(|tx| {
                let preset = Some("public_chat".into());
                create_room(
                    tx,
                    &server,
                    &alice,
                    CreateRoom {
                        preset,
                        ..Default::default()
                    },
                )
            })
            .expect("create");
        let join = NewEvent {
            kind: "m.room.member".into(),
            state_key: Some(bob.clone()),
            content: json!({"membership": "join"}),
            sender: bob.clone(),
            redacts: None,
        };
        server
            .write(|tx| append_event(tx, &server, &room, join, None))
            .expect("join");
        let counts = || {
            server
                .db
                .read(|c| storage::unread_counts(c, &room, &bob))
                .expect("counts")
        };
        assert_eq!(counts(), (0, 0));
        let mut sent = Vec::new();
        for body in ["one", "two", "bob: three"] {
            let ev = message(&alice, body);
            let a = server
                .write(|tx| append_event(tx, &server, &room, ev, None))
                .expect("send");
            sent.push(a.event_id);
        }
        // Three notify; the one with bob's name highlights.
        assert_eq!(counts(), (3, 1));
        let read = |event_id: &str, receipt_type: &str| {
            let r = Receipt {
                receipt_type: receipt_type.into(),
                user_id: bob.clone(),
                thread_id: String::new(),
                event_id: event_id.into(),
                ts: 0,
            };
            server
                .write(|tx| {
                    let pos = next_stream_position(tx)?;
                    storage::set_receipt(tx, &room, &r, pos)
                })
                .expect("receipt");
        };
        read(&sent[0], "m.read");
        assert_eq!(counts(), (2, 1));
        read(&sent[2], "m.read.private");
        assert_eq!(counts(), (0, 0));
        // Bob's own messages never count for him; alice's next one does.
        let own = message(&bob, "mine");
        server
            .write(|tx| append_event(tx, &server, &room, own, None))
            .expect("own");
        assert_eq!(counts(), (0, 0));
        let next = message(&alice, "four");
        server
            .write(|tx| append_event(tx, &server, &room, next, None))
            .expect("four");
        assert_eq!(counts(), (1, 0));
        node.shutdown().await.expect("shutdown");
    }

    /// One event's notifications are written for all members together
    /// (`push_recipients`, `insert_notifications`): each other joined local member is
    /// evaluated with their own display name in the room, the sender and a member who
    /// left are not, and the counts match one row each.
    #[tokio::test]
    async fn one_event_notifies_each_member_with_their_display_name() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let [alice, bob, carol, dave] =
            ["alice", "bob", "carol", "dave"].map(|u| server.user_id(u));
        server
            .write(|tx| {
                for u in [&alice, &bob, &carol, &dave] {
                    storage::create_user(tx, u, None, false, "")?;
                }
                Ok(())
            })
            .expect("users");
        let room = server
            .write(|tx| {
                let preset = Some("public_chat".into());
                create_room(
                    tx,
                    &server,
                    &alice,
                    CreateRoom {
                        preset,
                        ..Default::default()
                    },
                )
            })
            .expect("create");
        let member = |user: &str, content: serde_json::Value| {
            let ev = NewEvent {
                kind: "m.room.member".into(),
                state_key: Some(user.to_owned()),
                content,
                sender: user.to_owned(),
                redacts: None,
            };
            server
                .write(|tx| append_event(tx, &server, &room, ev, None))
                .expect("membership");
        };
        member(&bob, json!({"membership": "join", "displayname": "Robert"}));
        member(&carol, json!({"membership": "join", "displayname": 7}));
        member(&dave, json!({"membership": "join"}));
        member(&dave, json!({"membership": "leave"}));
        let counts = |user: &str| {
            server
                .db
                .read(|c| storage::unread_counts(c, &room, user))
                .expect("counts")
        };
        let ev = message(&alice, "hello Robert");
        server
            .write(|tx| append_event(tx, &server, &room, ev, None))
            .expect("send");
        // Bob's display name highlights; carol's is no string, so it never matches.
        assert_eq!(counts(&bob), (1, 1));
        assert_eq!(counts(&carol), (1, 0));
        assert_eq!(counts(&alice), (0, 0));
        assert_eq!(counts(&dave), (0, 0));
        let rows = |user: &str| {
            server
                .db
                .read(|c| storage::notification_rows(c, user))
                .expect("rows")
        };
        assert_eq!((rows(&bob), rows(&carol), rows(&dave)), (1, 1, 0));
        node.shutdown().await.expect("shutdown");
    }
}
