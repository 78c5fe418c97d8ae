//! The membership service across nodes: account deactivation leaves every room, local
//! and remote, as `/leave` does.
//!
//! Clients speak raw HTTP; every wait is on a condition over the other node's answers.

use std::time::Duration;

use anyhow::{Context, ensure};
use serde_json::json;
use warren_tests::*;

use crate::federation_mesh::{User, is_joined, mesh_pair};

const WAIT: Duration = Duration::from_secs(60);

/// `user`'s membership in `room` as `viewer`'s node holds it (`None` before any).
async fn membership_seen_by(
    viewer: &User,
    room: &str,
    user: &str,
) -> anyhow::Result<Option<String>> {
    let (status, body) = viewer
        .call(
            reqwest::Method::GET,
            &format!(
                "/rooms/{}/state/m.room.member/{}",
                path_segment(room),
                path_segment(user)
            ),
            json!({}),
        )
        .await?;
    Ok((status == 200)
        .then(|| body["membership"].as_str().map(str::to_owned))
        .flatten())
}

/// Alice (node A) is in a room of Bob's (node B) and in a room of her own that Bob
/// joined; she has a pending invite to a room of Bob's that she left before, and a
/// pending knock on another she left before. A knows the last two rooms, but its state
/// of the knocked one is stale (her leave: A stopped hearing of the room when she
/// left), so a local leave there is refused by the auth rules; it must go through B.
/// When she deactivates her account, Bob's node sees her leave all four.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deactivation_leaves_local_and_remote_rooms() -> anyhow::Result<()> {
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;

    // A room on B that Alice joins.
    let remote = bob.create_room(json!({"preset": "public_chat"})).await?;
    alice.join_via(&remote, &b).await?;
    bob.sync_until("Alice's join", |s| is_joined(s, &remote, alice.id()))
        .await?;
    // A room on A that Bob joins.
    let local = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join_via(&local, &a).await?;
    alice
        .sync_until("Bob's join", |s| is_joined(s, &local, bob.id()))
        .await?;
    // A room on B that Alice joins, leaves, and is invited to again.
    let stale = bob.create_room(json!({"preset": "public_chat"})).await?;
    alice.join_via(&stale, &b).await?;
    bob.sync_until("Alice's join", |s| is_joined(s, &stale, alice.id()))
        .await?;
    alice
        .post(&format!("/rooms/{}/leave", path_segment(&stale)), json!({}))
        .await?;
    wait_until(WAIT, "B sees Alice leave", async || {
        Ok(membership_seen_by(&bob, &stale, alice.id())
            .await?
            .as_deref()
            == Some("leave"))
    })
    .await?;
    bob.post(
        &format!("/rooms/{}/invite", path_segment(&stale)),
        json!({"user_id": alice.id()}),
    )
    .await?;
    alice
        .sync_until("the new invite", |s| {
            !s["rooms"]["invite"][&stale].is_null()
        })
        .await?;

    // A room on B that Alice joins and leaves, whose join rule then becomes `knock`
    // (which A, no longer in it, does not hear of), and on which she knocks.
    let knocked = bob.create_room(json!({"preset": "public_chat"})).await?;
    alice.join_via(&knocked, &b).await?;
    bob.sync_until("Alice's join", |s| is_joined(s, &knocked, alice.id()))
        .await?;
    alice
        .post(
            &format!("/rooms/{}/leave", path_segment(&knocked)),
            json!({}),
        )
        .await?;
    wait_until(WAIT, "B sees Alice leave", async || {
        Ok(membership_seen_by(&bob, &knocked, alice.id())
            .await?
            .as_deref()
            == Some("leave"))
    })
    .await?;
    bob.put(
        &format!("/rooms/{}/state/m.room.join_rules/", path_segment(&knocked)),
        json!({"join_rule": "knock"}),
    )
    .await?;
    alice
        .post(
            &format!("/knock/{}?via={}", path_segment(&knocked), b.name()),
            json!({}),
        )
        .await?;
    wait_until(WAIT, "B sees Alice knock", async || {
        Ok(membership_seen_by(&bob, &knocked, alice.id())
            .await?
            .as_deref()
            == Some("knock"))
    })
    .await?;

    // UIAA: the session, then the password.
    let (status, flows) = alice
        .call(reqwest::Method::POST, "/account/deactivate", json!({}))
        .await?;
    ensure!(status == 401, "deactivate without auth: {status} {flows}");
    let session = flows["session"].as_str().context("UIAA session")?;
    alice
        .post(
            "/account/deactivate",
            json!({"auth": {"type": "m.login.password", "session": session,
                "identifier": {"type": "m.id.user", "user": alice.id()},
                "password": "secret-password"}}),
        )
        .await?;

    for (what, room) in [
        ("B's room", &remote),
        ("A's room", &local),
        ("the invite", &stale),
        ("the knock", &knocked),
    ] {
        let mut last: Option<String> = None;
        let label = format!("B sees Alice leave {what}");
        let left = wait_until(WAIT, &label, async || {
            last = membership_seen_by(&bob, room, alice.id()).await?;
            Ok(last.as_deref() == Some("leave"))
        })
        .await;
        left.with_context(|| format!("Alice's last membership in {what}: {last:?}"))?;
    }
    // A holds the leaves too: no room of hers is left joined, invited or knocking.
    let held = a
        .node
        .server()
        .db
        .read(|c| warren_core::storage::user_memberships(c, alice.id()))?;
    let pending: Vec<_> = held
        .iter()
        .filter(|(_, m, _, _)| matches!(m.as_str(), "join" | "invite" | "knock"))
        .collect();
    ensure!(pending.is_empty(), "A still holds {pending:?}");
    a.stop().await?;
    b.stop().await?;
    Ok(())
}

/// Alice (node A) is invited to a room of Bob's (node B); B then goes away. Rejecting
/// the invite cannot go through B, and it still succeeds: A makes the leave itself, out
/// of band (as Synapse does), and her next sync moves the room from `invite` to `leave`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invite_from_a_server_that_is_gone_is_rejected_out_of_band() -> anyhow::Result<()> {
    let (_da, _db, a, b) = mesh_pair().await?;
    let alice = User::register(&a, "alice").await?;
    let bob = User::register(&b, "bob").await?;
    let room = bob
        .create_room(json!({"preset": "private_chat", "invite": [alice.id()]}))
        .await?;
    let invited = alice
        .sync_until("the invite", |s| !s["rooms"]["invite"][&room].is_null())
        .await?;
    let since = invited["next_batch"]
        .as_str()
        .context("next_batch")?
        .to_owned();
    b.stop().await?;

    let (status, body) = alice
        .call(
            reqwest::Method::POST,
            &format!("/rooms/{}/leave", path_segment(&room)),
            json!({"reason": "not now"}),
        )
        .await?;
    ensure!(status == 200, "rejecting the invite: {status} {body}");
    let after = alice.sync(Some(&since)).await?;
    ensure!(
        after["rooms"]["invite"][&room].is_null(),
        "the invite is gone: {after}"
    );
    ensure!(
        !after["rooms"]["leave"][&room].is_null(),
        "the room is in `leave`: {after}"
    );
    // Nothing is pending any more: a later initial sync shows no invite either.
    let later = alice.sync(None).await?;
    ensure!(later["rooms"]["invite"][&room].is_null(), "{later}");
    a.stop().await?;
    Ok(())
}
