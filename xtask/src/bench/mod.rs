//! `cargo xtask bench`: apifence measured side by side with the kernel's alternatives, on this
//! machine, in one run (issue 4).
//!
//! Plain `cargo xtask` is built without the harness, so that it builds before `setup` has
//! installed the eBPF toolchain. `cargo xtask bench` therefore runs `setup`, builds the release
//! `apifence` binary and `xtask --features bench`, and re-runs itself as that binary; the
//! harness proper (everything below [`harness`]) only exists in that build.
//!
//! Sections, one module each: [`kernel`] (cost per packet in the kernel, `BPF_PROG_TEST_RUN`),
//! [`e2e`] (a veth pair in namespaces against nftables, iptables + ipset, xdp-filter),
//! [`control`] (time to apply and enforce a list, correctness under traffic), [`memory`] (map
//! memory per prefix), [`fleet`] (time until every host of a fleet enforces a change made in
//! etcd). [`report`] writes JSON, [`plot`] SVG, [`markdown`] `BENCHMARKS.md`.

use std::path::PathBuf;

use anyhow::Result;

#[cfg(feature = "bench")]
mod alternatives;
#[cfg(feature = "bench")]
mod control;
#[cfg(feature = "bench")]
mod e2e;
#[cfg(feature = "bench")]
mod fleet;
#[cfg(feature = "bench")]
mod fleet_fanout;
#[cfg(feature = "bench")]
mod harness;
#[cfg(feature = "bench")]
mod kernel;
#[cfg(feature = "bench")]
mod lab;
#[cfg(feature = "bench")]
mod machine;
#[cfg(feature = "bench")]
mod markdown;
#[cfg(feature = "bench")]
mod memory;
#[cfg(feature = "bench")]
mod object;
#[cfg(feature = "bench")]
mod plan;
#[cfg(feature = "bench")]
mod plot;
#[cfg(feature = "bench")]
mod prefixes;
#[cfg(not(feature = "bench"))]
mod relaunch;
#[cfg(feature = "bench")]
mod report;
#[cfg(feature = "bench")]
mod sockets;
#[cfg(feature = "bench")]
mod stats;
#[cfg(feature = "bench")]
mod tools;

/// Options of `cargo xtask bench`.
#[derive(Clone, Debug, clap::Args)]
pub struct BenchArgs {
    /// Small sizes and few rounds: proves every variant produces numbers (CI; under three
    /// minutes). Writes to target/bench-quick unless --out says otherwise; never BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Directory for results.json and the SVG plots (default: bench/, or target/bench-quick
    /// with --quick).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where to write the Markdown report (default: BENCHMARKS.md for a full run; none for
    /// --quick).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Run only these sections (comma separated): kernel, e2e, control, memory, fleet. Memory needs
    /// kernel (it measures the kernel section's maps).
    #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
    pub only: Vec<Section>,
    /// Override the number of interleaved rounds of every section.
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Measure nothing: re-render the plots and the Markdown report from an existing
    /// results.json (plots next to it unless --out says otherwise).
    #[arg(long, value_name = "FILE")]
    pub render: Option<PathBuf>,
}

/// One section of the benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// In-kernel cost per packet (`BPF_PROG_TEST_RUN`).
    Kernel,
    /// End to end on a veth pair against the alternatives.
    E2e,
    /// Control plane: apply times, enforcement after return, correctness under traffic.
    Control,
    /// Map memory per prefix.
    Memory,
    /// Many hosts: time until every host of a 3-host fleet enforces a change made in etcd.
    Fleet,
}

impl BenchArgs {
    /// Whether `section` runs.
    #[cfg(feature = "bench")]
    pub fn runs(&self, section: Section) -> bool {
        self.only.is_empty()
            || self.only.contains(&section)
            || (section == Section::Kernel && self.only.contains(&Section::Memory))
    }

    /// The arguments as given on the command line (to re-run or record them).
    pub fn to_cli_args(&self) -> Vec<String> {
        let mut args = vec!["bench".to_owned()];
        if self.quick {
            args.push("--quick".into());
        }
        if let Some(out) = &self.out {
            args.extend(["--out".into(), out.display().to_string()]);
        }
        if let Some(md) = &self.markdown {
            args.extend(["--markdown".into(), md.display().to_string()]);
        }
        if !self.only.is_empty() {
            let names: Vec<&str> = self
                .only
                .iter()
                .map(|s| match s {
                    Section::Kernel => "kernel",
                    Section::E2e => "e2e",
                    Section::Control => "control",
                    Section::Memory => "memory",
                    Section::Fleet => "fleet",
                })
                .collect();
            args.extend(["--only".into(), names.join(",")]);
        }
        if let Some(rounds) = self.rounds {
            args.extend(["--rounds".into(), rounds.to_string()]);
        }
        if let Some(render) = &self.render {
            args.extend(["--render".into(), render.display().to_string()]);
        }
        args
    }
}

/// Runs the benchmark (see the module documentation).
pub fn run(args: &BenchArgs) -> Result<()> {
    #[cfg(feature = "bench")]
    {
        harness::run(args)
    }
    #[cfg(not(feature = "bench"))]
    {
        relaunch::run(args)
    }
}
