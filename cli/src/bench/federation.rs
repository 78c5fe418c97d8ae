//! The measurements that need more than one node: federation propagation (direct and
//! through a relay) and the latency of joining a room on another node.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail};
use serde_json::json;
use tokio::runtime::Handle;
use tokio::task::JoinSet;
use warren_core::storage;
use warren_p2p::{P2pConfig, PeerInfo};

use super::client::Client;
use super::{BenchNode, on_nodes, start_node, suite};

/// How long a node behind the relay may take to get its reservation.
const RELAY_WAIT: Duration = Duration::from_secs(20);

/// Alice on A creates a public room, Bob on B joins it over federation; then Bob's
/// waiting /sync against Alice's sends.
pub async fn propagation(
    a: &BenchNode,
    b: &BenchNode,
    prefix: &str,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let alice = Arc::new(
        Client::register(&a.node.client_url(), &format!("{prefix}_alice"), "pw-alice").await?,
    );
    let bob =
        Arc::new(Client::register(&b.node.client_url(), &format!("{prefix}_bob"), "pw-bob").await?);
    let room = alice.create_room(json!({"preset": "public_chat"})).await?;
    bob.join(&room, Some(a.node.server_name())).await?;
    // One message each way first: the connection and both sides' room state are warm.
    alice.send(&room, "hello").await?;
    suite::wake_latency(&alice, &bob, &room, samples).await
}

/// Three more nodes: R offers circuit relay v2 and listens on loopback; A and B listen on
/// nothing (no socket anyone could dial) and know only R. Each holds a reservation with
/// R, so the only way between them is a circuit through R. Then the same propagation
/// measurement as the direct one. Fails rather than report a figure if A and B ended up
/// connected directly.
pub async fn relay_propagation(
    nodes: &Handle,
    dir: &Path,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let relay = on_nodes(
        nodes,
        start_node(
            dir.join("relay"),
            P2pConfig {
                relay_server: true,
                // TCP only. A node behind the relay then has no socket but its outgoing
                // TCP connection to R, and DCUtR has nothing to punch a direct
                // connection through. Over QUIC the socket a node dials R from also
                // accepts connections, so on loopback DCUtR upgrades A–B to a direct
                // connection at once and nothing would go through the relay.
                listen: vec!["/ip4/127.0.0.1/tcp/0".parse()?],
                ..super::loopback_p2p()?
            },
        ),
    )
    .await?;
    let result = behind_relay(nodes, dir, &relay, samples).await;
    stop(nodes, relay).await?;
    result
}

