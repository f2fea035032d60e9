//! Project tasks, run as `cargo xtask <task>`: `setup` installs what a task needs (each task runs
//! it for itself, installing only its own needs), `build` builds the release CLI, `test` runs the
//! full check suite (what CI runs), `demo` shows the filter at work in a namespace lab, `package`
//! builds and checks the Debian package, `vm-test` runs the kernel matrix.

mod bench;
mod build;
mod demo;
mod disk;
mod fuzz;
mod package;
mod process;
mod setup;
mod soak;
mod test;
mod tools_dir;
mod vm;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// apifence project tasks.
#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

/// One task.
#[derive(Subcommand)]
enum Task {
    /// Install the nightly rust-src, bpf-linker (into ~/.cache/apifence/tools) and the Debian
    /// packages the given tasks need, printing what and why; apt never takes recommends and
    /// never removes a package (idempotent).
    Setup {
        /// Prepare only for these tasks (comma separated; default: all).
        #[arg(long = "for", value_delimiter = ',', value_name = "TASKS")]
        tasks: Vec<setup::Task>,
    },
    /// Build the release `apifence` binary (sets up the build toolchain first).
    Build,
    /// fmt check, clippy, build, then the whole test suite with privileged tests required.
    Test,
    /// Show the filter at work between namespaces (needs root).
    Demo {
        /// Only build the lab and probe it without the filter (no build, no CLI).
        #[arg(long)]
        lab_only: bool,
    },
    /// Build the Debian package (target/debian/apifence_*.deb) and check it: contents, conffile,
    /// man pages, completions, lintian (installs lintian and cargo-deb when missing).
    Package,
    /// Measure apifence against the kernel's alternatives with the harness crate `bench/`:
    /// writes bench/results/ and BENCHMARKS.md (needs root; `--render` measures nothing).
    Bench(bench::BenchArgs),
    /// Boot Debian's 5.10, 6.1 and 6.12 kernels in qemu and run the filter end to end in each;
    /// writes target/kernel-matrix.md (needs root).
    VmTest(vm::VmArgs),
    /// Fuzz the parsers (range language, config, service tags, socket protocol, deny events)
    /// with cargo fuzz for a bounded time or number of runs each.
    Fuzz(fuzz::FuzzArgs),
    /// Churn soak: traffic through the daemon's filter while it is changed, reloaded and
    /// killed; an oracle counts wrongful verdicts (needs root).
    Soak(soak::SoakArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup { tasks } if tasks.is_empty() => setup::run(&setup::Task::ALL),
        Task::Setup { tasks } => setup::run(&tasks),
        Task::Build => build::release().map(|path| println!("{}", path.display())),
        Task::Test => test::run(),
        Task::Demo { lab_only } => demo::run(lab_only),
        Task::Package => package::run().map(|deb| println!("{}", deb.display())),
        Task::Bench(args) => bench::run(&args),
        Task::VmTest(args) => vm::run(&args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Soak(args) => soak::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
