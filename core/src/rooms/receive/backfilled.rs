//! History fetched with `/backfill`: checked as any received event, but put in place
//! below the room's timeline, changing nothing of its present.

use ruma::events::TimelineEventType;
use serde_json::Value;

use super::Outcome;
use super::auth::check_against;
use super::check::Checked;
use super::persist::Room;
use crate::error::Error;
use crate::events::Pdu;
use crate::storage::{self, EventStatus, StateMap};

impl Room<'_> {
    /// A backfilled event: history older than the room's timeline here, fetched with
    /// `/backfill`. Checked as any received event (signatures and hashes were checked by
    /// [`check_pdu`](super::check_pdu); here auth against its auth events and against
    /// the state before it), where the state before it comes from its prev events when
    /// they are here, else from `given_state` (the serving server's `/state` at the
    /// event). It takes a backfill position (by depth: see
    /// [`crate::streams::BACKFILL_BASE`]), its search text and its relationship (edits,
    /// reactions, threads), and changes nothing else: not the current state, the
    /// forward extremities, memberships or notifications, and it is never soft-failed
    /// (it is history, not news). The room's create event (`create_id`), stored as an
    /// outlier when the room was joined, joins the timeline this way at the start of
    /// its history.
    pub(in crate::rooms) fn process_backfilled(
        &self,
        ev: Checked,
        given_state: Option<&StateMap>,
        create_id: &str,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let event_id = ev.event_id.clone();
        // Known as an outlier (an auth or state event): it takes its place in the
        // timeline now.
        if let Some(outcome) = self.stored_outcome(&ev, false)? {
            return Ok(outcome);
        }
        let pdu = &ev.pdu;
        let is_create = pdu.kind == TimelineEventType::RoomCreate;
        if is_create && event_id != create_id {
            return Ok(Outcome::Rejected {
                event_id: Some(event_id),
                reason: "not this room's create event".into(),
            });
        }
        // The state before it first: a rejected event keeps it, so the history built on
        // it (the state after a rejected event is the state before it) can go on.
        let Some((before, group_before)) =
            self.backfilled_state_before(pdu, is_create, given_state)?
        else {
            return self.backfilled_outlier(&ev);
        };
        if let Some(outcome) = self.check_auth_events(&ev, group_before)? {
            return Ok(outcome);
        }
        if !is_create && let Err(e) = check_against(c, &self.rules.authorization, pdu, &before) {
            return self.store_rejected(
                &ev,
                format!("against the state before it: {e}"),
                group_before,
            );
        }
        let Some(pos) = storage::next_backfill_position(c, pdu.depth)? else {
            // A depth no real room reaches: kept out of the timeline.
            return self.backfilled_outlier(&ev);
        };
        let group_after = match group_before {
            Some(g) => self.group_after(pdu, g, &before)?,
            None => {
                let mut after = StateMap::new();
                if let Some(sk) = &pdu.state_key {
                    after.insert((pdu.kind.to_string(), sk.clone()), event_id.clone());
                }
                Some(storage::group_for_state(c, self.room_id, None, &after)?)
            }
        };
        self.insert_backfilled(ev, pos, &before, group_before, group_after)
    }

    /// The state before a backfilled event and the group holding it (none for the
    /// create event): from its prev events, else as given; `None` when neither is had.
    fn backfilled_state_before(
        &self,
        pdu: &Pdu,
        is_create: bool,
        given_state: Option<&StateMap>,
    ) -> Result<Option<(StateMap, Option<i64>)>, Error> {
        Ok(if is_create {
            Some((StateMap::new(), None))
        } else if let Some((state, group)) = self.state_before(pdu)? {
            Some((state, Some(group)))
        } else if let Some(state) = given_state {
            let group = storage::group_for_state(self.c, self.room_id, None, state)?;
            Some((state.clone(), Some(group)))
        } else {
            None
        })
    }

    /// A backfilled event kept out of the timeline: stored as an outlier unless it is
    /// stored already.
    fn backfilled_outlier(&self, ev: &Checked) -> Result<Outcome, Error> {
        if storage::event_status(self.c, &ev.event_id)?.is_none() {
            self.store_other(ev, EventStatus::Outlier, None, None, None)?;
        }
        Ok(Outcome::Outlier {
            event_id: ev.event_id.clone(),
        })
    }

    /// Store a backfilled event that passed its checks at backfill position `pos`.
    fn insert_backfilled(
        &self,
        ev: Checked,
        pos: i64,
        before: &StateMap,
        group_before: Option<i64>,
        group_after: Option<i64>,
    ) -> Result<Outcome, Error> {
        let c = self.c;
        let pdu = &ev.pdu;
        // What a client shows for a state change: the content it replaced.
        let mut unsigned = serde_json::Map::new();
        if let Some(sk) = &pdu.state_key
            && let Some(prev_id) = before.get(&(pdu.kind.to_string(), sk.clone()))
            && let Some(prev) = storage::get_event_any(c, prev_id)?
        {
            let prev_json: Value = serde_json::from_str(&prev.json)?;
            unsigned.insert("prev_content".into(), prev_json["content"].clone());
            unsigned.insert("prev_sender".into(), Value::String(prev.sender.clone()));
            unsigned.insert("replaces_state".into(), Value::String(prev_id.clone()));
        }
        storage::delete_outlier(c, &ev.event_id)?;
        let mut stored = self.stored_event(&ev, pos, EventStatus::Timeline);
        stored.unsigned = (!unsigned.is_empty()).then(|| Value::Object(unsigned).to_string());
        stored.state_group_before = group_before;
        stored.state_group_after = group_after;
        storage::insert_event(c, &stored)?;
        crate::metrics::event_persisted(false);
        // History is searchable like the rest (search orders it below live events).
        storage::index_event(c, &stored)?;
        // Edits, reactions and thread replies from before the join count in bundled
        // aggregations and `/relations` (a backfilled thread reply never displaces a
        // live one as its thread's newest: its position is lower).
        crate::relations::on_persisted(c, &stored)?;
        Ok(Outcome::Accepted {
            event_id: ev.event_id,
            stream_pos: pos,
        })
    }
}
