//! Compiles `filter-ebpf` for the BPF target (release profile, nightly toolchain) so that
//! `src/kernel/program.rs` can embed the object file.
//!
//! The BPF link needs bpf-linker, which `cargo xtask setup` builds into a project-local prefix
//! (see `xtask/src/tools_dir.rs`) rather than `~/.cargo/bin`: its `bin/` goes first on the
//! `PATH` the eBPF build inherits, so plain `cargo build` finds it after setup.

#[path = "../xtask/src/tools_dir.rs"]
mod tools_dir;

fn main() -> anyhow::Result<()> {
    tools_dir::put_bpf_linker_on_path()?;
    let package = aya_build::Package {
        name: "filter-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
