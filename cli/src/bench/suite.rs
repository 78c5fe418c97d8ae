//! The client-API measurements: the same code runs against the temporary Warren node and,
//! with `--against`, against another homeserver.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};
use tokio::task::JoinSet;

use super::Sizes;
use super::client::Client;

/// Filter for the incremental syncs: a few timeline events, nothing else to speak of.
const SMALL_SYNC: &str = r#"{"room":{"timeline":{"limit":10}},"presence":{"not_types":["*"]}}"#;

/// Long-poll timeout of a waiting `/sync`.
const LONG_POLL_MS: u64 = 30_000;

/// How long to let a `/sync` request reach the server and park before sending.
const PARK: Duration = Duration::from_millis(15);

/// Where sessions come from: fresh registrations, or logins of one given user.
#[derive(Clone)]
pub enum Accounts {
    Register {
        base: String,
        prefix: String,
    },
    Login {
        base: String,
        user: String,
        password: String,
    },
}

const PASSWORD: &str = "warren-bench-password";

impl Accounts {
    pub fn register(base: &str) -> Accounts {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Accounts::Register {
            base: base.to_owned(),
            prefix: format!("bench{stamp:x}"),
        }
    }

    pub fn base(&self) -> &str {
        match self {
            Accounts::Register { base, .. } | Accounts::Login { base, .. } => base,
        }
    }

    /// Another device of session number `i`'s user (a password login).
    pub async fn new_device(&self, i: usize) -> anyhow::Result<Arc<Client>> {
        let client = match self {
            Accounts::Register { base, prefix } => {
                Client::login(base, &format!("{prefix}_{i}"), PASSWORD).await?
            }
            Accounts::Login {
                base,
                user,
                password,
            } => Client::login(base, user, password).await?,
        };
        Ok(Arc::new(client))
    }

    /// Session number `i`: a new user, or a new device of the given user.
    pub async fn session(&self, i: usize) -> anyhow::Result<Arc<Client>> {
        let client = match self {
            Accounts::Register { base, prefix } => {
                Client::register(base, &format!("{prefix}_{i}"), PASSWORD).await?
            }
            Accounts::Login {
                base,
                user,
                password,
            } => Client::login(base, user, password).await?,
        };
        Ok(Arc::new(client))
    }
}

/// The client-API figures of one server.
#[derive(Clone, Debug, Default)]
pub struct ClientFigures {
    pub sequential_sends_per_s: f64,
    pub send_p50_ms: f64,
    pub send_p99_ms: f64,
    pub concurrent_sends_one_room_per_s: f64,
    pub concurrent_sends_ten_rooms_per_s: f64,
    pub sync_wake_p50_ms: f64,
    pub sync_wake_p99_ms: f64,
    pub sync_wake_small_room_p50_ms: f64,
    pub initial_sync_ms: f64,
    pub initial_sync_same_device_ms: f64,
    pub initial_sync_1000_rooms_ms: f64,
    pub versions_sequential_per_s: f64,
    pub versions_concurrent_per_s: f64,
}

impl ClientFigures {
    /// (JSON key, value, higher is better) for every figure.
    pub fn rows(&self) -> Vec<(&'static str, f64, bool)> {
        vec![
            ("sequential_sends_per_s", self.sequential_sends_per_s, true),
            ("send_p50_ms", self.send_p50_ms, false),
            ("send_p99_ms", self.send_p99_ms, false),
            (
                "concurrent_sends_one_room_per_s",
                self.concurrent_sends_one_room_per_s,
                true,
            ),
            (
                "concurrent_sends_ten_rooms_per_s",
                self.concurrent_sends_ten_rooms_per_s,
                true,
            ),
            ("sync_wake_p50_ms", self.sync_wake_p50_ms, false),
            ("sync_wake_p99_ms", self.sync_wake_p99_ms, false),
            (
                "sync_wake_small_room_p50_ms",
                self.sync_wake_small_room_p50_ms,
                false,
            ),
            ("initial_sync_ms", self.initial_sync_ms, false),
            (
                "initial_sync_same_device_ms",
                self.initial_sync_same_device_ms,
                false,
            ),
            (
                "initial_sync_1000_rooms_ms",
                self.initial_sync_1000_rooms_ms,
                false,
            ),
            (
                "versions_sequential_per_s",
                self.versions_sequential_per_s,
                true,
            ),
            (
                "versions_concurrent_per_s",
                self.versions_concurrent_per_s,
                true,
            ),
        ]
    }
}

