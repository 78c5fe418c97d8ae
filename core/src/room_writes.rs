//! What a requester writes into rooms: new rooms, messages, state, redactions and
//! upgrades. The
//! client API's room handlers parse and answer; the checks a client's write needs on
//! top of the room engine's auth rules (rate limits, a retried transaction, a relation's
//! target, a canonical alias that must exist, a member event only for users of this
//! node), and the write transaction itself, are here. Membership changes are the
//! membership service's ([`crate::membership`]).

use std::sync::Arc;

use rusqlite::Connection;
use serde_json::Value;

use crate::error::Error;
use crate::events::NewEvent;
use crate::ratelimit::Action;
use crate::requester::Requester;
use crate::rooms::{self, CreateRoom};
use crate::server::Server;

/// Create a room for the requester, inviting `invite`: users of this node inside the
/// creation, users of other nodes afterwards over federation (their server must
/// countersign the invite). Returns the room id.
pub async fn create_room(
    server: &Arc<Server>,
    requester: &Requester,
    mut req: CreateRoom,
) -> Result<String, Error> {
    server.rate_limit_requester(Action::RoomCreation, requester)?;
    let mut local_invites = Vec::new();
    let mut remote_invites = Vec::new();
    for invitee in std::mem::take(&mut req.invite) {
        match crate::membership::check_invitee(server, &invitee)? {
            true => local_invites.push(invitee),
            false => remote_invites.push(invitee),
        }
    }
    req.invite = local_invites;
    let room_id = server.write(|tx| rooms::create_room(tx, server, &requester.user_id, req))?;
    tracing::info!(%room_id, creator = %requester.user_id, "room created");
    for invitee in remote_invites {
        // The room exists now; a peer that cannot be reached must not make the client
        // think creation failed (it would create another room). The inviter can retry.
        if let Err(e) =
            rooms::invite_remote(server, &room_id, &requester.user_id, &invitee, None).await
        {
            tracing::warn!(%room_id, %invitee, error = %e, "remote invite at room creation failed");
        }
    }
    Ok(room_id)
}

/// Append an event for the requester (with the client transaction id `txn` of its
/// device, if any) and return its id. A new event (not a retried transaction) counts
/// against the requester's message rate limit.
pub fn send(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    ev: NewEvent,
    txn: Option<&str>,
) -> Result<String, Error> {
    let txn = txn.map(|t| (requester.device_id.as_str(), t));
    let appended = server.write(|tx| {
        let retried = match txn {
            Some((device, t)) => rooms::is_retry(tx, room_id, &ev, device, t)?,
            None => false,
        };
        if !retried {
            server.rate_limit_requester(Action::Message, requester)?;
        }
        rooms::append_event(tx, server, room_id, ev, txn)
    })?;
    Ok(appended.event_id)
}

/// A message event (`PUT /rooms/{roomId}/send/{eventType}/{txnId}`) of `kind` from the
/// requester, at `ts` (an application service's timestamp) if given. A retried
/// transaction gets its event back; only a new one is rate limited and has its
/// relation checked. No thread waits: its writes are queued for the writer
/// ([`Server::write_async`]).
pub async fn send_message_async(
    server: &Arc<Server>,
    requester: &Requester,
    room_id: &str,
    kind: String,
    content: Value,
    txn_id: &str,
    ts: Option<i64>,
) -> Result<String, Error> {
    let ev = message(requester, kind, content);
    let sending = server.local_heads.sending();
    let ev = match may_go_alone(server, requester, room_id, &sending) {
        true => {
            let (s, r) = (Arc::clone(server), requester.clone());
            let (room, txn) = (room_id.to_owned(), txn_id.to_owned());
            let alone = server
                .write_async(move |tx| send_alone(tx, &s, &r, &room, ev, &txn, ts))
                .await?;
            match alone {
                Alone::Sent(event_id) => return Ok(event_id),
                Alone::Declined(ev) => ev,
            }
        }
        false => ev,
    };
    let ready = ready_to_write(server, requester, room_id, ev, txn_id, ts)?;
    if let Some(built) = &ready.ahead.built {
        built.wait_turn().await;
    }
    let s = Arc::clone(server);
    let event_id = server.write_async(move |tx| ready.append(tx, &s)).await;
    drop(sending);
    event_id
}

