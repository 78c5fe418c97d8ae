//! `warren.toml`: the node's configuration file in its data directory.
//!
//! Precedence, lowest first: built-in defaults, this file, `WARREN_*` environment
//! variables, command-line flags. Unknown keys and bad values are errors that name the
//! key and say what is allowed; `warren config check` reports them without starting.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Deserialize;
use warren_core::RegistrationPolicy;

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "warren.toml";

/// Written on first start: every key, commented out, at its default.
const TEMPLATE: &str = r#"# Warren node configuration. Every key is optional; the values shown are the defaults.
# Environment variables (WARREN_CLIENT_ADDR, WARREN_LOG_LEVEL, ...) and command-line
# flags override this file. Check it with `warren config check`.

# Address of the Matrix client-server API. Port 0 picks a free port.
# client_addr = "127.0.0.1:8008"

# Who may register: "auto" (open while the client API listens on loopback only, else
# closed), "open", or "closed" (registration tokens only).
# registration = "auto"
# registration_tokens = []

# Largest media upload, in bytes.
# max_upload_bytes = 52428800

# Version of rooms created without one (10, 11 or 12).
# default_room_version = "12"

# Lifetime, in seconds, of access tokens given to clients that ask for a refresh token
# (`refresh_token: true` on /login or /register); other tokens never expire.
# refreshable_access_token_lifetime_secs = 300

# Log level (error, warn, info, debug, trace, off, or a filter such as
# "info,warren_p2p=debug") and format ("text" or "json").
# log_level = "info"
# log_format = "text"

[limits]
# Largest JSON request body, in bytes (413 M_TOO_LARGE past it).
# max_request_bytes = 1048576
# Client API connections open at once; past it the longest-idle one is closed.
# max_connections = 256
# Seconds for a request's headers to arrive; for an idle keep-alive connection to be
# closed; for a request to be answered (504 past it).
# header_read_timeout_secs = 10
# idle_timeout_secs = 60
# request_timeout_secs = 180
# Federation outbox kept per unreachable destination (rows, and age in seconds); what
# is dropped is fetched again by anti-entropy when the destination is back.
# outbox_max_rows = 10000
# outbox_max_age_secs = 604800

[media]
# Media of other nodes kept on disk (originals and thumbnails made of them), in bytes;
# past it the least recently read items are evicted. This node's own uploads are never
# evicted and do not count. Also the largest remote file fetched at all.
# remote_cache_bytes = 536870912
# Fetch media that events from other nodes refer to (pictures, files, avatars) as they
# arrive, so it is still there when the sender's device is gone.
# prefetch = true
# Largest file fetched that way; larger ones are fetched when someone opens them.
# prefetch_max_bytes = 16777216
# URL previews (GET /_matrix/client/v1/media/preview_url): off, since the node would
# fetch any URL a local user names from this device's network. When on, addresses in
# url_preview_ip_range_blacklist (the default: private, loopback, link-local,
# multicast and documentation ranges) are never fetched from, unless listed in
# url_preview_ip_range_whitelist; bodies over url_preview_max_bytes and previews over
# url_preview_timeout_secs fail; url_preview_cache_entries previews are kept an hour.
# url_preview_enabled = false
# url_preview_ip_range_blacklist = ["127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16", "::1/128", "fe80::/10", "fc00::/7", ...]
# url_preview_ip_range_whitelist = []
# url_preview_max_bytes = 10485760
# url_preview_timeout_secs = 10
# url_preview_cache_entries = 256

[mailbox]
# Hold mail for nodes that name this one as their mailbox (`warren mailbox add` on
# theirs): what other nodes could not deliver to them while they were away, until they
# collect it. Bounds: owners held for, bytes per owner and per depositor and owner,
# deposits per owner, and how long a deposit is kept (seconds).
# serve = true
# Only for these nodes (server names); empty: any node that names this one.
# allowed_owners = []
# max_owners = 8
# owner_quota_bytes = 33554432
# depositor_quota_bytes = 8388608
# max_deposits_per_owner = 10000
# ttl_secs = 604800

