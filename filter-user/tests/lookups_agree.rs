//! The two lookups in the kernel, through `BPF_PROG_TEST_RUN`: for a random list of at least
//! 10k IPv4 and 10k IPv6 prefixes after merging (nested, adjacent and of every length), the compiled table and the
//! LPM trie both give every address the verdict and the rule id of its longest matching prefix
//! (a hash-map longest match in the test, independent of both): 10^5 random addresses per
//! family (half of them inside the list) and every prefix's first and last address and their
//! neighbours.
//!
//! The rule id is observed through the rule's hit counter: after each address, the expected
//! rule's counter must have grown by exactly one (the test counts what it expects), and a
//! miss must be dropped, so an address judged by any other rule fails the test.

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use apifence::{
    kernel::{maps::FilterMaps, operations::Filter},
    policy::{Lookup, Mode, Policy, compile::slot_prefixes},
};
use apifence_tests::{frame::Frame, require_privileges};
use filter_common::RuleId;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

mod support;

use support::{Lab, XDP_DROP, XDP_PASS};

const API: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
/// Prefixes generated per family (merging folds some into their covers).
const PREFIXES_PER_FAMILY: usize = 20_000;
/// Prefixes per family that must remain after merging.
const MERGED_PER_FAMILY: usize = 10_000;
const RANDOM_ADDRESSES_PER_FAMILY: usize = 100_000;
/// Points the random prefixes cluster around.
const ANCHORS: u64 = 8000;

/// xorshift64*: a fixed seed, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn u128(&mut self) -> u128 {
        (u128::from(self.next()) << 64) | u128::from(self.next())
    }
}

/// Random prefixes clustered around a few hundred anchors, so they touch and overlap (merging
/// folds covered ones into their cover): lengths 16..=32 (IPv4) and 40..=128 (IPv6).
fn random_list(rng: &mut Rng) -> Vec<IpNet> {
    let anchors4: Vec<u32> = (0..ANCHORS).map(|_| rng.next() as u32).collect();
    let anchors6: Vec<u128> = (0..ANCHORS)
        .map(|_| (0x2000u128 << 112) | (rng.u128() >> 4))
        .collect();
    let mut list = Vec::new();
    while list.len() < PREFIXES_PER_FAMILY {
        let anchor = anchors4[rng.below(ANCHORS) as usize];
        // Mostly long; the noise reaches a few bits above the prefix, so neighbours touch.
        let len = 32 - (rng.below(17) * rng.below(17) / 16) as u8;
        let noise = (rng.next() as u32) >> (28 - (32 - u32::from(len)).min(28));
        list.push(IpNet::V4(
            Ipv4Net::new(Ipv4Addr::from(anchor ^ noise), len)
                .expect("length ≤ 32")
                .trunc(),
        ));
    }
    while list.len() < 2 * PREFIXES_PER_FAMILY {
        let anchor = anchors6[rng.below(ANCHORS) as usize];
        let len = 128 - (rng.below(89) * rng.below(89) / 88) as u8;
        let noise = rng.u128() >> (124 - (128 - u32::from(len)).min(124));
        list.push(IpNet::V6(
            Ipv6Net::new(Ipv6Addr::from(anchor ^ noise), len)
                .expect("length ≤ 128")
                .trunc(),
        ));
    }
    list
}

/// Longest match by one hash lookup per prefix length: the reference model.
struct Reference {
    by_len: BTreeMap<u8, HashMap<IpNet, RuleId>>,
}

impl Reference {
    fn new(entries: &[(IpNet, RuleId)]) -> Self {
        let mut by_len: BTreeMap<u8, HashMap<IpNet, RuleId>> = BTreeMap::new();
        for (net, id) in entries {
            by_len
                .entry(net.prefix_len())
                .or_default()
                .insert(*net, *id);
        }
        Self { by_len }
    }

    fn lookup(&self, addr: IpAddr) -> Option<RuleId> {
        for (len, nets) in self.by_len.iter().rev() {
            let Ok(net) = IpNet::new(addr, *len) else {
                continue;
            };
            if let Some(id) = nets.get(&net.trunc()) {
                return Some(*id);
            }
        }
        None
    }
}

/// Every prefix's first and last address and their neighbours.
fn boundaries(list: &[(IpNet, RuleId)]) -> Vec<IpAddr> {
    let mut out = Vec::new();
    for (net, _) in list {
        match net {
            IpNet::V4(n) => {
                let (first, last) = (u32::from(n.network()), u32::from(n.broadcast()));
                for a in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    out.push(Ipv4Addr::from(a).into());
                }
            }
            IpNet::V6(n) => {
                let (first, last) = (u128::from(n.network()), u128::from(n.broadcast()));
                for a in [first.wrapping_sub(1), first, last, last.wrapping_add(1)] {
                    out.push(Ipv6Addr::from(a).into());
                }
            }
        }
    }
    out
}