/// The message event `requester` sends.
fn message(requester: &Requester, kind: String, content: Value) -> NewEvent {
    NewEvent {
        kind,
        state_key: None,
        content,
        sender: requester.user_id.clone(),
        redacts: None,
    }
}

/// Whether a send may be built in its write ([`send_alone`]): no other send under way,
/// the writer free, the client not out of tokens and the room's push context kept with
/// few enough members. A client out of tokens is refused on a reader (in
/// [`ready_to_write`]), not in a write: a local app sending as fast as it can must not
/// hold the writer with every refusal.
fn may_go_alone(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    sending: &crate::rooms::heads::Sending<'_>,
) -> bool {
    sending.alone()
        && server.db.writer_is_idle()
        && server.rate_limit_allows(Action::Message, requester)
        && server.db.file().is_some_and(|file| {
            crate::push::may_be_kept_with_at_most(file, room_id, ALONE_MAX_MEMBERS)
        })
}

/// A send made ready on a reader, owning what its write needs.
struct ReadySend {
    room_id: String,
    ev: NewEvent,
    device_id: String,
    txn_id: String,
    ts: Option<i64>,
    ahead: rooms::Prepared,
}

/// Build a send ahead of its write. A new send (not a retried transaction) takes its
/// rate-limit token first, so a limited client costs no work. Then the event is built,
/// signed and authorised, and the members' push rules evaluated, here on a read
/// snapshot rather than in the single writer, which uses them only if the room has not
/// moved on (and builds and evaluates again if it has). A failure here is left to the
/// write to answer. Its write is to wait for its turn (`Prebuilt::wait_turn`) first.
fn ready_to_write(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    ev: NewEvent,
    txn_id: &str,
    ts: Option<i64>,
) -> Result<ReadySend, Error> {
    let ahead = server.db.read_tx(|c| {
        if rooms::is_retry(c, room_id, &ev, &requester.device_id, txn_id)? {
            return Ok(rooms::Prepared::default());
        }
        server.rate_limit_requester(Action::Message, requester)?;
        let Ok(built) = rooms::prebuild(c, server, room_id, &ev, ts) else {
            // Not allowed as the room stands: nobody's rules are evaluated for it.
            return Ok(rooms::Prepared::default());
        };
        Ok(rooms::Prepared {
            push: crate::push::plan(c, room_id, &ev).ok().flatten(),
            built: Some(built),
        })
    })?;
    Ok(ReadySend {
        room_id: room_id.to_owned(),
        ev,
        device_id: requester.device_id.clone(),
        txn_id: txn_id.to_owned(),
        ts,
        ahead,
    })
}

impl ReadySend {
    /// The write: the event appended (the one built ahead if the room has not moved
    /// on), its relation checked unless the transaction is a retry.
    fn append(self, tx: &Connection, server: &Server) -> Result<String, Error> {
        let ReadySend {
            room_id,
            ev,
            device_id,
            txn_id,
            ts,
            ahead,
        } = self;
        let txn = Some((device_id.as_str(), txn_id.as_str()));
        let appended = rooms::append_prepared(tx, server, &room_id, ev, txn, ts, ahead, |ev| {
            crate::relations::check_new_relation(tx, &room_id, &ev.sender, &ev.kind, &ev.content)
        })?;
        Ok(appended.event_id)
    }
}

/// Most members whose push rules a send built in its write evaluates there ([`send_alone`]):
/// each costs about as much as signing the event, and a write holding the writer for a
/// big room's evaluations would keep every other write waiting.
const ALONE_MAX_MEMBERS: usize = 16;

