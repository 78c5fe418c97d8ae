//! `warren.toml`: the node's configuration file in its data directory.
//!
//! Precedence, lowest first: built-in defaults, this file, `WARREN_*` environment
//! variables, command-line flags. Unknown keys and bad values are errors that name the
//! key and say what is allowed; `warren config check` reports them without starting.

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

# Log level (error, warn, info, debug, trace, off, or a filter such as
# "info,warren_p2p=debug") and format ("text" or "json").
# log_level = "info"
# log_format = "text"

[p2p]
# Addresses to listen on for other nodes (default: QUIC and TCP on all interfaces,
# random ports).
# listen = ["/ip4/0.0.0.0/udp/0/quic-v1", "/ip4/0.0.0.0/tcp/0"]
# Peers to connect to at start, each ending in /p2p/<peer id>.
# bootstrap = []
# Discover peers on the LAN by multicast DNS.
# mdns = true
# Relay traffic for peers that cannot reach each other directly.
# relay_server = false
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
}

/// The whole file; absent keys fall back to the next source.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub client_addr: Option<SocketAddr>,
    pub registration: Option<Registration>,
    pub registration_tokens: Option<Vec<String>>,
    pub max_upload_bytes: Option<u64>,
    pub log_level: Option<String>,
    pub log_format: Option<FileLogFormat>,
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
    for addr in config.p2p.bootstrap.iter().flatten() {
        if !addr.contains("/p2p/") {
            bail!("p2p.bootstrap: {addr:?} must end in /p2p/<peer id>");
        }
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
    }
}
