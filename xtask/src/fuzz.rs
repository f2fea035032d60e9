//! `cargo xtask fuzz`: runs the `cargo fuzz` targets of `filter-user/fuzz` (range language,
//! config file, service-tags file, socket protocol, deny-event intake, and the XDP program
//! against the README's model through `BPF_PROG_TEST_RUN`) with libFuzzer, each for a bounded
//! time or number of runs, and prints one line of figures per target (executions, corpus size,
//! coverage). `xdp_differential` needs root and fails, never skips, without it. `cargo xtask
//! test` runs a short pass; the long runs recorded in TESTING.md use `--runs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, describe, output_with_timeout};

use crate::process::{run_live, workspace_root};
use crate::tools_dir::tools_prefix;

/// cargo-fuzz version the targets are built with.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// Every target, as named in `filter-user/fuzz/Cargo.toml`.
pub const TARGETS: [&str; 6] = [
    "range_language",
    "config_file",
    "service_tags",
    "socket_protocol",
    "deny_event",
    "xdp_differential",
];
/// Bound on installing cargo-fuzz.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Bound on building the targets (sanitizer builds of the whole library).
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Flags of `cargo xtask fuzz`.
#[derive(Debug, Clone, clap::Args)]
pub struct FuzzArgs {
    /// Seconds per target (ignored with --runs).
    #[arg(long, default_value_t = 20)]
    pub seconds: u64,
    /// Run each target for exactly this many inputs instead of a time.
    #[arg(long)]
    pub runs: Option<u64>,
    /// Only this target (default: all).
    #[arg(long, value_parser = clap::builder::PossibleValuesParser::new(TARGETS))]
    pub target: Option<String>,
    /// Sanitizer of the build (`cargo fuzz -s`): `address` (the default) catches memory errors
    /// in unsafe code; `none` runs several times faster, for long runs of targets whose
    /// oracle is the comparison itself (xdp_differential).
    #[arg(long, default_value = "address", value_parser = ["address", "none"])]
    pub sanitizer: String,
}

/// What one run of one target printed at its end.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Figures {
    /// Inputs executed.
    pub runs: u64,
    /// Coverage points (`cov:`).
    pub coverage: u64,
    /// Corpus entries (`corp:` count).
    pub corpus: u64,
}

/// Reads the last libFuzzer status line (`#123 DONE cov: 45 ft: 67 corp: 8/90b ...`).
pub fn parse_figures(line: &str) -> Option<Figures> {
    let rest = line.trim().strip_prefix('#')?;
    let mut words = rest.split_whitespace();
    let runs = words.next()?.parse().ok()?;
    let mut figures = Figures {
        runs,
        ..Figures::default()
    };
    while let Some(word) = words.next() {
        match word {
            "cov:" => figures.coverage = words.next()?.parse().ok()?,
            "corp:" => figures.corpus = words.next()?.split('/').next()?.parse().ok()?,
            _ => {}
        }
    }
    Some(figures)
}

