//! `apifence denied`: the sources the filter denied recently, from the daemon's deny log.

use anyhow::Result;
use clap::Args;

use super::{Context, no_daemon, remote};
use crate::daemon::{
    denied::DeniedQuery,
    protocol::{Reply, Request},
};

/// Shown after `apifence denied --help`.
pub const HELP: &str = "Examples:\n  apifence denied\n  apifence denied --top 5 --json\n\n\
Shows source, packets, port, interface, first and last seen (in monitor mode: packets that \
would have been dropped), so you can find the address you really come from. JSON: a list of \
objects with keys source, count, first_seen, last_seen (RFC 3339), port and interface. Needs \
the daemon.";

/// Flags of `apifence denied`.
#[derive(Debug, Args)]
pub struct DeniedArgs {
    /// Show at most N sources.
    #[arg(long, value_name = "N", default_value_t = 20)]
    top: usize,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence denied`.
pub fn run(context: &Context, args: &DeniedArgs) -> Result<()> {
    let query = Request::Denied(DeniedQuery {
        top: Some(args.top),
    });
    match remote::call(&context.socket, &query)? {
        Some(Reply::Denied(report)) if args.json => {
            crate::outln!("{}", serde_json::to_string_pretty(&report.sources)?);
        }
        Some(Reply::Denied(report)) => crate::out!("{}", report.table()),
        Some(other) => return Err(remote::unexpected(&context.socket, &other)),
        None => {
            return Err(no_daemon(
                &context.socket,
                "the deny log is kept by the daemon (apifence daemon --config FILE)",
            ));
        }
    }
    Ok(())
}
