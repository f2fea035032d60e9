//! `apifence check-config FILE`: validate a daemon config and show what it compiles to.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;

use crate::daemon::check;

/// Shown after `apifence check-config --help`.
pub const HELP: &str = "Examples:\n  apifence check-config /etc/apifence/apifence.toml\n  \
apifence check-config --json apifence.toml\n\n\
Prints the entries per address family before and after merging; exits non-zero with the \
offending key or entry when the file is invalid.";

/// Flags of `apifence check-config`.
#[derive(Debug, Args)]
pub struct CheckConfigArgs {
    /// The config file.
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence check-config`.
pub fn run(args: &CheckConfigArgs) -> Result<()> {
    let mut features = super::daemon::standard_features();
    let report = check::check(&args.file, features.as_mut())?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::out!("{}", report.render());
    }
    Ok(())
}