[voip]
# TURN servers for calls (GET /voip/turnServer). With a shared secret (coturn's
# static-auth-secret) each user gets credentials valid for turn_user_lifetime_secs;
# otherwise fixed turn_username / turn_password. Nothing set: no TURN server.
# turn_uris = ["turn:turn.example.org:3478?transport=udp"]
# turn_shared_secret = "..."
# turn_user_lifetime_secs = 86400
# A LiveKit JWT service for Element Call, advertised in /.well-known/matrix/client.
# livekit_service_url = "https://livekit-jwt.example.org"

[push]
# A command run for each notification of a user of this node (desktop notifications
# without a push service), with the details in WARREN_* environment variables; see
# docs/operations.md. `--on-notify` overrides it.
# on_notify = "notify-send \"$WARREN_ROOM_NAME\" \"$WARREN_BODY\""
# Notifications kept queued per push gateway (http pusher) while it fails, and their
# age in seconds; past either the oldest are dropped.
# queue_rows = 100
# queue_max_age_secs = 86400
# Seconds a request to a push gateway may take; most seconds between retries.
# request_timeout_secs = 15
# backoff_cap_secs = 600

[rate_limits]
# Token buckets: each action may happen `burst` times at once, then `per_second`.
# Past it: 429 M_LIMIT_EXCEEDED with retry_after_ms. `enabled = false` turns all off.
# enabled = true
# message = { per_second = 100, burst = 1000 }        # per user
# login_address = { per_second = 1, burst = 30 }      # per client address
# login_account = { per_second = 0.5, burst = 20 }    # per account
# login_failed = { per_second = 0.1, burst = 5 }      # failed logins, per account
# registration = { per_second = 1, burst = 100 }      # per client address
# join = { per_second = 2, burst = 50 }               # per user
# invite = { per_second = 2, burst = 50 }             # per user
# room_creation = { per_second = 2, burst = 100 }     # per user
# media_upload = { per_second = 5, burst = 100 }      # per user
# federation = { per_second = 500, burst = 5000 }     # per peer: requests, PDUs, EDUs
# federation_invite = { per_second = 0.5, burst = 20 } # invites, per peer

[p2p]
# Addresses to listen on for other nodes (default: QUIC and TCP on all interfaces,
# random ports).
# listen = ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"]
# Peers to connect to at start, each ending in /p2p/<peer id>.
# bootstrap = []
# Discover peers on the LAN by multicast DNS.
# mdns = true
# Relay traffic for peers that cannot reach each other directly (circuit relay v2,
# within small bounds: 16 reservations, 8 circuits, 2 per peer, 2 MiB and 10 minutes
# per circuit).
# relay_server = true
# What relaying may cost: reservations held for others, circuits at once (all peers,
# and per peer), bytes (both directions) and seconds per circuit.
# relay_max_reservations = 16
# relay_max_circuits = 8
# relay_max_circuits_per_peer = 2
# relay_max_circuit_bytes = 2097152
# relay_max_circuit_secs = 600
"#;

/// Registration policy as written in the file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// See [`RegistrationPolicy::Auto`].
    Auto,
    /// See [`RegistrationPolicy::Open`].
    Open,
    /// See [`RegistrationPolicy::Closed`].
    Closed,
}

impl From<Registration> for RegistrationPolicy {
    fn from(r: Registration) -> Self {
        match r {
            Registration::Auto => RegistrationPolicy::Auto,
            Registration::Open => RegistrationPolicy::Open,
            Registration::Closed => RegistrationPolicy::Closed,
        }
    }
}

/// Log format as written in the file.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FileLogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The `[p2p]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct P2pSection {
    pub listen: Option<Vec<String>>,
    pub bootstrap: Option<Vec<String>>,
    pub mdns: Option<bool>,
    pub relay_server: Option<bool>,
    pub relay_max_reservations: Option<usize>,
    pub relay_max_circuits: Option<usize>,
    pub relay_max_circuits_per_peer: Option<usize>,
    pub relay_max_circuit_bytes: Option<u64>,
    pub relay_max_circuit_secs: Option<u64>,
}

