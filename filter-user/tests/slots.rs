//! The incremental slot writer against the truth in the kernel: after every apply of a random
//! sequence of policies, the active slot's tries hold exactly the policy's prefixes, with the
//! ids its record claims, and the inactive slot's record matches its tries too.

use std::collections::BTreeSet;

use apifence::{
    kernel::maps::FilterMaps,
    kernel::operations::{self, AttachOptions, Filter},
    kernel::paths::PinLayout,
    policy::compile::slot_prefixes,
    policy::{Lookup, Mode, Policy},
};
use apifence_tests::{bpffs::Bpffs, require_privileges};
use ipnet::IpNet;

/// A small deterministic generator (xorshift), so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A random list drawn from a small pool, so consecutive lists overlap.
fn random_list(rng: &mut Rng) -> String {
    let count = rng.below(12);
    let mut entries = Vec::new();
    for _ in 0..count {
        let entry = match rng.below(3) {
            0 => format!("10.{}.0.0/16", rng.below(8)),
            1 => format!("192.0.2.{}", rng.below(16)),
            _ => format!("2001:db8:{:x}::/48", rng.below(8)),
        };
        entries.push(entry);
    }
    if entries.is_empty() && rng.below(2) == 0 {
        return "0.0.0.0/32".into();
    }
    entries.join(",")
}

#[test]
fn incremental_writes_keep_tries_equal_to_the_records() {
    if !require_privileges("incremental_writes_keep_tries_equal_to_the_records") {
        return;
    }
    let bpffs = Bpffs::new().expect("bpffs");
    let layout = PinLayout::new(bpffs.path());
    // The tries are what this test reads back: they judge packets with the LPM-trie lookup
    // (the compiled table's incremental patching has its own tests in lookups_agree.rs).
    let options = AttachOptions {
        lookup: Some(Lookup::LpmTrie),
        ..AttachOptions::default()
    };
    operations::attach(&layout, &options).expect("load");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..60 {
        let policy = Policy {
            ranges: random_list(&mut rng),
            always_allow: vec!["198.51.100.7/32".parse().expect("prefix")],
            ports: vec![443, 6443, 1000 + rng.below(50) as u16],
            mode: if rng.below(4) == 0 {
                Mode::Monitor
            } else {
                Mode::Enforce
            },
        };
        let mut filter = Filter::open_for_write(&layout).expect("open");
        filter.apply_policy(policy.clone()).expect("apply");
        drop(filter);

        let maps = FilterMaps::open(&layout).expect("maps");
        let active = maps.active_slot().expect("active slot");
        let in_kernel = maps.rule_ids(active).expect("read tries");
        let expected: BTreeSet<IpNet> = slot_prefixes(&policy)
            .expect("prefixes")
            .into_iter()
            .collect();
        let got: BTreeSet<IpNet> = in_kernel.keys().copied().collect();
        assert_eq!(
            got, expected,
            "round {round}: active tries for {:?}",
            policy.ranges
        );
        let record = Filter::open(&layout)
            .expect("open")
            .record()
            .expect("record");
        let claimed: Vec<u32> = slot_prefixes(&record.policy)
            .expect("prefixes")
            .iter()
            .map(|p| in_kernel[p])
            .collect();
        assert_eq!(claimed, record.rule_ids, "round {round}: ids in the record");
        let ids: BTreeSet<u32> = in_kernel.values().copied().collect();
        assert_eq!(ids.len(), in_kernel.len(), "round {round}: ids are unique");
    }
    operations::detach(&layout, &operations::DetachTarget::All).expect("detach");
}
