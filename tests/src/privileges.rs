//! Deciding whether a privileged test runs, skips or fails, and finding the CLI binary.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Environment variable that turns "skip when not root" into a test failure (CI sets it to `1`).
pub const REQUIRE_ENV: &str = "APIFENCE_REQUIRE_PRIVILEGED_TESTS";

/// Environment variable holding the absolute path of the `apifence` binary under test.
pub const BIN_ENV: &str = "APIFENCE_BIN";

const REASON: &str = "needs root (creates network namespaces and loads XDP)";

/// Returns `true` when the test named `test` may run (effective uid 0).
///
/// Otherwise prints `SKIPPED: <test>: needs root (...)` to stderr (uncaptured, so it shows in
/// `cargo test` output) and returns `false`, unless [`REQUIRE_ENV`] is set to a value other than
/// `""` or `0`: then it panics, so a CI run can't pass by skipping.
pub fn require_privileges(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if required() {
        panic!("{test}: {REASON}, and {REQUIRE_ENV} forbids skipping it");
    }
    // Written straight to the stderr handle: libtest captures only the print macros.
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {REASON}");
    false
}

/// Returns `true` when the data file `path` that the test named `test` reads exists.
///
/// Otherwise prints `SKIPPED: <test>: <path> is absent` and returns `false`, unless
/// [`REQUIRE_ENV`] is set (as `cargo xtask test` and CI do): then it panics, so a run that
/// claims to be complete can't pass by skipping.
pub fn require_file(test: &str, path: &std::path::Path) -> bool {
    if path.is_file() {
        return true;
    }
    if required() {
        panic!(
            "{test}: {} is absent, and {REQUIRE_ENV} forbids skipping it",
            path.display()
        );
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED: {test}: {} is absent",
        path.display()
    );
    false
}

/// Whether [`REQUIRE_ENV`] asks for privileged tests to fail instead of skipping.
fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Path of the `apifence` binary: [`BIN_ENV`] if set, else `target/debug/apifence` of this
/// workspace. Fails when the file does not exist (build it with `cargo build -p filter-user`).
pub fn apifence_bin() -> Result<PathBuf> {
    let path = match std::env::var_os(BIN_ENV) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/apifence"),
    };
    if !path.is_file() {
        bail!(
            "apifence binary not found at {} (set {BIN_ENV} or run `cargo build -p filter-user`)",
            path.display()
        );
    }
    path.canonicalize()
        .with_context(|| format!("resolving {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_always_runs() {
        // SAFETY: see require_privileges.
        if unsafe { libc::geteuid() } == 0 {
            assert!(require_privileges("root_always_runs"));
        }
    }
}
