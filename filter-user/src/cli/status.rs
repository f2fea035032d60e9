//! `apifence status`: what the daemon says about itself.

use anyhow::{Result, bail};
use clap::Args;

use super::{Context, no_daemon, remote};
use crate::{
    daemon::protocol::{Reply, Request},
    kernel::{attach, trace},
};

/// Shown after `apifence status --help`.
pub const HELP: &str = "Example:\n  apifence status --json";

/// Flags of `apifence status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence status`. Fails when any attachment is stale (its interface was deleted and
/// perhaps created again, so nothing filters it), and when no daemon answers (after saying
/// what the pins show).
pub fn run(context: &Context, args: &StatusArgs) -> Result<()> {
    match remote::call(&context.socket, &Request::Status)? {
        Some(Reply::Status(status)) => {
            remote::print_status(&status, args.json)?;
            if !status.stale_interfaces.is_empty() {
                bail!(
                    "stale attachments (their interfaces were recreated; the daemon re-attaches \
                     them as soon as it can): {}",
                    status.stale_interfaces.join(", ")
                );
            }
            Ok(())
        }
        Some(other) => Err(remote::unexpected(&context.socket, &other)),
        None => {
            let found = trace::restore_abandoned(&context.layout)?;
            for interface in &found.restored {
                eprintln!(
                    "warning: {interface} still ran the trace program of an `apifence trace` \
                     that ended without putting the filter back (it kept enforcing); the filter \
                     runs there again"
                );
            }
            if found.trace_running {
                crate::outln!(
                    "an `apifence trace` is running (its trace program filters the links)"
                );
            }
            let stale = attach::stale_interfaces(&context.layout);
            for name in attach::attached_interfaces(&context.layout) {
                match attach::liveness(&context.layout, &name) {
                    Ok(liveness) => crate::outln!("{}", liveness.describe(&name)),
                    Err(e) => crate::outln!("{name}: unreadable attachment ({e})"),
                }
            }
            if !stale.is_empty() {
                let names: Vec<&str> = stale.iter().map(|(name, _)| name.as_str()).collect();
                bail!(
                    "{} of the attachments under {} are stale and filter nothing: {}; `apifence \
                     attach {}` repairs them (no apifence daemon answers on {} to do it)",
                    stale.len(),
                    context.layout.root().display(),
                    names.join(", "),
                    names.join(" "),
                    context.socket.display()
                );
            }
            Err(no_daemon(
                &context.socket,
                "start it (systemctl start apifence)",
            ))
        }
    }
}
