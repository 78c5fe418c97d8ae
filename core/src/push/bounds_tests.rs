//! The bounds on notification rows: database growth per message in rooms of 60 and 2
//! local members, the per-room cap, and unread counts across it.

use std::sync::Arc;

use serde_json::json;

use crate::events::NewEvent;
use crate::rooms::{CreateRoom, append_event, create_room};
use crate::server::Server;
use crate::storage::{
    self, HIGHLIGHT_EVENTS_KEPT, NOTIFICATION_SLACK, NOTIFIED_EVENTS_PER_ROOM, Receipt,
    next_stream_position,
};
use crate::test_support::{ev, message};
use crate::{Config, Node};

/// A node with one public room whose members are all local users.
struct Fixture {
    node: Node,
    server: Arc<Server>,
    room: String,
    members: Vec<String>,
    sent: usize,
}

impl Fixture {
    async fn new(dir: &std::path::Path, members: usize) -> Fixture {
        let mut config = Config::new(dir);
        config.client_addr = "127.0.0.1:0".parse().expect("addr");
        let node = Node::start(config).await.expect("start");
        let server = node.server().clone();
        let members: Vec<String> = (0..members)
            .map(|i| server.user_id(&format!("member{i}")))
            .collect();
        server
            .write(|tx| {
                for u in &members {
                    storage::create_user(tx, u, None, false, "")?;
                }
                Ok(())
            })
            .expect("users");
        let room = server
            .write(|tx| {
                let req = CreateRoom {
                    preset: Some("public_chat".into()),
                    ..Default::default()
                };
                create_room(tx, &server, &members[0], req)
            })
            .expect("create");
        for u in &members[1..] {
            let join = NewEvent {
                kind: "m.room.member".into(),
                state_key: Some(u.clone()),
                content: json!({"membership": "join"}),
                sender: u.clone(),
                redacts: None,
            };
            server
                .write(|tx| append_event(tx, &server, &room, join, None))
                .expect("join");
        }
        Fixture {
            node,
            server,
            room,
            members,
            sent: 0,
        }
    }

    /// Send a message (as a client would, with a transaction id), from the members in
    /// turn; returns its event id.
    fn send_from(&mut self, sender: usize, body: &str) -> String {
        self.sent += 1;
        let ev = NewEvent {
            kind: "m.room.message".into(),
            state_key: None,
            content: json!({"msgtype": "m.text", "body": body}),
            sender: self.members[sender].clone(),
            redacts: None,
        };
        let txn = format!("txn{}", self.sent);
        self.server
            .write(|tx| append_event(tx, &self.server, &self.room, ev, Some(("DEVICE", &txn))))
            .expect("send")
            .event_id
    }

    fn send(&mut self, body: &str) -> String {
        let sender = self.sent % self.members.len();
        self.send_from(sender, body)
    }

    fn read(&self, user: &str, event_id: &str) {
        let r = Receipt {
            receipt_type: "m.read".into(),
            user_id: user.into(),
            thread_id: String::new(),
            event_id: event_id.into(),
            ts: 0,
        };
        self.server
            .write(|tx| {
                let pos = next_stream_position(tx)?;
                storage::set_receipt(tx, &self.room, &r, pos)
            })
            .expect("receipt");
    }

    fn counts(&self, user: &str) -> (i64, i64) {
        self.server
            .db
            .read(|c| storage::unread_counts(c, &self.room, user))
            .expect("counts")
    }

    /// The user's badge: unread notifications across their joined rooms.
    fn badge(&self, user: &str) -> i64 {
        self.server
            .db
            .read(|c| storage::total_unread(c, user))
            .expect("badge")
    }

    /// An event's stream position.
    fn position(&self, event_id: &str) -> i64 {
        self.server
            .db
            .read(|c| storage::get_event(c, event_id))
            .expect("get")
            .expect("event")
            .stream_ordering
    }

    fn rows(&self, user: &str) -> i64 {
        self.server
            .db
            .read(|c| storage::notification_rows(c, user))
            .expect("rows")
    }

    /// The database's size, with every message so far in the search index (which the
    /// indexer fills shortly after the commits).
    fn bytes(&self) -> i64 {
        crate::search::catch_up(&self.server).expect("search index");
        self.server.db.size_bytes().expect("size")
    }

    fn tables(&self) -> Vec<(String, i64)> {
        crate::search::catch_up(&self.server).expect("search index");
        self.server.db.read(storage::table_sizes).expect("dbstat")
    }

    fn notifications(&self, user: &str, from: Option<i64>, only_highlight: bool) -> Vec<i64> {
        self.server
            .db
            .read_tx(|c| super::notifications(c, user, from, 100, only_highlight))
            .expect("notifications")
            .items
            .iter()
            .map(|(row, _)| row.stream_ordering)
            .collect()
    }
}

