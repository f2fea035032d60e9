//! Writes the `apifence` man pages and shell completions, generated from the CLI's own clap
//! definition, for the Debian package (`cargo xtask package`):
//!
//! ```text
//! cargo run -p filter-user --example gen_docs -- OUT_DIR
//! ```
//!
//! `OUT_DIR/man/`: `apifence.1` and one page per visible subcommand (`apifence-ranges.1`,
//! `apifence-ranges-set.1`, ...). `OUT_DIR/completions/`: `apifence.bash`, `_apifence` (zsh)
//! and `apifence.fish`. An example rather than a hidden subcommand, so the shipped binary
//! carries neither generator.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use apifence::cli::Cli;
use clap::CommandFactory;
use clap_complete::Shell;

/// The shells completions are written for (the ones Debian has vendor directories for).
const SHELLS: [Shell; 3] = [Shell::Bash, Shell::Zsh, Shell::Fish];

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(out), None) = (args.next(), args.next()) else {
        bail!("usage: gen_docs OUT_DIR (writes OUT_DIR/man and OUT_DIR/completions)");
    };
    let out = PathBuf::from(out);
    man_pages(&out.join("man"))?;
    completions(&out.join("completions"))?;
    println!("wrote man pages and completions under {}", out.display());
    Ok(())
}

/// One page for `apifence` and one per visible subcommand, at every depth.
fn man_pages(dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    clap_mangen::generate_to(Cli::command().propagate_version(true), dir)
        .with_context(|| format!("writing man pages to {}", dir.display()))
}

/// The completion script of each of [`SHELLS`].
fn completions(dir: &Path) -> Result<()> {
    fresh_dir(dir)?;
    let mut command = Cli::command();
    for shell in SHELLS {
        clap_complete::generate_to(shell, &mut command, "apifence", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
    }
    Ok(())
}

/// Empties `dir` (pages of a removed subcommand must not linger) and creates it.
fn fresh_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))
}
