//! Link options of the `warren` binary.
//!
//! On Linux with glibc the binary is linked with packed relative relocations (DT_RELR,
//! `-z pack-relative-relocs`): a position-independent executable of this size has ~45,000
//! relative relocations, which as a classic `.rela.dyn` table take 1.1 MB that the
//! dynamic loader reads at every start and that then stay in the process's memory;
//! packed, 11 KB (docs/performance.md, "Memory"). Needs GNU ld ≥ 2.38 or lld ≥ 15 to
//! link, and the binary then needs glibc ≥ 2.36 (`GLIBC_ABI_DT_RELR`) to run.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let env = std::env::var("CARGO_CFG_TARGET_ENV").unwrap_or_default();
    if os == "linux" && env == "gnu" {
        println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");
    }
}
