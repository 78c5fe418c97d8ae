//! Versioned schema migrations, tracked with `PRAGMA user_version`.
//!
//! Each entry moves the schema from version `i` to `i + 1`. A database whose version is
//! higher than this build knows is refused, never altered.

use rusqlite::Connection;

use crate::error::StartError;

const MIGRATIONS: &[&str] = &[
    // 1: the foundation.
    r#"
    CREATE TABLE stream_sequence (pos INTEGER NOT NULL);
    INSERT INTO stream_sequence (pos) VALUES (0);

    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        password_hash TEXT,
        displayname TEXT,
        avatar_url TEXT,
        is_admin INTEGER NOT NULL DEFAULT 0,
        deactivated INTEGER NOT NULL DEFAULT 0,
        created_ts INTEGER NOT NULL
    );
    CREATE TABLE devices (
        user_id TEXT NOT NULL REFERENCES users(user_id),
        device_id TEXT NOT NULL,
        display_name TEXT,
        last_seen_ts INTEGER,
        last_seen_ip TEXT,
        PRIMARY KEY (user_id, device_id)
    );
    CREATE TABLE access_tokens (
        token TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE TABLE registration_tokens_used (token TEXT PRIMARY KEY, uses INTEGER NOT NULL);

    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY,
        room_version TEXT NOT NULL,
        creator TEXT NOT NULL,
        is_public INTEGER NOT NULL DEFAULT 0,
        current_state_group INTEGER,
        created_ts INTEGER NOT NULL
    );
    CREATE TABLE events (
        stream_ordering INTEGER PRIMARY KEY,
        event_id TEXT NOT NULL UNIQUE,
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT,
        sender TEXT NOT NULL,
        depth INTEGER NOT NULL,
        origin_server_ts INTEGER NOT NULL,
        json TEXT NOT NULL,
        unsigned TEXT,
        redacted_by TEXT,
        state_group_before INTEGER,
        txn_device TEXT,
        txn_id TEXT
    );
    CREATE INDEX events_room_stream ON events(room_id, stream_ordering);
    CREATE TABLE event_txns (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id, txn_id)
    );
    CREATE TABLE forward_extremities (
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (room_id, event_id)
    );
    CREATE TABLE state_groups (
        id INTEGER PRIMARY KEY,
        room_id TEXT NOT NULL,
        prev_group INTEGER,
        chain_len INTEGER NOT NULL
    );
    CREATE TABLE state_group_entries (
        state_group INTEGER NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (state_group, type, state_key)
    );
    CREATE TABLE current_state (
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (room_id, type, state_key)
    );
    CREATE TABLE memberships (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        membership TEXT NOT NULL,
        event_id TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        forgotten INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (room_id, user_id)
    );
    CREATE INDEX memberships_user ON memberships(user_id, stream_ordering);

    CREATE TABLE account_data (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        content TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        PRIMARY KEY (user_id, room_id, type)
    );
    CREATE INDEX account_data_stream ON account_data(user_id, stream_ordering);
    CREATE TABLE receipts (
        room_id TEXT NOT NULL,
        receipt_type TEXT NOT NULL,
        user_id TEXT NOT NULL,
        thread_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        ts INTEGER NOT NULL,
        stream_ordering INTEGER NOT NULL,
        PRIMARY KEY (room_id, receipt_type, user_id, thread_id)
    );
    CREATE INDEX receipts_stream ON receipts(room_id, stream_ordering);
    CREATE TABLE filters (
        user_id TEXT NOT NULL,
        filter_id INTEGER NOT NULL,
        json TEXT NOT NULL,
        PRIMARY KEY (user_id, filter_id)
    );
    CREATE TABLE room_aliases (
        alias TEXT PRIMARY KEY,
        room_id TEXT NOT NULL,
        creator TEXT NOT NULL
    );
    CREATE TABLE notification_counts (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        notifications INTEGER NOT NULL DEFAULT 0,
        highlights INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, room_id)
    );
    "#,
    // 2: end-to-end encryption. Device-scoped rows reference `devices` with ON DELETE
    // CASCADE, so removing a device (logout, delete, password change) can never leave its
    // keys or pending to-device messages behind.
    r#"
    CREATE TABLE e2e_device_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        key_json TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id),
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE TABLE e2e_one_time_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_json TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id, algorithm, key_id),
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE TABLE e2e_fallback_keys (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        algorithm TEXT NOT NULL,
        key_id TEXT NOT NULL,
        key_json TEXT NOT NULL,
        used INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, device_id, algorithm),
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE TABLE e2e_cross_signing_keys (
        user_id TEXT NOT NULL,
        key_type TEXT NOT NULL,
        public_key TEXT NOT NULL,
        key_json TEXT NOT NULL,
        PRIMARY KEY (user_id, key_type)
    );
    CREATE TABLE e2e_signatures (
        target_user_id TEXT NOT NULL,
        target_key_id TEXT NOT NULL,
        signer_user_id TEXT NOT NULL,
        signer_key_id TEXT NOT NULL,
        signature TEXT NOT NULL,
        PRIMARY KEY (target_user_id, target_key_id, signer_user_id, signer_key_id)
    );
    CREATE TABLE device_list_changes (
        stream_ordering INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL
    );
    CREATE INDEX device_list_changes_user ON device_list_changes(user_id, stream_ordering);
    CREATE TABLE to_device_inbox (
        stream_ordering INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        type TEXT NOT NULL,
        content TEXT NOT NULL,
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE INDEX to_device_inbox_device ON to_device_inbox(user_id, device_id, stream_ordering);
    CREATE TABLE to_device_txns (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        PRIMARY KEY (user_id, device_id, txn_id),
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE TABLE room_key_backup_versions (
        user_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        algorithm TEXT NOT NULL,
        auth_data TEXT NOT NULL,
        etag INTEGER NOT NULL DEFAULT 0,
        deleted INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (user_id, version)
    );
    CREATE TABLE room_key_backups (
        user_id TEXT NOT NULL,
        version INTEGER NOT NULL,
        room_id TEXT NOT NULL,
        session_id TEXT NOT NULL,
        first_message_index INTEGER NOT NULL,
        forwarded_count INTEGER NOT NULL,
        is_verified INTEGER NOT NULL,
        session_data TEXT NOT NULL,
        PRIMARY KEY (user_id, version, room_id, session_id)
    );
    "#,
    // 3: the P2P address book: every address a peer was seen at, and when.
    r#"
    CREATE TABLE peer_addresses (
        peer_id TEXT NOT NULL,
        address TEXT NOT NULL,
        source TEXT NOT NULL,
        last_seen_ts INTEGER NOT NULL,
        PRIMARY KEY (peer_id, address)
    );
    CREATE INDEX peer_addresses_by_time ON peer_addresses(last_seen_ts);
    "#,
    // 4: the media repository. Bytes live on disk by sha256; these rows map media ids
    // (and thumbnail sizes) to them. `sha256` is NULL while an async upload is pending.
    r#"
    CREATE TABLE media (
        media_id TEXT PRIMARY KEY,
        sha256 TEXT,
        content_type TEXT,
        filename TEXT,
        size INTEGER,
        uploader TEXT NOT NULL,
        created_ts INTEGER NOT NULL,
        unused_expires_ts INTEGER
    );
    CREATE INDEX media_by_uploader ON media(uploader, created_ts);
    CREATE TABLE media_thumbnails (
        media_id TEXT NOT NULL REFERENCES media(media_id) ON DELETE CASCADE,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        method TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (media_id, width, height, method)
    );
    "#,
    // 5: push rules. A notification row per (user, event) whose push actions notify;
    // unread counts are the rows after the user's read receipt, so the stand-in
    // `notification_counts` table goes. Rules themselves are account data
    // (`m.push_rules`), which is what clients read in /sync.
    r#"
    CREATE TABLE push_notifications (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        event_id TEXT NOT NULL,
        actions TEXT NOT NULL,
        highlight INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        PRIMARY KEY (user_id, stream_ordering)
    );
    CREATE INDEX push_notifications_by_room ON push_notifications(user_id, room_id, stream_ordering);
    CREATE TABLE pushers (
        user_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        pushkey TEXT NOT NULL,
        pusher TEXT NOT NULL,
        created_ts INTEGER NOT NULL,
        PRIMARY KEY (user_id, app_id, pushkey)
    );
    CREATE INDEX pushers_by_key ON pushers(app_id, pushkey);
    DROP TABLE notification_counts;
    "#,
    // 6: events received from other servers. `status` says whether an event is in the
    // room's timeline (`timeline`, the only status clients ever see), or stored for
    // other reasons: `outlier` (auth event or an event whose prev_events are unknown),
    // `soft_failed` (passed auth against its own history but not the current state),
    // `rejected` (failed auth; kept so it is never fetched again nor used as an auth
    // event). Non-timeline rows take negative stream positions, so no stream range
    // ever includes them. `state_group_after` is the DAG state after the event (its
    // prev state plus itself); `room_state_group` the room's current state once the
    // event was persisted (what /sync shows at that position, forks resolved).
    r#"
    ALTER TABLE events ADD COLUMN status TEXT NOT NULL DEFAULT 'timeline';
    ALTER TABLE events ADD COLUMN rejection_reason TEXT;
    ALTER TABLE events ADD COLUMN state_group_after INTEGER;
    ALTER TABLE events ADD COLUMN room_state_group INTEGER;
    CREATE INDEX events_room_status_depth ON events(room_id, status, depth);
    "#,
    // 7: the durable federation outbox: one row per PDU or EDU still to deliver to a
    // destination, written in the same transaction as what it carries.
    r#"
    CREATE TABLE federation_outbox (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        destination TEXT NOT NULL,
        kind TEXT NOT NULL CHECK (kind IN ('pdu', 'edu')),
        payload TEXT NOT NULL,
        created_ts INTEGER NOT NULL
    );
    CREATE INDEX federation_outbox_by_destination ON federation_outbox(destination, id);
    "#,
    // 8: inbound federation transactions already processed, so a retried transaction
    // (same origin and id) gets the same answer without being applied twice.
    r#"
    CREATE TABLE federation_inbound_txns (
        origin TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        response TEXT NOT NULL,
        received_ts INTEGER NOT NULL,
        PRIMARY KEY (origin, txn_id)
    );
    CREATE INDEX federation_inbound_txns_by_time ON federation_inbound_txns(received_ts);
    "#,
    // 9: the room directory and full-text search. Aliases are looked up by room; the
    // search index is an FTS5 table keyed by the event's stream position (rowid), holding
    // the searchable text of timeline events (`content.body` of `m.room.message`,
    // `content.name` / `content.topic` of `m.room.name` / `m.room.topic`). Events already
    // stored are indexed here; redacted ones are not.
    r#"
    CREATE INDEX room_aliases_room ON room_aliases(room_id);
    CREATE VIRTUAL TABLE event_search USING fts5(
        text,
        key UNINDEXED,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO event_search (rowid, text, key)
        SELECT stream_ordering, json_extract(json, '$.content.body'), 'content.body'
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.message'
          AND json_type(json, '$.content.body') = 'text';
    INSERT INTO event_search (rowid, text, key)
        SELECT stream_ordering, json_extract(json, '$.content.name'), 'content.name'
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.name'
          AND json_type(json, '$.content.name') = 'text';
    INSERT INTO event_search (rowid, text, key)
        SELECT stream_ordering, json_extract(json, '$.content.topic'), 'content.topic'
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.topic'
          AND json_type(json, '$.content.topic') = 'text';
    "#,
    // 10: to-device messages received from other servers, by (origin, sender,
    // message_id), so a redelivered `m.direct_to_device` EDU is not delivered twice.
    r#"
    CREATE TABLE federation_to_device_seen (
        origin TEXT NOT NULL,
        sender TEXT NOT NULL,
        message_id TEXT NOT NULL,
        received_ts INTEGER NOT NULL,
        PRIMARY KEY (origin, sender, message_id)
    );
    CREATE INDEX federation_to_device_seen_by_time ON federation_to_device_seen(received_ts);
    "#,
    // 11: unread counts kept per (user, room) instead of counted on every /sync: a new
    // notification adds one, a read receipt recounts what is still after it.
    r#"
    CREATE TABLE unread_counts (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        notifications INTEGER NOT NULL,
        highlights INTEGER NOT NULL,
        PRIMARY KEY (user_id, room_id)
    ) WITHOUT ROWID;
    INSERT INTO unread_counts (user_id, room_id, notifications, highlights)
    SELECT n.user_id, n.room_id, COUNT(*), COALESCE(SUM(n.highlight), 0)
    FROM push_notifications n
    WHERE n.stream_ordering > COALESCE((SELECT MAX(e.stream_ordering) FROM receipts r
             JOIN events e ON e.event_id = r.event_id
             WHERE r.room_id = n.room_id AND r.user_id = n.user_id
               AND r.receipt_type IN ('m.read', 'm.read.private')), 0)
    GROUP BY n.user_id, n.room_id;
    "#,
    // 12: sliding sync sorts rooms by their newest event of a few "bump" types; this
    // index answers "newest event of type T in room R" without walking the room's history.
    r#"
    CREATE INDEX events_room_type_stream ON events(room_id, type, stream_ordering);
    "#,
    // 13: room and account lifecycle. Reports of events and rooms to the server's admins;
    // the `erased` flag of a deactivation that asked for erasure; an index
    // for `timestamp_to_event`, which looks events of a room up by `origin_server_ts`.
    r#"
    CREATE TABLE event_reports (
        id INTEGER PRIMARY KEY,
        received_ts INTEGER NOT NULL,
        room_id TEXT NOT NULL,
        event_id TEXT,
        user_id TEXT NOT NULL,
        reason TEXT,
        score INTEGER
    );
    CREATE INDEX events_room_ts ON events(room_id, origin_server_ts);
    ALTER TABLE users ADD COLUMN erased INTEGER NOT NULL DEFAULT 0;
    "#,
    // 14: event relationships (edits, threads, references, reactions). One row per
    // timeline event whose `content.m.relates_to` has a `rel_type` and an `event_id`,
    // looked up by parent and type (bundled aggregations, `/relations`); `threads` holds
    // each thread root with its newest reply, ordered by activity for `/threads`. Rows of
    // redacted events are deleted (a redacted event relates to nothing). Events already
    // stored are filled in here.
    r#"
    CREATE TABLE event_relations (
        event_id TEXT PRIMARY KEY,
        relates_to_id TEXT NOT NULL,
        rel_type TEXT NOT NULL,
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        type TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL
    );
    CREATE INDEX event_relations_by_type
        ON event_relations(relates_to_id, rel_type, stream_ordering, sender);
    CREATE INDEX event_relations_by_pos ON event_relations(relates_to_id, stream_ordering);
    CREATE TABLE threads (
        room_id TEXT NOT NULL,
        root_id TEXT NOT NULL,
        latest_event_id TEXT NOT NULL,
        latest_pos INTEGER NOT NULL,
        PRIMARY KEY (room_id, root_id)
    );
    CREATE INDEX threads_by_activity ON threads(room_id, latest_pos);
    INSERT INTO event_relations
        (event_id, relates_to_id, rel_type, room_id, sender, type, stream_ordering)
        SELECT event_id,
               json_extract(json, '$.content."m.relates_to".event_id'),
               json_extract(json, '$.content."m.relates_to".rel_type'),
               room_id, sender, type, stream_ordering
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL
          AND json_type(json, '$.content."m.relates_to".event_id') = 'text'
          AND json_type(json, '$.content."m.relates_to".rel_type') = 'text'
          AND json_extract(json, '$.content."m.relates_to".event_id') LIKE '$%'
          AND json_extract(json, '$.content."m.relates_to".event_id') != event_id
          AND length(json_extract(json, '$.content."m.relates_to".event_id')) <= 255
          AND length(json_extract(json, '$.content."m.relates_to".rel_type')) BETWEEN 1 AND 255;
    INSERT INTO threads (room_id, root_id, latest_event_id, latest_pos)
        SELECT room_id, relates_to_id, event_id, MAX(stream_ordering)
        FROM event_relations WHERE rel_type = 'm.thread'
        GROUP BY room_id, relates_to_id;
    "#,
    // 15: the remote device-list cache (device keys and cross-signing keys of users of
    // other servers who share a room with a local user, with the `stream_id` of the last
    // `m.device_list_update` applied; `stale` = re-fetch with `user/devices` before use),
    // and presence (local and remote users; `stream_ordering` orders changes for /sync).
    r#"
    CREATE TABLE remote_device_lists (
        user_id TEXT PRIMARY KEY,
        stream_id INTEGER NOT NULL,
        stale INTEGER NOT NULL DEFAULT 0,
        master_key TEXT,
        self_signing_key TEXT,
        fetched_ts INTEGER NOT NULL
    );
    CREATE TABLE remote_devices (
        user_id TEXT NOT NULL REFERENCES remote_device_lists(user_id) ON DELETE CASCADE,
        device_id TEXT NOT NULL,
        key_json TEXT NOT NULL,
        display_name TEXT,
        PRIMARY KEY (user_id, device_id)
    );
    CREATE TABLE presence (
        user_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        status_msg TEXT,
        last_active_ts INTEGER NOT NULL,
        currently_active INTEGER NOT NULL DEFAULT 0,
        stream_ordering INTEGER NOT NULL
    );
    CREATE INDEX presence_by_stream ON presence(stream_ordering);
    "#,
    // 16: bounded notification rows (see `storage/push.rs` for the policy). Rows become
    // one WITHOUT ROWID b-tree keyed (user, room, position), without the event id (the
    // position names the event) and the timestamp (the event's own is shown); common
    // action sets are stored as a small integer code. Existing rows get the policy
    // applied once here: at most the newest 100 per user, nothing older than 30 days,
    // read rows other than highlights only the newest 10 per room. Unread rows dropped
    // here are remembered in `unread_counts.pruned_*`, so the kept counts do not change.
    // `push_notification_users` counts each user's rows, so the cap costs one upsert.
    // The numbers (100, 10, 30 days) and the action codes must match `storage/push.rs`
    // as it was when this was written.
    r#"
    CREATE TABLE push_notifications_v16 (
        user_id TEXT NOT NULL,
        room_id TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        actions NOT NULL,
        highlight INTEGER NOT NULL,
        PRIMARY KEY (user_id, room_id, stream_ordering)
    ) WITHOUT ROWID;
    CREATE TEMP TABLE push_migrating AS
    SELECT user_id, room_id, stream_ordering, actions, highlight, unread,
           (ROW_NUMBER() OVER newest_of_user <= 100
            AND ts >= CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 2592000000
            AND (unread OR highlight OR ROW_NUMBER() OVER newest_read_of_room <= 10)) AS kept
    FROM (SELECT n.*, n.stream_ordering > COALESCE((SELECT MAX(e.stream_ordering)
                 FROM receipts r JOIN events e ON e.event_id = r.event_id
                 WHERE r.room_id = n.room_id AND r.user_id = n.user_id
                   AND r.receipt_type IN ('m.read', 'm.read.private')), 0) AS unread
          FROM push_notifications n)
    WINDOW newest_of_user AS (PARTITION BY user_id ORDER BY stream_ordering DESC),
           newest_read_of_room AS (PARTITION BY user_id, room_id, unread
                                   ORDER BY stream_ordering DESC);
    INSERT INTO push_notifications_v16 (user_id, room_id, stream_ordering, actions, highlight)
    SELECT user_id, room_id, stream_ordering,
           CASE actions
               WHEN '["notify"]' THEN 0
               WHEN '["notify",{"set_tweak":"sound","value":"default"}]' THEN 1
               WHEN '["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]' THEN 2
               WHEN '["notify",{"set_tweak":"highlight"}]' THEN 3
               WHEN '["notify",{"set_tweak":"sound","value":"ring"}]' THEN 4
               ELSE actions
           END,
           highlight
    FROM push_migrating WHERE kept;
    ALTER TABLE unread_counts ADD COLUMN pruned_notifications INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE unread_counts ADD COLUMN pruned_highlights INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE unread_counts ADD COLUMN pruned_upto INTEGER NOT NULL DEFAULT 0;
    UPDATE unread_counts AS u SET
        pruned_notifications = d.n, pruned_highlights = d.h, pruned_upto = d.top
    FROM (SELECT user_id, room_id, COUNT(*) AS n, COALESCE(SUM(highlight), 0) AS h,
                 MAX(stream_ordering) AS top
          FROM push_migrating WHERE unread AND NOT kept GROUP BY user_id, room_id) AS d
    WHERE u.user_id = d.user_id AND u.room_id = d.room_id;
    DROP TABLE push_migrating;
    DROP TABLE push_notifications;
    ALTER TABLE push_notifications_v16 RENAME TO push_notifications;
    CREATE TABLE push_notification_users (
        user_id TEXT PRIMARY KEY,
        rows INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO push_notification_users (user_id, rows)
    SELECT user_id, COUNT(*) FROM push_notifications GROUP BY user_id;
    "#,
    // 17: less storage per message. Client transaction ids in one WITHOUT ROWID b-tree
    // (it was a table plus the index of its primary key, each holding the user id),
    // naming the event by its stream position instead of its id: about 150 bytes less
    // per message sent. The search index becomes contentless: the text it indexed was
    // a second copy of the event's body, never read back (about 60 bytes); `key` is
    // still stored (`contentless_unindexed`) and rows can still be deleted on redaction
    // (`contentless_delete`). (Recreated under its own name: renaming a contentless
    // FTS5 table left it unwritable.)
    r#"
    CREATE TEMP TABLE search_migrating AS SELECT rowid AS pos, text, key FROM event_search;
    DROP TABLE event_search;
    CREATE VIRTUAL TABLE event_search USING fts5(
        text,
        key UNINDEXED,
        content = '',
        contentless_delete = 1,
        contentless_unindexed = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO event_search (rowid, text, key) SELECT pos, text, key FROM search_migrating;
    DROP TABLE search_migrating;
    CREATE TABLE event_txns_v17 (
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        PRIMARY KEY (user_id, device_id, txn_id)
    ) WITHOUT ROWID;
    INSERT INTO event_txns_v17 (user_id, device_id, txn_id, stream_ordering)
    SELECT t.user_id, t.device_id, t.txn_id, e.stream_ordering
    FROM event_txns t JOIN events e ON e.event_id = t.event_id;
    DROP TABLE event_txns;
    ALTER TABLE event_txns_v17 RENAME TO event_txns;
    "#,
    // 18: backfill (history from before this node joined a room). Per room, the prev
    // events of stored timeline events that this node does not have: where `/messages`
    // asks another server for older events (`/backfill`). `depth` orders them (the
    // child's depth minus one), `via` is the server to ask first (the one a join went
    // through, or the one that served the child). A room with none has its history back
    // to its creation. Backfilled events themselves are ordinary timeline rows in
    // `events`, at positions of their own below every other (see `streams.rs`). Rooms
    // joined over federation before this version get their gaps here: the prev events
    // of timeline events that are not stored with a known state (one pass over the
    // stored events, once).
    r#"
    CREATE TABLE backfill_extremities (
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        depth INTEGER NOT NULL,
        via TEXT,
        PRIMARY KEY (room_id, event_id)
    ) WITHOUT ROWID;
    CREATE INDEX backfill_extremities_depth ON backfill_extremities(room_id, depth);
    INSERT OR IGNORE INTO backfill_extremities (room_id, event_id, depth, via)
    SELECT e.room_id, p.value, e.depth - 1, NULL
    FROM events e, json_each(e.json, '$.prev_events') p
    WHERE e.status = 'timeline' AND json_valid(e.json) AND p.type = 'text'
      AND NOT EXISTS (SELECT 1 FROM events x WHERE x.event_id = p.value
          AND (x.status IN ('timeline', 'soft_failed')
               OR (x.status = 'rejected' AND x.state_group_before IS NOT NULL)));
    "#,
    // 19: the remote media cache: media of other servers fetched over federation,
    // keyed by (origin, media_id), bytes by sha256 in the same store as local media.
    // Bounded by total size, evicted least recently used first (`last_access_ts`);
    // thumbnails made here from a cached original go with it. The sha256 indexes let
    // eviction see cheaply whether any other row still uses a file before removing it.
    r#"
    CREATE TABLE remote_media (
        origin TEXT NOT NULL,
        media_id TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        filename TEXT,
        size INTEGER NOT NULL,
        created_ts INTEGER NOT NULL,
        last_access_ts INTEGER NOT NULL,
        PRIMARY KEY (origin, media_id)
    );
    CREATE INDEX remote_media_by_access ON remote_media(last_access_ts);
    CREATE INDEX remote_media_by_sha256 ON remote_media(sha256);
    CREATE TABLE remote_media_thumbnails (
        origin TEXT NOT NULL,
        media_id TEXT NOT NULL,
        width INTEGER NOT NULL,
        height INTEGER NOT NULL,
        method TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        content_type TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (origin, media_id, width, height, method),
        FOREIGN KEY (origin, media_id) REFERENCES remote_media(origin, media_id)
            ON DELETE CASCADE
    );
    CREATE INDEX remote_media_thumbnails_by_sha256 ON remote_media_thumbnails(sha256);
    CREATE INDEX media_by_sha256 ON media(sha256);
    CREATE INDEX media_thumbnails_by_sha256 ON media_thumbnails(sha256);
    "#,
    // 20: OpenID tokens (Element Call and widgets prove who a user is to a third party,
    // which asks `/federation/v1/openid/userinfo`). An hour each, a few per user.
    r#"
    CREATE TABLE openid_tokens (
        token TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        expires_ts INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX openid_tokens_by_user ON openid_tokens(user_id, expires_ts);
    CREATE INDEX openid_tokens_by_expiry ON openid_tokens(expires_ts);
    "#,
    // 21: the push queue: what each http pusher still has to be sent, one row per
    // (pusher, notification), written in the notification's transaction and deleted once
    // the push gateway took it. Bounded per pusher by rows and age (oldest dropped
    // first); goes with its pusher.
    r#"
    CREATE TABLE push_queue (
        id INTEGER PRIMARY KEY,
        user_id TEXT NOT NULL,
        app_id TEXT NOT NULL,
        pushkey TEXT NOT NULL,
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        actions TEXT NOT NULL,
        created_ts INTEGER NOT NULL,
        FOREIGN KEY (user_id, app_id, pushkey) REFERENCES pushers(user_id, app_id, pushkey)
            ON DELETE CASCADE
    );
    CREATE INDEX push_queue_by_pusher ON push_queue(user_id, app_id, pushkey, id);
    "#,
    // 22: which device set a pusher, so the pusher goes when the device does (a logout,
    // a password change logging out the other devices). Pushers set before this
    // version have none and stay until removed.
    r#"
    ALTER TABLE pushers ADD COLUMN device_id TEXT;
    CREATE INDEX pushers_by_device ON pushers(user_id, device_id);
    "#,
    // 23: less storage per message (the bounded-resources target of 1.5 KiB a message in
    // a room of two). The `(room_id, status, depth)` index held every timeline event
    // (~66 bytes each) for the one query that needs it, the trim of rejected events: it
    // becomes a partial index of rejected events only. The search index drops `key`
    // (~33 bytes a message in `event_search_content`): it followed from the event's type
    // (`content.body` of `m.room.message`, `content.name` of `m.room.name`,
    // `content.topic` of `m.room.topic`), so searches filter on `events.type` instead.
    // A contentless table cannot be read back, so it is rebuilt from the events, as
    // version 9 built it (redacted events stay out).
    r#"
    DROP INDEX events_room_status_depth;
    CREATE INDEX events_rejected_depth ON events(room_id, depth) WHERE status = 'rejected';
    DROP TABLE event_search;
    CREATE VIRTUAL TABLE event_search USING fts5(
        text,
        content = '',
        contentless_delete = 1,
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO event_search (rowid, text)
        SELECT stream_ordering, json_extract(json, '$.content.body')
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.message'
          AND json_type(json, '$.content.body') = 'text'
          AND trim(json_extract(json, '$.content.body')) != '';
    INSERT INTO event_search (rowid, text)
        SELECT stream_ordering, json_extract(json, '$.content.name')
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.name'
          AND json_type(json, '$.content.name') = 'text'
          AND trim(json_extract(json, '$.content.name')) != '';
    INSERT INTO event_search (rowid, text)
        SELECT stream_ordering, json_extract(json, '$.content.topic')
        FROM events
        WHERE status = 'timeline' AND redacted_by IS NULL AND type = 'm.room.topic'
          AND json_type(json, '$.content.topic') = 'text'
          AND trim(json_extract(json, '$.content.topic')) != '';
    "#,
    // 24: client transaction ids keyed by a 64-bit hash of (user, device, transaction
    // key) instead of the three strings (~100 bytes a message sent; the user id alone is
    // up to 73 bytes here). The row names the event by stream position; a hit is checked
    // against the event's own sender, `txn_device` and `txn_id`, so a hash collision can
    // never answer with another client's event. The rows are copied with their keys
    // computed in Rust ([`rekey_event_txns`], same transaction).
    r#"
    CREATE TABLE event_txns_v24 (
        key INTEGER PRIMARY KEY,
        stream_ordering INTEGER NOT NULL
    );
    "#,
    // 25: application services. Each follows the event stream from its own position;
    // `pending` is the transaction built but not yet acknowledged (resent as it is, with
    // the same id, until the appservice takes it), so a transaction id always names the
    // same content and nothing between two positions is skipped or sent twice.
    r#"
    CREATE TABLE appservice_stream (
        as_id TEXT PRIMARY KEY,
        pos INTEGER NOT NULL,
        typing_serial INTEGER NOT NULL DEFAULT 0,
        last_txn INTEGER NOT NULL DEFAULT 0,
        pending_txn INTEGER,
        pending_up_to INTEGER,
        pending_body TEXT
    );
    "#,
    // 26: delayed events (MSC4140): sent by the node when their time comes, unless the
    // client cancels or restarts them first (Element Call's "leave the call if I drop").
    r#"
    CREATE TABLE delayed_events (
        delay_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        txn_id TEXT,
        room_id TEXT NOT NULL,
        type TEXT NOT NULL,
        state_key TEXT,
        content TEXT NOT NULL,
        delay_ms INTEGER NOT NULL,
        running_since INTEGER NOT NULL,
        send_at INTEGER NOT NULL
    );
    CREATE INDEX delayed_events_due ON delayed_events(send_at);
    CREATE INDEX delayed_events_by_user ON delayed_events(user_id, running_since);
    CREATE UNIQUE INDEX delayed_events_txn ON delayed_events(user_id, device_id, txn_id)
        WHERE txn_id IS NOT NULL;
    "#,
    // 27: refresh tokens (spec v1.3). An access token issued with one expires at
    // `expires_ts`; `refresh_token` names the refresh token issued with it. A refresh
    // token's `prev` is the one it replaced, revoked once the new pair is first used.
    r#"
    ALTER TABLE access_tokens ADD COLUMN expires_ts INTEGER;
    ALTER TABLE access_tokens ADD COLUMN refresh_token TEXT;
    CREATE TABLE refresh_tokens (
        token TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        prev TEXT,
        FOREIGN KEY (user_id, device_id) REFERENCES devices(user_id, device_id) ON DELETE CASCADE
    );
    CREATE INDEX refresh_tokens_by_prev ON refresh_tokens(prev);
    CREATE INDEX access_tokens_by_refresh ON access_tokens(refresh_token)
        WHERE refresh_token IS NOT NULL;
    "#,
    // 28: mailboxes (store-and-forward for nodes that are never online together).
    // `mailbox_records` keeps signed records of which peers hold whose mail (this node's
    // own among them; `names_this_node` marks the owners this node holds mail for, which
    // other records never push out); `own_mailboxes` the peers this node named; `mailbox_deposits` the
    // signed transactions other nodes left here for an owner, until it drains them.
    r#"
    CREATE TABLE mailbox_records (
        owner TEXT PRIMARY KEY,
        record TEXT NOT NULL,
        ts INTEGER NOT NULL,
        received_ts INTEGER NOT NULL,
        names_this_node INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX mailbox_records_by_age ON mailbox_records(names_this_node, received_ts);
    CREATE TABLE own_mailboxes (
        server_name TEXT PRIMARY KEY,
        address TEXT,
        added_ts INTEGER NOT NULL
    );
    CREATE TABLE mailbox_deposits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        owner TEXT NOT NULL,
        depositor TEXT NOT NULL,
        txn_id TEXT NOT NULL,
        body TEXT NOT NULL,
        bytes INTEGER NOT NULL,
        received_ts INTEGER NOT NULL,
        UNIQUE (owner, depositor, txn_id)
    );
    CREATE INDEX mailbox_deposits_by_owner ON mailbox_deposits(owner, id);
    CREATE INDEX mailbox_deposits_by_age ON mailbox_deposits(received_ts);
    "#,
    // 29: remote presence held back because its user shared no room with a local user
    // yet (a join still being stored); placed into `presence` when a join makes them
    // share one. Bounded in rows and age (`storage/presence.rs`).
    r#"
    CREATE TABLE presence_pending (
        user_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        status_msg TEXT,
        last_active_ts INTEGER NOT NULL,
        currently_active INTEGER NOT NULL DEFAULT 0,
        received_ts INTEGER NOT NULL
    );
    CREATE INDEX presence_pending_by_age ON presence_pending(received_ts);
    "#,
    // 30: the outliers of a room by depth, for `has_outlier_child` on every persisted
    // event. Without it that check scanned the room's whole history (the index it was
    // written for had gone in version 23). Outliers only: state and auth chains that
    // came with joins, a small part of the events.
    r#"
    CREATE INDEX events_outlier_depth ON events(room_id, depth) WHERE status = 'outlier';
    "#,
    // 31: live events are indexed for search in batches after their commit, not inside
    // it (`storage/search.rs`); `up_to` is the last live stream position looked at.
    // Everything stored before this version was indexed as it was persisted.
    r#"
    CREATE TABLE search_indexed (
        id INTEGER PRIMARY KEY CHECK (id = 0),
        up_to INTEGER NOT NULL
    );
    INSERT INTO search_indexed (id, up_to)
        SELECT 0, MAX(COALESCE(MAX(stream_ordering), 0), 0) FROM events;
    "#,
    // 32: what every event needs of a room's members, kept instead of counted: the
    // joined and invited counts (push rules' member count, room summaries) and the
    // joined members who are users of this node (push evaluation). Both were a pass
    // over all of the room's members per event; kept by `storage::set_membership`.
    r#"
    CREATE TABLE room_member_counts (
        room_id TEXT PRIMARY KEY,
        joined INTEGER NOT NULL,
        invited INTEGER NOT NULL
    ) WITHOUT ROWID;
    INSERT INTO room_member_counts (room_id, joined, invited)
        SELECT room_id, COUNT(*) FILTER (WHERE membership = 'join'),
               COUNT(*) FILTER (WHERE membership = 'invite')
        FROM memberships GROUP BY room_id;
    CREATE TABLE local_joins (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    ) WITHOUT ROWID;
    INSERT INTO local_joins (room_id, user_id)
        SELECT m.room_id, m.user_id FROM memberships m JOIN users u ON u.user_id = m.user_id
        WHERE m.membership = 'join';
    "#,
    // 33: what names a room's push context (its members, their display names and push
    // rules, the power levels; `push::context`), so it is kept instead of read for every
    // event: the room's redactions counted (a redaction changes what a state event says
    // without changing the state group) and the newest push rules change found at once.
    r#"
    ALTER TABLE rooms ADD COLUMN redactions INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX account_data_by_type ON account_data(type, stream_ordering);
    "#,
    // 34: notification rows of one event side by side. Keyed by user first, a message
    // dirtied one b-tree leaf per notified member (and split them in the middle of the
    // tree); keyed by room and position, its rows are one insert at the end of the
    // room's range. The cap is per room now (the newest 50 notifying events, 25 of
    // slack; `storage/push.rs`), counted in `push_notification_rooms`, so the per-user
    // count goes. Rows are copied as they are: a room over the cap is trimmed by its
    // next notification. Unread counts are no longer bumped per message: the rows of a
    // room's newest notifying events (at most 25) are counted when read and folded
    // into `unread_counts` every 25 (`folded_upto`; `counted_upto` per user after a
    // receipt's recount). Stored counts were exact, so every room starts folded up to
    // its newest row. Every (user, room) with rows gets an `unread_counts` row.
    r#"
    CREATE TABLE push_notifications_v34 (
        room_id TEXT NOT NULL,
        stream_ordering INTEGER NOT NULL,
        user_id TEXT NOT NULL,
        actions NOT NULL,
        highlight INTEGER NOT NULL,
        PRIMARY KEY (room_id, stream_ordering, user_id)
    ) WITHOUT ROWID;
    INSERT INTO push_notifications_v34 (room_id, stream_ordering, user_id, actions, highlight)
    SELECT room_id, stream_ordering, user_id, actions, highlight FROM push_notifications;
    DROP TABLE push_notifications;
    ALTER TABLE push_notifications_v34 RENAME TO push_notifications;
    DROP TABLE push_notification_users;
    CREATE TABLE push_notification_rooms (
        room_id TEXT PRIMARY KEY,
        events INTEGER NOT NULL,
        folded_upto INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    INSERT INTO push_notification_rooms (room_id, events, folded_upto)
    SELECT room_id, COUNT(DISTINCT stream_ordering), MAX(stream_ordering)
    FROM push_notifications GROUP BY room_id;
    ALTER TABLE unread_counts ADD COLUMN counted_upto INTEGER NOT NULL DEFAULT 0;
    INSERT OR IGNORE INTO unread_counts (user_id, room_id, notifications, highlights)
    SELECT DISTINCT user_id, room_id, 0, 0 FROM push_notifications;
    "#,
    // 35: a room's forward extremities in one b-tree. As a rowid table with its primary
    // key beside it, every event sent rewrote two pages (the row and the key's index):
    // one of the ten WAL frames a message's commit wrote. Same key, same order.
    r#"
    CREATE TABLE forward_extremities_v35 (
        room_id TEXT NOT NULL,
        event_id TEXT NOT NULL,
        PRIMARY KEY (room_id, event_id)
    ) WITHOUT ROWID;
    INSERT INTO forward_extremities_v35 (room_id, event_id)
    SELECT room_id, event_id FROM forward_extremities;
    DROP TABLE forward_extremities;
    ALTER TABLE forward_extremities_v35 RENAME TO forward_extremities;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The version whose transaction ids are keyed by hash ([`rekey_event_txns`]).
const EVENT_TXNS_KEYED: usize = 24;

/// The second half of version 24: every `event_txns` row into `event_txns_v24` under
/// its hashed key, then the new table takes the old one's name.
fn rekey_event_txns(tx: &Connection) -> rusqlite::Result<()> {
    let rows: Vec<(String, String, String, i64)> = tx
        .prepare("SELECT user_id, device_id, txn_id, stream_ordering FROM event_txns")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))?
        .collect::<Result<_, _>>()?;
    let mut insert =
        tx.prepare("INSERT OR REPLACE INTO event_txns_v24 (key, stream_ordering) VALUES (?1, ?2)")?;
    for (user, device, txn, pos) in rows {
        insert.execute(rusqlite::params![
            super::events::txn_key(&user, &device, &txn),
            pos
        ])?;
    }
    drop(insert);
    tx.execute_batch(
        "DROP TABLE event_txns;
         ALTER TABLE event_txns_v24 RENAME TO event_txns;",
    )
}

/// Bring the schema up to [`SCHEMA_VERSION`], refusing newer databases.
pub fn run(conn: &mut Connection, shown: &str) -> Result<(), StartError> {
    let err = |e: rusqlite::Error| StartError::Other(format!("migrating database {shown}: {e}"));
    let found: i64 = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(err)?;
    if found > SCHEMA_VERSION {
        return Err(StartError::NewerDatabase {
            path: shown.to_owned(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(found as usize) {
        let tx = conn.transaction().map_err(err)?;
        tx.execute_batch(sql).map_err(err)?;
        if i + 1 == EVENT_TXNS_KEYED {
            rekey_event_txns(&tx).map_err(err)?;
        }
        tx.pragma_update(None, "user_version", (i + 1) as i64)
            .map_err(err)?;
        tx.commit().map_err(err)?;
        tracing::info!(version = i + 1, "applied database migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newer_database_is_refused_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("db");
        let mut conn = Connection::open(&path).expect("open");
        run(&mut conn, "db").expect("migrate");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 5)
            .expect("bump");
        let err = run(&mut conn, "db").expect_err("must refuse");
        assert!(err.to_string().contains("newer version"), "{err}");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("v");
        assert_eq!(v, SCHEMA_VERSION + 5);
    }

    #[test]
    fn a_version_1_database_gains_the_e2ee_tables() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.execute_batch(MIGRATIONS[0]).expect("v1 schema");
        conn.pragma_update(None, "user_version", 1).expect("v1");
        run(&mut conn, "mem").expect("upgrade");
        let v: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .expect("v");
        assert_eq!(v, SCHEMA_VERSION);
        let tables: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table'
                 AND name IN ('e2e_device_keys', 'to_device_inbox', 'room_key_backups')",
                [],
                |r| r.get(0),
            )
            .expect("count");
        assert_eq!(tables, 3);
    }

    #[test]
    fn version_9_indexes_stored_messages_for_search() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..8] {
            conn.execute_batch(sql).expect("schema up to 8");
        }
        conn.pragma_update(None, "user_version", 8).expect("v8");
        let insert = |pos: i64, ty: &str, json: &str, redacted: Option<&str>| {
            conn.execute(
                "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth,
                     origin_server_ts, json, redacted_by, status)
                 VALUES (?1, ?2, '!r:x', ?3, '@a:x', 1, 0, ?4, ?5, 'timeline')",
                rusqlite::params![pos, format!("$e{pos}"), ty, json, redacted],
            )
            .expect("insert event");
        };
        insert(
            1,
            "m.room.message",
            r#"{"content":{"body":"hello mango"}}"#,
            None,
        );
        insert(
            2,
            "m.room.message",
            r#"{"content":{"body":"mango gone"}}"#,
            Some("$r"),
        );
        insert(
            3,
            "m.room.topic",
            r#"{"content":{"topic":"mango talk"}}"#,
            None,
        );
        insert(4, "m.room.message", r#"{"content":{"body":42}}"#, None);
        // Up to the current version: version 23 rebuilds the index from the events the
        // same way (without `key`, which the event's type gives).
        run(&mut conn, "mem").expect("upgrade");
        let mut st = conn
            .prepare(
                "SELECT s.rowid, e.type FROM event_search s
                 JOIN events e ON e.stream_ordering = s.rowid
                 WHERE event_search MATCH 'mango' ORDER BY s.rowid",
            )
            .expect("prepare");
        let rows: Vec<(i64, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            rows,
            vec![
                (1, "m.room.message".to_owned()),
                (3, "m.room.topic".to_owned())
            ]
        );
    }

    #[test]
    fn version_24_keeps_the_transactions_it_rekeys() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..23] {
            conn.execute_batch(sql).expect("schema up to 23");
        }
        conn.pragma_update(None, "user_version", 23).expect("v23");
        conn.execute_batch(
            r#"INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth,
                   origin_server_ts, json, status, txn_device, txn_id)
               VALUES (7, '$sent', '!r:x', 'm.room.message', '@a:x', 1, 0, '{}', 'timeline',
                   'DEV', 't1');
               INSERT INTO event_txns (user_id, device_id, txn_id, stream_ordering)
               VALUES ('@a:x', 'DEV', 't1', 7);"#,
        )
        .expect("a sent event");
        run(&mut conn, "mem").expect("upgrade");
        let scope = ("!r:x", "m.room.message", None);
        assert_eq!(
            crate::storage::txn_lookup(&conn, "@a:x", "DEV", "t1", scope).expect("lookup"),
            crate::storage::TxnSlot::Done("$sent".into())
        );
        assert_eq!(
            crate::storage::txn_lookup(&conn, "@a:x", "DEV2", "t1", scope).expect("lookup"),
            crate::storage::TxnSlot::Free("t1".into())
        );
        // The rejected-events index is partial: a timeline event is not in it.
        let indexed: i64 = conn
            .query_row(
                "SELECT COUNT(*) FROM events INDEXED BY events_rejected_depth
                 WHERE room_id = '!r:x' AND status = 'rejected'",
                [],
                |r| r.get(0),
            )
            .expect("partial index usable");
        assert_eq!(indexed, 0);
    }

    #[test]
    fn version_14_fills_relations_and_threads_from_stored_events() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..13] {
            conn.execute_batch(sql).expect("schema up to 13");
        }
        conn.pragma_update(None, "user_version", 13).expect("v13");
        let insert = |pos: i64, content: &str, status: &str, redacted: Option<&str>| {
            conn.execute(
                "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth,
                     origin_server_ts, json, redacted_by, status)
                 VALUES (?1, ?2, '!r:x', 'm.room.message', '@a:x', 1, 0, ?3, ?4, ?5)",
                rusqlite::params![
                    pos,
                    format!("$e{pos}"),
                    format!(r#"{{"content":{content}}}"#),
                    redacted,
                    status
                ],
            )
            .expect("insert event");
        };
        insert(1, r#"{"body":"root"}"#, "timeline", None);
        let thread = r#"{"body":"r","m.relates_to":{"rel_type":"m.thread","event_id":"$e1"}}"#;
        insert(2, thread, "timeline", None);
        insert(3, thread, "timeline", None);
        // Not relationships: redacted, not in the timeline, a plain reply, a bad id.
        insert(4, thread, "timeline", Some("$r"));
        insert(-1, thread, "outlier", None);
        insert(
            5,
            r#"{"m.relates_to":{"m.in_reply_to":{"event_id":"$e1"}}}"#,
            "timeline",
            None,
        );
        insert(
            6,
            r#"{"m.relates_to":{"rel_type":"m.reference","event_id":"e1"}}"#,
            "timeline",
            None,
        );
        insert(
            7,
            r#"{"m.relates_to":{"rel_type":"m.replace","event_id":"$e1"},"m.new_content":{}}"#,
            "timeline",
            None,
        );
        run(&mut conn, "mem").expect("upgrade");
        let mut st = conn
            .prepare("SELECT event_id, relates_to_id, rel_type FROM event_relations ORDER BY stream_ordering")
            .expect("prepare");
        let rows: Vec<(String, String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let row = |e: &str, rel: &str| ("$".to_owned() + e, "$e1".to_owned(), rel.to_owned());
        assert_eq!(
            rows,
            vec![
                row("e2", "m.thread"),
                row("e3", "m.thread"),
                row("e7", "m.replace")
            ]
        );
        let thread: (String, String, i64) = conn
            .query_row(
                "SELECT root_id, latest_event_id, latest_pos FROM threads",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .expect("one thread");
        assert_eq!(thread, ("$e1".to_owned(), "$e3".to_owned(), 3));
    }

    #[test]
    fn version_16_applies_the_notification_bounds_to_stored_rows() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..15] {
            conn.execute_batch(sql).expect("schema up to 15");
        }
        conn.pragma_update(None, "user_version", 15).expect("v15");
        let now = 1_800_000_000_000_i64.max(crate::storage::now_ms());
        for pos in 1..=130_i64 {
            conn.execute(
                "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth,
                     origin_server_ts, json, status)
                 VALUES (?1, ?2, '!r:x', 'm.room.message', '@a:x', 1, 0, '{}', 'timeline')",
                rusqlite::params![pos, format!("$e{pos}")],
            )
            .expect("event");
            let actions = match pos {
                50 => {
                    r#"["notify",{"set_tweak":"sound","value":"default"},{"set_tweak":"highlight"}]"#
                }
                125 => r#"["notify",{"set_tweak":"sound","value":"chime"}]"#,
                _ => r#"["notify"]"#,
            };
            // One unread row is older than the age limit.
            let ts = if pos == 120 { 0 } else { now };
            conn.execute(
                "INSERT INTO push_notifications
                     (user_id, room_id, stream_ordering, event_id, actions, highlight, ts)
                 VALUES ('@b:x', '!r:x', ?1, ?2, ?3, ?4, ?5)",
                rusqlite::params![pos, format!("$e{pos}"), actions, pos == 50, ts],
            )
            .expect("notification");
        }
        conn.execute_batch(
            "INSERT INTO receipts (room_id, receipt_type, user_id, thread_id, event_id, ts,
                 stream_ordering) VALUES ('!r:x', 'm.read', '@b:x', '', '$e100', 0, 131);
             INSERT INTO unread_counts (user_id, room_id, notifications, highlights)
                 VALUES ('@b:x', '!r:x', 30, 0);",
        )
        .expect("receipt and counts");
        run(&mut conn, "mem").expect("upgrade");
        let kept: Vec<i64> = conn
            .prepare("SELECT stream_ordering FROM push_notifications ORDER BY stream_ordering")
            .expect("prepare")
            .query_map([], |r| r.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        // The highlight, the newest ten read rows, and every unread one but the old one.
        let mut want = vec![50];
        want.extend(91..=130);
        want.retain(|p| *p != 120);
        assert_eq!(kept, want);
        let codes: (i64, String) = conn
            .query_row(
                "SELECT (SELECT actions FROM push_notifications WHERE stream_ordering = 50),
                        (SELECT actions FROM push_notifications WHERE stream_ordering = 125)",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .expect("actions");
        assert_eq!(
            codes,
            (
                2,
                r#"["notify",{"set_tweak":"sound","value":"chime"}]"#.to_owned()
            )
        );
        let counts: (i64, i64, i64, i64) = conn
            .query_row(
                "SELECT notifications, pruned_notifications, pruned_upto,
                        (SELECT events FROM push_notification_rooms WHERE room_id = '!r:x')
                 FROM unread_counts",
                [],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .expect("counts");
        assert_eq!(counts, (30, 1, 120, want.len() as i64));
    }

    #[test]
    fn version_17_search_index_is_contentless_and_deletable() {
        let conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..16] {
            conn.execute_batch(sql).expect("schema up to 16");
        }
        conn.pragma_update(None, "user_version", 16).expect("v16");
        conn.execute_batch(
            "INSERT INTO event_search (rowid, text, key) VALUES (1, 'mango tree', 'content.body')",
        )
        .expect("old row");
        // Version 17 alone: version 23 drops `key` again.
        conn.execute_batch(MIGRATIONS[16]).expect("version 17");
        conn.execute_batch(
            "INSERT INTO event_search (rowid, text, key) VALUES (2, 'mango pie', 'content.topic')",
        )
        .expect("new row");
        let hits = |conn: &Connection| -> Vec<(i64, String)> {
            conn.prepare(
                "SELECT rowid, key FROM event_search WHERE event_search MATCH 'mango'
                 ORDER BY bm25(event_search), rowid",
            )
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows")
        };
        assert_eq!(
            hits(&conn),
            vec![
                (1, "content.body".to_owned()),
                (2, "content.topic".to_owned())
            ]
        );
        conn.execute("DELETE FROM event_search WHERE rowid = 1", [])
            .expect("delete");
        assert_eq!(hits(&conn), vec![(2, "content.topic".to_owned())]);
    }

    #[test]
    fn version_18_finds_the_gaps_of_rooms_joined_before_it() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..17] {
            conn.execute_batch(sql).expect("schema up to 17");
        }
        conn.pragma_update(None, "user_version", 17).expect("v17");
        let insert = |pos: i64, id: &str, depth: i64, prevs: &str, status: &str| {
            conn.execute(
                "INSERT INTO events (stream_ordering, event_id, room_id, type, sender, depth,
                     origin_server_ts, json, status)
                 VALUES (?1, ?2, '!r:x', 'm.room.message', '@a:x', ?3, 0, ?4, ?5)",
                rusqlite::params![
                    pos,
                    id,
                    depth,
                    format!(r#"{{"prev_events":{prevs}}}"#),
                    status
                ],
            )
            .expect("insert event");
        };
        // A join on prev events this node never had; events after it build on it.
        insert(1, "$join", 10, r#"["$theirs1","$theirs2"]"#, "timeline");
        insert(2, "$next", 11, r#"["$join"]"#, "timeline");
        // An outlier's missing prevs are no gap of the timeline; a known outlier prev is.
        insert(-3, "$out", 4, r#"["$gone"]"#, "outlier");
        insert(3, "$fork", 12, r#"["$next","$out"]"#, "timeline");
        run(&mut conn, "mem").expect("upgrade");
        let gaps: Vec<(String, i64)> = conn
            .prepare("SELECT event_id, depth FROM backfill_extremities ORDER BY event_id")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        assert_eq!(
            gaps,
            vec![
                ("$out".to_owned(), 11),
                ("$theirs1".to_owned(), 9),
                ("$theirs2".to_owned(), 9)
            ]
        );
    }

    #[test]
    fn version_32_counts_the_members_of_rooms_joined_before_it() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..31] {
            conn.execute_batch(sql).expect("schema up to 31");
        }
        conn.pragma_update(None, "user_version", 31).expect("v31");
        conn.execute_batch(
            "INSERT INTO users (user_id, created_ts) VALUES ('@a:here', 0), ('@b:here', 0);
             INSERT INTO memberships (room_id, user_id, membership, event_id, stream_ordering)
             VALUES ('!r:x', '@a:here', 'join', '$1', 1), ('!r:x', '@b:here', 'leave', '$2', 2),
                    ('!r:x', '@r:there', 'join', '$3', 3), ('!r:x', '@s:there', 'invite', '$4', 4),
                    ('!q:x', '@b:here', 'join', '$5', 5);",
        )
        .expect("rows");
        run(&mut conn, "mem").expect("upgrade");
        let rows = |sql: &str| -> Vec<String> {
            conn.prepare(sql)
                .expect("prepare")
                .query_map([], |r| r.get(0))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        assert_eq!(
            rows(
                "SELECT room_id || ' ' || joined || ' ' || invited FROM room_member_counts ORDER BY 1"
            ),
            ["!q:x 1 0", "!r:x 2 1"]
        );
        assert_eq!(
            rows("SELECT room_id || ' ' || user_id FROM local_joins ORDER BY 1"),
            ["!q:x @b:here", "!r:x @a:here"]
        );
    }

    #[test]
    fn version_35_keeps_the_forward_extremities_in_one_b_tree() {
        let mut conn = Connection::open_in_memory().expect("open");
        for sql in &MIGRATIONS[..34] {
            conn.execute_batch(sql).expect("schema up to 34");
        }
        conn.pragma_update(None, "user_version", 34).expect("v34");
        conn.execute_batch(
            "INSERT INTO forward_extremities (room_id, event_id)
             VALUES ('!r:x', '$b'), ('!r:x', '$a'), ('!s:x', '$c');",
        )
        .expect("extremities");
        run(&mut conn, "mem").expect("upgrade");
        let kept: Vec<(String, String)> = conn
            .prepare("SELECT room_id, event_id FROM forward_extremities")
            .expect("prepare")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let want = [("!r:x", "$a"), ("!r:x", "$b"), ("!s:x", "$c")]
            .map(|(r, e)| (r.to_owned(), e.to_owned()));
        assert_eq!(kept, want);
        // No rowid, so no second b-tree for the key.
        assert!(
            conn.prepare("SELECT rowid FROM forward_extremities")
                .is_err()
        );
    }

    #[test]
    fn migrations_are_idempotent() {
        let mut conn = Connection::open_in_memory().expect("open");
        run(&mut conn, "mem").expect("first");
        run(&mut conn, "mem").expect("second");
    }
}