impl P2pSection {
    /// Apply the relay limits given to `limits`.
    pub fn apply_relay_limits(&self, limits: &mut warren_p2p::RelayLimits) {
        if let Some(v) = self.relay_max_reservations {
            limits.max_reservations = v;
        }
        if let Some(v) = self.relay_max_circuits {
            limits.max_circuits = v;
        }
        if let Some(v) = self.relay_max_circuits_per_peer {
            limits.max_circuits_per_peer = v;
        }
        if let Some(v) = self.relay_max_circuit_bytes {
            limits.max_circuit_bytes = v;
        }
        if let Some(v) = self.relay_max_circuit_secs {
            limits.max_circuit_duration = std::time::Duration::from_secs(v);
        }
    }
}

/// The `[limits]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LimitsSection {
    pub max_request_bytes: Option<usize>,
    pub max_connections: Option<usize>,
    pub header_read_timeout_secs: Option<u64>,
    pub idle_timeout_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub outbox_max_rows: Option<usize>,
    pub outbox_max_age_secs: Option<u64>,
}

/// The `[push]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PushSection {
    pub on_notify: Option<String>,
    pub queue_rows: Option<usize>,
    pub queue_max_age_secs: Option<u64>,
    pub request_timeout_secs: Option<u64>,
    pub backoff_cap_secs: Option<u64>,
}

impl PushSection {
    /// Apply the given values to `config`.
    pub fn apply(&self, config: &mut warren_core::Config) {
        use std::time::Duration;
        let p = &mut config.push;
        if let Some(v) = self.queue_rows {
            p.queue_rows = v;
        }
        if let Some(v) = self.queue_max_age_secs {
            p.queue_max_age = Duration::from_secs(v);
        }
        if let Some(v) = self.request_timeout_secs {
            p.request_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.backoff_cap_secs {
            p.backoff_cap = Duration::from_secs(v);
        }
    }
}

/// The `[media]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MediaSection {
    pub remote_cache_bytes: Option<u64>,
    pub prefetch: Option<bool>,
    pub prefetch_max_bytes: Option<u64>,
    pub url_preview_enabled: Option<bool>,
    pub url_preview_ip_range_blacklist: Option<Vec<String>>,
    pub url_preview_ip_range_whitelist: Option<Vec<String>>,
    pub url_preview_max_bytes: Option<u64>,
    pub url_preview_timeout_secs: Option<u64>,
    pub url_preview_cache_entries: Option<usize>,
}

impl MediaSection {
    /// Apply the given values to `config`.
    pub fn apply(&self, config: &mut warren_core::Config) {
        let m = &mut config.media;
        if let Some(v) = self.remote_cache_bytes {
            m.remote_cache_bytes = v;
        }
        if let Some(v) = self.prefetch {
            m.prefetch = v;
        }
        if let Some(v) = self.prefetch_max_bytes {
            m.prefetch_max_bytes = v;
        }
        // The ranges were checked by `validate`; one that does not parse is skipped.
        let ranges = |list: &Vec<String>| -> Vec<warren_core::config::IpRange> {
            list.iter().filter_map(|r| r.parse().ok()).collect()
        };
        let p = &mut m.url_preview;
        if let Some(v) = self.url_preview_enabled {
            p.enabled = v;
        }
        if let Some(v) = &self.url_preview_ip_range_blacklist {
            p.ip_range_blacklist = ranges(v);
        }
        if let Some(v) = &self.url_preview_ip_range_whitelist {
            p.ip_range_whitelist = ranges(v);
        }
        if let Some(v) = self.url_preview_max_bytes {
            p.max_bytes = v;
        }
        if let Some(v) = self.url_preview_timeout_secs {
            p.timeout = std::time::Duration::from_secs(v);
        }
        if let Some(v) = self.url_preview_cache_entries {
            p.cache_entries = v;
        }
    }
}

/// The `[mailbox]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MailboxSection {
    pub serve: Option<bool>,
    pub allowed_owners: Option<Vec<String>>,
    pub max_owners: Option<usize>,
    pub owner_quota_bytes: Option<u64>,
    pub depositor_quota_bytes: Option<u64>,
    pub max_deposits_per_owner: Option<u64>,
    pub ttl_secs: Option<u64>,
}