/// Sorted samples → percentile in milliseconds (nearest rank).
pub fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1000.0
}

fn per_s(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

/// Run every client-API measurement against the server behind `accounts`. `messages`
/// counts the messages sent (for the database size per message).
pub async fn run(
    accounts: &Accounts,
    sizes: &Sizes,
    messages: &AtomicU64,
    progress: &dyn Fn(&str),
) -> anyhow::Result<ClientFigures> {
    let mut f = ClientFigures::default();
    let clients = Clients::new(accounts, super::CONCURRENCY + 1).await?;
    let main = clients.get(0)?;

    progress("load generator ceiling (GET /_matrix/client/versions)");
    let started = Instant::now();
    for _ in 0..sizes.versions_sequential {
        main.versions().await?;
    }
    f.versions_sequential_per_s = per_s(sizes.versions_sequential, started.elapsed());
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for i in 0..super::CONCURRENCY {
        let c = clients.get(i)?;
        let n = sizes.versions_per_task;
        tasks.spawn(async move {
            for _ in 0..n {
                c.versions().await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    join_all(tasks).await?;
    f.versions_concurrent_per_s = per_s(
        sizes.versions_per_task * super::CONCURRENCY,
        started.elapsed(),
    );

    progress("sequential sends");
    let room = main.create_room(json!({"preset": "public_chat"})).await?;
    for i in 0..sizes.warm_up {
        main.send(&room, &format!("warm-up {i}")).await?;
    }
    let mut latencies = Vec::with_capacity(sizes.sequential_sends);
    let started = Instant::now();
    for i in 0..sizes.sequential_sends {
        let t = Instant::now();
        main.send(&room, &format!("message {i}")).await?;
        latencies.push(t.elapsed());
    }
    f.sequential_sends_per_s = per_s(sizes.sequential_sends, started.elapsed());
    messages.fetch_add(
        (sizes.warm_up + sizes.sequential_sends) as u64,
        Ordering::Relaxed,
    );
    latencies.sort();
    f.send_p50_ms = percentile_ms(&latencies, 0.50);
    f.send_p99_ms = percentile_ms(&latencies, 0.99);

    progress("concurrent sends, 10 clients in one room");
    let mut one_room = Vec::new();
    for i in 0..super::CONCURRENCY {
        let c = clients.get(i + 1)?;
        if c.user_id != main.user_id {
            c.join(&room, None).await?;
        }
        one_room.push((c, room.clone()));
    }
    f.concurrent_sends_one_room_per_s =
        concurrent_sends(&one_room, sizes.concurrent_sends_per_client).await?;
    messages.fetch_add(
        (sizes.concurrent_sends_per_client * super::CONCURRENCY) as u64,
        Ordering::Relaxed,
    );

    progress("concurrent sends, 10 clients in 10 rooms");
    let mut ten_rooms = Vec::new();
    for i in 0..super::CONCURRENCY {
        let c = clients.get(i + 1)?;
        let own = c.create_room(json!({"preset": "private_chat"})).await?;
        ten_rooms.push((c, own));
    }
    f.concurrent_sends_ten_rooms_per_s =
        concurrent_sends(&ten_rooms, sizes.concurrent_sends_per_client).await?;
    messages.fetch_add(
        (sizes.concurrent_sends_per_client * super::CONCURRENCY) as u64,
        Ordering::Relaxed,
    );

    progress("sync wake latency");
    let waiter = clients.get(1)?;
    let mut wake = wake_latency(&main, &waiter, &room, sizes.wake_samples).await?;
    messages.fetch_add(sizes.wake_samples as u64, Ordering::Relaxed);
    wake.sort();
    f.sync_wake_p50_ms = percentile_ms(&wake, 0.50);
    f.sync_wake_p99_ms = percentile_ms(&wake, 0.99);

    // The same in a new room of two whose waiting member has nothing unread: separates
    // the wake-up itself from the cost of a big, busy room.
    progress("sync wake latency in a small, quiet room");
    let sender = clients.get(2)?;
    let small = sender
        .create_room(json!({"preset": "private_chat"}))
        .await?;
    let quiet = accounts.session(super::CONCURRENCY + 2).await?;
    if quiet.user_id != sender.user_id {
        sender.invite(&small, &quiet.user_id).await?;
        quiet.join(&small, None).await?;
    }
    let mut wake = wake_latency(&sender, &quiet, &small, sizes.wake_samples).await?;
    messages.fetch_add(sizes.wake_samples as u64, Ordering::Relaxed);
    wake.sort();
    f.sync_wake_small_room_p50_ms = percentile_ms(&wake, 0.50);

    progress(&format!(
        "initial sync: filling {} rooms with {} messages each",
        sizes.rooms, sizes.messages_per_room
    ));
    let reader = accounts.session(super::CONCURRENCY + 1).await?;
    (f.initial_sync_ms, f.initial_sync_same_device_ms) =
        initial_sync(accounts, &reader, sizes, messages).await?;
    progress(&format!(
        "initial sync: {} rooms in all, the new ones with {} messages each",
        sizes.large_rooms, sizes.large_messages_per_room
    ));
    f.initial_sync_1000_rooms_ms = large_initial_sync(accounts, &reader, sizes, messages).await?;
    Ok(f)
}

/// Sessions created once per run (registration hashes a password: slow on purpose).
struct Clients(Vec<Arc<Client>>);

impl Clients {
    async fn new(accounts: &Accounts, n: usize) -> anyhow::Result<Clients> {
        let mut all = Vec::with_capacity(n);
        for i in 0..n {
            all.push(accounts.session(i).await?);
        }
        Ok(Clients(all))
    }

    fn get(&self, i: usize) -> anyhow::Result<Arc<Client>> {
        self.0.get(i).cloned().context("no such bench client")
    }
}

async fn join_all(mut tasks: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    while let Some(result) = tasks.join_next().await {
        result.context("a bench task panicked")??;
    }
    Ok(())
}

/// Every (client, room) sends `per_client` messages at the same time; total sends/s.
async fn concurrent_sends(
    pairs: &[(Arc<Client>, String)],
    per_client: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for (i, (c, room)) in pairs.iter().enumerate() {
        let c = c.clone();
        let room = room.clone();
        tasks.spawn(async move {
            for n in 0..per_client {
                c.send(&room, &format!("client {i} message {n}")).await?;
            }
            Ok(())
        });
    }
    join_all(tasks).await?;
    Ok(per_s(pairs.len() * per_client, started.elapsed()))
}

/// Whether a sync response carries `event_id` in the timeline of `room`.
fn has_event(sync: &Value, room: &str, event_id: &str) -> bool {
    sync["rooms"]["join"][room]["timeline"]["events"]
        .as_array()
        .is_some_and(|events| events.iter().any(|e| e["event_id"] == event_id))
}

fn next_batch(sync: &Value) -> anyhow::Result<String> {
    Ok(sync["next_batch"]
        .as_str()
        .with_context(|| format!("sync without next_batch: {sync}"))?
        .to_owned())
}

/// `samples` times: `waiter` has a `/sync?since=…&timeout=30000` parked, `sender` sends
/// to `room`; the time from the start of the send to the return of the sync carrying the
/// event. Used on one server (sync wake) and across two (federation propagation).
pub async fn wake_latency(
    sender: &Arc<Client>,
    waiter: &Arc<Client>,
    room: &str,
    samples: usize,
) -> anyhow::Result<Vec<Duration>> {
    let mut since = next_batch(&waiter.sync(None, 0, Some(SMALL_SYNC)).await?)?;
    let mut out = Vec::with_capacity(samples);
    for i in 0..samples {
        let w = waiter.clone();
        let from = since.clone();
        let parked = tokio::spawn(async move {
            let sync = w.sync(Some(&from), LONG_POLL_MS, Some(SMALL_SYNC)).await;
            (sync, Instant::now())
        });
        tokio::time::sleep(PARK).await;
        let sent = Instant::now();
        let event_id = sender.send(room, &format!("wake {i}")).await?;
        let (mut sync, mut returned) = parked.await.context("the waiting /sync panicked")?;
        // Woken by something else (a receipt, a membership): keep waiting for the event.
        let mut rounds = 0;
        loop {
            let body = sync?;
            since = next_batch(&body)?;
            if has_event(&body, room, &event_id) {
                break;
            }
            rounds += 1;
            if rounds > 20 {
                bail!("{} never saw event {event_id} in /sync", waiter.user_id);
            }
            sync = waiter
                .sync(Some(&since), LONG_POLL_MS, Some(SMALL_SYNC))
                .await;
            returned = Instant::now();
        }
        out.push(returned.duration_since(sent));
    }
    Ok(out)
}

/// Create `count` rooms of `reader`'s and send `messages` messages in each (10 rooms at
/// a time).
async fn fill_rooms(
    reader: &Arc<Client>,
    count: usize,
    messages: usize,
) -> anyhow::Result<Vec<String>> {
    let mut rooms = Vec::with_capacity(count);
    for _ in 0..count {
        rooms.push(
            reader
                .create_room(json!({"preset": "private_chat"}))
                .await?,
        );
    }
    for chunk in rooms.chunks(super::CONCURRENCY) {
        let mut tasks = JoinSet::new();
        for room in chunk {
            let c = reader.clone();
            let room = room.clone();
            tasks.spawn(async move {
                for i in 0..messages {
                    c.send(&room, &format!("history {i}")).await?;
                }
                Ok(())
            });
        }
        join_all(tasks).await?;
    }
    Ok(rooms)
}

/// `GET /sync` without `since` and without a filter from a new device of `user` (a
/// fresh login, not timed): how long it took, checking it lists at least `rooms` rooms.
async fn timed_initial_sync(
    accounts: &Accounts,
    user: usize,
    rooms: usize,
) -> anyhow::Result<Duration> {
    let device = accounts.new_device(user).await?;
    let t = Instant::now();
    let sync = device.sync(None, 0, None).await?;
    let took = t.elapsed();
    let joined = sync["rooms"]["join"].as_object().map_or(0, |j| j.len());
    if joined < rooms {
        bail!("initial /sync lists {joined} joined rooms, expected at least {rooms}");
    }
    Ok(took)
}

/// Bring the reader (who has `rooms` rooms already) to `large_rooms` rooms, the new
/// ones with `large_messages_per_room` messages each, then time an initial sync from a
/// new device: the median of 3, in milliseconds.
async fn large_initial_sync(
    accounts: &Accounts,
    reader: &Arc<Client>,
    sizes: &Sizes,
    messages: &AtomicU64,
) -> anyhow::Result<f64> {
    let more = sizes.large_rooms.saturating_sub(sizes.rooms);
    fill_rooms(reader, more, sizes.large_messages_per_room).await?;
    messages.fetch_add(
        (more * sizes.large_messages_per_room) as u64,
        Ordering::Relaxed,
    );
    let mut times = Vec::new();
    for _ in 0..3 {
        times.push(timed_initial_sync(accounts, super::CONCURRENCY + 1, sizes.large_rooms).await?);
    }
    times.sort();
    Ok(percentile_ms(&times, 0.5))
}

/// Fill `rooms` × `messages_per_room` (10 rooms at a time), then time `GET /sync` without
/// `since` and without a filter (the server's default timeline limit) both ways: from a
/// new device each time (a fresh login, not timed), and repeated from the same device
/// with nothing changed in between (what a server may answer from a cache; that
/// device's first initial sync is not timed). The median of 3 each, in milliseconds:
/// (new device, same device again).
async fn initial_sync(
    accounts: &Accounts,
    reader: &Arc<Client>,
    sizes: &Sizes,
    messages: &AtomicU64,
) -> anyhow::Result<(f64, f64)> {
    fill_rooms(reader, sizes.rooms, sizes.messages_per_room).await?;
    messages.fetch_add(
        (sizes.rooms * sizes.messages_per_room) as u64,
        Ordering::Relaxed,
    );
    let timed = |device: Arc<Client>| async move {
        let t = Instant::now();
        let sync = device.sync(None, 0, None).await?;
        let took = t.elapsed();
        let joined = sync["rooms"]["join"].as_object().map_or(0, |j| j.len());
        if joined < sizes.rooms {
            bail!(
                "initial /sync lists {joined} joined rooms, expected at least {}",
                sizes.rooms
            );
        }
        anyhow::Ok(took)
    };
    let mut new_device = Vec::new();
    for _ in 0..3 {
        new_device.push(timed_initial_sync(accounts, super::CONCURRENCY + 1, sizes.rooms).await?);
    }
    // The reader's own device: once untimed (its first initial sync), then 3 more.
    timed(reader.clone()).await?;
    let mut same_device = Vec::new();
    for _ in 0..3 {
        same_device.push(timed(reader.clone()).await?);
    }
    new_device.sort();
    same_device.sort();
    Ok((
        percentile_ms(&new_device, 0.5),
        percentile_ms(&same_device, 0.5),
    ))
}
