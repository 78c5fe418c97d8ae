//! The generated Python bindings, exercised from Python (`tests/python/smoke.py`).
//!
//! Finding the cdylib: a `[[test]]` cannot depend on its crate's cdylib, but it need not.
//! Cargo compiles the library once for all its crate types (`lib`, `cdylib`,
//! `staticlib`) before it links this test against it, so the cdylib exists and is built
//! from the same sources as this test. Where: rustc writes it to `target/<profile>/deps/`,
//! the directory of this test binary. `cargo build` also copies it up to
//! `target/<profile>/` (next to `CARGO_BIN_EXE_uniffi-bindgen`), but `cargo test` does
//! not refresh that copy, which can therefore be stale. The test takes the newer of the
//! two. Running `cargo build` from inside the test instead would wait on the build
//! directory lock that the outer `cargo test` may hold, and a stale library could not go
//! unnoticed anyway: the generated module checks the library's API checksums on import.
//!
//! The test then runs `uniffi-bindgen generate --language python` into a temporary
//! directory, copies the cdylib beside the generated module, and runs `python3` on the
//! smoke script. `python3` must be installed: the test fails, saying so, if it is not.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

const BINDGEN: &str = env!("CARGO_BIN_EXE_uniffi-bindgen");
const SMOKE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/smoke.py");

/// File name of the cdylib on this platform.
fn cdylib_name() -> String {
    format!(
        "{}warren_mobile{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

fn cdylib() -> PathBuf {
    let name = cdylib_name();
    let test_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(Path::to_path_buf));
    let bindgen_dir = Path::new(BINDGEN).parent().map(Path::to_path_buf);
    let newest = [test_dir, bindgen_dir]
        .into_iter()
        .flatten()
        .map(|dir| dir.join(&name))
        .filter_map(|lib| {
            let modified = std::fs::metadata(&lib).and_then(|m| m.modified()).ok()?;
            Some((modified, lib))
        })
        .max_by_key(|(modified, _)| *modified);
    match newest {
        Some((_, lib)) => lib,
        None => panic!(
            "{name} is neither next to this test binary nor next to {BINDGEN}; cargo builds \
             it with the test (`cargo test -p warren-mobile`), or build it with \
             `cargo build -p warren-mobile --lib`"
        ),
    }
}

fn show(output: &Output) -> String {
    format!(
        "status: {}\n--- stdout\n{}\n--- stderr\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn run(command: &mut Command, what: &str) -> Output {
    match command.output() {
        Ok(output) => {
            assert!(output.status.success(), "{what} failed\n{}", show(&output));
            output
        }
        Err(e) => panic!("cannot run {what}: {e}"),
    }
}

#[test]
fn python_bindings_start_sign_in_restart() {
    let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
    if let Err(e) = Command::new(&python).arg("--version").output() {
        panic!(
            "this test needs Python 3 ({python:?} could not be run: {e}); install python3 \
             or point $PYTHON at an interpreter"
        );
    }
    let lib = cdylib();
    println!("library: {}", lib.display());
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => panic!("no temp dir: {e}"),
    };
    let out = dir.path().join("bindings");
    let scratch = dir.path().join("scratch");
    for d in [&out, &scratch] {
        if let Err(e) = std::fs::create_dir_all(d) {
            panic!("cannot create {}: {e}", d.display());
        }
    }

    let started = Instant::now();
    run(
        Command::new(BINDGEN)
            .args([
                "generate",
                "--no-format",
                "--language",
                "python",
                "--out-dir",
            ])
            .arg(&out)
            .arg("--library")
            .arg(&lib),
        "uniffi-bindgen",
    );
    assert!(
        out.join("warren_mobile.py").is_file(),
        "no warren_mobile.py"
    );
    // The generated module loads the library from its own directory.
    if let Err(e) = std::fs::copy(&lib, out.join(cdylib_name())) {
        panic!("cannot copy {}: {e}", lib.display());
    }
    let generated = started.elapsed();

    let output = run(
        Command::new(&python)
            .arg(SMOKE)
            .arg(&out)
            .arg(&scratch)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
        "python3 smoke.py",
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("smoke: ok"),
        "smoke.py did not finish\n{}",
        show(&output)
    );
    println!("{stdout}");
    println!(
        "bindings generated in {generated:?}, smoke.py ran in {:?}",
        started.elapsed() - generated
    );
}