impl MailboxSection {
    /// Apply the given values to `config`.
    pub fn apply(&self, config: &mut warren_core::Config) {
        let m = &mut config.mailbox;
        if let Some(v) = self.serve {
            m.serve = v;
        }
        if let Some(v) = &self.allowed_owners {
            m.allowed_owners = v.clone();
        }
        if let Some(v) = self.max_owners {
            m.max_owners = v;
        }
        if let Some(v) = self.owner_quota_bytes {
            m.owner_quota_bytes = v;
        }
        if let Some(v) = self.depositor_quota_bytes {
            m.depositor_quota_bytes = v;
        }
        if let Some(v) = self.max_deposits_per_owner {
            m.max_deposits_per_owner = v;
        }
        if let Some(v) = self.ttl_secs {
            m.ttl = std::time::Duration::from_secs(v);
        }
    }
}

/// The `[voip]` table.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct VoipSection {
    pub turn_uris: Option<Vec<String>>,
    pub turn_shared_secret: Option<String>,
    pub turn_username: Option<String>,
    pub turn_password: Option<String>,
    pub turn_user_lifetime_secs: Option<u64>,
    pub livekit_service_url: Option<String>,
}

impl VoipSection {
    /// Apply the given values to `config`.
    pub fn apply(&self, config: &mut warren_core::Config) {
        let v = &mut config.voip;
        if let Some(uris) = &self.turn_uris {
            v.turn_uris = uris.clone();
        }
        v.turn_shared_secret = self
            .turn_shared_secret
            .clone()
            .or(v.turn_shared_secret.take());
        v.turn_username = self.turn_username.clone().or(v.turn_username.take());
        v.turn_password = self.turn_password.clone().or(v.turn_password.take());
        if let Some(secs) = self.turn_user_lifetime_secs {
            v.turn_user_lifetime = Some(std::time::Duration::from_secs(secs));
        }
        v.livekit_service_url = self
            .livekit_service_url
            .clone()
            .or(v.livekit_service_url.take());
    }
}

/// One rate: `{ per_second = …, burst = … }`.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateSpec {
    pub per_second: f64,
    pub burst: f64,
}

/// The `[rate_limits]` table: `enabled`, and a rate per action, keyed by
/// [`Action::name`](warren_core::ratelimit::Action::name).
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
pub struct RateLimitsSection {
    pub enabled: Option<bool>,
    #[serde(flatten)]
    pub rates: BTreeMap<String, RateSpec>,
}

impl RateLimitsSection {
    /// (key, action, value) of every rate given; an unknown key is an error.
    fn given(&self) -> anyhow::Result<Vec<(&str, warren_core::ratelimit::Action, RateSpec)>> {
        self.rates
            .iter()
            .map(
                |(key, r)| match warren_core::ratelimit::Action::from_name(key) {
                    Some(action) => Ok((key.as_str(), action, *r)),
                    None => bail!("unknown key rate_limits.{key}"),
                },
            )
            .collect()
    }

    /// The limits this table describes, on top of the defaults.
    pub fn apply(&self, limits: &mut warren_core::RateLimits) {
        if self.enabled == Some(false) {
            *limits = warren_core::RateLimits::off();
            return;
        }
        for (_, action, r) in self.given().unwrap_or_default() {
            limits.set(
                action,
                Some(warren_core::config::Rate::new(r.per_second, r.burst)),
            );
        }
    }
}

