//! Compiles a prefix list to the smallest set of prefixes covering the same addresses.

use ipnet::IpNet;

/// How many prefixes of each family went into [`merge`] and came out of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MergeSummary {
    /// IPv4 prefixes given.
    pub given_v4: usize,
    /// IPv6 prefixes given.
    pub given_v6: usize,
    /// IPv4 prefixes after merging.
    pub merged_v4: usize,
    /// IPv6 prefixes after merging.
    pub merged_v6: usize,
}

/// The smallest set of prefixes that covers exactly the addresses of `prefixes`.
///
/// Host bits are cleared, duplicates and covered prefixes dropped, and adjacent
/// siblings joined repeatedly (`10.0.0.0/25` + `10.0.0.128/25` = `10.0.0.0/24`).
/// The result is sorted: IPv4 ascending, then IPv6 ascending. O(n log n).
pub fn merge(prefixes: &[IpNet]) -> Vec<IpNet> {
    // `aggregate` sorts the (network, broadcast) intervals of each family, joins
    // overlapping or touching ones, and splits each interval into its minimal
    // CIDR cover, which is the unique minimal equivalent prefix set.
    IpNet::aggregate(&prefixes.to_vec())
}

/// Counts the prefixes of each family in `given` and `merged`.
pub fn summarize(given: &[IpNet], merged: &[IpNet]) -> MergeSummary {
    let (given_v4, given_v6) = count_families(given);
    let (merged_v4, merged_v6) = count_families(merged);
    MergeSummary {
        given_v4,
        given_v6,
        merged_v4,
        merged_v6,
    }
}

