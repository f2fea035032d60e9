//! The incremental slot writer against the truth in the kernel: after every apply of a random
//! sequence of policies, the active slot's tries hold exactly the policy's prefixes, with the
//! ids its record claims (LPM-trie lookup), or the active slot's compiled table, read back from
//! the kernel, gives every prefix's first and last address the rule of its longest match
//! (compiled lookup; each apply patches the table the slot held two applies earlier).

use std::{collections::BTreeSet, net::IpAddr};

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
    for lookup in Lookup::ALL {
        incremental_writes_with(lookup);
    }
}

/// Longest match of `addr` over `entries`.
fn longest_match(entries: &[(IpNet, u32)], addr: IpAddr) -> Option<u32> {
    entries
        .iter()
        .filter(|(p, _)| p.contains(&addr))
        .max_by_key(|(p, _)| p.prefix_len())
        .map(|(_, id)| *id)
}

/// Checks the compiled table of the active slot against the slot's record.
fn check_table(maps: &FilterMaps, active: u32, round: usize, layout: &PinLayout) {
    let table = maps
        .table(active)
        .expect("map the table")
        .expect("a compiled filter has a table");
    let record = Filter::open(layout)
        .expect("open")
        .record()
        .expect("record");
    let entries: Vec<(IpNet, u32)> = slot_prefixes(&record.policy)
        .into_iter()
        .zip(record.rule_ids.iter().copied())
        .collect();
    for (prefix, _) in &entries {
        for addr in [prefix.network(), prefix.broadcast()] {
            let got = match addr {
                IpAddr::V4(a) => table.lookup_v4(a.octets()),
                IpAddr::V6(a) => table.lookup_v6(a.octets()),
            };
            assert_eq!(
                got,
                longest_match(&entries, addr),
                "round {round}: {addr} in the kernel's table"
            );
        }
    }
    let ids: BTreeSet<u32> = entries.iter().map(|(_, id)| *id).collect();
    assert_eq!(ids.len(), entries.len(), "round {round}: ids are unique");
}

fn incremental_writes_with(lookup: Lookup) {
    let bpffs = Bpffs::new().expect("bpffs");
    let layout = PinLayout::new(bpffs.path());
    let options = AttachOptions {
        lookup: Some(lookup),
        ..AttachOptions::default()
    };
    operations::attach(&layout, &options).expect("load");
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for round in 0..60 {
        let policy = Policy {
            ranges: random_list(&mut rng).parse().expect("random list"),
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
        if lookup == Lookup::Compiled {
            check_table(&maps, active, round, &layout);
            continue;
        }
        let in_kernel = maps.rule_ids(active).expect("read tries");
        let expected: BTreeSet<IpNet> = slot_prefixes(&policy).into_iter().collect();
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
            .iter()
            .map(|p| in_kernel[p])
            .collect();
        assert_eq!(claimed, record.rule_ids, "round {round}: ids in the record");
        let ids: BTreeSet<u32> = in_kernel.values().copied().collect();
        assert_eq!(ids.len(), in_kernel.len(), "round {round}: ids are unique");
    }
    operations::detach(&layout, &operations::DetachTarget::All).expect("detach");
}
