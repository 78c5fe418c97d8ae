//! Typed node configuration with defaults that need no editing.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

pub use crate::ratelimit::{Rate, RateLimits};

/// Who may create accounts through `/register`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RegistrationPolicy {
    /// Open when the client API listens on loopback only (the device's own apps),
    /// closed otherwise unless a registration token is presented.
    #[default]
    Auto,
    /// Anyone who can reach the client API may register.
    Open,
    /// Only with a registration token.
    Closed,
}

/// Everything a node needs to start.
#[derive(Clone, Debug)]
pub struct Config {
    /// Holds the signing key, the SQLite database and the lock file.
    pub data_dir: PathBuf,
    /// Where the client-server API listens. Port 0 picks a free port.
    pub client_addr: SocketAddr,
    /// Largest accepted request body on the client API (JSON endpoints).
    pub max_request_bytes: usize,
    /// Largest accepted media upload, in bytes (`m.upload.size`).
    pub max_upload_bytes: u64,
    /// Registration policy, see [`RegistrationPolicy`].
    pub registration: RegistrationPolicy,
    /// Tokens accepted by `m.login.registration_token`.
    pub registration_tokens: Vec<String>,
    /// How often (before jitter) anti-entropy asks each connected peer what we miss in
    /// the rooms we share (it also runs when a peer connects).
    pub anti_entropy_interval: Duration,
    /// Rate limits (token buckets per user, address and peer); see [`RateLimits`].
    pub rate_limits: RateLimits,
    /// Limits on client API connections; see [`ConnectionLimits`].
    pub connections: ConnectionLimits,
    /// Bounds of the federation outbox per destination; see [`OutboxLimits`].
    pub outbox: OutboxLimits,
    /// Holding mail for other nodes (this node as a mailbox); see [`MailboxConfig`].
    pub mailbox: MailboxConfig,
    /// The cache and prefetching of other nodes' media; see [`MediaConfig`].
    pub media: MediaConfig,
    /// The version of rooms created without one (`createRoom`, `/capabilities`); one of
    /// [`SUPPORTED_ROOM_VERSIONS`](crate::events::SUPPORTED_ROOM_VERSIONS).
    pub default_room_version: String,
    /// TURN servers for calls and the MatrixRTC focus; see [`VoipConfig`].
    pub voip: VoipConfig,
    /// Delivery to push gateways (http pushers); see [`PushConfig`].
    pub push: PushConfig,
    /// Application service registration files (Synapse's YAML format).
    pub app_service_config_files: Vec<PathBuf>,
    /// How long an access token lives when the client asked for a refresh token
    /// (`refresh_token: true` on `/login` or `/register`); tokens issued without one
    /// never expire.
    pub refreshable_access_token_lifetime: Duration,
}

/// Default lifetime of refreshable access tokens: five minutes, as Synapse's
/// `refreshable_access_token_lifetime`.
pub const DEFAULT_REFRESHABLE_ACCESS_TOKEN_LIFETIME: Duration = Duration::from_secs(5 * 60);

/// What clients need for calls: TURN servers (`/voip/turnServer`) and, for Element Call,
/// a LiveKit focus (`/.well-known/matrix/client`). Nothing configured: no TURN servers
/// (clients then try direct and STUN-only connections) and no focus.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VoipConfig {
    /// TURN URIs handed to clients, e.g. `turn:turn.example.org:3478?transport=udp`.
    pub turn_uris: Vec<String>,
    /// Shared secret of the TURN server (coturn's `static-auth-secret`): each user gets
    /// time-limited credentials made from it, as Synapse's `turn_shared_secret`.
    pub turn_shared_secret: Option<String>,
    /// Fixed TURN credentials, used when no shared secret is set.
    pub turn_username: Option<String>,
    /// See `turn_username`.
    pub turn_password: Option<String>,
    /// How long credentials made from the shared secret stay valid (default a day).
    pub turn_user_lifetime: Option<Duration>,
    /// A LiveKit JWT service for MatrixRTC (Element Call), advertised in
    /// `/.well-known/matrix/client` as `org.matrix.msc4143.rtc_foci`.
    pub livekit_service_url: Option<String>,
}

