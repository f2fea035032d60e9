//! The kernel side of the differential oracle (`oracle.rs` and the fuzz target
//! `filter-user/fuzz/fuzz_targets/xdp_differential.rs`, which includes this module): the real
//! program loaded and pinned in a private bpffs with a [`List`] applied, run on one frame at a
//! time, reporting what moved as the model's [`Verdict`].

use std::collections::BTreeMap;

use apifence::{
    kernel::{operations::Filter, paths::PinLayout},
    policy::{self, Lookup, Policy},
};
use apifence_tests::{
    bpffs::Bpffs,
    oracle::{
        hex,
        list::{List, Mode},
        model::{Counted, Verdict},
    },
};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use filter_common::{
    COUNTER_DROPPED, COUNTER_MALFORMED, COUNTER_PASSED_AUTHORIZED, COUNTER_PASSED_DISABLED,
    COUNTER_PASSED_UNPROTECTED, COUNTER_WOULD_DROP, MAP_VERDICTS,
};
use ipnet::IpNet;

/// The product's policy for the model's `list`.
pub fn policy(list: &List) -> Policy {
    Policy {
        ranges: list.ranges_text().parse().expect("oracle list"),
        always_allow: list.always_allow.clone(),
        ports: list.ports.clone(),
        mode: match list.mode {
            Mode::Enforce => policy::Mode::Enforce,
            Mode::Monitor => policy::Mode::Monitor,
        },
    }
}

/// The program and the maps the oracle reads.
pub struct Kernel {
    program: Xdp,
    /// The lookup the program was loaded with.
    pub lookup: Lookup,
    layout: PinLayout,
    verdicts: PerCpuArray<MapData, u64>,
    /// Counter values after the last probe.
    counters: [u64; 6],
    /// Read side of the pins, for `stats` (reopened after every apply).
    filter: Filter,
    /// Hits per merged prefix (`stats`) after the last probe.
    hits: BTreeMap<IpNet, u64>,
    _bpffs: Bpffs,
}

const COUNTERS: [u32; 6] = [
    COUNTER_PASSED_AUTHORIZED,
    COUNTER_PASSED_UNPROTECTED,
    COUNTER_PASSED_DISABLED,
    COUNTER_DROPPED,
    COUNTER_WOULD_DROP,
    COUNTER_MALFORMED,
];

fn open_map(layout: &PinLayout, name: &str) -> Map {
    MapData::from_pin(layout.map(name))
        .and_then(Map::from_map_data)
        .unwrap_or_else(|e| panic!("open map {name}: {e}"))
}

fn sum(values: aya::maps::PerCpuValues<u64>) -> u64 {
    values.iter().sum()
}

impl Kernel {
    /// Loads the program with `lookup` into a fresh private bpffs and applies `first`.
    pub fn new(first: &List, lookup: Lookup) -> Kernel {
        let bpffs = Bpffs::new().expect("mount a private bpffs");
        let layout = PinLayout::new(bpffs.path());
        let program = super::load_with(&layout, policy(first), lookup);
        let verdicts = PerCpuArray::try_from(open_map(&layout, MAP_VERDICTS)).expect("VERDICTS");
        let filter = Filter::open(&layout).expect("open the filter");
        let mut kernel = Kernel {
            program,
            lookup,
            layout,
            verdicts,
            counters: [0; 6],
            filter,
            hits: BTreeMap::new(),
            _bpffs: bpffs,
        };
        kernel.refresh();
        kernel
    }

    /// Applies `list` (as `ranges set` and friends would).
    pub fn apply(&mut self, list: &List) {
        Filter::open_for_write(&self.layout)
            .expect("open the filter")
            .apply_policy(policy(list))
            .unwrap_or_else(|e| panic!("apply {:?}: {e:#}", policy(list)));
        self.filter = Filter::open(&self.layout).expect("open the filter");
        self.refresh();
    }

    /// The hits per merged prefix, as `apifence stats` reports them.
    fn range_hits(&self) -> BTreeMap<IpNet, u64> {
        self.filter
            .stats()
            .expect("stats")
            .ranges
            .into_iter()
            .map(|r| (r.range.parse().expect("stats range is a prefix"), r.hits))
            .collect()
    }

    /// Reads the counters and the hits per merged prefix.
    fn refresh(&mut self) {
        for (i, index) in COUNTERS.iter().enumerate() {
            self.counters[i] = sum(self.verdicts.get(index, 0).expect("read counter"));
        }
        self.hits = self.range_hits();
    }

    /// Runs `frame` once and reads what moved.
    pub fn run(&mut self, frame: &[u8]) -> Verdict {
        let mut out = vec![0u8; frame.len() + 256];
        let action = self
            .program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        let mut moved = [0u64; 6];
        for (i, index) in COUNTERS.iter().enumerate() {
            let now = sum(self.verdicts.get(index, 0).expect("read counter"));
            moved[i] = now - self.counters[i];
            self.counters[i] = now;
        }
        let named = [
            Counted::Authorized,
            Counted::Unprotected,
            Counted::Disabled,
            Counted::Dropped,
            Counted::WouldDrop,
        ];
        let counted: Vec<Counted> = named
            .iter()
            .zip(moved)
            .filter(|(_, by)| *by > 0)
            .map(|(c, _)| *c)
            .collect();
        assert!(
            counted.len() == 1 && moved[..5].iter().sum::<u64>() == 1,
            "one frame must move exactly one verdict counter by one; moved {moved:?} for {}",
            hex(frame)
        );
        let mut rule = None;
        if counted[0] == Counted::Authorized {
            let now = self.range_hits();
            for (net, hits) in &now {
                if self.hits.get(net).copied().unwrap_or(0) != *hits {
                    assert!(
                        rule.is_none(),
                        "two ranges counted one frame: {}",
                        hex(frame)
                    );
                    rule = Some(*net);
                }
            }
            self.hits = now;
        }
        Verdict {
            action,
            counted: counted[0],
            malformed: moved[5] == 1,
            rule,
        }
    }
}
