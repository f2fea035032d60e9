//! Compiles `filter-ebpf` for the BPF target (release profile, nightly toolchain) so that
//! `src/kernel/program.rs` can embed the object file.
//!
//! The BPF link needs bpf-linker, which `cargo xtask setup` builds into a project-local prefix
//! (see `xtask/src/tools_dir.rs`) rather than `~/.cargo/bin`: its `bin/` goes first on the
//! `PATH` the eBPF build inherits, so plain `cargo build` finds it after setup.

#[path = "../xtask/src/tools_dir.rs"]
mod tools_dir;

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=HOME");
    let path = std::env::var_os("PATH").unwrap_or_default();
    match tools_dir::tools_prefix().map(|p| p.join("bin")) {
        Some(bin) if bin.join("bpf-linker").is_file() => {
            let joined =
                std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))?;
            // SAFETY: the build script is single-threaded here; nothing reads the environment
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
    let package = aya_build::Package {
        name: "filter-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
