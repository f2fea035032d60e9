//! The thin half of `cargo xtask bench` in a plain xtask build: set up, build the release CLI and
//! `xtask --features bench`, then run that build with the same arguments.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::describe;

use super::BenchArgs;
use crate::build::BUILD_TIMEOUT;
use crate::process::{cargo, is_root, run_live, workspace_root};
use crate::setup;

/// Bound on the whole benchmark run (a full run takes about a quarter of an hour).
const RUN_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// Sets up, builds, and runs the harness build of xtask.
pub fn run(args: &BenchArgs) -> Result<()> {
    if !is_root() && args.render.is_none() {
        bail!(
            "cargo xtask bench needs root (it loads XDP programs and makes network namespaces); \
             run it as root"
        );
    }
    if args.render.is_none() {
        setup::run(&[setup::Task::Bench])?;
    }
    run_live(
        cargo().args([
            "build",
            "--release",
            "-p",
            "filter-user",
            "-p",
            "xtask",
            "--features",
            "xtask/bench",
        ]),
        BUILD_TIMEOUT,
    )?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let harness = target.join("release").join("xtask");
    let mut cmd = Command::new(&harness);
    cmd.args(args.to_cli_args())
        .current_dir(workspace_root())
        .env("APIFENCE_BIN", target.join("release").join("apifence"));
    let shown = describe(&cmd);
    run_live(&mut cmd, RUN_TIMEOUT).with_context(|| format!("running the harness ({shown})"))
}
