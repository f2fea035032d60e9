//! `apifence daemon`: runs the daemon core with the standard features, the one place that
//! decides which features the binary runs.

use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use clap::Args;

use crate::{
    daemon::{self, DaemonOptions, Features},
    features::standard::StandardFeatures,
    kernel::paths::DEFAULT_CONFIG_FILE,
};

/// Shown after `apifence daemon --help`.
pub const HELP: &str = "Example:
  apifence daemon --config /etc/apifence/apifence.toml

The daemon loads the config (see `apifence check-config`), adopts a filter already pinned under
its bpffs directory (never detaching it) or loads and attaches one, applies the desired state,
and listens on its socket (mode 0600, root only). It reloads when the config file (or its
service tags file) changes and on SIGHUP; an invalid config is logged and counted, and the last
good state stays enforced. On SIGTERM or SIGINT it exits and the filter keeps enforcing; only
`apifence detach` removes it. A newer program replaces the pinned one on the existing links.
The config decides bpffs, state_dir and socket (the global --bpffs and --socket are not used).
Logs go to stderr; APIFENCE_LOG=debug shows more.

Socket protocol (version 1): one JSON request per line, one JSON response per line, for example
  {\"version\":1,\"op\":\"ranges_add\",\"list\":\"203.0.113.7\",\"dry_run\":false,\"force\":false}
  {\"version\":1,\"ok\":{\"type\":\"change\",\"applied\":true,...}}   or
  {\"version\":1,\"error\":{\"kind\":\"...\",\"message\":\"...\"}}
Operations: ranges_set, ranges_add, ranges_remove, mode, show, status, reload, denied.";

/// Flags of `apifence daemon`.
#[derive(Debug, Args)]
pub struct DaemonArgs {
    /// The config file (TOML; see `apifence check-config`).
    #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_FILE)]
    config: PathBuf,
    /// Reload only on SIGHUP or `apifence reload`, not when the file changes.
    #[arg(long)]
    no_watch: bool,
    /// Load the embedded program and swap it in on the attached links even when the pinned
    /// program is the same version (exercises the upgrade path; never detaches).
    #[arg(long)]
    replace_program: bool,
}

/// The features the `apifence` binary runs (`daemon` and `check-config` both use them).
pub fn standard_features() -> Box<dyn Features> {
    Box::new(StandardFeatures::default())
}

/// Runs `apifence daemon` until SIGTERM or SIGINT.
pub fn run(args: DaemonArgs) -> Result<()> {
    daemon::init_logging();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("apifence-daemon")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let options = DaemonOptions {
        config: args.config,
        replace_program: args.replace_program,
        watch: !args.no_watch,
    };
    let result = runtime.block_on(async {
        let shutdown = daemon::shutdown_signal();
        daemon::run(options, standard_features(), shutdown).await
    });
    // Don't wait on work stuck past the daemon's own shutdown bounds.
    runtime.shutdown_timeout(Duration::from_secs(1));
    Ok(result?)
}
