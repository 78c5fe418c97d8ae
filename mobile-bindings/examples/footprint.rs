//! Footprint of an embedded node: the size of a built library and the memory of an idle
//! node.
//!
//! ```sh
//! # the library apps ship (slow: fat LTO, one codegen unit)
//! cargo build -p warren-mobile --lib --no-default-features --profile release-mobile
//! cargo run -p warren-mobile --example footprint --profile release-mobile -- \
//!     target/release-mobile/libwarren_mobile.so
//! ```
//!
//! Arguments: any number of library files (`.so`, `.a`, `.dylib`) whose sizes to print.
//! Then it starts a node (loopback P2P, no mDNS) in a temporary directory, lets it idle
//! for `IDLE_SECS` (default 3) seconds and prints the process's resident memory from
//! `/proc/self/status` (Linux and Android only) before start, after start and after idling.

use std::time::Duration;

use warren_mobile::{Node, NodeConfig};

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `VmRSS` and `VmHWM` (peak) of this process, in bytes, if the platform has them.
fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

fn print_rss(when: &str) {
    match rss() {
        Some((now, peak)) => println!("rss {when}: {} (peak {})", mib(now), mib(peak)),
        None => println!("rss {when}: unknown (no /proc/self/status)"),
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for path in std::env::args().skip(1) {
        let size = std::fs::metadata(&path)
            .map_err(|e| format!("cannot read {path}: {e}"))?
            .len();
        println!("library {path}: {size} bytes ({})", mib(size));
    }
    let idle = std::env::var("IDLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    let dir = tempfile::tempdir()?;
    let config = NodeConfig {
        data_dir: dir.path().join("node").display().to_string(),
        client_port: 0,
        listen_addrs: vec![
            "/ip4/127.0.0.1/udp/0/quic-v1".into(),
            "/ip4/127.0.0.1/tcp/0".into(),
        ],
        bootstrap_peers: Vec::new(),
        mdns: false,
        log_level: "warn".into(),
    };
    // The caller's side: a minimal executor, as a foreign language would bring.
    let caller = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    print_rss("before start");
    let node = caller.block_on(Node::start(config))?;
    print_rss("after start");
    std::thread::sleep(Duration::from_secs(idle));
    print_rss(&format!("after {idle} s idle"));
    caller.block_on(node.stop())?;
    Ok(())
}
