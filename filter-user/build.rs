//! Compiles `filter-ebpf` for the BPF target (release profile, nightly toolchain) so that
//! `src/program.rs` can embed the object file.

fn main() -> anyhow::Result<()> {
    let package = aya_build::Package {
        name: "filter-ebpf",
        root_dir: concat!(env!("CARGO_MANIFEST_DIR"), "/../filter-ebpf"),
        ..Default::default()
    };
    aya_build::build_ebpf([package], aya_build::Toolchain::Nightly)
}