/// The write of a message sent while no other send is under way and the writer is
/// free: built, signed, authorised and evaluated inside its write, with no read
/// transaction before it. Building ahead on a reader ([`rooms::prebuild`]) is what
/// keeps the writer free for others while a send signs; with nobody else sending it
/// only adds a snapshot whose page cache starts cold after every write, and the checks
/// that the room has not moved on since. Only where the room's push context is kept in
/// memory and has at most [`ALONE_MAX_MEMBERS`] members to evaluate (so the write holds
/// the writer for about as long as one built ahead would); otherwise the event comes
/// back ([`Alone::Declined`]) to be sent the usual way, which keeps the context for the
/// next send.
fn send_alone(
    tx: &Connection,
    server: &Server,
    requester: &Requester,
    room_id: &str,
    ev: NewEvent,
    txn_id: &str,
    ts: Option<i64>,
) -> Result<Alone, Error> {
    if crate::push::kept_members(tx, room_id)?.is_none_or(|n| n > ALONE_MAX_MEMBERS) {
        return Ok(Alone::Declined(ev));
    }
    let txn = Some((requester.device_id.as_str(), txn_id));
    let ahead = rooms::Prepared::default();
    let appended = rooms::append_prepared(tx, server, room_id, ev, txn, ts, ahead, |ev| {
        server.rate_limit_requester(Action::Message, requester)?;
        crate::relations::check_new_relation(tx, room_id, &ev.sender, &ev.kind, &ev.content)
    })?;
    Ok(Alone::Sent(appended.event_id))
}

/// What [`send_alone`] did.
#[derive(Debug)]
enum Alone {
    /// Sent: the event's id.
    Sent(String),
    /// Not sent, to be sent the usual way.
    Declined(NewEvent),
}

impl Alone {
    #[cfg(test)]
    fn sent(self) -> Option<String> {
        match self {
            Alone::Sent(id) => Some(id),
            Alone::Declined(_) => None,
        }
    }
}

/// A state event (`PUT /rooms/{roomId}/state/{eventType}/{stateKey}`) from the
/// requester, at `ts` if given. Unchanged state creates nothing: the current event's id
/// is the answer.
pub async fn put_state(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    kind: String,
    state_key: String,
    mut content: Value,
    ts: Option<i64>,
) -> Result<String, Error> {
    if kind == "m.room.member" && !crate::membership::check_invitee(server, &state_key)? {
        return Err(Error::Forbidden(format!(
            "{state_key} is on another node: use /invite, /kick or /ban for them"
        )));
    }
    // The spec asks more of a canonical alias than the auth rules do: every alias must
    // exist and point to the room.
    if kind == "m.room.canonical_alias" && state_key.is_empty() {
        crate::directory::check_canonical_alias(server, room_id, &content).await?;
    }
    if kind == "m.room.topic" && state_key.is_empty() {
        rooms::add_rich_topic(&mut content);
    }
    let ev = NewEvent {
        kind,
        state_key: Some(state_key),
        content,
        sender: requester.user_id.clone(),
        redacts: None,
    };
    server.write(|tx| match rooms::unchanged_state(tx, room_id, &ev)? {
        Some(existing) => Ok(existing),
        None => {
            server.rate_limit_requester(Action::Message, requester)?;
            Ok(rooms::append_event_at(tx, server, room_id, ev, None, ts)?.event_id)
        }
    })
}

/// Redact `event_id` for the requester (`PUT /rooms/{roomId}/redact/{eventId}/{txnId}`),
/// which must have sent it or have the power to redact.
pub fn redact(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    event_id: String,
    reason: Option<String>,
    txn_id: &str,
) -> Result<String, Error> {
    let allowed = server
        .db
        .read(|c| rooms::check_redaction_allowed(c, room_id, &requester.user_id, &event_id))?;
    if !allowed {
        return Err(Error::Forbidden("you may not redact this event".into()));
    }
    let mut content = serde_json::json!({});
    if let Some(reason) = reason {
        content["reason"] = serde_json::json!(reason);
    }
    let ev = NewEvent {
        kind: "m.room.redaction".into(),
        state_key: None,
        content,
        sender: requester.user_id.clone(),
        redacts: Some(event_id),
    };
    send(server, requester, room_id, ev, Some(txn_id))
}

