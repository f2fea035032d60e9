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

/// For the build scripts that compile eBPF crates (filter-user's and apifence-bench's): puts
/// the prefix's `bin/` first on this process's `PATH` when bpf-linker is there (the eBPF build
/// inherits it), and warns, naming the fix, when no bpf-linker is found anywhere.
#[allow(
    dead_code,
    reason = "used by the build scripts that include this file, not by xtask"
)]
pub fn put_bpf_linker_on_path() -> Result<(), std::env::JoinPathsError> {
    println!("cargo:rerun-if-env-changed=HOME");
    let path = std::env::var_os("PATH").unwrap_or_default();
    match tools_prefix().map(|p| p.join("bin")) {
        Some(bin) if bin.join("bpf-linker").is_file() => {
            let joined =
                std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
            // SAFETY: build scripts are single-threaded here; nothing reads the environment
            // concurrently.
            unsafe { std::env::set_var("PATH", joined) };
        }
        _ if !std::env::split_paths(&path).any(|dir| dir.join("bpf-linker").is_file()) => {
            println!(
                "cargo:warning=bpf-linker is not installed: run `cargo xtask setup --for build` \
                 (it builds one into ~/.cache/apifence/tools), or build with `cargo xtask build`"
            );
        }
        _ => {}
    }
    Ok(())
}
