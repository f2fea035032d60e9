//! `cargo xtask test`: what CI runs. Setup, format check, clippy (host crates and the eBPF crates
//! for their real target), the CLI binary, every test with privileged tests required (the bench
//! crate's among them: BENCHMARKS.md must be what its results files render to), then the Debian
//! package built and checked (`cargo xtask package`).

use std::time::Duration;

use anyhow::{Result, bail};
use apifence_tests::privileges::{BIN_ENV, REQUIRE_ENV};

use crate::build::{BUILD_TIMEOUT, binary};
use crate::disk;
use crate::package;
use crate::process::{cargo, run_live, run_live_lines, workspace_root};
use crate::setup;

/// Bound on the whole `cargo test` run.
const TEST_TIMEOUT: Duration = Duration::from_secs(45 * 60);

/// The eBPF crates (the production program and the benchmark's own programs): they build only
/// for the BPF target.
const EBPF_CRATES: [&str; 2] = ["filter-ebpf", "apifence-bench-ebpf"];

/// Runs the suite; fails if any step failed, after printing `N passed, N failed`.
pub fn run() -> Result<()> {
    disk::ensure_room(
        &workspace_root(),
        &["target", "filter-user/fuzz/target"],
        disk::TEST_RUN_BYTES,
    )?;
    setup::run(&[setup::Task::Test])?;
    // The setup test plans every task's packages with apt: it needs package lists.
    setup::ensure_package_lists()?;
    let mut failed_steps = Vec::new();
    let mut step = |name: &str, result: Result<()>| {
        if let Err(e) = result {
            eprintln!("xtask test: {name} failed: {e:#}");
            failed_steps.push(name.to_owned());
        }
    };
    step(
        "fmt",
        run_live(
            cargo().args(["fmt", "--all", "--", "--check"]),
            BUILD_TIMEOUT,
        ),
    );
    // The eBPF crates are no_std BPF binaries: linted for their own target below, not for the
    // host. Everything else, the bench harness included, is linted here.
    step(
        "clippy",
        run_live(
            cargo()
                .args(["clippy", "--workspace"])
                .args(EBPF_CRATES.iter().flat_map(|c| ["--exclude", c]))
                .arg("--all-targets")
                .args(["--", "-D", "warnings"]),
            BUILD_TIMEOUT,
        ),
    );
    step("clippy (eBPF)", clippy_ebpf());
    let built = run_live(
        cargo().args(["build", "-p", "filter-user", "--bins"]),
        BUILD_TIMEOUT,
    )
    .and_then(|()| binary("debug"));
    let mut totals = Totals::default();
    match built {
        Err(e) => step("build", Err(e)),
        Ok(bin) => {
            println!("{BIN_ENV}={}", bin.display());
            let result = run_live_lines(
                cargo()
                    .args(["test", "--workspace", "--no-fail-fast"])
                    .args(EBPF_CRATES.iter().flat_map(|c| ["--exclude", c]))
                    .env(BIN_ENV, &bin)
                    .env(REQUIRE_ENV, "1"),
                TEST_TIMEOUT,
                |line| totals.add(line),
            );
            step("tests", result);
        }
    }
    step(
        "kernel matrix",
        crate::vm::run(&crate::vm::VmArgs::default()),
    );
    step(
        "soak (2 minutes)",
        crate::soak::run(&crate::soak::SoakArgs { minutes: 2 }),
    );
    // After the tests, whose build the package's docs generator reuses.
    step("package", package::run().map(|_| ()));
    step(
        "fuzz (short)",
        crate::fuzz::run(&crate::fuzz::FuzzArgs {
            seconds: 20,
            runs: None,
            target: None,
            sanitizer: "address".into(),
        }),
    );
    if totals.ignored > 0 {
        eprintln!(
            "xtask test: {} test(s) are #[ignore]d; an ignored test proves nothing, so the run fails",
            totals.ignored
        );
        failed_steps.push("ignored tests".to_owned());
    }
    if !failed_steps.is_empty() {
        eprintln!("xtask test: failed steps: {}", failed_steps.join(", "));
    }
    println!("{} passed, {} failed", totals.passed, totals.failed);
    if !failed_steps.is_empty() {
        bail!("{} step(s) failed", failed_steps.len());
    }
    Ok(())
}

/// Clippy on the eBPF crates for `bpfel-unknown-none` with nightly (as the build compiles
/// them), in their own target directory so it never waits on the host build's lock.
fn clippy_ebpf() -> Result<()> {
    let target_dir = crate::process::workspace_root().join("target/clippy-ebpf");
    run_live(
        cargo()
            .args(["+nightly", "clippy"])
            .args(EBPF_CRATES.iter().flat_map(|c| ["-p", c]))
            .args(["--bins", "--release"])
            .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
            .arg("--target-dir")
            .arg(target_dir)
            .args(["--", "-D", "warnings"]),
        BUILD_TIMEOUT,
    )
}

/// Test counts summed over cargo test's `test result:` lines.
#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of `line` if it is a `test result: ok. N passed; M failed; ...` line.
    fn add(&mut self, line: &str) {
        let Some(rest) = line.trim().strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(';') {
            let mut words = part.split_whitespace().rev();
            let (Some(label), Some(count)) = (words.next(), words.next()) else {
                continue;
            };
            let Ok(count) = count.parse::<u64>() else {
                continue;
            };
            match label {
                "passed" => self.passed += count,
                "failed" => self.failed += count,
                "ignored" => self.ignored += count,
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_result_lines() {
        let mut t = Totals::default();
        t.add("test result: ok. 17 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 0.21s");
        t.add("test result: FAILED. 1 passed; 2 failed; 3 ignored; 0 measured; 0 filtered out");
        t.add("test foo ... ok");
        t.add("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 18,
                failed: 2,
                ignored: 3
            }
        );
    }
}
