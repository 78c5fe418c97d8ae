//! Device-list changes: recording one and telling the servers that share a room with a
//! local user (`m.device_list_update`), and which users' device lists a user must
//! re-fetch (`/sync` `device_lists` and `GET /keys/changes`).

use std::collections::BTreeSet;

use rusqlite::Connection;
use serde_json::json;

use crate::error::Error;
use crate::storage;
use crate::streams::StreamPosition;

/// Record that `user_id`'s device list (device keys or cross-signing keys) changed, at a
/// new stream position, so `/sync` and `/keys/changes` report it. Call inside the write
/// transaction that made the change.
///
/// This also queues an `m.device_list_update` EDU for every other server with members
/// in a room the user is joined to (the sender is woken once the write commits, see
/// `storage::effects`). `device_id` names the device when one device changed. (A
/// remote user's change, learnt from their server, is only recorded:
/// `storage::record_device_list_change`.)
pub fn mark_changed(
    c: &Connection,
    user_id: &str,
    device_id: Option<&str>,
) -> Result<StreamPosition, Error> {
    // The previous change is the update a receiver must have seen to apply this one.
    let prev = storage::device_list_stream_id(c, user_id)?;
    let pos = storage::record_device_list_change(c, user_id)?;
    let Some((_, own_server)) = user_id.rsplit_once(':') else {
        return Ok(pos);
    };
    let destinations: Vec<String> = storage::servers_sharing_rooms(c, user_id)?
        .into_iter()
        .filter(|s| s != own_server)
        .collect();
    if destinations.is_empty() {
        return Ok(pos);
    }
    let mut content = json!({
        "user_id": user_id,
        "device_id": device_id.unwrap_or(""),
        "stream_id": pos,
        "prev_id": if prev > 0 { vec![prev] } else { vec![] },
    });
    // With the device's keys (and its owner's signatures on them) a receiver that caches
    // the list can apply the update without fetching anything.
    if let Some(device_id) = device_id {
        if !storage::device_exists(c, user_id, device_id)? {
            content["deleted"] = json!(true);
        } else if let Some(keys) = storage::device_keys(c, user_id, device_id)? {
            let mut keys: serde_json::Value = serde_json::from_str(&keys)?;
            let own_sigs: Vec<_> = storage::signatures_on(c, user_id, device_id)?
                .into_iter()
                .filter(|s| s.signer_user_id == user_id)
                .collect();
            storage::merge_signatures(&mut keys, &own_sigs);
            content["keys"] = keys;
            if let Some(name) = storage::device_display_name(c, user_id, device_id)? {
                content["device_display_name"] = json!(name);
            }
        }
    }
    let edu = json!({ "edu_type": "m.device_list_update", "content": content });
    for d in &destinations {
        storage::enqueue_edu(c, d, &edu)?;
    }
    Ok(pos)
}

/// `changed` and `left` for `user_id` over `(after, up_to]`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DeviceListChanges {
    /// Users whose keys changed, or who newly share a room with the user.
    pub changed: Vec<String>,
    /// Users who no longer share any room with the user.
    pub left: Vec<String>,
}

impl DeviceListChanges {
    /// Whether there is nothing to report.
    pub fn is_empty(&self) -> bool {
        self.changed.is_empty() && self.left.is_empty()
    }
}