impl LimitsSection {
    /// Apply the given values to `config`.
    pub fn apply(&self, config: &mut warren_core::Config) {
        use std::time::Duration;
        if let Some(v) = self.max_request_bytes {
            config.max_request_bytes = v;
        }
        let c = &mut config.connections;
        if let Some(v) = self.max_connections {
            c.max_connections = v;
        }
        if let Some(v) = self.header_read_timeout_secs {
            c.header_read_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.idle_timeout_secs {
            c.idle_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.request_timeout_secs {
            c.request_timeout = Duration::from_secs(v);
        }
        if let Some(v) = self.outbox_max_rows {
            config.outbox.max_rows = v;
        }
        if let Some(v) = self.outbox_max_age_secs {
            config.outbox.max_age = Duration::from_secs(v);
        }
    }
}

/// The whole file; absent keys fall back to the next source.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub client_addr: Option<SocketAddr>,
    pub registration: Option<Registration>,
    pub registration_tokens: Option<Vec<String>>,
    pub max_upload_bytes: Option<u64>,
    pub default_room_version: Option<String>,
    pub refreshable_access_token_lifetime_secs: Option<u64>,
    /// Application service registration files; relative paths are taken from the data
    /// directory.
    pub app_service_config_files: Option<Vec<PathBuf>>,
    pub log_level: Option<String>,
    pub log_format: Option<FileLogFormat>,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub media: MediaSection,
    #[serde(default)]
    pub mailbox: MailboxSection,
    #[serde(default)]
    pub voip: VoipSection,
    #[serde(default)]
    pub push: PushSection,
    #[serde(default)]
    pub rate_limits: RateLimitsSection,
    #[serde(default)]
    pub p2p: P2pSection,
}

/// Where the file lives for `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE_NAME)
}