/// Upgrade `room_id` to `new_version` for the requester (`POST /rooms/{roomId}/upgrade`,
/// the work is [`rooms::upgrade_room`]'s, in one write transaction). Counts as a room
/// creation for rate limits. Returns the new room's id.
pub fn upgrade_room(
    server: &Server,
    requester: &Requester,
    room_id: &str,
    new_version: &str,
    additional_creators: &[String],
) -> Result<String, Error> {
    server.rate_limit_requester(Action::RoomCreation, requester)?;
    server.write(|c| {
        rooms::upgrade_room(
            c,
            server,
            &requester.user_id,
            room_id,
            new_version,
            additional_creators,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage;
    use crate::test_support::{message, node, public_room};

    /// A send with nobody else sending: built in its write once the room's push context
    /// is kept, sent the usual way (on a reader first) before; the same event, the same
    /// notifications and the same retry answer either way.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_send_is_built_in_its_write_once_the_push_context_is_kept() {
        let (_dir, node) = node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        let room = public_room(&server, &alice, &[&bob]);
        let caller = Requester::user(alice.clone(), "PHONE");
        let kept = || {
            server
                .db
                .read(|c| crate::push::kept_members(c, &room))
                .expect("read")
                .is_some()
        };
        assert!(!kept(), "nothing evaluated in the room yet");
        let hint = || {
            let file = server.db.file().expect("a file");
            crate::push::may_be_kept_with_at_most(file, &room, ALONE_MAX_MEMBERS)
        };
        assert!(!hint(), "not even tried before the room's context is kept");
        let alone = |body: &str, txn: &str| {
            server
                .write(|tx| {
                    send_alone(
                        tx,
                        &server,
                        &caller,
                        &room,
                        message(&alice, body),
                        txn,
                        None,
                    )
                })
                .expect("send")
        };
        // Not kept: the event comes back, unsent, for the usual way.
        let Alone::Declined(back) = alone("first", "t1") else {
            panic!("sent without a kept context");
        };
        assert_eq!(back.content["body"], "first");
        let first =
            send_message_async(&server, &caller, &room, back.kind, back.content, "t1", None)
                .await
                .expect("first");
        assert!(kept(), "the usual way keeps the context");
        assert!(hint());
        let second = alone("second", "t2").sent().expect("built in the write");
        assert_ne!(first, second);
        // A retried transaction gets its event back, whichever way it was sent.
        assert_eq!(alone("second", "t2").sent().expect("retry"), second);
        assert_eq!(alone("first", "t1").sent().expect("retry"), first);
        let (prev, stored) = server
            .db
            .read(|c| {
                Ok((
                    crate::rooms::load_pdu(c, &second)?.expect("stored"),
                    storage::unread_counts(c, &room, &bob)?,
                ))
            })
            .expect("read");
        assert_eq!(
            prev.prev_events
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            vec![first],
            "built on the room's head"
        );
        assert_eq!(stored, (2, 0), "bob notified of both, once each");
        // A new member changes the context: handed back again until a send keeps it.
        let carol = server.user_id("carol");
        server
            .write(|c| {
                storage::create_user(c, &carol, None, false, "carol")?;
                let join = crate::test_support::ev(
                    &carol,
                    "m.room.member",
                    Some(&carol),
                    serde_json::json!({"membership": "join"}),
                );
                crate::rooms::append_event(c, &server, &room, join, None)
            })
            .expect("join");
        assert!(!kept());
        assert!(alone("third", "t3").sent().is_none());
    }

    /// A client out of message tokens is refused without taking the writer, lone or
    /// not; its retried transactions still get their events back.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rate_limited_send_is_refused_without_a_write() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut config = crate::Config::new(dir.path());
        config.client_addr = "127.0.0.1:0".parse().expect("addr");
        config.rate_limits.set(
            Action::Message,
            Some(crate::ratelimit::Rate::new(0.001, 2.0)),
        );
        let node = crate::node::Node::start(config).await.expect("start");
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        let room = public_room(&server, &alice, &[&bob]);
        let caller = Requester::user(alice.clone(), "PHONE");
        let send = |body: &str, txn: &'static str| {
            let msg = message(&alice, body);
            send_message_async(&server, &caller, &room, msg.kind, msg.content, txn, None)
        };
        let first = send("first", "t1").await.expect("first token");
        // The push context is kept now: the second goes alone, with the last token.
        let second = send("second", "t2").await.expect("second token");
        let writes = server.db.writer_stats().writes;
        let refused = send("third", "t3").await.expect_err("no token left");
        assert!(
            matches!(refused, Error::RateLimited(_)),
            "refused as rate limited: {refused:?}"
        );
        assert_eq!(
            server.db.writer_stats().writes,
            writes,
            "refused without taking the writer"
        );
        assert_eq!(send("second", "t2").await.expect("a retry"), second);
        assert_eq!(send("first", "t1").await.expect("a retry"), first);
    }

    /// In a room with more members to evaluate than a write should hold the writer for,
    /// a lone send is built ahead as usual even with the push context kept.
    /// A send whose request is dropped while its write waits in the queue (a client
    /// that hung up): the write still commits, and its effects still run (the new
    /// position published, the write counted), on a task of its own.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_send_cancelled_while_queued_still_commits_with_its_effects() {
        use std::time::{Duration, Instant};
        let (_dir, node) = node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let room = public_room(&server, &alice, &[]);
        let caller = Requester::user(alice.clone(), "PHONE");
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let server = server.clone();
            std::thread::spawn(move || {
                server.db.write(|_| {
                    held_tx.send(()).expect("signal");
                    release_rx.recv().expect("release");
                    Ok(())
                })
            })
        };
        held_rx.recv().expect("the writer is held");
        let before = (server.notifier.current().pos, server.db.write_generation());
        let msg = message(&alice, "nobody waits for me");
        let send = send_message_async(&server, &caller, &room, msg.kind, msg.content, "t1", None);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), send)
                .await
                .is_err(),
            "a send finished while the writer was held"
        );
        release_tx.send(()).expect("release");
        holder.join().expect("holder").expect("held write");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let pos = server.notifier.current().pos;
            // The held write and the send, each counted once.
            if pos > before.0 && server.db.write_generation() >= before.1 + 2 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the cancelled send's effects never ran"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let stored = server
            .db
            .read(|c| {
                storage::txn_lookup(c, &alice, "PHONE", "t1", (&room, "m.room.message", None))
            })
            .expect("lookup");
        assert!(
            matches!(stored, storage::TxnSlot::Done(_)),
            "the send was not stored: {stored:?}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lone_send_to_a_big_room_is_built_ahead() {
        let (_dir, node) = node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let others: Vec<String> = (0..ALONE_MAX_MEMBERS)
            .map(|i| server.user_id(&format!("m{i}")))
            .collect();
        let others: Vec<&str> = others.iter().map(String::as_str).collect();
        let room = public_room(&server, &alice, &others);
        let caller = Requester::user(alice.clone(), "PHONE");
        let msg = message(&alice, "hello");
        send_message_async(&server, &caller, &room, msg.kind, msg.content, "t1", None)
            .await
            .expect("send");
        let kept = server
            .db
            .read(|c| crate::push::kept_members(c, &room))
            .expect("read");
        assert_eq!(kept, Some(ALONE_MAX_MEMBERS + 1), "every member, kept");
        let file = server.db.file().expect("a file");
        assert!(
            !crate::push::may_be_kept_with_at_most(file, &room, ALONE_MAX_MEMBERS),
            "not even tried"
        );
        let declined = server
            .write(|tx| {
                send_alone(
                    tx,
                    &server,
                    &caller,
                    &room,
                    message(&alice, "two"),
                    "t2",
                    None,
                )
            })
            .expect("send");
        assert!(
            declined.sent().is_none(),
            "too many members to evaluate in the write"
        );
    }
}
