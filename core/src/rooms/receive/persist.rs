//! The verdict on a received event, stored: each event goes through checks 4 to 7
//! ([`Room::process`]) and ends in the timeline, soft-failed, an outlier or rejected.

use ruma::events::TimelineEventType;
use ruma::room_version_rules::RoomVersionRules;
use rusqlite::Connection;

use super::ahead::{Ahead, PushAhead};
use super::auth::{check_against, check_against_current};
use super::check::{Checked, another_event, is_another_event};
use super::resolve::CurrentAhead;
use super::{MAX_REJECTED_PER_ROOM, Outcome};
use crate::error::Error;
use crate::events::Pdu;
use crate::metrics::ReceivedState;
use crate::rooms::append::{Accepted, NewCurrentState, persist_accepted};
use crate::server::Server;
use crate::storage::{self, EventStatus, StateMap, StoredEvent, next_stream_position};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(in crate::rooms) enum Mode {
    /// An auth event: checked against its auth events, stored as an outlier.
    AuthOnly,
    /// An event of the state or auth chain a resident server gave us when we joined:
    /// like `AuthOnly`, but the room's create event is accepted too.
    JoinState,
    /// Every check; the timeline if it passes.
    Full,
}

/// One room's checks and writes, inside the write transaction.
pub(in crate::rooms) struct Room<'a> {
    pub(in crate::rooms) c: &'a Connection,
    pub(in crate::rooms) room_id: &'a str,
    pub(in crate::rooms) version: &'a str,
    pub(in crate::rooms) rules: &'a RoomVersionRules,
}

/// What the phases before a received event's write bring to it.
pub(super) struct Gathered {
    /// Its auth events that were missing, fetched.
    pub(super) fetched: Vec<Checked>,
    /// The events between the room's forward extremities and it, fetched.
    pub(super) gap: Vec<Checked>,
    /// What was worked out on a read snapshot ([`super::ahead`]).
    pub(super) ahead: Ahead,
}

/// The check-and-persist phase of a received event, in one write transaction: the
/// fetched auth events (as outliers), the gap before it, then the event itself.
pub(super) fn process_received(
    server: &Server,
    room_id: &str,
    version: &str,
    rules: &RoomVersionRules,
    gathered: Gathered,
    checked: &Checked,
) -> Result<Outcome, Error> {
    let Gathered {
        fetched,
        gap,
        ahead,
    } = gathered;
    server.write(|tx| {
        let room = Room {
            c: tx,
            room_id,
            version,
            rules,
        };
        for ev in fetched {
            let id = ev.event_id.clone();
            let outcome = room.process(ev, Mode::AuthOnly)?;
            tracing::debug!(event_id = %id, ?outcome, "fetched auth event");
        }
        for ev in gap {
            let id = ev.event_id.clone();
            let outcome = room.process(ev, Mode::Full)?;
            tracing::debug!(event_id = %id, ?outcome, "missing event");
        }
        room.process_given(checked.clone(), Mode::Full, None, Some(ahead))
    })
}

