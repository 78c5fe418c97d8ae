//! Writing the stable stdout lines and the final `error:` line.
//!
//! `println!` panics when stdout is gone (a closed pipe); these helpers return or ignore
//! the error instead.

use std::io::{self, Write as _};

/// Write `lines` to stdout, one per line, and flush.
pub fn stdout_lines<S: AsRef<str>>(lines: &[S]) -> io::Result<()> {
    let mut out = io::stdout().lock();
    for line in lines {
        writeln!(out, "{}", line.as_ref())?;
    }
    out.flush()
}

/// Print `error: <message>` on stderr. If stderr itself is gone there is nobody to tell.
pub fn error_line(message: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "error: {message}");
    let _ = err.flush();
}
