//! `apifence status`: what the daemon says about itself.

use anyhow::Result;
use clap::Args;

use super::{Context, no_daemon, remote};
use crate::daemon::protocol::{Reply, Request};

/// Shown after `apifence status --help`.
pub const HELP: &str = "Example:\n  apifence status --json";

/// Flags of `apifence status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence status`.
pub fn run(context: &Context, args: &StatusArgs) -> Result<()> {
    match remote::call(&context.socket, &Request::Status)? {
        Some(Reply::Status(status)) => remote::print_status(&status, args.json),
        Some(other) => Err(remote::unexpected(&context.socket, &other)),
        None => Err(no_daemon(
            &context.socket,
            "start it (systemctl start apifence)",
        )),
    }
}
