//! Relationships between events: edits (`m.replace`), threads (`m.thread`), references
//! (`m.reference`) and any other `rel_type` (reactions are `m.annotation`).
//!
//! - Every timeline event, local or received, whose `content.m.relates_to` names a
//!   `rel_type` and an `event_id` gets a row in `event_relations` when it is persisted
//!   (`rooms::append::persist_accepted` calls [`on_persisted`]); a redaction deletes the
//!   redacted event's row ([`on_redacted`]).
//! - Whenever the client API serves events it adds the spec's bundled aggregations to
//!   `unsigned.m.relations` ([`render`]): the newest valid edit, the thread summary and
//!   the references. The lookups run once per response page (per room), never per event.
//! - `/relations` ([`children_page`]) and `/threads` ([`threads_page`]) page through the
//!   table.
//!
//! Which events get bundles follows Synapse: state events and events that are
//! themselves edits or annotations get none; thread summaries only go on events that
//! have no relationship of their own; a redacted event gets no `m.replace` (the spec).
//! Aggregations only count related events inside the viewer's readable window.

use std::collections::{BTreeSet, HashMap};

use rusqlite::Connection;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::events::{ClientEvent, ClientEventOptions, client_event};
use crate::rooms::visibility::{Visibility, visibility_for};
use crate::storage::{self, ChildrenQuery, Relation, StoredEvent};
use crate::streams::PageToken;

/// How many levels `/relations?recurse=true` follows (the spec asks for at least 3;
/// Synapse uses 3).
pub const RECURSION_DEPTH: u32 = 3;
/// Default and largest page of `/relations`.
pub const DEFAULT_RELATIONS_LIMIT: usize = 5;
/// Largest page of `/relations`.
pub const MAX_RELATIONS_LIMIT: usize = 1000;
/// Default page of `/threads`.
pub const DEFAULT_THREADS_LIMIT: usize = 5;
/// Largest page of `/threads`.
pub const MAX_THREADS_LIMIT: usize = 100;
/// Most children `/relations` looks at for one page when the viewer may not see them.
const SCAN_BUDGET: usize = 1000;
/// Most `m.reference` children bundled per event (the rest are one `/relations` away).
pub const MAX_BUNDLED_REFERENCES: usize = 100;

/// Longest event id or relationship type accepted in `m.relates_to`.
const MAX_ID_LEN: usize = 255;

/// The relationship an event's content declares: `(rel_type, parent event id)`.
///
/// `m.in_reply_to` alone (a plain reply) is not a relationship; ids that are not event
/// ids, over-long values and an event relating to itself are ignored.
pub fn relation_in(content: &Value, own_id: &str) -> Option<(String, String)> {
    relation_from(content.get("m.relates_to")?, own_id)
}

/// [`relation_in`] of a `m.relates_to` value.
fn relation_from(rel: &Value, own_id: &str) -> Option<(String, String)> {
    let rel_type = rel.get("rel_type")?.as_str()?;
    let parent = rel.get("event_id")?.as_str()?;
    if rel_type.is_empty()
        || rel_type.len() > MAX_ID_LEN
        || !parent.starts_with('$')
        || parent.len() > MAX_ID_LEN
        || parent == own_id
    {
        return None;
    }
    Some((rel_type.to_owned(), parent.to_owned()))
}

/// [`relation_in`] of a stored event. Only `content.m.relates_to` is built: the rest of
/// the PDU and of its content is skipped.
fn relation_of(e: &StoredEvent) -> Option<(String, String)> {
    #[derive(serde::Deserialize)]
    struct Pdu {
        content: Option<Content>,
    }
    #[derive(serde::Deserialize)]
    struct Content {
        #[serde(rename = "m.relates_to")]
        relates_to: Option<Value>,
    }
    let pdu: Pdu = serde_json::from_str(&e.json).ok()?;
    relation_from(pdu.content?.relates_to.as_ref()?, &e.event_id)
}

