//! The independent oracle for the XDP program's verdicts: frames described by a [`shape::Shape`]
//! and written with `etherparse` (a packet library the product doesn't use), and a naive model
//! of the README's rules ([`model`]) that says what must happen to each frame under a
//! [`list::List`] — the verdict, the counter, the malformed count and the merged prefix
//! credited with the hit. Written without any code of the product.
//!
//! Shared by the differential test (`filter-user/tests/oracle.rs`, random frames and lists)
//! and the coverage-guided fuzz target (`filter-user/fuzz/fuzz_targets/xdp_differential.rs`);
//! both run the frames through the real program with `BPF_PROG_TEST_RUN`.

pub mod list;
pub mod model;
pub mod shape;

use std::fmt::Write as _;

/// `bytes` as lowercase hex, for mismatch reports.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