/// Parse and check the file; a missing file is an empty configuration.
pub fn load(data_dir: &Path) -> anyhow::Result<FileConfig> {
    let path = path(data_dir);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(FileConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    parse(&text).with_context(|| format!("invalid configuration in {}", path.display()))
}

/// Parse file text and check values the types cannot.
pub fn parse(text: &str) -> anyhow::Result<FileConfig> {
    let config: FileConfig = toml::from_str(text).map_err(|e| anyhow::anyhow!(explain(&e)))?;
    for (key, list) in [
        ("p2p.listen", &config.p2p.listen),
        ("p2p.bootstrap", &config.p2p.bootstrap),
    ] {
        for addr in list.iter().flatten() {
            if addr.parse::<warren_p2p::Multiaddr>().is_err() {
                bail!("{key}: {addr:?} is not a multiaddr (e.g. \"/ip4/0.0.0.0/udp/0/quic-v1\")");
            }
        }
    }
    for (key, _, r) in config.rate_limits.given()? {
        if !(r.per_second.is_finite() && r.per_second >= 0.0) {
            bail!("rate_limits.{key}.per_second must be a number of at least 0");
        }
        if !(r.burst.is_finite() && r.burst >= 1.0) {
            bail!("rate_limits.{key}.burst must be a number of at least 1");
        }
    }
    let l = &config.limits;
    for (key, v) in [
        ("max_request_bytes", l.max_request_bytes.map(|v| v as u64)),
        ("max_connections", l.max_connections.map(|v| v as u64)),
        ("header_read_timeout_secs", l.header_read_timeout_secs),
        ("idle_timeout_secs", l.idle_timeout_secs),
        ("request_timeout_secs", l.request_timeout_secs),
        ("outbox_max_rows", l.outbox_max_rows.map(|v| v as u64)),
        ("outbox_max_age_secs", l.outbox_max_age_secs),
    ] {
        if v == Some(0) {
            bail!("limits.{key} must be at least 1");
        }
    }
    for (key, v) in [
        ("remote_cache_bytes", config.media.remote_cache_bytes),
        ("prefetch_max_bytes", config.media.prefetch_max_bytes),
        ("url_preview_max_bytes", config.media.url_preview_max_bytes),
        (
            "url_preview_timeout_secs",
            config.media.url_preview_timeout_secs,
        ),
    ] {
        if v == Some(0) {
            bail!("media.{key} must be at least 1");
        }
    }
    for (key, list) in [
        (
            "url_preview_ip_range_blacklist",
            &config.media.url_preview_ip_range_blacklist,
        ),
        (
            "url_preview_ip_range_whitelist",
            &config.media.url_preview_ip_range_whitelist,
        ),
    ] {
        for range in list.iter().flatten() {
            if let Err(e) = range.parse::<warren_core::config::IpRange>() {
                bail!("media.{key}: {e}");
            }
        }
    }
    let m = &config.mailbox;
    for owner in m.allowed_owners.iter().flatten() {
        if warren_core::identity::public_key_from_server_name(owner).is_none() {
            bail!("mailbox.allowed_owners: {owner:?} is not a server name (64 hex characters)");
        }
    }
    for (key, v) in [
        ("max_owners", m.max_owners.map(|v| v as u64)),
        ("owner_quota_bytes", m.owner_quota_bytes),
        ("depositor_quota_bytes", m.depositor_quota_bytes),
        ("max_deposits_per_owner", m.max_deposits_per_owner),
        ("ttl_secs", m.ttl_secs),
    ] {
        if v == Some(0) {
            bail!("mailbox.{key} must be at least 1");
        }
    }
    if config.refreshable_access_token_lifetime_secs == Some(0) {
        bail!("refreshable_access_token_lifetime_secs must be at least 1");
    }
    if let Some(v) = &config.default_room_version
        && !warren_core::events::SUPPORTED_ROOM_VERSIONS.contains(&v.as_str())
    {
        bail!(
            "default_room_version {v:?} is not one this build supports ({})",
            warren_core::events::SUPPORTED_ROOM_VERSIONS.join(", ")
        );
    }
    let voip = &config.voip;
    for uri in voip.turn_uris.iter().flatten() {
        if !["turn:", "turns:", "stun:", "stuns:"]
            .iter()
            .any(|p| uri.starts_with(p))
        {
            bail!("voip.turn_uris: {uri:?} must start with turn:, turns:, stun: or stuns:");
        }
    }
    if voip.turn_user_lifetime_secs == Some(0) {
        bail!("voip.turn_user_lifetime_secs must be at least 1");
    }
    if let Some(url) = &voip.livekit_service_url
        && !(url.starts_with("https://") || url.starts_with("http://"))
    {
        bail!("voip.livekit_service_url: {url:?} must be an http(s) URL");
    }
    let p = &config.push;
    for (key, v) in [
        ("queue_rows", p.queue_rows.map(|v| v as u64)),
        ("queue_max_age_secs", p.queue_max_age_secs),
        ("request_timeout_secs", p.request_timeout_secs),
        ("backoff_cap_secs", p.backoff_cap_secs),
    ] {
        if v == Some(0) {
            bail!("push.{key} must be at least 1");
        }
    }
    if p.on_notify.as_deref().is_some_and(|c| c.trim().is_empty()) {
        bail!("push.on_notify must not be empty");
    }
    for addr in config.p2p.bootstrap.iter().flatten() {
        if !addr.contains("/p2p/") {
            bail!("p2p.bootstrap: {addr:?} must end in /p2p/<peer id>");
        }
    }
    let p = &config.p2p;
    for (key, v) in [
        (
            "relay_max_reservations",
            p.relay_max_reservations.map(|v| v as u64),
        ),
        ("relay_max_circuits", p.relay_max_circuits.map(|v| v as u64)),
        (
            "relay_max_circuits_per_peer",
            p.relay_max_circuits_per_peer.map(|v| v as u64),
        ),
        ("relay_max_circuit_bytes", p.relay_max_circuit_bytes),
        ("relay_max_circuit_secs", p.relay_max_circuit_secs),
    ] {
        if v == Some(0) {
            bail!("p2p.{key} must be at least 1");
        }
    }
    let mut relay = warren_p2p::RelayLimits::default();
    p.apply_relay_limits(&mut relay);
    if relay.max_circuits_per_peer > relay.max_circuits {
        bail!("p2p.relay_max_circuits_per_peer must be at most p2p.relay_max_circuits");
    }
    Ok(config)
}

/// toml's message on one line: the key path and what was wrong.
fn explain(e: &toml::de::Error) -> String {
    e.message().replace('\n', " ").trim().to_owned()
}

/// Create the commented template if the data directory has no file yet.
pub fn create_if_missing(data_dir: &Path) -> anyhow::Result<()> {
    let path = path(data_dir);
    if path.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create {}", data_dir.display()))?;
    std::fs::write(&path, TEMPLATE).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use warren_core::ratelimit::Action;

    #[test]
    fn the_template_parses_to_all_defaults() {
        let parsed = parse(TEMPLATE).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(parsed, FileConfig::default());
    }

    #[test]
    fn values_and_errors() {
        let ok = parse(
            "client_addr = \"127.0.0.1:9000\"\nregistration = \"closed\"\n[p2p]\nmdns = false\n",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            ok.client_addr,
            Some(SocketAddr::from(([127, 0, 0, 1], 9000)))
        );
        assert_eq!(ok.registration, Some(Registration::Closed));
        assert_eq!(ok.p2p.mdns, Some(false));

        let err = |text: &str| match parse(text) {
            Ok(c) => panic!("{text:?} must be refused, got {c:?}"),
            Err(e) => format!("{e:#}"),
        };
        let e = err("colour = \"blue\"\n");
        assert!(e.contains("colour") && e.contains("client_addr"), "{e}");
        let e = err("registration = \"sometimes\"\n");
        assert!(e.contains("sometimes") && e.contains("closed"), "{e}");
        let e = err("client_addr = \"localhost\"\n");
        assert!(
            e.contains("socket address") || e.contains("client_addr"),
            "{e}"
        );
        let e = err("[p2p]\nbootstrap = [\"/ip4/1.2.3.4/tcp/1\"]\n");
        assert!(e.contains("p2p.bootstrap"), "{e}");
        let e = err("[p2p]\nlisten = [\"nonsense\"]\n");
        assert!(e.contains("p2p.listen"), "{e}");
        let e = err("[p2p]\nmdsn = true\n");
        assert!(e.contains("mdsn"), "{e}");
        let e = err("[p2p]\nrelay_max_circuits = 0\n");
        assert!(e.contains("p2p.relay_max_circuits"), "{e}");
        let e = err("[p2p]\nrelay_max_circuits = 2\nrelay_max_circuits_per_peer = 3\n");
        assert!(e.contains("p2p.relay_max_circuits_per_peer"), "{e}");
        let e = err("[rate_limits]\nmessage = { per_second = 1, burst = 0 }\n");
        assert!(e.contains("rate_limits.message.burst"), "{e}");
        let e = err("[rate_limits]\nmesage = { per_second = 1, burst = 2 }\n");
        assert!(e.contains("mesage"), "{e}");
        let e = err("[limits]\nmax_connections = 0\n");
        assert!(e.contains("limits.max_connections"), "{e}");
        let e = err("[media]\nremote_cache_bytes = 0\n");
        assert!(e.contains("media.remote_cache_bytes"), "{e}");
        let e = err("[media]\nprefech = false\n");
        assert!(e.contains("prefech"), "{e}");
    }

    #[test]
    fn default_room_version_is_checked() {
        assert!(parse("default_room_version = \"11\"\n").is_ok());
        assert!(parse("default_room_version = \"1\"\n").is_ok());
        let e = parse("default_room_version = \"99\"\n")
            .map(|_| ())
            .expect_err("version 99 is not supported");
        assert!(format!("{e:#}").contains("default_room_version"), "{e:#}");
    }

    #[test]
    fn voip_is_checked_and_applied() {
        let err = |text: &str| match parse(text) {
            Ok(c) => panic!("{text:?} must be refused, got {c:?}"),
            Err(e) => format!("{e:#}"),
        };
        let e = err("[voip]\nturn_uris = [\"http://x\"]\n");
        assert!(e.contains("voip.turn_uris"), "{e}");
        let e = err("[voip]\nlivekit_service_url = \"ftp://x\"\n");
        assert!(e.contains("voip.livekit_service_url"), "{e}");
        let parsed = parse(
            "[voip]\nturn_uris = [\"turn:t.example:3478\"]\nturn_shared_secret = \"s\"\n\
             turn_user_lifetime_secs = 60\n",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut config = warren_core::Config::new("/tmp/x");
        parsed.voip.apply(&mut config);
        assert_eq!(
            config.voip.turn_uris,
            vec!["turn:t.example:3478".to_owned()]
        );
        assert_eq!(config.voip.turn_shared_secret.as_deref(), Some("s"));
        assert_eq!(
            config.voip.turn_user_lifetime.map(|d| d.as_secs()),
            Some(60)
        );
    }

    #[test]
    fn url_preview_keys_are_checked_and_applied() {
        let err = |text: &str| match parse(text) {
            Ok(c) => panic!("{text:?} must be refused, got {c:?}"),
            Err(e) => format!("{e:#}"),
        };
        let e = err("[media]\nurl_preview_ip_range_blacklist = [\"10.0.0.0/40\"]\n");
        assert!(e.contains("media.url_preview_ip_range_blacklist"), "{e}");
        let e = err("[media]\nurl_preview_timeout_secs = 0\n");
        assert!(e.contains("media.url_preview_timeout_secs"), "{e}");
        let parsed = parse(
            "[media]\nurl_preview_enabled = true\nurl_preview_ip_range_whitelist = [\"127.0.0.1\"]\n\
             url_preview_max_bytes = 1000\nurl_preview_timeout_secs = 3\nurl_preview_cache_entries = 7\n",
        )
        .expect("valid");
        let mut config = warren_core::Config::new("/tmp/x");
        assert!(!config.media.url_preview.enabled, "off by default");
        parsed.media.apply(&mut config);
        let p = &config.media.url_preview;
        assert!(p.enabled);
        assert!(p.allows("127.0.0.1".parse().expect("ip")));
        assert!(
            !p.allows("10.0.0.1".parse().expect("ip")),
            "the default deny list stays"
        );
        assert_eq!(p.max_bytes, 1000);
        assert_eq!(p.timeout, std::time::Duration::from_secs(3));
        assert_eq!(p.cache_entries, 7);
    }

    #[test]
    fn media_applies_on_top_of_the_defaults() {
        let parsed = parse("[media]\nremote_cache_bytes = 1000\nprefetch = false\n")
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut config = warren_core::Config::new("/tmp/x");
        parsed.media.apply(&mut config);
        assert_eq!(config.media.remote_cache_bytes, 1000);
        assert!(!config.media.prefetch);
        assert_eq!(
            config.media.prefetch_max_bytes,
            warren_core::config::DEFAULT_PREFETCH_MAX_BYTES
        );
    }

    #[test]
    fn mailbox_applies_on_top_of_the_defaults_and_checks_owners() {
        let owner = "ab".repeat(32);
        let parsed = parse(&format!(
            "[mailbox]\nallowed_owners = [\"{owner}\"]\nttl_secs = 60\nserve = false\n"
        ))
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut config = warren_core::Config::new("/tmp/x");
        parsed.mailbox.apply(&mut config);
        assert_eq!(config.mailbox.allowed_owners, vec![owner]);
        assert_eq!(config.mailbox.ttl, std::time::Duration::from_secs(60));
        assert!(!config.mailbox.serve);
        assert_eq!(config.mailbox.max_owners, 8);
        let e = parse("[mailbox]\nallowed_owners = [\"@me:x\"]\n").map(|_| ());
        assert!(
            format!(
                "{:#}",
                e.err().unwrap_or_else(|| anyhow::anyhow!("accepted"))
            )
            .contains("mailbox.allowed_owners")
        );
        assert!(parse("[mailbox]\nmax_owners = 0\n").is_err());
    }

    #[test]
    fn limits_and_rate_limits_apply_on_top_of_the_defaults() {
        let parsed = parse(
            "[limits]\nmax_connections = 32\nidle_timeout_secs = 5\n\
             [rate_limits]\nmessage = { per_second = 2, burst = 4 }\n",
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut config = warren_core::Config::new("/tmp/x");
        parsed.limits.apply(&mut config);
        parsed.rate_limits.apply(&mut config.rate_limits);
        assert_eq!(config.connections.max_connections, 32);
        assert_eq!(config.connections.idle_timeout.as_secs(), 5);
        assert_eq!(
            config.rate_limits.rate(Action::Message),
            Some(warren_core::config::Rate::new(2.0, 4.0))
        );
        assert_eq!(
            config.rate_limits.rate(Action::Join),
            warren_core::RateLimits::default().rate(Action::Join)
        );
        let off = parse("[rate_limits]\nenabled = false\n").unwrap_or_else(|e| panic!("{e:#}"));
        off.rate_limits.apply(&mut config.rate_limits);
        assert_eq!(config.rate_limits, warren_core::RateLimits::off());
    }
}
