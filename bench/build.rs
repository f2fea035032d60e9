//! Compiles the benchmark's own eBPF programs (`bench/ebpf`, release profile, nightly toolchain)
//! so that `src/object.rs` can embed them; the production program comes with the apifence
//! library (filter-user's build.rs), which never contains these.

#[path = "../xtask/src/tools_dir.rs"]
mod tools_dir;

fn main() -> anyhow::Result<()> {
    tools_dir::put_bpf_linker_on_path()?;
    let package = aya_build::Package {
        name: "apifence-bench-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
