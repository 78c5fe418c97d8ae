//! Mailboxes: two nodes that are never online at the same time exchange messages
//! through a third that holds the mail of one of them; and what a mailbox accepts.

use anyhow::{Context, ensure};
use serde_json::{Value, json};
use warren_core::error::Error;
use warren_core::mailbox::{deposit, record};
use warren_core::storage;
use warren_core::{Identity, Node};
use warren_tests::*;

use super::federation_mesh::{
    User, has_message, isolated_p2p, mesh_node, outbox_depth_until, room_events, shared_room,
};

const WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Whether `node` holds a mailbox record of `owner` that names `mailbox`.
fn holds_record(node: &Node, owner: &str, mailbox: &str) -> bool {
    node.server()
        .db
        .read(|c| record::held(c, owner))
        .ok()
        .flatten()
        .is_some_and(|(r, _)| r.names(mailbox))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_never_online_together_exchange_messages_through_a_mailbox() -> anyhow::Result<()> {
    let (da, dc, dm) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let a = mesh_node(da.path(), isolated_p2p()).await?;
    let c = mesh_node(dc.path(), isolated_p2p()).await?;
    let m = mesh_node(dm.path(), isolated_p2p()).await?;
    connect_nodes(&a, &c).await?;
    connect_nodes(&a, &m).await?;
    connect_nodes(&c, &m).await?;
    let alice = User::register(&a, "alice").await?;
    let carol = User::register(&c, "carol").await?;
    let room = shared_room(&alice, &carol, &a).await?;

    // Carol's node names M (a node with no user in the room) as its mailbox; the signed
    // record reaches M and A, the node it shares a room with.
    let named = record::add(c.node.server(), &m.name()).await?;
    ensure!(named == m.name(), "added {named}");
    let (c_name, m_name) = (c.name(), m.name());
    wait_until(WAIT, "A and M hold C's mailbox record", async || {
        Ok(holds_record(&a.node, &c_name, &m_name) && holds_record(&m.node, &c_name, &m_name))
    })
    .await?;

    // C goes away. Alice talks; A cannot reach C and leaves the mail with M.
    c.stop().await?;
    for i in 0..50 {
        alice.say(&room, &format!("mail {i}")).await?;
    }
    outbox_depth_until(&a, &c_name, "A's outbox for C is empty", |d| d == 0).await?;
    let held = m.node.server().db.read(storage::mailbox_holdings)?;
    ensure!(
        held.len() == 1 && held[0].0 == c_name && held[0].1 > 0,
        "M holds {held:?}"
    );

    // A goes away before C is back: they are never online together.
    a.stop().await?;
    let c = mesh_node(dc.path(), isolated_p2p()).await?;
    let carol = carol.on(&c);
    connect_nodes(&c, &m).await?;
    let seen = carol
        .sync_until("the 50 messages from the mailbox", |s| {
            (0..50).all(|i| has_message(s, &room, &format!("mail {i}")))
        })
        .await?;
    // In order and once each.
    let bodies: Vec<&str> = room_events(&seen, &room)
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .filter_map(|e| e["content"]["body"].as_str())
        .collect();
    let expected: Vec<String> = (0..50).map(|i| format!("mail {i}")).collect();
    ensure!(bodies == expected, "timeline: {bodies:?}");
    // M forgets what C took.
    let m_server = m.node.server().clone();
    wait_until(WAIT, "M holds nothing more for C", async || {
        Ok(m_server.db.read(storage::mailbox_holdings)?.is_empty())
    })
    .await?;
    c.stop().await?;
    m.stop().await?;
    Ok(())
}

/// A transaction `depositor` signed for `owner`.
fn transaction(
    depositor: &Identity,
    owner: &str,
    txn_id: &str,
    pad: usize,
) -> anyhow::Result<Value> {
    depositor
        .sign_json(&json!({
            "origin": depositor.server_name(),
            "destination": owner,
            "txn_id": txn_id,
            "origin_server_ts": 1,
            "pdus": [],
            "edus": [{ "edu_type": "m.receipt", "content": { "pad": "x".repeat(pad) } }],
        }))
        .map_err(anyhow::Error::msg)
}

/// `owner`'s signed record naming `mailboxes`.
fn mailbox_record(owner: &Identity, mailboxes: &[&str], ts: i64) -> anyhow::Result<Value> {
    owner
        .sign_json(&json!({ "owner": owner.server_name(), "mailboxes": mailboxes, "ts": ts }))
        .map_err(anyhow::Error::msg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mailbox_holds_only_signed_mail_for_its_owners_within_its_quotas() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.mailbox.depositor_quota_bytes = 3_000;
    config.mailbox.owner_quota_bytes = 6_000;
    config.mailbox.max_owners = 1;
    let node = start_node_with(config).await?;
    let server = node.server();
    let me = node.server_name().to_owned();
    let (owner, other_owner) = (
        Identity::from_seed([1; 32]).map_err(anyhow::Error::msg)?,
        Identity::from_seed([2; 32]).map_err(anyhow::Error::msg)?,
    );
    let (d1, d2) = (
        Identity::from_seed([3; 32]).map_err(anyhow::Error::msg)?,
        Identity::from_seed([4; 32]).map_err(anyhow::Error::msg)?,
    );
    let (o, d1n, d2n) = (owner.server_name(), d1.server_name(), d2.server_name());

    // No record naming this node: refused.
    let t = transaction(&d1, o, "t1", 10)?;
    let refused = deposit::accept(server, d1n, o, "t1", &t);
    ensure!(matches!(refused, Err(Error::Forbidden(_))), "{refused:?}");

    // A record signed by someone else is not the owner's.
    let forged = d1
        .sign_json(&json!({ "owner": o, "mailboxes": [me], "ts": 5 }))
        .map_err(anyhow::Error::msg)?;
    ensure!(
        record::receive(server, &forged).is_err(),
        "a forged record was taken"
    );
    ensure!(
        record::receive(server, &mailbox_record(&owner, &[&me], 5)?)?,
        "record not kept"
    );
    // An older record does not replace it.
    ensure!(
        !record::receive(server, &mailbox_record(&owner, &[], 4)?)?,
        "older record kept"
    );

    // Now it is held, once, even when repeated.
    deposit::accept(server, d1n, o, "t1", &t)?;
    deposit::accept(server, d1n, o, "t1", &t)?;
    let holdings = server.db.read(storage::mailbox_holdings)?;
    ensure!(holdings.len() == 1 && holdings[0].1 == 1, "{holdings:?}");

    // Signed by someone else than the caller, altered, or for someone else: refused.
    let by_d2 = transaction(&d2, o, "t2", 10)?;
    ensure!(
        deposit::accept(server, d1n, o, "t2", &by_d2).is_err(),
        "claimed another's deposit"
    );
    let mut altered = transaction(&d1, o, "t3", 10)?;
    altered["edus"][0]["content"]["pad"] = json!("changed");
    let e = deposit::accept(server, d1n, o, "t3", &altered);
    ensure!(matches!(e, Err(Error::InvalidSignature(_))), "{e:?}");
    let e = deposit::accept(server, d1n, o, "other-txn", &transaction(&d1, o, "t4", 10)?);
    ensure!(matches!(e, Err(Error::BadJson(_))), "{e:?}");

    // Quotas: one depositor's share, then the owner's, then the number of owners.
    deposit::accept(server, d1n, o, "big1", &transaction(&d1, o, "big1", 2_000)?)?;
    let e = deposit::accept(server, d1n, o, "big2", &transaction(&d1, o, "big2", 2_000)?);
    ensure!(
        matches!(e, Err(Error::LimitExceeded(_))),
        "depositor quota: {e:?}"
    );
    deposit::accept(server, d2n, o, "big3", &transaction(&d2, o, "big3", 2_000)?)?;
    let d3 = Identity::from_seed([5; 32]).map_err(anyhow::Error::msg)?;
    let d3n = d3.server_name();
    let e = deposit::accept(server, d3n, o, "big4", &transaction(&d3, o, "big4", 2_000)?);
    ensure!(
        matches!(e, Err(Error::LimitExceeded(_))),
        "owner quota: {e:?}"
    );
    // A repeat of a held deposit is still fine at the limit.
    deposit::accept(server, d2n, o, "big3", &transaction(&d2, o, "big3", 2_000)?)?;
    let other = other_owner.server_name();
    ensure!(
        record::receive(server, &mailbox_record(&other_owner, &[&me], 1)?)?,
        "record"
    );
    let e = deposit::accept(server, d1n, other, "x", &transaction(&d1, other, "x", 10)?);
    ensure!(matches!(e, Err(Error::LimitExceeded(_))), "owners: {e:?}");

    // Records naming this node are kept for four times `max_owners` owners (here 4):
    // others cannot push them out, and a fifth owner is refused.
    for seed in 10..12 {
        let extra = Identity::from_seed([seed; 32]).map_err(anyhow::Error::msg)?;
        ensure!(
            record::receive(server, &mailbox_record(&extra, &[&me], 1)?)?,
            "owner {seed}"
        );
    }
    let fifth = Identity::from_seed([12; 32]).map_err(anyhow::Error::msg)?;
    let e = record::receive(server, &mailbox_record(&fifth, &[&me], 1)?);
    ensure!(
        matches!(e, Err(Error::LimitExceeded(_))),
        "fifth owner: {e:?}"
    );

    // An operator's allow list refuses owners not on it.
    let allowed = {
        let dir = tempfile::tempdir()?;
        let mut config = test_config(dir.path());
        config.mailbox.allowed_owners = vec![other.to_owned()];
        let strict = start_node_with(config).await?;
        let me = strict.server_name().to_owned();
        record::receive(strict.server(), &mailbox_record(&owner, &[&me], 9)?)?;
        let e = deposit::accept(
            strict.server(),
            d1n,
            o,
            "t1",
            &transaction(&d1, o, "t1", 10)?,
        );
        shutdown_node(strict).await?;
        e
    };
    ensure!(
        matches!(allowed, Err(Error::Forbidden(_))),
        "allow list: {allowed:?}"
    );

    // The owner's record stops naming this node: nothing more is taken.
    ensure!(
        record::receive(server, &mailbox_record(&owner, &[], 6)?)?,
        "newer record"
    );
    let e = deposit::accept(server, d1n, o, "t9", &transaction(&d1, o, "t9", 10)?);
    ensure!(matches!(e, Err(Error::Forbidden(_))), "{e:?}");
    shutdown_node(node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deposits_expire_after_their_time_to_live() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = test_config(dir.path());
    config.mailbox.ttl = std::time::Duration::from_millis(1);
    let node = start_node_with(config).await?;
    let server = node.server();
    let me = node.server_name().to_owned();
    let owner = Identity::from_seed([1; 32]).map_err(anyhow::Error::msg)?;
    let d = Identity::from_seed([3; 32]).map_err(anyhow::Error::msg)?;
    let o = owner.server_name();
    record::receive(server, &mailbox_record(&owner, &[&me], 1)?)?;
    deposit::accept(
        server,
        d.server_name(),
        o,
        "old",
        &transaction(&d, o, "old", 10)?,
    )?;
    let first: Vec<_> = server
        .db
        .read(|c| storage::deposits_for(c, o, 10, usize::MAX))?;
    ensure!(first.len() == 1, "{first:?}");
    // Let the old deposit's time to live (1 ms) run out; the next deposit sweeps it.
    let since = std::time::Instant::now();
    wait_until(WAIT, "a millisecond passes", async || {
        Ok(since.elapsed().as_millis() > 2)
    })
    .await?;
    deposit::accept(
        server,
        d.server_name(),
        o,
        "new",
        &transaction(&d, o, "new", 10)?,
    )?;
    let left: Vec<String> = server
        .db
        .read(|c| storage::deposits_for(c, o, 10, usize::MAX))?
        .into_iter()
        .map(|d| d.txn_id)
        .collect();
    ensure!(left == ["new"], "{left:?}");
    shutdown_node(node).await.context("shutdown")?;
    Ok(())
}