/// Delivery to push gateways: the per-pusher queue's bounds, the HTTP client's timeout
/// and the retry backoff's ceiling.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PushConfig {
    /// Notifications kept queued per pusher while its gateway fails; past it the oldest
    /// are dropped (a phone shows the newest, and the badge count is current anyway).
    pub queue_rows: usize,
    /// Queued notifications older than this are dropped.
    pub queue_max_age: Duration,
    /// A request to a gateway (connect, send, answer) must finish within this long.
    pub request_timeout: Duration,
    /// Largest delay between retries of a failing gateway.
    pub backoff_cap: Duration,
}

impl Default for PushConfig {
    fn default() -> Self {
        PushConfig {
            queue_rows: 100,
            queue_max_age: Duration::from_secs(24 * 3600),
            request_timeout: Duration::from_secs(15),
            backoff_cap: Duration::from_secs(600),
        }
    }
}

/// Media of other nodes: how much is kept, and what is fetched before anyone asks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaConfig {
    /// Bytes of other nodes' media (originals and thumbnails made of them) kept on disk.
    /// Past it the least recently read items are evicted; this node's own media is never
    /// evicted and does not count. Also the largest remote file fetched at all.
    pub remote_cache_bytes: u64,
    /// Fetch media that events arriving from other nodes refer to (attachments,
    /// stickers, avatars) in the background, so it outlives the sender's device.
    pub prefetch: bool,
    /// Largest file fetched by prefetching; larger ones are fetched when a client asks.
    pub prefetch_max_bytes: u64,
    /// URL previews (`/preview_url`): off unless switched on.
    pub url_preview: UrlPreviewConfig,
}

/// Default remote media cache: 512 MiB.
pub const DEFAULT_REMOTE_CACHE_BYTES: u64 = 512 * 1024 * 1024;
/// Default largest prefetched file: 16 MiB (the P2P transport's default response cap).
pub const DEFAULT_PREFETCH_MAX_BYTES: u64 = 16 * 1024 * 1024;

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            remote_cache_bytes: DEFAULT_REMOTE_CACHE_BYTES,
            prefetch: true,
            prefetch_max_bytes: DEFAULT_PREFETCH_MAX_BYTES,
            url_preview: UrlPreviewConfig::default(),
        }
    }
}

/// URL previews: the node fetches a URL a client names and answers with its OpenGraph
/// data. Off by default: the node would fetch arbitrary URLs for any local user, from
/// the device's network (its LAN, its router, services on loopback).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UrlPreviewConfig {
    /// Serve `/preview_url` at all (Synapse's `url_preview_enabled`).
    pub enabled: bool,
    /// Addresses never fetched from, whatever a URL or its redirects resolve to
    /// (Synapse's `url_preview_ip_range_blacklist`); the default is every private,
    /// loopback, link-local, multicast and documentation range.
    pub ip_range_blacklist: Vec<IpRange>,
    /// Exceptions to the deny list (Synapse's `url_preview_ip_range_whitelist`).
    pub ip_range_whitelist: Vec<IpRange>,
    /// Largest response body read, in bytes (Synapse's `max_spider_size`); past it the
    /// fetch fails.
    pub max_bytes: u64,
    /// Time allowed for a whole preview: redirects, the page and its image.
    pub timeout: Duration,
    /// Previews kept in memory (an hour each), least recently made dropped first.
    pub cache_entries: usize,
}

/// Default largest previewed body: 10 MiB, as Synapse's `max_spider_size`.
pub const DEFAULT_URL_PREVIEW_MAX_BYTES: u64 = 10 * 1024 * 1024;
/// Default time for a preview.
pub const DEFAULT_URL_PREVIEW_TIMEOUT: Duration = Duration::from_secs(10);
/// Default previews cached.
pub const DEFAULT_URL_PREVIEW_CACHE_ENTRIES: usize = 256;

/// The ranges URL previews never fetch from by default: those of Synapse's sample
/// `url_preview_ip_range_blacklist`, plus "this network" and the unspecified addresses.
pub const DEFAULT_URL_PREVIEW_BLACKLIST: &[&str] = &[
    "0.0.0.0/8",
    "127.0.0.0/8",
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "192.0.0.0/24",
    "169.254.0.0/16",
    "192.88.99.0/24",
    "198.18.0.0/15",
    "192.0.2.0/24",
    "198.51.100.0/24",
    "203.0.113.0/24",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/128",
    "::1/128",
    "fe80::/10",
    "fc00::/7",
    "2001:db8::/32",
    "ff00::/8",
    "fec0::/10",
];

