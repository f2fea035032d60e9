//! `cargo xtask build`: setup, then the release `apifence` binary (its build script compiles
//! the eBPF program with nightly).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::process::{cargo, run_live, workspace_root};
use crate::setup;

/// Bound on one cargo build (a cold build takes about 70 s on two cores).
pub const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Sets up the build toolchain, builds `target/release/apifence` and returns its absolute path.
pub fn release() -> Result<PathBuf> {
    setup::run(&[setup::Task::Build])?;
    compile_release()
}

/// Builds `target/release/apifence` (the toolchain already set up) and returns its path.
pub fn compile_release() -> Result<PathBuf> {
    run_live(
        cargo().args(["build", "--release", "-p", "filter-user"]),
        BUILD_TIMEOUT,
    )?;
    binary("release")
}

/// The cargo target directory (`CARGO_TARGET_DIR` or the workspace's `target/`).
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Path of the `apifence` binary of `profile`, failing if it wasn't built.
pub fn binary(profile: &str) -> Result<PathBuf> {
    let path = target_dir().join(profile).join("apifence");
    if !path.is_file() {
        bail!("{} was not produced by the build", path.display());
    }
    Ok(path)
}