/// Compute the changes. A user who newly shares a room counts as changed (the client has
/// never tracked their devices); a user in `left` is never also in `changed`.
pub fn changes(
    c: &Connection,
    user_id: &str,
    after: StreamPosition,
    up_to: StreamPosition,
) -> Result<DeviceListChanges, Error> {
    if after >= up_to {
        return Ok(DeviceListChanges::default());
    }
    let mut changed: BTreeSet<String> =
        storage::device_list_changes_visible_to(c, user_id, after, up_to)?
            .into_iter()
            .collect();
    changed.extend(storage::newly_shared_users(c, user_id, after, up_to)?);
    let mut left = BTreeSet::new();
    for other in storage::possibly_unshared_users(c, user_id, after, up_to)? {
        if !storage::share_room(c, user_id, &other)? {
            changed.remove(&other);
            left.insert(other);
        }
    }
    Ok(DeviceListChanges {
        changed: changed.into_iter().collect(),
        left: left.into_iter().collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::e2ee::test_util;

    const ALICE: &str = "@alice:x";
    const BOB: &str = "@bob:x";
    const CAROL: &str = "@carol:x";

    fn member(db: &storage::Db, room: &str, user: &str, membership: &str) -> StreamPosition {
        db.write(|tx| {
            let pos = storage::next_stream_position(tx)?;
            storage::set_membership(tx, room, user, membership, &format!("$e{pos}"), pos)?;
            Ok(pos)
        })
        .expect("membership")
    }

    fn key_change(db: &storage::Db, user: &str) -> StreamPosition {
        db.write(|tx| mark_changed(tx, user, None)).expect("mark")
    }

    #[test]
    fn changes_follow_shared_rooms() {
        let (_dir, db) = test_util::db();
        let start = member(&db, "!r:x", ALICE, "join");
        let bob_joins = member(&db, "!r:x", BOB, "join");
        // Carol changes keys but shares no room with alice: not reported.
        key_change(&db, CAROL);
        let at = |after, up_to| {
            db.read(|c| changes(c, ALICE, after, up_to))
                .expect("changes")
        };
        assert_eq!(at(start, bob_joins).changed, vec![BOB.to_owned()]);
        let bob_keys = key_change(&db, BOB);
        let own_keys = key_change(&db, ALICE);
        assert_eq!(at(bob_joins, bob_keys).changed, vec![BOB.to_owned()]);
        assert_eq!(at(bob_keys, own_keys).changed, vec![ALICE.to_owned()]);
        assert!(at(own_keys, own_keys).is_empty());

        // Bob leaves: he is in `left`, not `changed`, even though his keys changed.
        let bob_leaves = member(&db, "!r:x", BOB, "leave");
        let seen = at(start, bob_leaves);
        assert_eq!(seen.left, vec![BOB.to_owned()]);
        assert!(!seen.changed.contains(&BOB.to_owned()));
        // Bob's later key changes are private to him now.
        let later = key_change(&db, BOB);
        assert!(at(bob_leaves, later).is_empty());
    }

    #[test]
    fn a_local_change_is_queued_for_servers_sharing_a_room() {
        let (_dir, db) = test_util::db();
        member(&db, "!r:x", ALICE, "join");
        member(&db, "!r:x", "@dave:y", "join");
        member(&db, "!r:x", "@erin:y", "join");
        member(&db, "!s:x", "@zed:z", "join");
        db.write(|tx| mark_changed(tx, ALICE, Some("D1")).map(|_| ()))
            .expect("mark");
        let batch = db
            .read(|c| storage::outbox_batch(c, "y", 10, 10))
            .expect("batch");
        assert_eq!(batch.edus.len(), 1, "one EDU for server y");
        let edu = &batch.edus[0];
        assert_eq!(edu["edu_type"], "m.device_list_update");
        assert_eq!(edu["content"]["user_id"], ALICE);
        assert_eq!(edu["content"]["device_id"], "D1");
        // Nothing for the own server nor for a server sharing no room.
        for other in ["x", "z"] {
            let n = db.read(|c| storage::outbox_depth(c, other)).expect("depth");
            assert_eq!(n, 0, "{other}");
        }
        // A remote user's change is recorded but never forwarded.
        db.write(|tx| storage::record_device_list_change(tx, "@dave:y").map(|_| ()))
            .expect("remote");
        assert_eq!(db.read(|c| storage::outbox_depth(c, "y")).expect("d"), 1);
    }

    #[test]
    fn federated_to_device_ids_are_claimed_once() {
        let (_dir, db) = test_util::db();
        let claim = |origin: &str, sender: &str, id: &str| {
            db.write(|tx| storage::claim_federated_to_device(tx, origin, sender, id))
                .expect("claim")
        };
        assert!(claim("y", "@dave:y", "m1"));
        assert!(!claim("y", "@dave:y", "m1"));
        assert!(claim("y", "@erin:y", "m1"));
        assert!(claim("y", "@dave:y", "m2"));
    }
}