/// The number of IPv4 and of IPv6 prefixes in `nets`.
fn count_families(nets: &[IpNet]) -> (usize, usize) {
    let v4 = nets
        .iter()
        .filter(|net| matches!(net, IpNet::V4(_)))
        .count();
    (v4, nets.len() - v4)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn nets(texts: &[&str]) -> Vec<IpNet> {
        texts.iter().map(|t| t.parse().unwrap()).collect()
    }

    #[test]
    fn merge_examples() {
        let cases: &[(&[&str], &[&str])] = &[
            (&[], &[]),
            (&["10.0.0.0/25", "10.0.0.128/25"], &["10.0.0.0/24"]),
            (
                &[
                    "10.0.0.0/26",
                    "10.0.0.192/26",
                    "10.0.0.64/26",
                    "10.0.0.128/26",
                ],
                &["10.0.0.0/24"],
            ),
            (
                &["10.0.0.0/24", "10.0.0.0/24", "10.0.0.7/32", "10.0.0.0/25"],
                &["10.0.0.0/24"],
            ),
            // Host bits are cleared.
            (&["10.0.0.77/24", "10.0.1.1/24"], &["10.0.0.0/23"]),
            // Adjacent but not siblings: no merge.
            (
                &["10.0.1.0/24", "10.0.2.0/24"],
                &["10.0.1.0/24", "10.0.2.0/24"],
            ),
            // A cascade: /32 + /32 -> /31, + /31 -> /30, + /30 -> /29.
            (
                &["10.0.0.0/32", "10.0.0.1/32", "10.0.0.2/31", "10.0.0.4/30"],
                &["10.0.0.0/29"],
            ),
            (
                &[
                    "2001:db8::/33",
                    "10.0.0.0/8",
                    "2001:db8:8000::/33",
                    "1.0.0.0/8",
                ],
                &["1.0.0.0/8", "10.0.0.0/8", "2001:db8::/32"],
            ),
            (&["2001:db8::1/128", "::/0", "fe80::/10"], &["::/0"]),
            (&["0.0.0.0/1", "128.0.0.0/1"], &["0.0.0.0/0"]),
            (&["::/1", "8000::/1"], &["::/0"]),
            (
                &["255.255.255.254/32", "255.255.255.255/32"],
                &["255.255.255.254/31"],
            ),
            (
                &[
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128",
                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/128",
                ],
                &["ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"],
            ),
            (
                &["0.0.0.0/32", "255.255.255.255/32", "::/128"],
                &["0.0.0.0/32", "255.255.255.255/32", "::/128"],
            ),
        ];
        for (given, want) in cases {
            assert_eq!(merge(&nets(given)), nets(want), "{given:?}");
        }
    }

    #[test]
    fn summarize_counts_families() {
        let given = nets(&["10.0.0.0/25", "10.0.0.128/25", "2001:db8::/32", "::1/128"]);
        assert_eq!(
            summarize(&given, &merge(&given)),
            MergeSummary {
                given_v4: 2,
                given_v6: 2,
                merged_v4: 1,
                merged_v6: 2,
            }
        );
        assert_eq!(summarize(&[], &[]), MergeSummary::default());
    }

    /// Address bits of `addr` as a number, and the family's width.
    fn bits(addr: IpAddr) -> (u128, u32) {
        match addr {
            IpAddr::V4(a) => (u32::from(a).into(), 32),
            IpAddr::V6(a) => (a.into(), 128),
        }
    }

    /// Naive oracle, independent of ipnet's arithmetic: does `net` contain `addr`?
    fn naive_contains(net: &IpNet, addr: IpAddr) -> bool {
        let (a, width) = bits(addr);
        let (n, net_width) = bits(net.addr());
        width == net_width
            && (a ^ n)
                .checked_shr(width - u32::from(net.prefix_len()))
                .unwrap_or(0)
                == 0
    }

    fn make_addr(v6: bool, value: u128) -> IpAddr {
        if v6 {
            Ipv6Addr::from(value).into()
        } else {
            Ipv4Addr::from(value as u32).into()
        }
    }

    /// One prefix inside the block of `2^spread` addresses around `anchor`,
    /// one to three bits longer than the block (when it can be), so prefixes overlap and touch often.
    fn prefix_near(anchor: u128, spread: u32, v6: bool, noise: u128, slack: u32) -> IpNet {
        let width: u32 = if v6 { 128 } else { 32 };
        let spread = spread.min(width);
        let mask = 1u128.checked_shl(spread).map_or(u128::MAX, |bit| bit - 1);
        let len = width - spread + (1 + slack % 3).min(spread);
        IpNet::new(make_addr(v6, anchor ^ (noise & mask)), len as u8).unwrap()
    }

    /// A block around which prefixes cluster: its base bits and its size in bits.
    fn anchor() -> impl Strategy<Value = (u128, u32)> {
        (
            prop_oneof![any::<u128>(), Just(0u128), Just(u128::MAX)],
            prop_oneof![4 => 0u32..=4, 4 => 0u32..=10, 1 => 0u32..=128],
        )
    }

    /// A mixed IPv4/IPv6 prefix set clustered around a few anchors.
    fn prefix_sets() -> impl Strategy<Value = Vec<IpNet>> {
        (
            prop::collection::vec(anchor(), 1..4),
            prop::collection::vec(
                (any::<bool>(), any::<usize>(), any::<u128>(), any::<u32>()),
                0..64,
            ),
        )
            .prop_map(|(anchors, specs)| {
                specs
                    .into_iter()
                    .map(|(v6, which, noise, slack)| {
                        let (base, spread) = anchors[which % anchors.len()];
                        let base = if v6 { base } else { base & 0xffff_ffff };
                        prefix_near(base, spread, v6, noise, slack)
                    })
                    .collect()
            })
    }

    /// Probe addresses: inside, just before and just after each input, and uniform.
    fn probes(input: &[IpNet], seeds: &[u128]) -> Vec<IpAddr> {
        let mut out = Vec::new();
        for (i, seed) in seeds.iter().enumerate() {
            let v6 = seed & 1 == 1;
            let max = if v6 { u128::MAX } else { u32::MAX.into() };
            out.push(make_addr(v6, (seed >> 1) & max));
            if let Some(net) = input.get(i % input.len().max(1)) {
                let (first, _) = bits(net.network());
                let (last, _) = bits(net.broadcast());
                let v6 = matches!(net, IpNet::V6(_));
                out.push(make_addr(
                    v6,
                    first + (seed % (last - first).saturating_add(1).max(1)),
                ));
                out.push(make_addr(v6, first.wrapping_sub(1) & max));
                out.push(make_addr(v6, last.wrapping_add(1) & max));
            }
        }
        out
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn merge_is_minimal_and_equivalent(
            input in prefix_sets(),
            seeds in prop::collection::vec(any::<u128>(), 64),
        ) {
            let merged = merge(&input);

            for addr in probes(&input, &seeds) {
                let want = input.iter().any(|n| naive_contains(n, addr));
                let got = merged.iter().any(|n| naive_contains(n, addr));
                prop_assert_eq!(got, want, "{} in {:?} -> {:?}", addr, input, merged);
            }

            for (i, a) in merged.iter().enumerate() {
                prop_assert_eq!(*a, a.trunc());
                for b in &merged[i + 1..] {
                    prop_assert!(!a.contains(b) && !b.contains(a), "{} overlaps {}", a, b);
                    let siblings = a.prefix_len() == b.prefix_len()
                        && a.prefix_len() > 0
                        && a.supernet() == b.supernet();
                    prop_assert!(!siblings, "{} and {} should be merged", a, b);
                }
            }

            let mut sorted = merged.clone();
            sorted.sort_by_key(|n| (matches!(n, IpNet::V6(_)), n.network(), n.prefix_len()));
            prop_assert_eq!(&sorted, &merged);

            prop_assert_eq!(merge(&merged), merged.clone());
            prop_assert!(merged.len() <= input.len());
        }
    }
}
