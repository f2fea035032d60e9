//! The embedded XDP object file.

/// The compiled `filter-ebpf` object, aligned for `aya::Ebpf::load`.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-xdp"));

/// Benchmark-only programs (`filter-ebpf/src/bench.rs`), used by `cargo xtask bench`; never
/// attached by apifence itself.
pub static BENCH_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apifence-bench-xdp"));
