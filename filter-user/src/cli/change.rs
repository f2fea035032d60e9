//! What every change command shares: `--dry-run` and `--force`, and the dry run of a change
//! made directly on the pins (no daemon), printed like the daemon's.

use anyhow::Result;
use clap::Args;

use super::remote;
use crate::{
    daemon::{
        desired::{Diff, RangeEntry, Resolved, ResolvedEntry},
        protocol::ChangeFlags,
    },
    policy::{Policy, language::Entry},
};

/// Flags of every change.
#[derive(Debug, Default, Args)]
pub struct ChangeArgs {
    /// Print what would change (added, removed and merged entries) and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Apply even if a safety check refuses: the daemon's lockout guard, or (with no daemon
    /// answering) a filter that a daemon manages.
    #[arg(long)]
    pub force: bool,
}

impl ChangeArgs {
    /// The flags as the socket protocol carries them.
    pub fn flags(&self) -> ChangeFlags {
        ChangeFlags {
            dry_run: self.dry_run,
            force: self.force,
        }
    }
}

/// A policy as the daemon's [`Resolved`], so the direct CLI can print the same diff.
fn as_resolved(policy: &Policy) -> Resolved {
    Resolved {
        policy: policy.clone(),
        entries: policy
            .ranges
            .list()
            .entries()
            .iter()
            .map(|net| ResolvedEntry {
                entry: RangeEntry::plain(Entry::Prefix(*net)),
                prefixes: vec![*net],
            })
            .collect(),
    }
}

/// `--dry-run` without a daemon: print what would change, change nothing.
pub fn print_direct_dry_run(before: &Policy, after: &Policy) -> Result<()> {
    let diff = Diff::between(&as_resolved(before), &as_resolved(after));
    crate::outln!("dry run: nothing was changed; the change would do this:");
    crate::out!("{}", remote::render_diff(&diff));
    Ok(())
}
