//! `apifence reload`: ask the daemon to re-read its config now and report the outcome.

use anyhow::Result;

use super::{Context, no_daemon, remote};
use crate::daemon::protocol::{Reply, Request};

/// Shown after `apifence reload --help`.
pub const HELP: &str = "Example:\n  apifence reload";

/// Runs `apifence reload`.
pub fn run(context: &Context) -> Result<()> {
    let reload = match remote::call(&context.socket, &Request::Reload)? {
        Some(Reply::Reload(reload)) => reload,
        Some(other) => return Err(remote::unexpected(&context.socket, &other)),
        None => {
            return Err(no_daemon(
                &context.socket,
                "start it (systemctl start apifence)",
            ));
        }
    };
    for warning in &reload.warnings {
        crate::errln!("warning: {warning}");
    }
    if reload.changed {
        super::output::mark_applied();
        crate::outln!("reloaded; changes:");
        crate::out!("{}", remote::render_diff(&reload.diff));
    } else {
        crate::outln!("reloaded; nothing enforced changed");
    }
    Ok(())
}