impl Room<'_> {
    pub(in crate::rooms) fn process(&self, ev: Checked, mode: Mode) -> Result<Outcome, Error> {
        self.process_given(ev, mode, None, None)
    }

    /// [`Room::process`], with the state before the event given (from the server that
    /// sent it) for when its prev events are not all here, or resolved ahead of the
    /// write ([`super::ahead`]).
    pub(in crate::rooms) fn process_given(
        &self,
        ev: Checked,
        mode: Mode,
        given_state: Option<&StateMap>,
        ahead: Option<Ahead>,
    ) -> Result<Outcome, Error> {
        let event_id = ev.event_id.clone();
        if let Some(outcome) = self.stored_outcome(&ev, mode != Mode::Full)? {
            return Ok(outcome);
        }
        let pdu = &ev.pdu;
        if pdu.kind == TimelineEventType::RoomCreate && mode != Mode::JoinState {
            return Ok(Outcome::Rejected {
                event_id: Some(event_id),
                reason: "m.room.create is only accepted when creating or joining a room".into(),
            });
        }

        // 4. Auth events: all known, and the event passes auth against them.
        if let Some(outcome) = self.check_auth_events(&ev, None)? {
            return Ok(outcome);
        }
        if mode != Mode::Full {
            self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            return Ok(Outcome::Outlier { event_id });
        }

        // 5 to 7 for the common case, an event that extends the room's current state:
        // checked and applied by point lookups, with nothing loaded, compared or
        // resolved that grows with the room's state.
        if given_state.is_none()
            && let Some(group) = self.linear_before(pdu)?
        {
            return self.accept_linear(ev, group, ahead.and_then(|a| a.push));
        }
        // 5. The state before the event, from its prev events (or as given).
        // The state before it as resolved ahead holds while its prev events are all still
        // stored with their states (a rejected one may have been trimmed since).
        let resolved = match ahead.and_then(|a| a.resolved) {
            Some(r) if self.prevs_have_state(pdu)? => Some(r),
            _ => None,
        };
        crate::metrics::received_state(if resolved.is_some() {
            ReceivedState::ResolvedAhead
        } else {
            ReceivedState::ResolvedInWrite
        });
        let (from_prevs, current_ahead) = match resolved {
            Some(a) => (Some(self.group_for(a.before)?), Some(a.current)),
            None => (self.state_before(pdu)?, None),
        };
        let Some((before, group_before)) = (match (from_prevs, given_state) {
            (Some(known), _) => Some(known),
            (None, Some(state)) => Some((
                state.clone(),
                storage::group_for_state(self.c, self.room_id, None, state)?,
            )),
            (None, None) => None,
        }) else {
            self.store_other(&ev, EventStatus::Outlier, None, None, None)?;
            return Ok(Outcome::Outlier { event_id });
        };
        if let Err(e) = check_against(self.c, &self.rules.authorization, pdu, &before) {
            return self.store_rejected(
                &ev,
                format!("against the state before it: {e}"),
                Some(group_before),
            );
        }
        self.accept(ev, before, group_before, current_ahead)
    }

    /// What is stored already under `ev`'s id, when it settles the event: in the
    /// timeline (or soft-failed), rejected, another event (room versions 1 and 2), or an
    /// outlier when `outlier_settles`. Otherwise a stored outlier is looked at again: its
    /// prev events may be known now, or it takes its place in the timeline (the outlier
    /// row is replaced when the event is stored again).
    pub(super) fn stored_outcome(
        &self,
        ev: &Checked,
        outlier_settles: bool,
    ) -> Result<Option<Outcome>, Error> {
        let event_id = ev.event_id.clone();
        let Some(e) = storage::get_event_any(self.c, &event_id)? else {
            return Ok(None);
        };
        if is_another_event(self.rules, &e.json, ev) {
            return Ok(Some(another_event(event_id)));
        }
        Ok(match e.status {
            EventStatus::Timeline | EventStatus::SoftFailed => {
                Some(Outcome::AlreadyKnown { event_id })
            }
            EventStatus::Rejected => Some(Outcome::Rejected {
                event_id: Some(event_id),
                reason: e.rejection_reason.unwrap_or_else(|| "rejected".into()),
            }),
            EventStatus::Outlier if outlier_settles => Some(Outcome::Outlier { event_id }),
            EventStatus::Outlier => None,
        })
    }

    /// Checks 6 and 7 for an event that passed auth against `before`, the state before
    /// it (held by `group_before`): soft-failed, or into the timeline.
    fn accept(
        &self,
        ev: Checked,
        before: StateMap,
        group_before: i64,
        current_ahead: Option<CurrentAhead>,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let pdu = &ev.pdu;
        let event_id = ev.event_id.clone();
        // A gap behind a stored event (a backward extremity: its child was accepted
        // with the state its sender gave) is history, not news: the timeline has moved
        // past it, so it is not soft-failed (as backfilled events are not), and it
        // changes the current state only by what it does to the forward extremities.
        // So is an event a stored outlier names as a prev event (history from before our
        // join that comes live: see `storage::has_outlier_child`).
        let is_gap = self.is_gap(pdu)?;

        // 6. The current state.
        let current = storage::current_state(c, self.room_id)?;
        if !is_gap
            && current != before
            && let Err(e) = check_against(c, &self.rules.authorization, pdu, &current)
        {
            tracing::info!(%event_id, error = %e, "soft-failing received event");
            let after = self.group_after(pdu, group_before, &before)?;
            self.store_other(
                &ev,
                EventStatus::SoftFailed,
                None,
                Some(group_before),
                after,
            )?;
            return Ok(Outcome::SoftFailed { event_id });
        }

        // 7. Into the timeline; the current state follows the forward extremities.
        let mut after = before.clone();
        if let Some(sk) = &pdu.state_key {
            after.insert((pdu.kind.to_string(), sk.clone()), event_id.clone());
        }
        let new_current = if is_gap {
            self.gap_current_state(pdu, current)?
        } else {
            self.new_current_state(pdu, &after, current_ahead)?
        };
        let replaces = pdu
            .state_key
            .as_ref()
            .and_then(|sk| before.get(&(pdu.kind.to_string(), sk.clone())).cloned());
        self.join_timeline(&ev, group_before, replaces, new_current, None)
    }

    /// Check 7's write: `ev` joins the timeline (an outlier row of it is replaced), with
    /// the state group before it, the state event it replaces, the room's new current
    /// state and its notifications when they were worked out ahead.
    fn join_timeline(
        &self,
        ev: &Checked,
        group_before: i64,
        replaces: Option<String>,
        current: NewCurrentState,
        push: Option<crate::push::Planned>,
    ) -> Result<Outcome, Error> {
        storage::delete_outlier(self.c, &ev.event_id)?;
        let stream_pos = persist_accepted(
            self.c,
            Accepted {
                room_id: self.room_id,
                version: self.version,
                pdu: &ev.pdu,
                json: &ev.json,
                group_before: Some(group_before),
                replaces,
                current,
                txn: None,
                push,
            },
        )?;
        Ok(Outcome::Accepted {
            event_id: ev.event_id.clone(),
            stream_pos,
        })
    }

    /// Checks 5 to 7 for an event that extends the room's current state (held by
    /// `group`, see [`Room::linear_before`]): the state before it is the current state,
    /// so check 6 is check 5, and the current state after it is the current state with
    /// the event applied, as for a local event.
    fn accept_linear(
        &self,
        ev: Checked,
        group: i64,
        push: Option<PushAhead>,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let pdu = &ev.pdu;
        crate::metrics::received_state(ReceivedState::Linear);
        if let Err(e) = check_against_current(c, &self.rules.authorization, pdu, self.room_id)? {
            return self.store_rejected(
                &ev,
                format!("against the state before it: {e}"),
                Some(group),
            );
        }
        let replaces = match &pdu.state_key {
            Some(sk) => storage::current_state_event(c, self.room_id, &pdu.kind.to_string(), sk)?,
            None => None,
        };
        // Notifications evaluated ahead on this very state, else evaluated here.
        let push = push
            .filter(|p| p.group == group && pdu.state_key.is_none())
            .map(|p| p.planned);
        self.join_timeline(&ev, group, replaces, NewCurrentState::ApplyEvent, push)
    }

    /// Whether `pdu` is history behind a stored event rather than news: a backward
    /// extremity (its child was accepted with the state its sender gave), or a prev event
    /// a stored outlier names (history from before our join that comes live: see
    /// `storage::has_outlier_child`).
    pub(super) fn is_gap(&self, pdu: &Pdu) -> Result<bool, Error> {
        let event_id = pdu.event_id.as_str();
        Ok(
            storage::is_backfill_extremity(self.c, self.room_id, event_id)?
                || storage::has_outlier_child(self.c, self.room_id, event_id, pdu.depth)?,
        )
    }

    pub(super) fn store_rejected(
        &self,
        ev: &Checked,
        reason: String,
        group_before: Option<i64>,
    ) -> Result<Outcome, Error> {
        tracing::info!(event_id = %ev.event_id, %reason, "rejected received event");
        self.store_other(
            ev,
            EventStatus::Rejected,
            Some(reason.clone()),
            group_before,
            group_before,
        )?;
        // A gap behind a stored event is settled: its prev events are no forward
        // extremities (the state after a rejected event is the one before it).
        if group_before.is_some() {
            let prevs: Vec<String> = ev.pdu.prev_events.iter().map(|e| e.to_string()).collect();
            storage::close_gap(self.c, self.room_id, &ev.event_id, &prevs)?;
        }
        storage::trim_rejected(self.c, self.room_id, MAX_REJECTED_PER_ROOM)?;
        Ok(Outcome::Rejected {
            event_id: Some(ev.event_id.clone()),
            reason,
        })
    }

    /// Store an event outside the timeline, at a negative stream position.
    pub(super) fn store_other(
        &self,
        ev: &Checked,
        status: EventStatus,
        rejection_reason: Option<String>,
        group_before: Option<i64>,
        group_after: Option<i64>,
    ) -> Result<(), Error> {
        storage::delete_outlier(self.c, &ev.event_id)?;
        let mut stored = self.stored_event(ev, -next_stream_position(self.c)?, status);
        stored.rejection_reason = rejection_reason;
        stored.state_group_before = group_before;
        stored.state_group_after = group_after;
        storage::insert_event(self.c, &stored)?;
        crate::metrics::event_persisted(false);
        Ok(())
    }

    /// The row for `ev` at stream position `stream_ordering`: no `unsigned`, state
    /// groups or rejection reason (the caller adds those it has).
    pub(super) fn stored_event(
        &self,
        ev: &Checked,
        stream_ordering: i64,
        status: EventStatus,
    ) -> StoredEvent {
        let pdu = &ev.pdu;
        StoredEvent {
            stream_ordering,
            event_id: ev.event_id.clone(),
            room_id: self.room_id.to_owned(),
            kind: pdu.kind.to_string(),
            state_key: pdu.state_key.clone(),
            sender: pdu.sender.to_string(),
            depth: pdu.depth,
            origin_server_ts: i64::from(pdu.origin_server_ts.get()),
            json: ev.json.clone(),
            unsigned: None,
            redacted_by: None,
            state_group_before: None,
            txn_device: None,
            txn_id: None,
            status,
            rejection_reason: None,
            state_group_after: None,
            room_state_group: None,
        }
    }
}
