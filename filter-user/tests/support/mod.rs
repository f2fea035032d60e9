//! Shared by the tests that run frames through the real program with `BPF_PROG_TEST_RUN`
//! (`verdicts.rs`, `deny_log.rs`, `oracle.rs` and, through `#[path]`, the fuzz target
//! `xdp_differential`): the program loaded and pinned in a private bpffs with a
//! policy applied, and one way to run a frame through it.

#![allow(dead_code, reason = "each test crate uses a part of it")]

use apifence::{
    kernel::attach,
    kernel::framing::Framing,
    kernel::operations::{self, AttachOptions, Filter, Stats},
    kernel::paths::PinLayout,
    policy::{Lookup, Mode, Policy},
};
use apifence_tests::{bpffs::Bpffs, frame::Frame};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;

pub mod oracle_kernel;

#[allow(unused_imports, reason = "each test crate uses a part of it")]
pub use apifence_tests::oracle::model::{XDP_DROP, XDP_PASS};

/// The program loaded and pinned in a private bpffs, with a policy applied.
pub struct Lab {
    program: Xdp,
    /// The lookup the program was loaded with.
    pub lookup: Lookup,
    pub layout: PinLayout,
    _bpffs: Bpffs,
}

impl Lab {
    /// The program with the default lookup (the compiled table).
    pub fn new(policy: Policy) -> Lab {
        Lab::with_lookup(Lookup::default(), policy)
    }

    /// The program with `lookup`.
    pub fn with_lookup(lookup: Lookup, policy: Policy) -> Lab {
        Lab::framed(Framing::Ethernet, lookup, policy)
    }

    /// The instance of the program for frames framed as `framing` (the IP-first one is loaded
    /// next to the Ethernet one, on the same maps, as attaching to an L3 device does), with
    /// `lookup`.
    pub fn framed(framing: Framing, lookup: Lookup, policy: Policy) -> Lab {
        let bpffs = Bpffs::new().expect("mount a private bpffs");
        let layout = PinLayout::new(bpffs.path());
        let ethernet = load_with(&layout, policy, lookup);
        let program = match framing {
            Framing::Ethernet => ethernet,
            Framing::Ip => {
                attach::ensure_instance(&layout, Framing::Ip).expect("load the IP-first instance");
                Xdp::from_pin(layout.program_for(Framing::Ip), XdpAttachType::Interface)
                    .expect("open the IP-first instance")
            }
        };
        Lab {
            program,
            lookup,
            layout,
            _bpffs: bpffs,
        }
    }

    pub fn stats(&self) -> Stats {
        Filter::open(&self.layout)
            .expect("open")
            .stats()
            .expect("stats")
    }

    /// Runs `frame` through the program once; returns the verdict.
    pub fn run(&self, frame: &Frame) -> u32 {
        test_run(&self.program, frame, 1)
    }

    /// Runs `frame` through the program `repeat` times (in one syscall); returns the verdict.
    pub fn run_repeated(&self, frame: &Frame, repeat: u32) -> u32 {
        test_run(&self.program, frame, repeat)
    }
}

/// Loads and pins the program under `layout` (attached to no interface), applies `policy`
/// and opens the pinned program.
pub fn load(layout: &PinLayout, policy: Policy) -> Xdp {
    load_with(layout, policy, Lookup::default())
}

/// [`load`] with `lookup`.
pub fn load_with(layout: &PinLayout, policy: Policy, lookup: Lookup) -> Xdp {
    let options = AttachOptions {
        lookup: Some(lookup),
        ..AttachOptions::default()
    };
    operations::attach(layout, &options).expect("load and pin the program");
    Filter::open_for_write(layout)
        .expect("open the filter")
        .apply_policy(policy)
        .expect("apply the policy");
    Xdp::from_pin(layout.program(), XdpAttachType::Interface).expect("open the program")
}

/// Runs `frame` through `program` `repeat` times (in one syscall); returns the verdict.
pub fn test_run(program: &Xdp, frame: &Frame, repeat: u32) -> u32 {
    let frame = frame.bytes();
    let mut out = vec![0u8; frame.len() + 256];
    let options = TestRunOptions {
        data_in: Some(&frame),
        data_out: Some(&mut out),
        repeat,
        ..TestRunOptions::default()
    };
    program.test_run(options).expect("test run").return_value
}

/// An enforcing policy with `ranges` and the default ports, nothing always allowed.
pub fn enforcing(ranges: &str) -> Policy {
    Policy {
        ranges: ranges.parse().expect("test list"),
        mode: Mode::Enforce,
        ..Policy::default()
    }
}
