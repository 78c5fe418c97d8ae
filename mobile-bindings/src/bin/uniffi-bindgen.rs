//! uniffi's bindings generator, built from this workspace so that its version always
//! matches the `uniffi` the library was built with. See `mobile-bindings/generate.sh`.
//!
//! ```sh
//! cargo run -p warren-mobile --bin uniffi-bindgen -- generate \
//!     --library target/debug/libwarren_mobile.so --language python --out-dir out
//! ```

fn main() {
    uniffi::uniffi_bindgen_main()
}