/// Record the relationship of a newly persisted timeline event (same transaction).
pub fn on_persisted(c: &Connection, e: &StoredEvent) -> Result<(), Error> {
    let Some((rel_type, parent)) = relation_of(e) else {
        return Ok(());
    };
    storage::insert_relation(
        c,
        &Relation {
            event_id: e.event_id.clone(),
            relates_to_id: parent,
            rel_type,
            room_id: e.room_id.clone(),
            sender: e.sender.clone(),
            kind: e.kind.clone(),
            stream_ordering: e.stream_ordering,
        },
    )
}

/// A redacted event relates to nothing any more: a redacted edit stops replacing, a
/// redacted reply leaves its thread. Relationships *to* the redacted event stay.
pub fn on_redacted(c: &Connection, event_id: &str) -> Result<(), Error> {
    storage::delete_relation(c, event_id)
}

/// Synapse's checks on a relationship a local user sends: the parent (when known) must
/// be in the same room, a thread cannot start from an event that has a relationship
/// itself, and a sender may annotate an event with the same key once.
pub fn check_new_relation(
    c: &Connection,
    room_id: &str,
    sender: &str,
    kind: &str,
    content: &Value,
) -> Result<(), Error> {
    let Some((rel_type, parent_id)) = relation_in(content, "") else {
        return Ok(());
    };
    if let Some(parent) = storage::get_event_any(c, &parent_id)?
        && parent.room_id != room_id
    {
        return Err(Error::BadContent(
            "relations must be in the same room".into(),
        ));
    }
    if rel_type == "m.thread" && storage::relation_of(c, &parent_id)?.is_some() {
        return Err(Error::BadContent(
            "cannot start threads from an event with a relation".into(),
        ));
    }
    if rel_type == "m.annotation"
        && let Some(key) = content["m.relates_to"]["key"].as_str()
        && storage::has_annotation(c, &parent_id, sender, kind, key)?
    {
        return Err(Error::DuplicateAnnotation(
            "you already annotated this event with this key".into(),
        ));
    }
    Ok(())
}

/// Render events in the client format with their bundled aggregations
/// (`unsigned.m.relations`). `window` gives the viewer's readable part of each room;
/// rooms it answers `None` for get no aggregations.
pub fn render<'v>(
    c: &Connection,
    events: &[StoredEvent],
    opts: ClientEventOptions<'_>,
    window: impl Fn(&str) -> Option<&'v Visibility>,
) -> Result<Vec<Value>, Error> {
    render_with(c, events, opts, window, |e| e.to_value())
}

/// [`render`] for events of one room the viewer reads with `vis`.
pub fn render_in_room(
    c: &Connection,
    events: &[StoredEvent],
    opts: ClientEventOptions<'_>,
    vis: &Visibility,
) -> Result<Vec<Value>, Error> {
    render(c, events, opts, |_| Some(vis))
}

/// [`render_in_room`] as JSON text, for answers that place events as they are.
pub fn render_raw_in_room(
    c: &Connection,
    events: &[StoredEvent],
    opts: ClientEventOptions<'_>,
    vis: Option<&Visibility>,
) -> Result<Vec<Box<RawValue>>, Error> {
    render_with(c, events, opts, |_| vis, |e| e.to_raw())
}

/// [`render`], finishing each event with `finish`.
fn render_with<'v, T>(
    c: &Connection,
    events: &[StoredEvent],
    opts: ClientEventOptions<'_>,
    window: impl Fn(&str) -> Option<&'v Visibility>,
    finish: impl Fn(&ClientEvent<'_>) -> T,
) -> Result<Vec<T>, Error> {
    let mut bundles: HashMap<String, Map<String, Value>> = HashMap::new();
    let rooms: BTreeSet<&str> = events.iter().map(|e| e.room_id.as_str()).collect();
    for room_id in rooms {
        let Some(vis) = window(room_id) else {
            continue;
        };
        let in_room: Vec<&StoredEvent> = events.iter().filter(|e| e.room_id == room_id).collect();
        bundles.extend(room_bundles(c, room_id, &in_room, opts, vis)?);
    }
    events
        .iter()
        .map(|e| {
            let mut ev = ClientEvent::new(e, opts);
            add_bundle(&mut ev, bundles.remove(&e.event_id));
            // MSC4115 (spec v1.11): the viewer's membership at the event.
            if let Some(vis) = window(&e.room_id) {
                ev.unsigned
                    .insert("membership".into(), Value::String(vis.membership_at(c, e)?));
            }
            Ok(finish(&ev))
        })
        .collect()
}

