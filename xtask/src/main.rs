//! Project tasks, run as `cargo xtask <task>`: `setup` installs what the build and tests need,
//! `build` builds the release CLI, `test` runs the full check suite (what CI runs), `demo` shows
//! the filter at work in a namespace lab, `package` builds and checks the Debian package.

mod bench;
mod build;
mod demo;
mod package;
mod process;
mod setup;
mod test;

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
    /// Install the nightly rust-src, bpf-linker and the Debian tools the tests need (idempotent).
    Setup,
    /// Build the release `apifence` binary (runs setup first).
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
    /// Measure apifence against the kernel's alternatives; writes BENCHMARKS.md and bench/
    /// (needs root).
    Bench(bench::BenchArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Build => build::release().map(|path| println!("{}", path.display())),
        Task::Test => test::run(),
        Task::Demo { lab_only } => demo::run(lab_only),
        Task::Package => package::run().map(|deb| println!("{}", deb.display())),
        Task::Bench(args) => bench::run(&args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
