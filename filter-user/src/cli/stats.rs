//! `apifence stats`: verdict counters and hits per range, read from the pins.

use anyhow::Result;
use clap::Args;

use super::Context;
use crate::kernel::operations::Filter;

/// Shown after `apifence stats --help`.
pub const HELP: &str = "Example:\n  apifence stats --json";

/// Flags of `apifence stats`.
#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence stats`.
pub fn run(context: &Context, args: &StatsArgs) -> Result<()> {
    let stats = Filter::open(&context.layout)?.stats()?;
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&stats)?);
        return Ok(());
    }
    crate::outln!(
        "passed      {:>12}  (authorized {}, unprotected {}, filter disabled {})",
        stats.passed,
        stats.passed_authorized,
        stats.passed_unprotected,
        stats.passed_disabled
    );
    crate::outln!("dropped     {:>12}", stats.dropped);
    crate::outln!("would drop  {:>12}", stats.would_drop);
    crate::outln!("malformed   {:>12}", stats.malformed);
    for range in &stats.ranges {
        let tag = if range.always_allow {
            "  (always allow)"
        } else {
            ""
        };
        crate::outln!("  {:<43} {:>12}{tag}", range.range, range.hits);
    }
    Ok(())
}