fn add_bundle(ev: &mut ClientEvent<'_>, bundle: Option<Map<String, Value>>) {
    if let Some(b) = bundle.filter(|b| !b.is_empty()) {
        ev.unsigned
            .insert("m.relations".to_owned(), Value::Object(b));
    }
}

/// The aggregations of events of one room, keyed by event id.
fn room_bundles(
    c: &Connection,
    room_id: &str,
    events: &[&StoredEvent],
    opts: ClientEventOptions<'_>,
    vis: &Visibility,
) -> Result<HashMap<String, Map<String, Value>>, Error> {
    let (min, max) = (vis.min_pos(), vis.max_pos());
    let viewer = opts.viewer.map(|(u, _)| u).unwrap_or_default();
    // Which events may carry aggregations at all, and which may be thread roots.
    let mut eligible: Vec<&StoredEvent> = Vec::new();
    let mut roots: Vec<&str> = Vec::new();
    for e in events {
        if e.state_key.is_some() {
            continue;
        }
        match relation_of(e) {
            Some((rel, _)) if rel == "m.replace" || rel == "m.annotation" => continue,
            Some(_) => {}
            None => roots.push(&e.event_id),
        }
        eligible.push(e);
    }
    if eligible.is_empty() {
        return Ok(HashMap::new());
    }
    // One lookup settles the usual case: none of these events has a relation, so none
    // has a thread, an edit or references (an empty bundle is left out anyway).
    let ids: Vec<&str> = eligible.iter().map(|e| e.event_id.as_str()).collect();
    if !storage::any_relations(c, &ids)? {
        return Ok(HashMap::new());
    }
    roots.sort_unstable();
    roots.dedup();

    let threads = storage::thread_counts(c, &roots, room_id, viewer, min, max)?;
    let positions: Vec<i64> = threads.iter().map(|t| t.latest_pos).collect();
    let mut latest: HashMap<i64, StoredEvent> = HashMap::new();
    for e in storage::events_at_positions(c, &positions)? {
        if vis.allows(c, &e)? {
            latest.insert(e.stream_ordering, e);
        }
    }

    // Edits of the events themselves (not when redacted) and of each thread's newest reply.
    let mut edit_parents: Vec<&str> = eligible
        .iter()
        .filter(|e| e.redacted_by.is_none())
        .map(|e| e.event_id.as_str())
        .collect();
    edit_parents.extend(
        latest
            .values()
            .filter(|e| e.redacted_by.is_none())
            .map(|e| e.event_id.as_str()),
    );
    edit_parents.sort_unstable();
    edit_parents.dedup();
    let mut edits: HashMap<String, StoredEvent> = HashMap::new();
    for (parent, edit) in storage::latest_edits(c, &edit_parents, min, max)? {
        if vis.allows(c, &edit)? {
            edits.insert(parent, edit);
        }
    }

    let mut ids: Vec<&str> = eligible.iter().map(|e| e.event_id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut references: HashMap<String, Vec<Value>> = HashMap::new();
    for (parent, child) in storage::references(c, &ids, room_id, min, max, MAX_BUNDLED_REFERENCES)?
    {
        references
            .entry(parent)
            .or_default()
            .push(json!({"event_id": child}));
    }

    let edit_json = |id: &str| edits.get(id).map(|edit| client_event(edit, opts));
    let mut out: HashMap<String, Map<String, Value>> = HashMap::new();
    for e in &eligible {
        let mut bundle = Map::new();
        if e.redacted_by.is_none()
            && let Some(edit) = edit_json(&e.event_id)
        {
            bundle.insert("m.replace".to_owned(), edit);
        }
        if let Some(refs) = references.remove(&e.event_id) {
            bundle.insert("m.reference".to_owned(), json!({"chunk": refs}));
        }
        out.insert(e.event_id.clone(), bundle);
    }
    for t in threads {
        let Some(bundle) = out.get_mut(&t.root_id) else {
            continue;
        };
        let Some(latest_ev) = latest.get(&t.latest_pos) else {
            continue;
        };
        let mut latest_ev_json = ClientEvent::new(latest_ev, opts);
        if latest_ev.redacted_by.is_none()
            && let Some(edit) = edit_json(&latest_ev.event_id)
        {
            let mut b = Map::new();
            b.insert("m.replace".to_owned(), edit);
            add_bundle(&mut latest_ev_json, Some(b));
        }
        let latest_json = latest_ev_json.to_value();
        let root_sender = eligible
            .iter()
            .find(|e| e.event_id == t.root_id)
            .map(|e| e.sender.as_str());
        bundle.insert(
            "m.thread".to_owned(),
            json!({
                "latest_event": latest_json,
                "count": t.count,
                "current_user_participated": t.viewer_replied || root_sender == Some(viewer),
            }),
        );
    }
    Ok(out)
}

/// Parameters of `GET /rooms/{roomId}/relations/{eventId}[/{relType}[/{eventType}]]`.
#[derive(Clone, Debug, Default)]
pub struct RelationsParams {
    /// Only this relationship type.
    pub rel_type: Option<String>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Pagination start token.
    pub from: Option<String>,
    /// Pagination end token.
    pub to: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
    /// `true` for `dir=f` (oldest first).
    pub forwards: bool,
    /// Follow relationships of the children too.
    pub recurse: Option<bool>,
}

/// A position token: the live stream's `s…` or backfilled history's `t…` (see
/// [`PageToken`]); children and threads from before a join sort below the live ones.
fn parse_token(t: &str) -> Result<i64, Error> {
    PageToken::parse(t)
        .map(|t| t.0)
        .ok_or_else(|| Error::InvalidParam(format!("invalid pagination token {t}")))
}

/// The children of `event_id` that `viewer` may see, one page at a time. The parent
/// must be an event the viewer may see, else `404` (the spec's answer, also for rooms
/// the viewer is not in).
pub fn children_page(
    c: &Connection,
    opts: ClientEventOptions<'_>,
    room_id: &str,
    event_id: &str,
    p: &RelationsParams,
) -> Result<Value, Error> {
    let viewer = opts.viewer.map(|(u, _)| u).unwrap_or_default();
    let not_found = || Error::NotFound("event not found".into());
    let vis = match visibility_for(c, room_id, viewer) {
        Ok(v) => v,
        Err(Error::Forbidden(_)) => return Err(not_found()),
        Err(e) => return Err(e),
    };
    match storage::get_event(c, event_id)? {
        Some(e) if vis.allows(c, &e)? => {}
        _ => return Err(not_found()),
    }
    let limit = p
        .limit
        .unwrap_or(DEFAULT_RELATIONS_LIMIT)
        .clamp(1, MAX_RELATIONS_LIMIT);
    let from = p.from.as_deref().map(parse_token).transpose()?;
    let to = p.to.as_deref().map(parse_token).transpose()?;
    let backwards = !p.forwards;
    let depth = if p.recurse == Some(true) {
        RECURSION_DEPTH
    } else {
        1
    };
    // `from` is where the page starts: backwards, children at or before it; forwards,
    // children after it. `to` bounds the other side.
    let lower = to
        .filter(|_| backwards)
        .unwrap_or(i64::MIN)
        .max(vis.min_pos());
    let upper = if backwards { from } else { to }
        .unwrap_or(i64::MAX)
        .min(vis.max_pos());
    let mut cursor = if backwards {
        upper
    } else {
        from.unwrap_or(i64::MIN).max(lower)
    };
    // Children the viewer may not see (history visibility, per event) are skipped; read
    // on until the page is full, the children end, or SCAN_BUDGET rows were looked at
    // (then the page ends early with a `next_batch` to continue from).
    let mut chunk: Vec<StoredEvent> = Vec::new();
    let mut more = false;
    let mut examined = 0usize;
    loop {
        let (after, up_to) = if backwards {
            (lower, cursor)
        } else {
            (cursor, upper)
        };
        if after >= up_to {
            break;
        }
        let page = storage::children(
            c,
            &ChildrenQuery {
                parent: event_id,
                room_id,
                rel_type: p.rel_type.as_deref(),
                event_type: p.event_type.as_deref(),
                depth,
                after,
                up_to,
                limit: limit + 1,
                backwards,
            },
        )?;
        let exhausted = page.len() <= limit;
        for e in page {
            if chunk.len() == limit {
                more = true;
                break;
            }
            examined += 1;
            cursor = if backwards {
                e.stream_ordering - 1
            } else {
                e.stream_ordering
            };
            if vis.allows(c, &e)? {
                chunk.push(e);
            }
        }
        if more || exhausted {
            break;
        }
        if examined >= SCAN_BUDGET {
            more = true;
            break;
        }
    }
    let mut body = json!({"chunk": render_in_room(c, &chunk, opts, &vis)?});
    if more {
        body["next_batch"] = json!(PageToken::at(cursor).to_string());
    }
    if let Some(from) = &p.from {
        body["prev_batch"] = json!(from);
    }
    if p.recurse.is_some() {
        body["recursion_depth"] = json!(depth);
    }
    Ok(body)
}

/// Parameters of `GET /rooms/{roomId}/threads`.
#[derive(Clone, Debug, Default)]
pub struct ThreadsParams {
    /// Only threads the viewer started or replied to (`include=participated`).
    pub participated: bool,
    /// Pagination token.
    pub from: Option<String>,
    /// Page size.
    pub limit: Option<usize>,
}

/// The thread roots of a room the viewer may see, most recently active first, each with
/// its bundled aggregations. `403` when the viewer may not read the room.
pub fn threads_page(
    c: &Connection,
    opts: ClientEventOptions<'_>,
    room_id: &str,
    p: &ThreadsParams,
) -> Result<Value, Error> {
    let viewer = opts.viewer.map(|(u, _)| u).unwrap_or_default();
    let vis = visibility_for(c, room_id, viewer)?;
    let limit = p
        .limit
        .unwrap_or(DEFAULT_THREADS_LIMIT)
        .clamp(1, MAX_THREADS_LIMIT);
    let mut cursor = match &p.from {
        Some(t) => parse_token(t)?,
        None => i64::MAX,
    }
    .min(vis.max_pos());
    let participant = p.participated.then_some(viewer);
    let mut roots: Vec<StoredEvent> = Vec::new();
    let mut more = false;
    // Roots the viewer may not see (or that never arrived) are skipped; keep reading
    // pages until this one is full.
    loop {
        let page = storage::threads_page(c, room_id, cursor, limit + 1, participant)?;
        let full_page = page.len() > limit;
        let ids: Vec<&str> = page.iter().map(|(id, _)| id.as_str()).collect();
        let mut found: HashMap<String, StoredEvent> = storage::events_by_ids(c, &ids)?
            .into_iter()
            .map(|e| (e.event_id.clone(), e))
            .collect();
        for (id, latest_pos) in &page {
            if roots.len() == limit {
                more = true;
                break;
            }
            cursor = latest_pos - 1;
            if let Some(root) = found.remove(id)
                && vis.allows(c, &root)?
            {
                roots.push(root);
            }
        }
        if more || !full_page {
            break;
        }
    }
    let mut body = json!({"chunk": render_in_room(c, &roots, opts, &vis)?});
    if more {
        body["next_batch"] = json!(PageToken::at(cursor).to_string());
    }
    Ok(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relation_in_reads_only_real_relationships() {
        let edit = json!({"m.relates_to": {"rel_type": "m.replace", "event_id": "$a"}});
        assert_eq!(
            relation_in(&edit, "$b"),
            Some(("m.replace".to_owned(), "$a".to_owned()))
        );
        // A plain reply is not a relationship.
        let reply = json!({"m.relates_to": {"m.in_reply_to": {"event_id": "$a"}}});
        assert_eq!(relation_in(&reply, "$b"), None);
        // Not an event id, itself, wrong types, over-long.
        for bad in [
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "a"}}),
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": "$b"}}),
            json!({"m.relates_to": {"rel_type": 5, "event_id": "$a"}}),
            json!({"m.relates_to": {"rel_type": "", "event_id": "$a"}}),
            json!({"m.relates_to": {"rel_type": "m.thread", "event_id": format!("${}", "x".repeat(300))}}),
            json!({"m.relates_to": "nope"}),
        ] {
            assert_eq!(relation_in(&bad, "$b"), None, "{bad}");
        }
    }
}
