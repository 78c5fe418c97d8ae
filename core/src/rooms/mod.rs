//! The room DAG engine: building and authorising events, state, extremities, redaction.
//!
//! Every local write to a room runs inside the single database writer, which serialises
//! writes to a room (and the stream positions they take).

mod ahead;
mod append;
mod auth;
pub use auth::forget_database;
pub mod backfill;
mod create;
mod create_event;
pub mod filter;
pub mod heads;
pub mod hierarchy;
mod join;
mod knock;
mod new_room;
mod out_of_band;
mod power;
#[cfg(test)]
mod prebuild_tests;
mod receive;
mod redact;
mod remote_join;
mod resolve;
mod resolve_v1;
mod restricted;
pub mod state_at;
mod upgrade;
pub mod visibility;

pub use ahead::{Prebuilt, Prepared, prebuild};
pub use append::{
    Appended, ClientTxn, append_event, append_event_at, append_prepared, is_retry, load_pdu,
    random_string, unchanged_state,
};
pub use create::{CreateRoom, add_rich_topic, create_room};
pub use hierarchy::{HierarchyRequest, space_hierarchy};
pub use join::{
    MAX_AVATAR_URL_LEN, MAX_DISPLAYNAME_LEN, MAX_ROOMS_JOINING, join_content, member_profile,
    needs_remote_join,
};
pub use knock::{
    KNOCK_VIA, check_knock_allowed, join_rule, knock_remote, knock_room_state,
    receive_out_of_band_membership,
};
pub use out_of_band::leave_out_of_band;
pub use power::{PowerLevels, power_levels};
pub use receive::{
    BoxFuture, MAX_FETCHES, MAX_PDU_BYTES, MISSING_EVENTS_LIMIT, Outcome, RemoteEvents, receive_pdu,
};
pub use redact::check_redaction_allowed;
pub use remote_join::{
    JoinAnswer, SUPPORTED_ROOM_VERSIONS, accept_membership, event_id_of, invite_remote,
    inviting_server, join_answer, join_remote, leave_remote, membership_server,
    membership_template, receive_invite, state_and_auth_chain_before,
};
pub use restricted::{JoinPolicy, check_join, countersign_join, local_authoriser};
pub use upgrade::{copy_rules_from_predecessor, upgrade_room};