impl Default for UrlPreviewConfig {
    fn default() -> Self {
        UrlPreviewConfig {
            enabled: false,
            ip_range_blacklist: DEFAULT_URL_PREVIEW_BLACKLIST
                .iter()
                .filter_map(|r| r.parse().ok())
                .collect(),
            ip_range_whitelist: Vec::new(),
            max_bytes: DEFAULT_URL_PREVIEW_MAX_BYTES,
            timeout: DEFAULT_URL_PREVIEW_TIMEOUT,
            cache_entries: DEFAULT_URL_PREVIEW_CACHE_ENTRIES,
        }
    }
}

impl UrlPreviewConfig {
    /// Whether previews may fetch from `ip` (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn allows(&self, ip: std::net::IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ip_range_whitelist.iter().any(|r| r.contains(ip))
            || !self.ip_range_blacklist.iter().any(|r| r.contains(ip))
    }
}

/// An IP range in CIDR notation (`10.0.0.0/8`, `fe80::/10`; a bare address is one
/// address).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IpRange {
    addr: std::net::IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (an IPv4 range never holds an IPv6 address).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        use std::net::IpAddr;
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: std::net::IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("{s:?} is not an IP address or CIDR range"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{s:?} has a bad prefix length (0 to {max})"))?,
        };
        Ok(IpRange { addr, prefix })
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// How much the outbox keeps for a destination that does not take it. A server that
/// vanished (server names are free to mint) would otherwise hold rows for ever. What is
/// dropped is recovered: PDUs by anti-entropy and backfill when the destination is back,
/// device lists by the stale-list refetch; typing, receipts and presence are ephemeral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxLimits {
    /// Rows kept per destination; older ones are dropped first.
    pub max_rows: usize,
    /// Rows older than this are dropped.
    pub max_age: Duration,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_rows: 10_000,
            max_age: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// This node as a mailbox: what it holds for nodes that named it (see
/// [`crate::mailbox`]). A deposit past a bound is refused with `429 M_LIMIT_EXCEEDED`
/// (room frees up as the owner drains its mail or deposits expire); the depositor keeps
/// it in its outbox (within [`OutboxLimits`]) and anti-entropy covers the rest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxConfig {
    /// Hold deposits for nodes that name this one as a mailbox.
    pub serve: bool,
    /// Hold deposits only for these owners (server names); empty: for any node that
    /// names this one, within the bounds below.
    pub allowed_owners: Vec<String>,
    /// Most owners deposits are held for at once.
    pub max_owners: usize,
    /// Bytes held for one owner.
    pub owner_quota_bytes: u64,
    /// Bytes held for one owner from one depositor.
    pub depositor_quota_bytes: u64,
    /// Deposits held for one owner.
    pub max_deposits_per_owner: u64,
    /// How long a deposit is held before it is dropped.
    pub ttl: Duration,
}

impl Default for MailboxConfig {
    fn default() -> Self {
        MailboxConfig {
            serve: true,
            allowed_owners: Vec::new(),
            max_owners: 8,
            owner_quota_bytes: 32 * 1024 * 1024,
            depositor_quota_bytes: 8 * 1024 * 1024,
            max_deposits_per_owner: 10_000,
            ttl: Duration::from_secs(7 * 24 * 3600),
        }
    }
}

/// Bounds on the client API's connections (see `client_api::listener`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Most client connections open at once. A new connection past the cap closes the
    /// connection that has been idle longest; if every connection has a request in
    /// flight, the new one is closed instead. Kept well below the usual 1,024 open-files
    /// limit, which the database, media and the P2P transport share.
    pub max_connections: usize,
    /// A request's headers must arrive within this long of its first byte (or of the
    /// connection opening), or the connection is closed.
    pub header_read_timeout: Duration,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// A request (body included) must be answered within this long, or it gets
    /// `504 M_UNKNOWN`. Long-polls (`/sync`, sliding sync) wait at most 60 s by design.
    pub request_timeout: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            max_connections: DEFAULT_MAX_CONNECTIONS,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: Duration::from_secs(180),
        }
    }
}

