//! `apifence mode enforce|monitor`: switch without re-attaching, through the daemon when one
//! answers, else on the pins.

use anyhow::Result;
use clap::Args;

use super::{Context, change::ChangeArgs, output, remote};
use crate::{
    daemon::protocol::{ModeChange, Reply, Request},
    kernel::operations::Filter,
    policy::Mode,
};

/// Shown after `apifence mode --help`.
pub const HELP: &str = "Example:\n  apifence mode monitor\n\n\
Through the daemon the mode persists across restarts until the config's `mode` line changes. \
Without a daemon it changes the pins directly.";

/// `apifence mode` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    /// Drop unauthorized traffic.
    Enforce,
    /// Count unauthorized traffic as would-drop; drop nothing.
    Monitor,
}

/// Flags of `apifence mode`.
#[derive(Debug, Args)]
pub struct ModeArgs {
    /// enforce or monitor.
    #[arg(value_enum)]
    mode: ModeArg,
    /// Dry run and force.
    #[command(flatten)]
    flags: ChangeArgs,
}

/// Runs `apifence mode`.
pub fn run(context: &Context, args: &ModeArgs) -> Result<()> {
    let mode = match args.mode {
        ModeArg::Enforce => Mode::Enforce,
        ModeArg::Monitor => Mode::Monitor,
    };
    let request = Request::Mode(ModeChange {
        mode,
        flags: args.flags.flags(),
    });
    match remote::call(&context.socket, &request)? {
        Some(Reply::Change(reply)) if reply.dry_run => return remote::print_change(&reply),
        Some(Reply::Change(_)) => {
            output::mark_applied();
            crate::outln!("mode: {}", mode.as_str());
            return Ok(());
        }
        Some(other) => return Err(remote::unexpected(&context.socket, &other)),
        None => {}
    }
    let mut filter = Filter::open_for_write(&context.layout)?;
    filter.check_direct_change(&context.socket, args.flags.force)?;
    let current = filter.record()?.policy;
    let mut policy = current.clone();
    policy.mode = mode;
    if args.flags.dry_run {
        return super::change::print_direct_dry_run(&current, &policy);
    }
    filter.apply_policy(policy)?;
    output::mark_applied();
    crate::outln!("mode: {}", mode.as_str());
    Ok(())
}