/// What each table grew by between two `dbstat` snapshots, per message, largest first.
fn growth_per_message(before: &[(String, i64)], after: &[(String, i64)], n: usize) -> String {
    let mut rows: Vec<(String, f64)> = after
        .iter()
        .map(|(name, bytes)| {
            let was = before
                .iter()
                .find(|(b, _)| b == name)
                .map_or(0, |(_, v)| *v);
            (name.clone(), (bytes - was) as f64 / n as f64)
        })
        .filter(|(_, per)| *per != 0.0)
        .collect();
    rows.sort_by(|a, b| b.1.total_cmp(&a.1));
    rows.iter()
        .map(|(name, per)| format!("| {name} | {per:.0} |\n"))
        .collect()
}

/// Bytes per message a set of tables grew by between two `dbstat` snapshots.
fn tables_growth(before: &[(String, i64)], after: &[(String, i64)], tables: &[&str]) -> i64 {
    let sum = |snapshot: &[(String, i64)]| -> i64 {
        snapshot
            .iter()
            .filter(|(name, _)| tables.contains(&name.as_str()))
            .map(|(_, bytes)| bytes)
            .sum()
    };
    sum(after) - sum(before)
}

/// The tables push notifications and unread counts live in.
const PUSH_TABLES: &[&str] = &[
    "push_notifications",
    "push_notification_rooms",
    "unread_counts",
];

/// Send `warm_up` messages, then `measured` more, nobody reading (the most rows a
/// room's members can keep); returns (all bytes, push tables' bytes) per message over
/// the measured ones, and prints the figures with the per-table costs.
async fn measure(members: usize, warm_up: usize, measured: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), members).await;
    let (start_bytes, start_tables) = (f.bytes(), f.tables());
    for i in 0..warm_up {
        f.send(&format!(
            "warm-up message number {i}, with some ordinary words"
        ));
    }
    let (warm_bytes, warm_tables) = (f.bytes(), f.tables());
    for i in 0..measured {
        f.send(&format!(
            "measured message number {i}, with some ordinary words"
        ));
    }
    let (end_bytes, end_tables) = (f.bytes(), f.tables());
    let cold = (end_bytes - start_bytes) as f64 / (warm_up + measured) as f64;
    let steady = (end_bytes - warm_bytes) as f64 / measured as f64;
    let push = tables_growth(&warm_tables, &end_tables, PUSH_TABLES) as f64 / measured as f64;
    eprintln!(
        "{members} members: {cold:.0} B/message over all {} messages, \
         {steady:.0} B/message over the last {measured} (push tables {push:.0})",
        warm_up + measured
    );
    eprintln!(
        "per table, all messages:\n{}",
        growth_per_message(&start_tables, &end_tables, warm_up + measured)
    );
    eprintln!(
        "per table, last {measured}:\n{}",
        growth_per_message(&warm_tables, &end_tables, measured)
    );
    for m in &f.members {
        assert!(f.rows(m) <= NOTIFIED_EVENTS_PER_ROOM + NOTIFICATION_SLACK);
    }
    f.node.shutdown().await.expect("shutdown");
    (steady, push)
}

/// Once every member holds a full cap of rows, a message costs its own storage only:
/// under 2 KiB in a room of 60 local members, the push tables next to nothing.
#[tokio::test]
async fn storage_per_message_in_a_60_member_room() {
    let (per_message, push) = measure(60, 200, 500).await;
    assert!(per_message <= 2048.0, "{per_message:.0} bytes per message");
    assert!(push <= 32.0, "push tables: {push:.0} bytes per message");
}

/// In a room of two a message costs at most 1.5 KiB (about 1,400 bytes since schema
/// 24): the event row (the signed PDU, ~730 bytes of JSON, with its 64-character server
/// name in every id) and its four indexes are ~1,300 bytes of it, the push tables next
/// to nothing.
#[tokio::test]
async fn storage_per_message_in_a_2_member_room() {
    // Whole trim cycles (a trim every 26 notifications once the cap is reached), so
    // the rows are as many at the end as at the start of the measured messages.
    let (per_message, push) = measure(2, 300, 520).await;
    assert!(per_message <= 1536.0, "{per_message:.0} bytes per message");
    assert!(push <= 32.0, "push tables: {push:.0} bytes per message");
}