async fn behind_relay(
    nodes: &Handle,
    dir: &Path,
    relay: &BenchNode,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let rp = relay.p2p.clone();
    let relay_addr = on_nodes(nodes, async move {
        rp.wait_listening(super::LISTEN_WAIT)
            .await?
            .into_iter()
            .find(|a| a.to_string().contains("/tcp/"))
            .context("the relay has no TCP listen address")
    })
    .await?;
    let behind = || -> anyhow::Result<P2pConfig> {
        Ok(P2pConfig {
            listen: vec![],
            bootstrap: vec![relay_addr.clone()],
            ..super::loopback_p2p()?
        })
    };
    let a = on_nodes(nodes, start_node(dir.join("relay-a"), behind()?)).await?;
    let b = match on_nodes(nodes, start_node(dir.join("relay-b"), behind()?)).await {
        Ok(b) => b,
        Err(e) => {
            stop(nodes, a).await?;
            return Err(e);
        }
    };
    let result = async {
        for n in [&a, &b] {
            let p2p = n.p2p.clone();
            on_nodes(nodes, async move {
                let deadline = Instant::now() + RELAY_WAIT;
                loop {
                    let addrs = p2p.listen_addrs().await?;
                    if addrs.iter().any(|a| a.to_string().contains("p2p-circuit")) {
                        return Ok(());
                    }
                    if Instant::now() > deadline {
                        bail!("no relay reservation after {RELAY_WAIT:?}: {addrs:?}");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
            .await?;
        }
        let samples = propagation(&a, &b, "relay", samples).await?;
        check_relayed(nodes, &a, &b).await?;
        Ok(samples)
    }
    .await;
    stop(nodes, a).await?;
    stop(nodes, b).await?;
    result
}

/// Make sure A and B talked through the relay: each knows the other only at circuit
/// addresses. Neither node has a listener of its own, so there is no direct address to
/// dial or to hole-punch to. The transport's `ConnectionKind` is not required to say
/// `Relayed`: the side that accepted a circuit sees its remote address as a bare
/// `/p2p/<peer>` and calls the connection direct, and after the relay's per-circuit
/// limits end a circuit the replacement may have been opened by either side.
async fn check_relayed(nodes: &Handle, a: &BenchNode, b: &BenchNode) -> anyhow::Result<()> {
    let (pa, pb) = (a.p2p.clone(), b.p2p.clone());
    let (a_name, b_name) = (
        a.node.server_name().to_owned(),
        b.node.server_name().to_owned(),
    );
    let (of_b, of_a) = on_nodes(nodes, async move {
        let find = |peers: Vec<PeerInfo>, name: &str| {
            peers
                .into_iter()
                .find(|p| p.server_name.as_deref() == Some(name))
        };
        Ok((
            find(pa.peers().await?, &b_name),
            find(pb.peers().await?, &a_name),
        ))
    })
    .await?;
    let (Some(of_b), Some(of_a)) = (of_b, of_a) else {
        bail!("A and B are not connected after the relay measurement");
    };
    let only_circuits = |p: &PeerInfo| {
        p.addresses
            .iter()
            .all(|a| a.to_string().contains("p2p-circuit"))
    };
    if !(only_circuits(&of_b) && only_circuits(&of_a)) {
        bail!(
            "A and B were meant to talk only through the relay: A sees B {} at {:?}, \
             B sees A {} at {:?}",
            of_b.connection,
            of_b.addresses,
            of_a.connection,
            of_a.addresses
        );
    }
    Ok(())
}

async fn stop(nodes: &Handle, n: BenchNode) -> anyhow::Result<()> {
    on_nodes(nodes, async move {
        n.p2p.shutdown().await;
        let _ = n.node.shutdown().await;
        Ok(())
    })
    .await
}

/// Join latencies, each of a user on B joining a public room on A.
pub struct Joins {
    /// Rooms that hold only their creator.
    pub remote: Vec<Duration>,
    /// One room per entry of the `members` asked for, with that many members.
    pub with_members: Vec<Duration>,
}

/// A user on B joins rooms on A (`POST /join/{roomId}?server_name=<A>`), timed from the
/// request to its answer: `remote` rooms with only their creator, then one room for each
/// entry of `members` with that many joined members in its state (their set-up untimed).
pub async fn joins(
    nodes: &Handle,
    a: &BenchNode,
    b: &BenchNode,
    remote: usize,
    members: &[usize],
    progress: &dyn Fn(&str),
) -> anyhow::Result<Joins> {
    let alice = Client::register(&a.node.client_url(), "join_alice", "pw-alice").await?;
    let bob = Client::register(&b.node.client_url(), "join_bob", "pw-bob").await?;
    let via = Some(a.node.server_name());
    let mut out = Joins {
        remote: Vec::with_capacity(remote),
        with_members: Vec::with_capacity(members.len()),
    };
    for _ in 0..remote {
        let room = alice.create_room(json!({"preset": "public_chat"})).await?;
        let t = Instant::now();
        bob.join(&room, via).await?;
        out.remote.push(t.elapsed());
    }
    let mut created = 0;
    for &n in members {
        progress(&format!("join: a room on A with {n} members"));
        let room = alice.create_room(json!({"preset": "public_chat"})).await?;
        // Alice is the first member.
        let locals = local_sessions(nodes, a, created, n.saturating_sub(1)).await?;
        created += locals.len();
        join_all(&locals, &room).await?;
        let t = Instant::now();
        bob.join(&room, via).await?;
        out.with_members.push(t.elapsed());
    }
    Ok(out)
}

/// `count` local users on `a` with an access token each, made in one transaction straight
/// in the node's database: registering over HTTP hashes a password per user (slow on
/// purpose), which would make a 1,000-member room take minutes to set up. Their joins
/// then go through the client API like anyone's.
async fn local_sessions(
    nodes: &Handle,
    a: &BenchNode,
    first: usize,
    count: usize,
) -> anyhow::Result<Vec<Arc<Client>>> {
    let server = a.node.server().clone();
    // (localpart, user id, access token)
    let users: Vec<(String, String, String)> = (first..first + count)
        .map(|i| {
            let localpart = format!("member{i}");
            let user_id = server.user_id(&localpart);
            let token = format!(
                "bench-{localpart}-{}",
                warren_core::rooms::random_string(24)
            );
            (localpart, user_id, token)
        })
        .collect();
    let made = users.clone();
    on_nodes(nodes, async move {
        server
            .write(|tx| {
                for (localpart, user_id, token) in &made {
                    storage::create_user(tx, user_id, None, false, localpart)?;
                    storage::start_session(tx, user_id, "BENCH", None, token)?;
                }
                Ok(())
            })
            .map_err(|e| anyhow!("creating bench members: {e}"))
    })
    .await?;
    let base = a.node.client_url();
    let http = super::client::http_client()?;
    Ok(users
        .iter()
        .map(|(_, user_id, token)| Arc::new(Client::with_token(&http, &base, user_id, token)))
        .collect())
}

/// Everyone in `clients` joins `room`, [`super::CONCURRENCY`] at a time.
async fn join_all(clients: &[Arc<Client>], room: &str) -> anyhow::Result<()> {
    for chunk in clients.chunks(super::CONCURRENCY) {
        let mut tasks = JoinSet::new();
        for c in chunk {
            let (c, room) = (c.clone(), room.to_owned());
            tasks.spawn(async move { c.join(&room, None).await });
        }
        while let Some(result) = tasks.join_next().await {
            result.context("a join task panicked")??;
        }
    }
    Ok(())
}
