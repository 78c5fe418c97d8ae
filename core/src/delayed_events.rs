//! Delayed events (MSC4140, as Synapse implements it): a client sends an event or a
//! state event with `org.matrix.msc4140.delay=<ms>`; the node keeps it and sends it as
//! that user when the delay runs out, unless the client cancels it, restarts the delay
//! or asks for it to be sent now. Element Call uses it to leave a call on the user's
//! behalf when their device drops off.
//!
//! Kept in the database (`delayed_events`), so a delay runs across a restart of the
//! node: one that fell due while the node was down is sent at start. The event is sent
//! and its row deleted in one write, so it is sent once. One task waits for the next
//! due time and is woken when a delay is added or changed.
//!
//! Bounds: at most [`MAX_PER_USER`] waiting per user (`429 M_LIMIT_EXCEEDED` past it)
//! and a delay of at most [`MAX_DELAY`] (`400 M_INVALID_PARAM` with `max_delay`, as
//! Synapse's `M_MAX_DELAY_EXCEEDED`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::error::Error;
use crate::events::NewEvent;
use crate::server::Server;
use crate::storage::{self, DelayedEvent, now_ms};

/// Longest delay accepted: a day (Synapse leaves it to configuration; Element Call asks
/// for seconds).
pub const MAX_DELAY: Duration = Duration::from_secs(24 * 3600);
/// Most delayed events waiting per user.
pub const MAX_PER_USER: usize = 100;
/// Most delayed events sent in one pass of the task.
const BATCH: usize = 50;

/// What to schedule.
pub struct Schedule<'a> {
    /// Who sends it.
    pub user_id: &'a str,
    /// The device that schedules it.
    pub device_id: &'a str,
    /// The client's transaction id (a retry returns the same delay id).
    pub txn_id: Option<&'a str>,
    /// Room.
    pub room_id: &'a str,
    /// Event type.
    pub kind: &'a str,
    /// State key, for a state event.
    pub state_key: Option<&'a str>,
    /// Content.
    pub content: &'a Value,
    /// The delay, in milliseconds.
    pub delay_ms: u64,
}

/// Keep an event to send after its delay; its delay id.
pub fn schedule(server: &Server, s: Schedule<'_>) -> Result<String, Error> {
    let max = u64::try_from(MAX_DELAY.as_millis()).unwrap_or(u64::MAX);
    if s.delay_ms > max {
        return Err(Error::InvalidParam(format!(
            "the delay may be at most {max} ms (max_delay)"
        )));
    }
    if !s.content.is_object() {
        return Err(Error::BadJson("content must be a JSON object".into()));
    }
    let delay_ms = i64::try_from(s.delay_ms).unwrap_or(i64::MAX);
    let id = server.write(|tx| {
        if let Some(txn) = s.txn_id
            && let Some(existing) = storage::delayed_event_by_txn(tx, s.user_id, s.device_id, txn)?
        {
            return Ok(existing.delay_id);
        }
        let joined =
            storage::membership(tx, s.room_id, s.user_id)?.is_some_and(|(m, _, _)| m == "join");
        if !joined {
            return Err(Error::Forbidden(format!(
                "you are not joined to {}",
                s.room_id
            )));
        }
        if storage::count_delayed_events(tx, s.user_id)? >= MAX_PER_USER {
            return Err(Error::LimitExceeded(format!(
                "at most {MAX_PER_USER} delayed events may wait at once"
            )));
        }
        let now = now_ms();
        let d = DelayedEvent {
            delay_id: format!("syd_{}", crate::rooms::random_string(20)),
            user_id: s.user_id.to_owned(),
            device_id: s.device_id.to_owned(),
            txn_id: s.txn_id.map(str::to_owned),
            room_id: s.room_id.to_owned(),
            kind: s.kind.to_owned(),
            state_key: s.state_key.map(str::to_owned),
            content: serde_json::to_string(s.content)?,
            delay_ms,
            running_since: now,
            send_at: now.saturating_add(delay_ms),
        };
        storage::insert_delayed_event(tx, &d)?;
        Ok(d.delay_id)
    })?;
    server.delayed_wake.notify_one();
    Ok(id)
}

/// What a client may do with a delayed event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Never send it.
    Cancel,
    /// Wait its whole delay again, from now.
    Restart,
    /// Send it now.
    Send,
}

impl Action {
    /// `cancel`, `restart` or `send`.
    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "cancel" => Some(Action::Cancel),
            "restart" => Some(Action::Restart),
            "send" => Some(Action::Send),
            _ => None,
        }
    }
}

/// Cancel, restart or send one of the user's delayed events (`404` if it has none by
/// that id: already sent, cancelled, or another user's).
pub fn act(server: &Server, user_id: &str, delay_id: &str, action: Action) -> Result<(), Error> {
    let found = server
        .db
        .read(|c| storage::delayed_event(c, user_id, delay_id))?;
    let Some(d) = found else {
        return Err(Error::NotFound(format!("no delayed event {delay_id}")));
    };
    match action {
        Action::Cancel => {
            server.write(|tx| storage::delete_delayed_event(tx, &d.delay_id))?;
        }
        Action::Restart => {
            server.write(|tx| storage::restart_delayed_event(tx, &d.delay_id, now_ms()))?;
        }
        Action::Send => send(server, &d)?,
    }
    server.delayed_wake.notify_one();
    Ok(())
}

/// The user's waiting delayed events.
pub fn list(server: &Server, user_id: &str) -> Result<Vec<DelayedEvent>, Error> {
    server
        .db
        .read(|c| storage::user_delayed_events(c, user_id, MAX_PER_USER))
}

/// Send a delayed event as its user and forget it, in one write. An event that can no
/// longer be sent (the user left, lost the power to) is forgotten too, with a log line.
fn send(server: &Server, d: &DelayedEvent) -> Result<(), Error> {
    let content: Value = serde_json::from_str(&d.content)?;
    let ev = NewEvent {
        kind: d.kind.clone(),
        state_key: d.state_key.clone(),
        content,
        sender: d.user_id.clone(),
        redacts: None,
    };
    let sent = server.write(|tx| {
        if !storage::delete_delayed_event(tx, &d.delay_id)? {
            return Ok(None);
        }
        crate::rooms::append_event(tx, server, &d.room_id, ev, None).map(Some)
    });
    match sent {
        Ok(Some(appended)) => {
            tracing::debug!(delay_id = %d.delay_id, event_id = %appended.event_id, "delayed event sent");
            Ok(())
        }
        Ok(None) => Ok(()),
        Err(e) => {
            // The write rolled back, the delete with it: forget the event now, or it
            // would be tried again for ever.
            tracing::info!(delay_id = %d.delay_id, room_id = %d.room_id, error = %e, "delayed event could not be sent; dropped");
            server.write(|tx| storage::delete_delayed_event(tx, &d.delay_id))?;
            Err(e)
        }
    }
}

/// The task that sends delayed events when they fall due.
pub fn start(server: Arc<Server>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let now = now_ms();
            let due = server
                .db
                .read(|c| storage::due_delayed_events(c, now, BATCH))
                .unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "cannot read delayed events");
                    Vec::new()
                });
            for d in &due {
                let _ = crate::server::off_the_reactor(|| send(&server, d));
            }
            if due.len() == BATCH {
                continue;
            }
            let next = server
                .db
                .read(storage::next_delayed_event_at)
                .ok()
                .flatten();
            let wait = match next {
                Some(at) => Duration::from_millis(u64::try_from(at - now_ms()).unwrap_or(0)),
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = server.delayed_wake.notified() => {}
            }
        }
    })
}