/// A user who never reads keeps at most the room's cap (plus the slack) of rows, and
/// their unread count still counts every message; a receipt after the dropped rows makes
/// it exact, and one on the newest message clears it. Reading drops no rows.
#[tokio::test]
async fn a_user_who_never_reads_keeps_the_cap_and_exact_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 2).await;
    let bob = f.members[1].clone();
    let mut sent = Vec::new();
    for i in 0..300 {
        sent.push(f.send_from(0, &format!("message {i}")));
    }
    assert!(f.rows(&bob) <= NOTIFIED_EVENTS_PER_ROOM + NOTIFICATION_SLACK);
    assert!(f.rows(&bob) >= NOTIFIED_EVENTS_PER_ROOM);
    assert_eq!(f.counts(&bob), (300, 0));
    // The newest rows are all still there, so a receipt among them counts exactly.
    f.read(&bob, &sent[289]);
    assert_eq!(f.counts(&bob), (10, 0));
    let rows = f.rows(&bob);
    f.read(&bob, &sent[299]);
    assert_eq!(f.counts(&bob), (0, 0));
    assert_eq!(f.rows(&bob), rows);
    // Counting goes on as before.
    f.send_from(0, "one more");
    assert_eq!(f.counts(&bob), (1, 0));
    f.node.shutdown().await.expect("shutdown");
}

/// The cap is per room: a busy room's notifications never push out a quiet room's, and
/// `GET /notifications` lists both rooms' rows newest first.
#[tokio::test]
async fn a_busy_room_leaves_a_quiet_rooms_notifications() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 2).await;
    let (alice, bob) = (f.members[0].clone(), f.members[1].clone());
    let quiet = f
        .server
        .write(|tx| {
            let req = CreateRoom {
                preset: Some("public_chat".into()),
                ..Default::default()
            };
            create_room(tx, &f.server, &alice, req)
        })
        .expect("create");
    let server = f.server.clone();
    let send = |room: &str, sender: &str, body: &str| {
        server
            .write(|tx| append_event(tx, &server, room, message(sender, body), None))
            .expect("send")
            .pos
    };
    let join = ev(
        &bob,
        "m.room.member",
        Some(&bob),
        json!({"membership": "join"}),
    );
    f.server
        .write(|tx| append_event(tx, &f.server, &quiet, join, None))
        .expect("join");
    let early = send(&quiet, &alice, "before the storm");
    for i in 0..200 {
        f.send_from(0, &format!("busy {i}"));
    }
    let late = send(&quiet, &alice, "after the storm");
    let busy_rows = f.rows(&bob) - 2;
    assert!(busy_rows <= NOTIFIED_EVENTS_PER_ROOM + NOTIFICATION_SLACK);
    let listed = f.notifications(&bob, None, false);
    assert_eq!(listed.len() as i64, busy_rows + 2, "{listed:?}");
    assert!(
        listed.windows(2).all(|w| w[0] > w[1]),
        "newest first: {listed:?}"
    );
    assert_eq!((listed[0], listed[listed.len() - 1]), (late, early));
    // Paging from the busy room's oldest kept row reaches the quiet room's first.
    assert_eq!(
        f.notifications(&bob, Some(listed[listed.len() - 2]), false),
        [early]
    );
    f.node.shutdown().await.expect("shutdown");
}

/// A receipt on a message whose row the cap already dropped cannot tell how many of the
/// dropped rows it covers: the count then keeps them all (never fewer than the truth),
/// and is exact again once a receipt passes them.
#[tokio::test]
async fn a_receipt_inside_dropped_rows_never_undercounts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 2).await;
    let bob = f.members[1].clone();
    let mut sent = Vec::new();
    for i in 0..300 {
        sent.push(f.send_from(0, &format!("message {i}")));
    }
    f.read(&bob, &sent[4]);
    let (notifications, _) = f.counts(&bob);
    assert!((295..=300).contains(&notifications), "{notifications}");
    f.read(&bob, &sent[295]);
    assert_eq!(f.counts(&bob), (4, 0));
    f.node.shutdown().await.expect("shutdown");
}

/// Highlights are listed with `only=highlight`; reading keeps the rows (`GET
/// /notifications` marks them read); pages go newest first.
#[tokio::test]
async fn highlights_are_listed_and_notifications_page() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 2).await;
    let bob = f.members[1].clone();
    let mention = f.send_from(0, &format!("hello {bob}"));
    let mut last = String::new();
    for i in 0..40 {
        last = f.send_from(0, &format!("message {i}"));
    }
    assert_eq!(f.counts(&bob), (41, 1));
    f.read(&bob, &last);
    assert_eq!(f.counts(&bob), (0, 0));
    let all = f.notifications(&bob, None, false);
    assert_eq!(all.len(), 41, "{all:?}");
    assert!(all.windows(2).all(|w| w[0] > w[1]), "newest first: {all:?}");
    let highlights = f.notifications(&bob, None, true);
    assert_eq!(highlights.len(), 1);
    assert_eq!(highlights[0], f.position(&mention));
    // Paging: everything before the third newest is the rest of the list.
    let rest = f.notifications(&bob, Some(all[2]), false);
    assert_eq!(rest, all[3..]);
    f.node.shutdown().await.expect("shutdown");
}