/// Random addresses: half anywhere in the family, half inside a random prefix of the list.
fn random_addresses(rng: &mut Rng, list: &[(IpNet, RuleId)], v6: bool) -> Vec<IpAddr> {
    let family: Vec<&IpNet> = list
        .iter()
        .map(|(n, _)| n)
        .filter(|n| matches!(n, IpNet::V6(_)) == v6)
        .collect();
    (0..RANDOM_ADDRESSES_PER_FAMILY)
        .map(|i| {
            let inside = (i % 2 == 1).then(|| family[rng.below(family.len() as u64) as usize]);
            match (v6, inside) {
                (false, None) => Ipv4Addr::from(rng.next() as u32).into(),
                (true, None) => Ipv6Addr::from(rng.u128()).into(),
                (false, Some(IpNet::V4(n))) => {
                    let host = (rng.next() as u32) & !u32::from(n.netmask());
                    Ipv4Addr::from(u32::from(n.network()) | host).into()
                }
                (true, Some(IpNet::V6(n))) => {
                    let host = rng.u128() & !u128::from(n.netmask());
                    Ipv6Addr::from(u128::from(n.network()) | host).into()
                }
                _ => unreachable!("the family was filtered above"),
            }
        })
        .collect()
}

/// Runs every address through `lab` and checks verdict and rule against the expectation.
fn check_all(lab: &Lab, expected: &Expected) {
    let maps = FilterMaps::open(&lab.layout).expect("open the filter's maps");
    let mut expected_hits: HashMap<RuleId, u64> = HashMap::new();
    for (addr, rule) in expected {
        let frame = match addr {
            IpAddr::V4(a) => Frame::tcp4(*a, API, 6443),
            IpAddr::V6(a) => Frame::tcp6(*a, API6, 6443),
        };
        let verdict = lab.run(&frame);
        let lookup = lab.lookup.name();
        match *rule {
            None => assert_eq!(verdict, XDP_DROP, "{lookup}: {addr} matches no prefix"),
            Some(id) => {
                assert_eq!(verdict, XDP_PASS, "{lookup}: {addr} matches rule {id}");
                let want = expected_hits.entry(id).or_default();
                *want += 1;
                let got = maps.hits(id).expect("read a hit counter");
                assert_eq!(got, *want, "{lookup}: {addr} was not judged by rule {id}");
            }
        }
    }
}

/// Addresses with the rule each must be judged by (`None`: dropped).
type Expected = Vec<(IpAddr, Option<RuleId>)>;

/// The addresses to check with their expected rule: boundaries and random addresses.
fn expectations(entries: &[(IpNet, RuleId)]) -> Expected {
    let reference = Reference::new(entries);
    let mut addresses = boundaries(entries);
    let mut rng = Rng(0xadd2_e55e_5eed_0001);
    addresses.extend(random_addresses(&mut rng, entries, false));
    addresses.extend(random_addresses(&mut rng, entries, true));
    let expected: Vec<(IpAddr, Option<RuleId>)> = addresses
        .into_iter()
        .map(|a| (a, reference.lookup(a)))
        .collect();
    let matched = expected.iter().filter(|(_, r)| r.is_some()).count();
    assert!(
        matched > expected.len() / 4 && matched < expected.len() * 3 / 4,
        "{matched} of {} addresses match: the sample should mix hits and misses",
        expected.len()
    );
    expected
}

#[test]
fn compiled_table_and_lpm_trie_agree_with_the_longest_match() {
    if !require_privileges("compiled_table_and_lpm_trie_agree_with_the_longest_match") {
        return;
    }
    let mut rng = Rng(0x005e_ed0f_a91f_e4ce);
    let list = random_list(&mut rng);
    let ranges: Vec<String> = list.iter().map(ToString::to_string).collect();
    // The always-allow list is merged on its own, so its prefixes nest inside (and around)
    // the ranges: longer prefixes inside random ranges, and a few /8 and /12 covers.
    let mut always_allow: Vec<IpNet> = (0..1000)
        .map(|_| {
            let inside = list[rng.below(list.len() as u64) as usize];
            let longer =
                (inside.prefix_len() + 1 + rng.below(8) as u8).min(inside.max_prefix_len());
            IpNet::new(inside.network(), longer).expect("valid length")
        })
        .collect();
    for _ in 0..4 {
        let inside = list[rng.below(PREFIXES_PER_FAMILY as u64) as usize];
        always_allow.push(IpNet::new(inside.network(), 8).expect("valid").trunc());
        let inside = list[PREFIXES_PER_FAMILY + rng.below(PREFIXES_PER_FAMILY as u64) as usize];
        always_allow.push(IpNet::new(inside.network(), 12).expect("valid").trunc());
    }
    let policy = Policy {
        ranges: ranges.join(",").parse().expect("generated list"),
        always_allow,
        mode: Mode::Enforce,
        ..Policy::default()
    };
    // The expected rule of every address, computed once (both labs assign the same ids).
    let mut expected: Option<(Vec<(IpNet, RuleId)>, Expected)> = None;
    for lookup in Lookup::ALL {
        let lab = Lab::with_lookup(lookup, policy.clone());
        let record = Filter::open(&lab.layout)
            .expect("open")
            .record()
            .expect("record");
        let prefixes = slot_prefixes(&record.policy);
        let v4 = prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)))
            .count();
        let v6 = prefixes.len() - v4;
        assert!(
            v4 >= MERGED_PER_FAMILY && v6 >= MERGED_PER_FAMILY,
            "merging left only {v4} IPv4 and {v6} IPv6 prefixes"
        );
        let entries: Vec<(IpNet, RuleId)> = prefixes.into_iter().zip(record.rule_ids).collect();
        if expected.as_ref().map(|(e, _)| e) != Some(&entries) {
            expected = Some((entries.clone(), expectations(&entries)));
        }
        let (_, addresses) = expected.as_ref().expect("set just above");
        check_all(&lab, addresses);
    }
}
