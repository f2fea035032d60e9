//! The `apifence` command line: [`Cli`] holds the global flags and one [`Command`]; each
//! command lives in its own module with its flags and what it does. [`output`] writes without
//! panicking; [`remote`] talks to the daemon's socket.

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use crate::{
    kernel::paths::{DEFAULT_BPFFS_DIR, DEFAULT_SOCKET, PinLayout},
    policy::{Lookup, XdpModeChoice},
};

mod attach;
mod change;
mod check;
mod check_config;
mod daemon;
mod denied;
mod detach;
mod fleet;
mod fleet_change;
mod list_input;
mod mode;
pub mod output;
mod ranges;
mod reload;
pub mod remote;
mod stats;
mod status;
mod trace;

/// How the CLI and the daemon share the work, shown in `apifence --help`.
const DAEMON_NOTE: &str = "With an apifence daemon running (apifence daemon --config FILE), \
`ranges set/add/remove/show` and `mode` go through its socket (--socket): the daemon owns the \
desired state, persists it and applies it. When no daemon answers on the socket, these commands \
work directly on the pins under --bpffs.";

/// apifence: only authorized source ranges reach the Kubernetes API server, enforced in XDP.
#[derive(Debug, Parser)]
#[command(name = "apifence", version, about, long_about = None, after_help = DAEMON_NOTE)]
pub struct Cli {
    /// bpffs directory holding the pinned program, maps and links.
    #[arg(long, global = true, env = "APIFENCE_BPFFS", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Act inside the named network namespace (as made by `ip netns add`), keeping the host's
    /// mount namespace so pins persist (unlike `ip netns exec`).
    #[arg(long, global = true, env = "APIFENCE_NETNS")]
    pub netns: Option<String>,
    /// Unix socket of the apifence daemon. When a daemon answers there, `ranges` and `mode`
    /// go through it; when none answers, they work directly on the pins.
    #[arg(long, global = true, env = "APIFENCE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the filter to interfaces (loads and pins it on first use).
    #[command(after_help = attach::HELP)]
    Attach(attach::AttachArgs),
    /// Detach from interfaces; the last detach removes program, maps and pins.
    #[command(after_help = detach::HELP)]
    Detach(detach::DetachArgs),
    /// Show or change the authorized ranges.
    #[command(subcommand, after_help = ranges::HELP)]
    Ranges(ranges::RangesCommand),
    /// Switch between enforce and monitor without re-attaching.
    #[command(after_help = mode::HELP)]
    Mode(mode::ModeArgs),
    /// Verdict counters and hits per range.
    #[command(after_help = stats::HELP)]
    Stats(stats::StatsArgs),
    /// Run the daemon: the one owner of the desired state, with live reload.
    #[command(after_help = daemon::HELP)]
    Daemon(daemon::DaemonArgs),
    /// The bypass report: which interfaces could deliver traffic that no filter sees.
    #[command(after_help = check::HELP)]
    Check(check::CheckArgs),
    /// Validate a daemon config file and show what it compiles to; changes nothing.
    #[command(after_help = check_config::HELP)]
    CheckConfig(check_config::CheckConfigArgs),
    /// Show the daemon's status: reloads, last apply, program and links.
    #[command(after_help = status::HELP)]
    Status(status::StatusArgs),
    /// Ask the daemon to re-read its config file now (as SIGHUP) and report the outcome.
    #[command(after_help = reload::HELP)]
    Reload,
    /// Sources the filter denied recently (from the daemon's deny log), most packets first.
    #[command(after_help = denied::HELP)]
    Denied(denied::DeniedArgs),
    /// Why was this client dropped? One line per packet from a source: parse path, port,
    /// lookup, rule, verdict.
    #[command(after_help = trace::HELP)]
    Trace(trace::TraceArgs),
    /// The cluster's list in etcd, which every host's daemon follows (ranges_from = "etcd").
    #[command(after_help = fleet::HELP)]
    Fleet(Box<fleet::FleetArgs>),
}

/// What every command may need from the global flags.
pub struct Context {
    /// Where the pins are.
    pub layout: PinLayout,
    /// The daemon's socket.
    pub socket: PathBuf,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(name) = &cli.netns {
        crate::kernel::netns::enter(name)?;
    }
    let context = Context {
        layout: PinLayout::new(&cli.bpffs),
        socket: cli.socket,
    };
    match cli.command {
        Command::Attach(args) => attach::run(&context, args),
        Command::Detach(args) => detach::run(&context, &args),
        Command::Ranges(command) => ranges::run(&context, &command),
        Command::Mode(args) => mode::run(&context, &args),
        Command::Stats(args) => stats::run(&context, &args),
        Command::Daemon(args) => daemon::run(args),
        Command::Check(args) => check::run(&context, &args),
        Command::CheckConfig(args) => check_config::run(&args),
        Command::Status(args) => status::run(&context, &args),
        Command::Reload => reload::run(&context),
        Command::Denied(args) => denied::run(&context, &args),
        Command::Trace(args) => trace::run(&context, &args),
        Command::Fleet(args) => fleet::run(*args),
    }
}

/// The error for a command that needs the daemon when none answers on `socket`; `why` says
/// what the daemon keeps.
fn no_daemon(socket: &std::path::Path, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "no apifence daemon answers on {}; {why}, or pass the socket it uses with --socket",
        socket.display()
    )
}

/// `--xdp-mode` values come from the policy layer's names, so the flag and the config key agree.
impl clap::ValueEnum for XdpModeChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()).help(self.help()))
    }
}

/// `--lookup` values come from the policy layer's names, so the flag and the config key agree.
impl clap::ValueEnum for Lookup {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}
