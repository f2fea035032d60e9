//! `cargo xtask bench` (which builds and runs this binary): apifence measured side by side with
//! the kernel's alternatives, on this machine, and `BENCHMARKS.md` rendered from the results.
//!
//! Sections, one module each: [`kernel`] (cost per packet in the kernel, `BPF_PROG_TEST_RUN`),
//! [`e2e`] (a veth pair in namespaces against nftables, iptables + ipset, xdp-filter, driven by
//! [`alternatives`]), [`control`] (time to apply and enforce a list, correctness under traffic),
//! [`memory`] (map memory per prefix), [`fleet`] (time until every host of a fleet enforces a
//! change made in etcd). [`harness`] runs them; [`report`] keeps one results file per section
//! (so a run of some sections updates only theirs), [`plot`] draws the SVGs and [`markdown`]
//! writes `BENCHMARKS.md`, both from the results files alone. The benchmark's own BPF programs
//! are the crate `bench/ebpf` ([`object`]), not part of the production object.

mod alternatives;
mod control;
mod e2e;
mod fleet;
mod fleet_fanout;
mod harness;
mod kernel;
mod lab;
mod machine;
mod markdown;
mod memory;
mod object;
mod plan;
mod plot;
mod prefixes;
#[allow(
    dead_code,
    reason = "xtask's process helpers, shared by #[path]; the harness uses a few of them"
)]
#[path = "../../xtask/src/process.rs"]
mod process;
mod report;
mod sockets;
mod stats;
mod tools;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Options of `cargo xtask bench`.
#[derive(Clone, Debug, Parser)]
#[command(name = "cargo xtask bench")]
pub struct BenchArgs {
    /// Small sizes and few rounds: proves every variant produces numbers (CI; under three
    /// minutes). Writes to target/bench-quick unless --out says otherwise; never BENCHMARKS.md.
    #[arg(long)]
    pub quick: bool,
    /// Directory of the results files (one JSON per section) and the SVG plots (default:
    /// bench/results, or target/bench-quick with --quick).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Where to write the Markdown report (default: BENCHMARKS.md, none for --quick).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Run only these sections (comma separated): kernel, e2e, control, memory, fleet. Memory
    /// needs kernel (it measures the kernel section's maps). The other sections' results files
    /// are kept, and the report is rendered from all of them.
    #[arg(long, value_delimiter = ',', value_name = "SECTIONS")]
    pub only: Vec<Section>,
    /// Override the number of interleaved rounds of every section.
    #[arg(long, value_name = "N")]
    pub rounds: Option<usize>,
    /// Measure nothing: render the plots and the Markdown report from the results files in DIR
    /// (default: bench/results; plots next to them unless --out says otherwise).
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    pub render: Option<Option<PathBuf>>,
    /// With --render: write nothing, fail if the committed report or plots differ from what
    /// the results files render to (what `cargo xtask test` checks).
    #[arg(long, requires = "render")]
    pub check: bool,
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

impl Section {
    /// Every section, in report order.
    pub const ALL: [Section; 5] = [
        Section::Kernel,
        Section::E2e,
        Section::Control,
        Section::Memory,
        Section::Fleet,
    ];

    /// Its name on the command line and of its results file (`kernel` → `kernel.json`).
    pub fn name(self) -> &'static str {
        match self {
            Section::Kernel => "kernel",
            Section::E2e => "e2e",
            Section::Control => "control",
            Section::Memory => "memory",
            Section::Fleet => "fleet",
        }
    }
}

impl BenchArgs {
    /// Whether `section` runs.
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
            let names: Vec<&str> = self.only.iter().map(|s| s.name()).collect();
            args.extend(["--only".into(), names.join(",")]);
        }
        if let Some(rounds) = self.rounds {
            args.extend(["--rounds".into(), rounds.to_string()]);
        }
        match &self.render {
            Some(Some(dir)) => args.extend(["--render".into(), dir.display().to_string()]),
            Some(None) => args.push("--render".into()),
            None => {}
        }
        if self.check {
            args.push("--check".into());
        }
        args
    }
}

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match harness::run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
