//! Blocking work called from async code.

/// Run blocking work from async code without stalling the runtime's other tasks: in
/// `block_in_place` on a multi-threaded runtime, directly elsewhere (a current-thread
/// runtime, which cannot give its thread away, or no runtime at all).
pub fn off_the_reactor<R>(f: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => tokio::task::block_in_place(f),
        _ => f(),
    }
}