/// Record a user's current membership; a new join also sends presence where it is newly
/// needed (see [`crate::presence::on_join`]).
pub(crate) fn set_membership(
    c: &rusqlite::Connection,
    room_id: &str,
    user_id: &str,
    membership: &str,
    event_id: &str,
    pos: i64,
) -> Result<(), crate::error::Error> {
    if crate::storage::set_membership(c, room_id, user_id, membership, event_id, pos)? {
        crate::presence::on_join(c, room_id, user_id)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Error;
    use crate::events::NewEvent;
    use crate::server::Server;

    fn ev(
        sender: &str,
        kind: &str,
        state_key: Option<&str>,
        content: serde_json::Value,
    ) -> NewEvent {
        NewEvent {
            kind: kind.into(),
            state_key: state_key.map(str::to_owned),
            content,
            sender: sender.into(),
            redacts: None,
        }
    }

    fn append(server: &Server, room: &str, e: NewEvent) -> Result<Appended, Error> {
        server.write(|tx| append_event(tx, server, room, e, None))
    }

    #[tokio::test]
    async fn auth_rules_reject_what_the_sender_may_not_do() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        let eve = server.user_id("eve");
        let room = server
            .write(|tx| {
                create_room(
                    tx,
                    &server,
                    &alice,
                    CreateRoom {
                        preset: Some("public_chat".into()),
                        ..Default::default()
                    },
                )
            })
            .expect("create");
        let forbidden = |r: Result<Appended, Error>| matches!(r, Err(Error::Forbidden(_)));

        // Not in the room: may not send.
        let msg = json!({"msgtype": "m.text", "body": "hi"});
        let r = append(
            &server,
            &room,
            ev(&eve, "m.room.message", None, msg.clone()),
        );
        assert!(forbidden(r));
        // Joining a public room works; then messages are allowed, but not power-50 state.
        append(
            &server,
            &room,
            ev(
                &bob,
                "m.room.member",
                Some(&bob),
                json!({"membership": "join"}),
            ),
        )
        .expect("join");
        let sent = append(
            &server,
            &room,
            ev(&bob, "m.room.message", None, msg.clone()),
        )
        .expect("send");
        let r = append(
            &server,
            &room,
            ev(&bob, "m.room.name", Some(""), json!({"name": "x"})),
        );
        assert!(forbidden(r));
        // Bob may not kick alice, nor join on her behalf.
        let r = append(
            &server,
            &room,
            ev(
                &bob,
                "m.room.member",
                Some(&alice),
                json!({"membership": "leave"}),
            ),
        );
        assert!(forbidden(r));
        // A redaction by someone without power who did not send the target is refused;
        // the sender and the creator may redact.
        let other = server.user_id("carol");
        append(
            &server,
            &room,
            ev(
                &other,
                "m.room.member",
                Some(&other),
                json!({"membership": "join"}),
            ),
        )
        .expect("carol joins");
        server
            .db
            .read(|c| {
                assert!(!check_redaction_allowed(c, &room, &other, &sent.event_id)?);
                assert!(check_redaction_allowed(c, &room, &bob, &sent.event_id)?);
                assert!(check_redaction_allowed(c, &room, &alice, &sent.event_id)?);
                Ok(())
            })
            .expect("checks");
        // Each accepted event took a fresh, increasing stream position.
        let again = append(
            &server,
            &room,
            ev(&bob, "m.room.message", None, msg.clone()),
        )
        .expect("send");
        assert!(again.pos > sent.pos);
        node.shutdown().await.expect("shutdown");
    }

    /// Identical create events (room version 12 names a room after its create event,
    /// and a fast node creates several rooms of one user in a millisecond) each get a
    /// room of their own instead of failing on the first one's id.
    #[tokio::test]
    async fn identical_rooms_created_at_once_get_distinct_ids() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let create = ev(
            &alice,
            "m.room.create",
            Some(""),
            json!({"room_version": "12"}),
        );
        let rooms = server
            .write(|tx| {
                (0..3)
                    .map(|_| {
                        create_event::append_create_at(
                            tx,
                            &server,
                            "12",
                            create.clone(),
                            false,
                            None,
                            1_700_000_000_000,
                        )
                    })
                    .collect::<Result<Vec<_>, _>>()
            })
            .expect("every room is created");
        let distinct: std::collections::HashSet<&String> = rooms.iter().collect();
        assert_eq!(distinct.len(), 3, "{rooms:?}");
        node.shutdown().await.expect("shutdown");
    }

    /// The auth events of local events are read from the current state once
    /// (`AuthState`): a message names the power levels and its sender's member event, a
    /// join also the join rules, and (room versions before 12) the create event; events
    /// that fail the rules still fail.
    #[tokio::test]
    async fn auth_events_come_from_the_current_state() {
        let (_dir, node) = crate::test_support::node().await;
        let server = node.server().clone();
        let alice = server.user_id("alice");
        let bob = server.user_id("bob");
        for version in ["12", "10"] {
            let room = server
                .write(|tx| {
                    create_room(
                        tx,
                        &server,
                        &alice,
                        CreateRoom {
                            preset: Some("public_chat".into()),
                            room_version: Some(version.into()),
                            ..Default::default()
                        },
                    )
                })
                .expect("create");
            let current = |ty: &str, sk: &str| {
                server
                    .db
                    .read(|c| crate::storage::current_state_event(c, &room, ty, sk))
                    .expect("state")
                    .expect("entry")
            };
            let auth_of = |event_id: &str| -> Vec<String> {
                let ev = server
                    .db
                    .read(|c| crate::storage::get_event(c, event_id))
                    .expect("read")
                    .expect("stored");
                let json: serde_json::Value = serde_json::from_str(&ev.json).expect("json");
                let mut ids: Vec<String> = json["auth_events"]
                    .as_array()
                    .expect("auth_events")
                    .iter()
                    .map(|v| v.as_str().expect("id").to_owned())
                    .collect();
                ids.sort();
                ids
            };
            let with_create = |mut ids: Vec<String>| {
                if version != "12" {
                    ids.push(current("m.room.create", ""));
                }
                ids.sort();
                ids
            };
            let power = current("m.room.power_levels", "");
            let join_rules = current("m.room.join_rules", "");
            let alice_member = current("m.room.member", &alice);
            let joined = append(
                &server,
                &room,
                ev(
                    &bob,
                    "m.room.member",
                    Some(&bob),
                    json!({"membership": "join"}),
                ),
            )
            .expect("join");
            // A first join: bob had no member event yet.
            assert_eq!(
                auth_of(&joined.event_id),
                with_create(vec![power.clone(), join_rules.clone()]),
                "room version {version}"
            );
            let msg = json!({"msgtype": "m.text", "body": "hi"});
            let sent = append(
                &server,
                &room,
                ev(&bob, "m.room.message", None, msg.clone()),
            )
            .expect("send");
            assert_eq!(
                auth_of(&sent.event_id),
                with_create(vec![power.clone(), joined.event_id.clone()]),
                "room version {version}"
            );
            let named = append(
                &server,
                &room,
                ev(&alice, "m.room.name", Some(""), json!({"name": "n"})),
            )
            .expect("name");
            assert_eq!(
                auth_of(&named.event_id),
                with_create(vec![power.clone(), alice_member.clone()]),
                "room version {version}"
            );
            let refused = append(
                &server,
                &room,
                ev(&bob, "m.room.name", Some(""), json!({"name": "x"})),
            );
            assert!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");
        }
        node.shutdown().await.expect("shutdown");
    }
}
