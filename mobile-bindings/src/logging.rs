//! Logs: `tracing` to stderr, with a filter the app can change while the node runs.
//!
//! The subscriber is process-wide and installed once, by the first [`crate::Node`] that
//! starts. If the app (or a test harness) installed its own `tracing` subscriber first,
//! Warren's logs go there and [`set_level`] has no effect.

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Registry, reload};

use crate::WarrenError;

type Handle = reload::Handle<EnvFilter, Registry>;

/// `Some` when our subscriber is the global one.
static FILTER: OnceLock<Option<Handle>> = OnceLock::new();

/// Parse a level or filter directive: `error`, `warn`, `info`, `debug`, `trace`, `off`,
/// or an `EnvFilter` string such as `warn,warren_p2p=debug`.
pub(crate) fn parse(level: &str) -> Result<EnvFilter, WarrenError> {
    let level = level.trim();
    if level.is_empty() {
        return Err(WarrenError::invalid("log level must not be empty"));
    }
    EnvFilter::try_new(level)
        .map_err(|e| WarrenError::invalid(format!("invalid log level {level:?}: {e}")))
}

/// Install the subscriber (first call) or change its filter (later calls).
pub(crate) fn init(level: &str) -> Result<(), WarrenError> {
    let filter = parse(level)?;
    let mut unused = Some(filter);
    FILTER.get_or_init(|| {
        let filter = unused.take()?;
        let (layer, handle) = reload::Layer::new(filter);
        let fmt = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false);
        Registry::default()
            .with(layer)
            .with(fmt)
            .try_init()
            .ok()
            .map(|()| handle)
    });
    match unused {
        // Already installed earlier: apply the level now.
        Some(filter) => reload(filter),
        None => Ok(()),
    }
}

/// Change the filter of the installed subscriber.
pub(crate) fn set_level(level: &str) -> Result<(), WarrenError> {
    let filter = parse(level)?;
    if FILTER.get().is_none() {
        return init(level);
    }
    reload(filter)
}

fn reload(filter: EnvFilter) -> Result<(), WarrenError> {
    match FILTER.get() {
        Some(Some(handle)) => handle
            .reload(filter)
            .map_err(|e| WarrenError::internal(format!("cannot change the log level: {e}"))),
        // Someone else's subscriber: nothing of ours to change.
        _ => Ok(()),
    }
}
