//! `cargo xtask bench [ARGS]`: the entry point of the benchmark harness, which is a crate of its
//! own (`bench/`, package `apifence-bench`, with its BPF programs in `bench/ebpf`). This sets up
//! what the run needs, builds the release `apifence` binary the harness drives, and runs the
//! harness with ARGS (`cargo xtask bench --help` shows them).

use std::ffi::OsString;
use std::time::Duration;

use anyhow::{Result, bail};

use crate::build::{BUILD_TIMEOUT, compile_release};
use crate::process::{cargo, is_root, run_live};
use crate::setup;

/// Bound on the whole benchmark run (a full run takes about a quarter of an hour).
const RUN_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// Arguments of `cargo xtask bench`, passed to the harness as they are.
#[derive(Clone, Debug, clap::Args)]
#[command(disable_help_flag = true)]
pub struct BenchArgs {
    /// The harness's arguments (`--quick`, `--only SECTIONS`, `--render [DIR] [--check]`, ...;
    /// `--help` lists them).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "ARGS"
    )]
    pub args: Vec<OsString>,
}

/// Sets up, builds, and runs the harness.
pub fn run(args: &BenchArgs) -> Result<()> {
    // Rendering (and the help) measures nothing: the build toolchain is all it needs.
    let measures = !args.args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a.starts_with("--render") || a == "--help" || a == "-h")
    });
    if measures && !is_root() {
        bail!(
            "cargo xtask bench needs root (it loads XDP programs and makes network namespaces); \
             run it as root, or render the report only with `cargo xtask bench --render`"
        );
    }
    let mut harness = cargo();
    harness.args(["run", "--release", "--quiet", "-p", "apifence-bench", "--"]);
    harness.args(&args.args);
    if measures {
        setup::run(&[setup::Task::Bench])?;
        harness.env("APIFENCE_BIN", compile_release()?);
    } else {
        setup::run(&[setup::Task::Build])?;
    }
    run_live(&mut harness, BUILD_TIMEOUT + RUN_TIMEOUT)
}
