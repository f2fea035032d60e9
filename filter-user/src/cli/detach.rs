//! `apifence detach IFACE… | --all`: unlink interfaces; the last detach removes everything.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::{
    daemon,
    kernel::operations::{self, DetachTarget},
};

/// Shown after `apifence detach --help`.
pub const HELP: &str = "Examples:\n  apifence detach eth0\n  apifence detach --all";

/// Flags of `apifence detach`.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Interfaces to detach.
    #[arg(
        value_name = "IFACE",
        required_unless_present = "all",
        conflicts_with = "all"
    )]
    interfaces: Vec<String>,
    /// Detach everything and remove all pins.
    #[arg(long)]
    all: bool,
}

/// Runs `apifence detach`.
pub fn run(context: &Context, args: &DetachArgs) -> Result<()> {
    if daemon::answers(&context.socket) {
        crate::errln!(
            "note: an apifence daemon answers on {}; it attaches the filter again on its next \
             change or reload (a change that would cut connections made meanwhile is refused \
             unless --force); stop it first (systemctl stop apifence) to keep the filter off",
            context.socket.display()
        );
    }
    let target = if args.all {
        DetachTarget::All
    } else {
        DetachTarget::Interfaces(args.interfaces.clone())
    };
    let report = operations::detach(&context.layout, &target)?;
    if !report.detached.is_empty() || report.removed_everything {
        super::output::mark_applied();
    }
    for interface in &report.detached {
        crate::outln!("detached from {interface}");
    }
    let root = context.layout.root().display();
    if report.removed_everything {
        crate::outln!("removed program, maps and pins under {root}");
    } else if report.detached.is_empty() {
        crate::outln!("nothing attached under {root}");
    }
    Ok(())
}
