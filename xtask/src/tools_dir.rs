//! Where the project keeps the tools it builds for itself (bpf-linker), shared by xtask's setup
//! and `filter-user/build.rs` (which includes this file): `$HOME/.cache/apifence/tools`, with
//! the programs in its `bin/`. A project-local prefix, so a user's own `bpf-linker` in
//! `~/.cargo/bin` is neither replaced nor used.

use std::path::PathBuf;

/// `$HOME/.cache/apifence/tools`, or `None` when `HOME` is not set.
pub fn tools_prefix() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    Some(PathBuf::from(home).join(".cache/apifence/tools"))
}
