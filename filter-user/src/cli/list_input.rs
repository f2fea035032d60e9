//! The list a change command takes (`ranges set|add|remove`, `fleet set|add|remove`): inline or
//! from a file, with the note and expiry kept with the entries it gives.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::daemon::bounded_read;

/// A range list given inline or from a file, with what is kept with its entries.
#[derive(Debug, Args)]
pub struct ListInput {
    /// Comma and/or whitespace separated CIDRs, addresses or service tag names.
    #[arg(
        value_name = "LIST",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    pub(super) list: Option<String>,
    /// Read the list from a file ("-" = stdin); `#` starts a comment.
    #[arg(long, value_name = "PATH")]
    pub(super) file: Option<PathBuf>,
    /// Note kept with each entry given (set and add).
    #[arg(long, value_name = "TEXT")]
    pub(super) note: Option<String>,
    /// When the entries given expire, RFC 3339 such as 2026-12-01T00:00:00Z (set and add).
    #[arg(long, value_name = "TIME")]
    pub(super) expires: Option<String>,
}

impl ListInput {
    /// The list given inline, or read (bounded) from the file ("-" = stdin) without its `#`
    /// comments.
    pub(super) fn text(&self) -> Result<String> {
        list_text(self.list.as_deref(), self.file.as_deref())
    }

    /// Whether a note or an expiry was given.
    pub(super) fn has_meta(&self) -> bool {
        self.note.is_some() || self.expires.is_some()
    }

    /// The expiry given, parsed; `command` (`ranges`, `fleet`) names the command in the error
    /// when a note or expiry comes with `remove`, which keeps nothing.
    pub(super) fn expiry(&self, command: &str, removing: bool) -> Result<Option<OffsetDateTime>> {
        if removing && self.has_meta() {
            bail!("--note and --expires go with {command} set and {command} add, not remove");
        }
        self.expires
            .as_deref()
            .map(|t| {
                OffsetDateTime::parse(t.trim(), &Rfc3339).with_context(|| {
                    format!(
                        "--expires {t:?} is not an RFC 3339 date-time with a UTC offset; write \
                         it like 2026-12-01T00:00:00Z"
                    )
                })
            })
            .transpose()
    }
}

fn list_text(list: Option<&str>, file: Option<&Path>) -> Result<String> {
    match (list, file) {
        (Some(list), _) => Ok(list.to_string()),
        (None, Some(path)) => {
            let text = if path.as_os_str() == "-" {
                bounded_read::read_text(std::io::stdin(), bounded_read::MAX_LIST_BYTES)
                    .context("reading the list from stdin")?
            } else {
                bounded_read::read_file(path, bounded_read::MAX_LIST_BYTES)
                    .with_context(|| format!("reading the list from {}", path.display()))?
            };
            Ok(strip_comments(&text))
        }
        (None, None) => bail!("give a LIST or --file PATH"),
    }
}

/// Drops `#` comments (to the end of the line) from a list file.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}