/// Runs the targets; fails on the first crash, naming the reproducer libFuzzer saved.
pub fn run(args: &FuzzArgs) -> Result<()> {
    let cargo_fuzz = install_cargo_fuzz()?;
    let fuzz_dir = workspace_root().join("filter-user/fuzz");
    let targets: Vec<&str> = match &args.target {
        Some(t) => vec![t.as_str()],
        None => TARGETS.to_vec(),
    };
    run_live(
        fuzz_command(&cargo_fuzz, &fuzz_dir).args(["build", "--release", "-s", &args.sanitizer]),
        BUILD_TIMEOUT,
    )?;
    let mut report = Vec::new();
    for target in targets {
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .with_context(|| format!("creating {}", corpus.display()))?;
        let limit = match args.runs {
            Some(runs) => format!("-runs={runs}"),
            None => format!("-max_total_time={}", args.seconds),
        };
        let bound = match args.runs {
            // Generous: the slowest target (xdp_differential, a few syscalls per input) does
            // thousands of runs per second.
            Some(runs) => Duration::from_secs(600 + runs / 500),
            None => Duration::from_secs(args.seconds + 300),
        };
        let mut cmd = fuzz_command(&cargo_fuzz, &fuzz_dir);
        cmd.args(["run", "--release", "-s", &args.sanitizer, target])
            .arg(&corpus)
            .args(["--", &limit, "-print_final_stats=1", "-rss_limit_mb=4096"])
            .arg("-max_len=65536");
        let shown = describe(&cmd);
        println!("$ {shown}");
        let out = output_with_timeout(&mut cmd, bound)?;
        // libFuzzer reports on stderr: its last status line has the figures.
        let log = String::from_utf8_lossy(&out.stderr);
        if !out.status.success() {
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            for line in tail.iter().rev() {
                eprintln!("{line}");
            }
            bail!(
                "fuzz target {target} failed ({}); the input that broke it is under {}",
                out.status,
                fuzz_dir.join("artifacts").join(target).display()
            );
        }
        let figures = log
            .lines()
            .rev()
            .find_map(parse_figures)
            .with_context(|| format!("{target} printed no libFuzzer status:\n{log}"))?;
        report.push((target, figures));
    }
    println!("fuzz: target            runs   coverage  corpus");
    for (target, f) in &report {
        println!(
            "fuzz: {target:<16} {:>10} {:>9} {:>7}",
            f.runs, f.coverage, f.corpus
        );
    }
    Ok(())
}

/// `cargo +nightly fuzz` with the project-local cargo-fuzz, in `fuzz_dir`'s crate.
fn fuzz_command(cargo_fuzz: &Path, fuzz_dir: &Path) -> Command {
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly"])
        .arg(cargo_fuzz)
        .arg("fuzz")
        .current_dir(fuzz_dir.parent().unwrap_or(fuzz_dir));
    cmd
}

/// cargo-fuzz in the project-local tools prefix, installed there when missing.
fn install_cargo_fuzz() -> Result<PathBuf> {
    let prefix = tools_prefix().context("HOME is not set")?;
    let bin = prefix.join("bin/cargo-fuzz");
    let runs = |bin: &Path| {
        output_with_timeout(Command::new(bin).arg("--version"), DEFAULT_TIMEOUT)
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(CARGO_FUZZ_VERSION))
            .unwrap_or(false)
    };
    if runs(&bin) {
        return Ok(bin);
    }
    println!(
        "fuzz: installing cargo-fuzz {CARGO_FUZZ_VERSION} into {}",
        prefix.display()
    );
    run_live(
        Command::new("cargo")
            .args([
                "install",
                "cargo-fuzz",
                "--version",
                CARGO_FUZZ_VERSION,
                "--locked",
            ])
            .arg("--root")
            .arg(&prefix),
        INSTALL_TIMEOUT,
    )?;
    if !runs(&bin) {
        bail!(
            "cargo-fuzz {CARGO_FUZZ_VERSION} still not runnable at {}",
            bin.display()
        );
    }
    Ok(bin)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libfuzzer_status_lines() {
        assert_eq!(
            parse_figures(
                "#1048576\tDONE   cov: 812 ft: 2431 corp: 377/12Kb lim: 4096 exec/s: 34952 rss: 92Mb"
            ),
            Some(Figures {
                runs: 1_048_576,
                coverage: 812,
                corpus: 377
            })
        );
        assert_eq!(
            parse_figures("#2\tINITED cov: 3 ft: 3 corp: 1/1b exec/s: 0 rss: 30Mb"),
            Some(Figures {
                runs: 2,
                coverage: 3,
                corpus: 1
            })
        );
        assert_eq!(parse_figures("INFO: Seed: 123"), None);
        assert_eq!(parse_figures("#abc"), None);
    }
}
