//! tracing-subscriber set-up: an `EnvFilter` from RUST_LOG or `--log-level`, text or JSON
//! lines on stderr.

use std::io::IsTerminal as _;
use std::str::FromStr as _;

use anyhow::{Context as _, anyhow, bail};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::LevelFilter;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Install the global subscriber. RUST_LOG wins over `level` when it is set and non-empty.
pub fn init(level: &str, format: LogFormat) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directives) if !directives.trim().is_empty() => EnvFilter::try_new(&directives)
            .with_context(|| format!("invalid RUST_LOG {directives:?}"))?,
        Ok(_) | Err(std::env::VarError::NotPresent) => filter_from_level(level)?,
        Err(std::env::VarError::NotUnicode(_)) => bail!("RUST_LOG is not valid UTF-8"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).json().try_init(),
    };
    installed.map_err(|e| anyhow!("could not set up logging: {e}"))
}

/// Libraries too chatty at `info` for a node's everyday log: ruma's state resolution logs
/// every auth check of every event; libp2p logs every interface mDNS binds to, and
/// Kademlia warns about a failed bootstrap each time a node that knows no peer yet (the
/// normal state of a fresh node) gains a listen address. `--log-level info` (the default) holds them at
/// `warn`; any other level, an explicit filter, or RUST_LOG shows them as asked.
const QUIET_AT_INFO: &[(&str, &str)] = &[
    ("ruma_state_res", "warn"),
    ("libp2p_swarm", "warn"),
    ("libp2p_mdns", "warn"),
    ("libp2p_kad", "error"),
];

/// A bare word must be a level name: `EnvFilter` would otherwise read a typo such as
/// `verbose` as "everything from target `verbose`" and silently log nothing else.
fn filter_from_level(level: &str) -> anyhow::Result<EnvFilter> {
    let level = level.trim();
    let looks_like_directives = level.contains(['=', ',', '[', ':']);
    // Each `target=level` directive must name a real level too: EnvFilter would read an
    // unknown one as a span-field match and quietly accept it.
    let bad_directive = level
        .split(',')
        .filter_map(|d| d.rsplit_once('='))
        .any(|(_, lvl)| LevelFilter::from_str(lvl.trim()).is_err());
    if level.is_empty()
        || bad_directive
        || (!looks_like_directives && LevelFilter::from_str(level).is_err())
    {
        bail!(
            "invalid --log-level {level:?}: use error, warn, info, debug, trace, off, \
             or a filter such as info,warren_core=debug"
        );
    }
    let directives = if level.eq_ignore_ascii_case("info") {
        std::iter::once(level.to_owned())
            .chain(
                QUIET_AT_INFO
                    .iter()
                    .map(|(target, at)| format!("{target}={at}")),
            )
            .collect::<Vec<_>>()
            .join(",")
    } else {
        level.to_owned()
    };
    EnvFilter::try_new(&directives).with_context(|| format!("invalid --log-level {level:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_and_directives() {
        for ok in [
            "info",
            "DEBUG",
            "off",
            "info,warren_core=debug",
            "warren_core=trace",
        ] {
            assert!(filter_from_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "", "info,warren_core=loud"] {
            assert!(filter_from_level(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn info_holds_chatty_libraries_at_warn() {
        let shown = |level: &str| match filter_from_level(level) {
            Ok(filter) => filter.to_string(),
            Err(e) => panic!("{level}: {e:#}"),
        };
        assert!(
            shown("info").contains("ruma_state_res=warn"),
            "{}",
            shown("info")
        );
        assert!(
            !shown("debug").contains("ruma_state_res"),
            "{}",
            shown("debug")
        );
        assert!(
            !shown("warn").contains("ruma_state_res"),
            "{}",
            shown("warn")
        );
        assert!(!shown("info,ruma_state_res=info").contains("=warn"));
    }
}
