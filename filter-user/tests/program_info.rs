//! The program as the running kernel's verifier left it, read back with
//! `BPF_OBJ_GET_INFO_BY_FD`: instructions the verifier processed (its complexity figure, kernels
//! 5.16+), instructions after its rewrites, and the JIT's output size. `cargo xtask vm-test`
//! runs this on every kernel of the matrix and reports the printed figures per kernel.

use apifence::{kernel::paths::PinLayout, policy::Policy};
use apifence_tests::{bpffs::Bpffs, require_privileges};
use aya::programs::ProgramInfo;

mod support;

/// Instructions the verifier may process before it rejects a program
/// (`BPF_COMPLEXITY_LIMIT_INSNS`).
const VERIFIER_LIMIT: u32 = 1_000_000;
/// Size of one eBPF instruction.
const INSN_BYTES: u32 = 8;

/// `(major, minor)` of the running kernel.
fn kernel_version() -> (u32, u32) {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("kernel release");
    let mut parts = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(|p| p.parse::<u32>().expect("numeric kernel version"));
    let major = parts.next().expect("major version");
    let minor = parts.next().expect("minor version");
    (major, minor)
}

#[test]
fn verifier_figures_are_read_back_and_within_limits() {
    if !require_privileges("verifier_figures_are_read_back_and_within_limits") {
        return;
    }
    let bpffs = Bpffs::new().expect("mount a private bpffs");
    let layout = PinLayout::new(bpffs.path());
    let policy = Policy {
        ranges: "198.51.100.0/24, 2001:db8::/32".parse().expect("test list"),
        ..Policy::default()
    };
    let _program = support::load(&layout, policy);
    let info = ProgramInfo::from_pin(layout.program()).expect("program info from the pin");

    assert_eq!(info.name_as_str(), Some("apifence"), "program name");
    let xlated = info.size_translated().expect("xlated size (kernel 4.15+)");
    assert!(
        xlated > 0 && xlated.is_multiple_of(INSN_BYTES),
        "xlated size {xlated} is not a whole number of instructions"
    );
    let jited = info.size_jitted();
    assert!(jited > 0, "the program was not JIT-compiled");
    let processed = info.verified_instruction_count();
    let version = kernel_version();
    assert_eq!(
        processed.is_some(),
        version >= (5, 16),
        "verified_insns is reported from kernel 5.16 on; this is {version:?}, got {processed:?}"
    );
    if let Some(processed) = processed {
        assert!(
            processed < VERIFIER_LIMIT,
            "the verifier processed {processed} instructions, over its limit {VERIFIER_LIMIT}"
        );
    }
    // One line for the kernel matrix's report (`cargo xtask vm-test` reads it).
    println!(
        "verifier figures: processed_insns={} xlated_insns={} jited_bytes={jited}",
        processed.map_or_else(|| "n/a".to_owned(), |p| p.to_string()),
        xlated / INSN_BYTES,
    );
}