/// Default cap on client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default anti-entropy period.
pub const DEFAULT_ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(60);

/// Default client API address: loopback only, the port clients expect.
pub const DEFAULT_CLIENT_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 8008);

/// Default body limit for JSON requests (Synapse uses a similar order of magnitude).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1024 * 1024;

/// Default media upload limit: 50 MiB, enough for phone photos and short videos.
pub const DEFAULT_MAX_UPLOAD_BYTES: u64 = 50 * 1024 * 1024;

impl Config {
    /// A configuration with every default filled in.
    pub fn new(data_dir: impl Into<PathBuf>) -> Config {
        Config {
            data_dir: data_dir.into(),
            client_addr: DEFAULT_CLIENT_ADDR,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            max_upload_bytes: DEFAULT_MAX_UPLOAD_BYTES,
            registration: RegistrationPolicy::Auto,
            registration_tokens: Vec::new(),
            anti_entropy_interval: DEFAULT_ANTI_ENTROPY_INTERVAL,
            rate_limits: RateLimits::default(),
            connections: ConnectionLimits::default(),
            outbox: OutboxLimits::default(),
            mailbox: MailboxConfig::default(),
            media: MediaConfig::default(),
            default_room_version: crate::events::DEFAULT_ROOM_VERSION.to_owned(),
            voip: VoipConfig::default(),
            push: PushConfig::default(),
            app_service_config_files: Vec::new(),
            refreshable_access_token_lifetime: DEFAULT_REFRESHABLE_ACCESS_TOKEN_LIFETIME,
        }
    }

    /// Whether `/register` without a token is allowed under this configuration.
    pub fn registration_open(&self) -> bool {
        match self.registration {
            RegistrationPolicy::Open => true,
            RegistrationPolicy::Closed => false,
            RegistrationPolicy::Auto => self.client_addr.ip().is_loopback(),
        }
    }

    /// Where media files live: `<data_dir>/media`.
    pub fn media_dir(&self) -> PathBuf {
        self.data_dir.join("media")
    }

    /// The SQLite database file.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("warren.db")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip_ranges_parse_and_match() {
        let r: IpRange = "10.0.0.0/8".parse().expect("range");
        assert!(r.contains("10.1.2.3".parse().expect("ip")));
        assert!(!r.contains("11.0.0.1".parse().expect("ip")));
        let one: IpRange = "192.0.2.1".parse().expect("address");
        assert!(one.contains("192.0.2.1".parse().expect("ip")));
        assert!(!one.contains("192.0.2.2".parse().expect("ip")));
        let all: IpRange = "::/0".parse().expect("range");
        assert!(all.contains("2001:db8::1".parse().expect("ip")));
        assert!(!all.contains("10.0.0.1".parse().expect("ip")));
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("nope/8".parse::<IpRange>().is_err());
        let defaults = UrlPreviewConfig::default();
        assert_eq!(
            defaults.ip_range_blacklist.len(),
            DEFAULT_URL_PREVIEW_BLACKLIST.len()
        );
        for denied in [
            "127.0.0.1",
            "192.168.1.1",
            "::1",
            "fe80::1",
            "::ffff:10.0.0.1",
            "0.0.0.0",
        ] {
            assert!(!defaults.allows(denied.parse().expect("ip")), "{denied}");
        }
        for allowed in ["93.184.216.34", "2606:2800:220:1::1"] {
            assert!(defaults.allows(allowed.parse().expect("ip")), "{allowed}");
        }
        let mut open = defaults.clone();
        open.ip_range_whitelist = vec!["127.0.0.1/32".parse().expect("range")];
        assert!(open.allows("127.0.0.1".parse().expect("ip")));
        assert!(!open.allows("127.0.0.2".parse().expect("ip")));
    }

    #[test]
    fn auto_registration_follows_loopback() {
        let mut c = Config::new("/tmp/x");
        assert!(c.registration_open());
        c.client_addr = "0.0.0.0:8008".parse().expect("addr");
        assert!(!c.registration_open());
        c.registration = RegistrationPolicy::Open;
        assert!(c.registration_open());
    }
}