/// Unread counts are the stored counts plus the rows not yet folded into them: exact
/// after every message across folds and trims, with receipts landing before, inside and
/// after the unfolded rows, and the badge (`total_unread`) the same sum.
#[tokio::test]
async fn unread_counts_stay_exact_across_folds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 3).await;
    let (bob, carol) = (f.members[1].clone(), f.members[2].clone());
    let mut sent = Vec::new();
    let mut read = 0;
    let mut highlights = 0;
    for i in 0..200 {
        let body = if i % 37 == 5 {
            format!("hey {bob}")
        } else {
            format!("message {i}")
        };
        sent.push(f.send_from(0, &body));
        if i % 37 == 5 {
            highlights += 1;
        }
        // Receipts now and then, some on a message a few back.
        if i % 23 == 22 {
            read = i - 3;
            f.read(&bob, &sent[read]);
            highlights = (read + 1..=i).filter(|j| j % 37 == 5).count();
        }
        let unread = if read == 0 && i < 22 { i + 1 } else { i - read };
        assert_eq!(
            f.counts(&bob),
            (unread as i64, highlights as i64),
            "bob after message {i}"
        );
        assert_eq!(f.badge(&bob), unread as i64, "bob's badge after {i}");
        // Carol never reads.
        assert_eq!(f.counts(&carol).0, i as i64 + 1, "carol after message {i}");
    }
    f.node.shutdown().await.expect("shutdown");
}

/// A mention stays listed under `only=highlight` after the room's plain notifications
/// moved past the cap, and only the newest [`HIGHLIGHT_EVENTS_KEPT`] such mentions do.
#[tokio::test]
async fn mentions_outlive_the_cap_up_to_their_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 3).await;
    let (bob, carol) = (f.members[1].clone(), f.members[2].clone());
    let mut mentions = Vec::new();
    for i in 0..(HIGHLIGHT_EVENTS_KEPT + 5) {
        mentions.push(f.send_from(0, &format!("{bob}, look at {i}")));
    }
    for i in 0..200 {
        f.send_from(0, &format!("plain {i}"));
    }
    let newest: Vec<i64> = mentions
        .iter()
        .rev()
        .take(HIGHLIGHT_EVENTS_KEPT as usize)
        .map(|id| f.position(id))
        .collect();
    assert_eq!(f.notifications(&bob, None, true), newest);
    // Carol was not mentioned: the mentions' rows of hers went with the cap.
    let carol_rows = f.rows(&carol);
    assert!(
        carol_rows <= NOTIFIED_EVENTS_PER_ROOM + NOTIFICATION_SLACK,
        "{carol_rows}"
    );
    assert_eq!(
        f.counts(&bob),
        (HIGHLIGHT_EVENTS_KEPT + 205, HIGHLIGHT_EVENTS_KEPT + 5)
    );
    f.node.shutdown().await.expect("shutdown");
}

/// Another server's user's read receipt counts nothing here: no unread-count row is made
/// for them (only this server's users are notified).
#[tokio::test]
async fn a_remote_users_receipt_makes_no_counts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 2).await;
    let last = f.send_from(0, "hello");
    let remote = "@someone:elsewhere.example";
    f.read(remote, &last);
    f.read(&f.members[1].clone(), &last);
    let rows: Vec<String> = f
        .server
        .db
        .read(|c| {
            let mut st = c.prepare("SELECT user_id FROM unread_counts")?;
            let rows = st.query_map([], |r| r.get(0))?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
        .expect("rows");
    assert_eq!(rows, [f.members[1].clone()]);
    f.node.shutdown().await.expect("shutdown");
}

/// In a room whose unfolded rows are more than a read walks (30 members, 24 messages:
/// 696 rows), counts come from stepping from event to event, from the start and from a
/// receipt.
#[tokio::test]
async fn counts_in_a_large_room_step_through_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut f = Fixture::new(dir.path(), 30).await;
    let (bob, carol) = (f.members[1].clone(), f.members[2].clone());
    let mut sent = Vec::new();
    for i in 0..24 {
        let body = if i == 7 {
            format!("hey {bob}")
        } else {
            format!("message {i}")
        };
        sent.push(f.send_from(0, &body));
    }
    assert_eq!(f.counts(&bob), (24, 1));
    assert_eq!(f.counts(&carol), (24, 0));
    // A receipt inside the unfolded rows, with 20 events (580 rows) after it: a recount
    // by stepping too.
    f.read(&bob, &sent[3]);
    assert_eq!(f.counts(&bob), (20, 1));
    assert_eq!(f.badge(&carol), 24);
    // The 25th folds them; the counts stay.
    f.send_from(0, "the twenty-fifth");
    assert_eq!(f.counts(&bob), (21, 1));
    assert_eq!(f.counts(&carol), (25, 0));
    f.node.shutdown().await.expect("shutdown");
}
