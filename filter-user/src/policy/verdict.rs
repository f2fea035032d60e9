//! What a [`Policy`] lets through, asked one source at a time: the userspace mirror of the XDP
//! verdict, for questions such as "which connections would this change cut?" and "which sources
//! seen recently would flip?". Pure; lookups are binary searches over the merged prefixes, so
//! asking about thousands of sources against thousands of prefixes stays cheap.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use crate::{
    policy::compile::FamilyCounts,
    policy::merge::merge,
    policy::{Mode, Policy},
};

/// A policy compiled for membership questions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictModel {
    enabled: bool,
    mode: Mode,
    ports: BTreeSet<u16>,
    /// Sorted `[first, last]` address intervals of the authorized IPv4 prefixes, neither
    /// overlapping nor touching.
    v4: Vec<(u32, u32)>,
    /// The same for IPv6.
    v6: Vec<(u128, u128)>,
    /// Prefixes per family of the minimal cover of the intervals (what merging all authorized
    /// prefixes together gives).
    counts: FamilyCounts,
}

impl VerdictModel {
    /// The gate of `policy`: its authorized ranges and always-allow list, ports and mode. The
    /// ranges come merged with the policy; only the (short) always-allow list is merged here,
    /// and the two are united in one linear pass.
    pub fn from_policy(policy: &Policy) -> Self {
        let (ranges_v4, ranges_v6) = intervals(policy.ranges.merged());
        let (always_v4, always_v6) = intervals(&merge(&policy.always_allow));
        Self::with_intervals(
            policy.ranges.is_enabled(),
            policy.mode,
            &policy.ports,
            union(&ranges_v4, &always_v4),
            union(&ranges_v6, &always_v6),
        )
    }

    /// A gate that, when `enabled`, authorizes exactly `prefixes` on `ports`.
    pub fn new(enabled: bool, mode: Mode, ports: &[u16], prefixes: &[IpNet]) -> Self {
        let (v4, v6) = intervals(&merge(prefixes));
        Self::with_intervals(enabled, mode, ports, union(&v4, &[]), union(&v6, &[]))
    }

    fn with_intervals(
        enabled: bool,
        mode: Mode,
        ports: &[u16],
        v4: Vec<(u32, u32)>,
        v6: Vec<(u128, u128)>,
    ) -> Self {
        let counts = FamilyCounts {
            v4: v4
                .iter()
                .map(|&(first, last)| cidr_count(first.into(), last.into(), 32))
                .sum(),
            v6: v6
                .iter()
                .map(|&(first, last)| cidr_count(first, last, 128))
                .sum(),
        };
        Self {
            enabled,
            mode,
            ports: ports.iter().copied().collect(),
            v4,
            v6,
            counts,
        }
    }

    /// Whether filtering is on (the list is not `""`).
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Enforce or monitor.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Whether TCP destination `port` is protected.
    pub fn protects(&self, port: u16) -> bool {
        self.ports.contains(&port)
    }

    /// Whether `source` may reach protected ports (always, when filtering is disabled).
    /// IPv4-mapped IPv6 addresses are judged as the IPv4 address they carry, as packets from
    /// IPv4 clients arrive as IPv4.
    pub fn authorizes(&self, source: IpAddr) -> bool {
        if !self.enabled {
            return true;
        }
        match source.to_canonical() {
            IpAddr::V4(addr) => contains(&self.v4, u32::from(addr)),
            IpAddr::V6(addr) => contains(&self.v6, u128::from(addr)),
        }
    }

    /// Whether a TCP packet from `source` to local `port` would be denied (dropped in enforce
    /// mode, counted as would-drop in monitor mode).
    pub fn denies(&self, source: IpAddr, port: u16) -> bool {
        self.protects(port) && !self.authorizes(source)
    }

    /// Whether a TCP packet from `source` to local `port` would really be dropped.
    pub fn drops(&self, source: IpAddr, port: u16) -> bool {
        self.mode == Mode::Enforce && self.denies(source, port)
    }

    /// Merged authorized prefixes per family (authorized ranges and always-allow together).
    pub fn counts(&self) -> FamilyCounts {
        self.counts
    }

    /// Whether going from `before` to this gate can neither drop nor deny a (source, port)
    /// that `before` let through: this gate is in monitor mode or in `before`'s mode, protects
    /// no port `before` left open, and authorizes every address `before` authorized. Such a
    /// change (a range added to a list in force, for example) cuts no connection, so the
    /// lockout guard need not look for any. Linear. Exact, except that it says `false` for a
    /// gate that authorizes every address (`0.0.0.0/0` and `::/0`) while it turns filtering
    /// on, protects a new port or leaves monitor mode.
    pub fn denies_nothing_new(&self, before: &VerdictModel) -> bool {
        if !self.enabled || self.ports.is_empty() {
            return true;
        }
        // Monitor mode never drops (see `drops`); the same mode drops what is denied.
        let mode_ok = self.mode == Mode::Monitor || self.mode == before.mode;
        mode_ok
            && before.enabled
            && self.ports.is_subset(&before.ports)
            && covers(&self.v4, &before.v4)
            && covers(&self.v6, &before.v6)
    }
}

/// Whether the sorted, disjoint (and not touching) `outer` intervals hold every address of the
/// sorted, disjoint `inner` ones. Each inner interval lies in at most one outer interval, as
/// outer intervals don't touch. Linear.
fn covers<T: Ord + Copy>(outer: &[(T, T)], inner: &[(T, T)]) -> bool {
    let mut outer = outer.iter().peekable();
    inner.iter().all(|&(first, last)| {
        while outer.next_if(|(_, end)| *end < first).is_some() {}
        outer
            .peek()
            .is_some_and(|&&(start, end)| start <= first && last <= end)
    })
}

/// The `[first, last]` address intervals of `merged` (sorted and disjoint, as [`merge`] returns
/// them), per family.
#[allow(clippy::type_complexity)]
fn intervals(merged: &[IpNet]) -> (Vec<(u32, u32)>, Vec<(u128, u128)>) {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for net in merged {
        match net {
            IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
            IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
        }
    }
    (v4, v6)
}

/// The union of two sorted lists of disjoint intervals: sorted, with overlapping and touching
/// intervals joined. Linear.
fn union<T: Ord + Copy + Successor>(a: &[(T, T)], b: &[(T, T)]) -> Vec<(T, T)> {
    let mut out: Vec<(T, T)> = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() || j < b.len() {
        let next = if j == b.len() || (i < a.len() && a[i].0 <= b[j].0) {
            i += 1;
            a[i - 1]
        } else {
            j += 1;
            b[j - 1]
        };
        match out.last_mut() {
            Some(last) if next.0 <= last.1.successor() => last.1 = last.1.max(next.1),
            _ => out.push(next),
        }
    }
    out
}

/// The next address, saturating at the family's last one.
trait Successor {
    fn successor(self) -> Self;
}

impl Successor for u32 {
    fn successor(self) -> Self {
        self.saturating_add(1)
    }
}

impl Successor for u128 {
    fn successor(self) -> Self {
        self.saturating_add(1)
    }
}

/// How many prefixes the minimal cover of the addresses `first..=last` has, in a family of
/// `width` bits: the largest aligned block that fits, again and again.
fn cidr_count(first: u128, last: u128, width: u32) -> usize {
    // The last offset of a block of 2^bits addresses.
    let span = |bits: u32| match 1u128.checked_shl(bits) {
        Some(size) => size - 1,
        None => u128::MAX,
    };
    let mut start = first;
    let mut count = 0;
    loop {
        count += 1;
        let remaining = last - start; // addresses left after `start`
        let mut bits = start.trailing_zeros().min(width);
        while bits > 0 && span(bits) > remaining {
            bits -= 1;
        }
        // No overflow: span(bits) <= remaining = last - start.
        let end = start + span(bits);
        if end >= last {
            return count;
        }
        start = end + 1;
    }
}

/// Whether `addr` lies in one of the sorted, disjoint `intervals`.
fn contains<T: Ord + Copy>(intervals: &[(T, T)], addr: T) -> bool {
    // The first interval that starts after `addr`; the one before it is the only candidate.
    let after = intervals.partition_point(|(first, _)| *first <= addr);
    after > 0 && intervals[after - 1].1 >= addr
}

/// The loopback addresses (`127.0.0.0/8`, `::1`), whose traffic never crosses a network
/// interface the filter is attached to (unless it is attached to `lo`).
pub fn is_loopback(addr: IpAddr) -> bool {
    match addr.to_canonical() {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => v6.is_loopback(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// The IPv4 address of `addr` (an IPv6 one maps to an address no test prefix holds).
    fn ipv4(addr: IpAddr) -> Ipv4Addr {
        match addr {
            IpAddr::V4(a) => a,
            IpAddr::V6(_) => Ipv4Addr::BROADCAST,
        }
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn policy(ranges: &str, always: &[&str], mode: Mode) -> Policy {
        Policy {
            ranges: ranges.parse().expect("test list"),
            always_allow: always.iter().map(|a| a.parse().unwrap()).collect(),
            mode,
            ..Policy::default()
        }
    }

    #[test]
    fn mirrors_the_policy() {
        let gate = VerdictModel::from_policy(&policy(
            "10.0.0.0/8, 192.0.2.0/25, 2001:db8::/32",
            &["198.51.100.7/32", "10.1.0.0/16"],
            Mode::Enforce,
        ));
        assert!(gate.enabled());
        assert_eq!(gate.counts(), FamilyCounts { v4: 3, v6: 1 });
        for yes in [
            "10.0.0.0",
            "10.255.255.255",
            "192.0.2.127",
            "198.51.100.7",
            "2001:db8::1",
        ] {
            assert!(gate.authorizes(ip(yes)), "{yes}");
            assert!(!gate.drops(ip(yes), 6443), "{yes}");
        }
        for no in [
            "9.255.255.255",
            "11.0.0.0",
            "192.0.2.128",
            "198.51.100.8",
            "2001:db9::",
        ] {
            assert!(!gate.authorizes(ip(no)), "{no}");
            assert!(gate.drops(ip(no), 6443), "{no}");
            assert!(gate.drops(ip(no), 443), "{no}");
            assert!(!gate.drops(ip(no), 22), "{no}: unprotected port");
        }
        // A dual-stack socket reports IPv4 clients as IPv4-mapped IPv6.
        assert!(gate.authorizes(ip("::ffff:10.2.3.4")));
        assert!(!gate.authorizes(ip("::ffff:11.2.3.4")));
    }

    #[test]
    fn disabled_monitor_and_only_always_allowed() {
        let disabled = VerdictModel::from_policy(&policy("", &[], Mode::Enforce));
        assert!(!disabled.enabled());
        assert!(!disabled.drops(ip("192.0.2.1"), 6443));

        let monitor = VerdictModel::from_policy(&policy("10.0.0.0/8", &[], Mode::Monitor));
        assert!(monitor.denies(ip("192.0.2.1"), 6443));
        assert!(!monitor.drops(ip("192.0.2.1"), 6443));

        let only =
            VerdictModel::from_policy(&policy("0.0.0.0/32", &["198.51.100.7/32"], Mode::Enforce));
        assert!(only.enabled());
        assert!(only.authorizes(ip("198.51.100.7")));
        assert!(!only.authorizes(ip("10.0.0.1")));
        assert!(!only.authorizes(ip("0.0.0.0")));
    }

    #[test]
    fn loopback() {
        assert!(is_loopback(ip("127.0.0.1")));
        assert!(is_loopback(ip("::1")));
        assert!(is_loopback(ip("::ffff:127.0.0.5")));
        assert!(!is_loopback(ip("10.0.0.1")));
    }

    #[test]
    fn denies_nothing_new_only_where_nothing_is_newly_denied() {
        let gate = |ranges: &str, mode| VerdictModel::from_policy(&policy(ranges, &[], mode));
        let before = gate("10.0.0.0/16, 10.2.0.0/16, 2001:db8::/48", Mode::Enforce);
        // Wider lists, and the same list.
        for after in [
            "10.0.0.0/15, 10.2.0.0/16, 2001:db8::/48",
            "10.0.0.0/8, 2001:db8::/32",
            "10.0.0.0/16, 10.2.0.0/16, 2001:db8::/48, 192.0.2.0/24",
            "10.0.0.0/16, 10.2.0.0/16, 2001:db8::/48",
        ] {
            assert!(
                gate(after, Mode::Enforce).denies_nothing_new(&before),
                "{after}"
            );
        }
        // A removed or narrowed prefix, another family's loss, a mode that starts dropping.
        for after in [
            "10.0.0.0/16, 2001:db8::/48",
            "10.0.0.0/17, 10.2.0.0/16, 2001:db8::/48",
            "10.0.0.0/16, 10.2.0.0/16",
            "10.0.0.0/16, 10.2.0.0/16, 2001:db8::/49",
            "10.1.0.0/16, 10.2.0.0/16, 2001:db8::/48",
        ] {
            assert!(
                !gate(after, Mode::Enforce).denies_nothing_new(&before),
                "{after}"
            );
        }
        let monitor = gate("10.0.0.0/16, 10.2.0.0/16, 2001:db8::/48", Mode::Monitor);
        assert!(
            !before.denies_nothing_new(&monitor),
            "monitor to enforce starts dropping"
        );
        assert!(
            monitor.denies_nothing_new(&before),
            "enforce to monitor drops nothing"
        );
        let disabled = gate("", Mode::Enforce);
        assert!(disabled.denies_nothing_new(&before));
        assert!(
            !before.denies_nothing_new(&disabled),
            "enabling filtering denies"
        );
        let more_ports = VerdictModel::new(
            true,
            Mode::Enforce,
            &[443, 6443, 8443],
            &["10.0.0.0/8".parse().unwrap()],
        );
        let fewer_ports = VerdictModel::new(
            true,
            Mode::Enforce,
            &[443],
            &["10.0.0.0/8".parse().unwrap()],
        );
        assert!(
            !more_ports.denies_nothing_new(&fewer_ports),
            "a newly protected port"
        );
        assert!(fewer_ports.denies_nothing_new(&more_ports));
    }

    proptest! {
        /// `denies_nothing_new` never says so when some address is newly denied or dropped.
        #[test]
        fn denies_nothing_new_is_never_wrong(
            before in proptest::collection::vec((any::<u8>(), 4u8..=12), 1..12),
            other in proptest::collection::vec((any::<u8>(), 4u8..=12), 0..12),
            modes in (any::<bool>(), any::<bool>()),
            change in 0u8..3,
            probes in proptest::collection::vec(any::<u16>(), 1..64),
        ) {
            // `after` is another list, `before` with more prefixes, or `before` with its first
            // prefix one bit longer: the last two are where the answer is often yes.
            let after = match change {
                0 => other,
                1 => before.iter().chain(&other).copied().collect(),
                _ => {
                    let mut narrowed = before.clone();
                    narrowed[0].1 += 1;
                    narrowed
                }
            };
            // Prefixes in the top 16 bits, so that random probes hit them often.
            let nets = |list: Vec<(u8, u8)>| -> Vec<IpNet> {
                list.into_iter()
                    .map(|(a, len)| {
                        IpNet::new(IpAddr::V4(Ipv4Addr::from(u32::from(a) << 24)), len)
                            .unwrap()
                            .trunc()
                    })
                    .collect()
            };
            let mode = |monitor: bool| if monitor { Mode::Monitor } else { Mode::Enforce };
            let before = VerdictModel::new(true, mode(modes.0), &[443], &nets(before));
            let after = VerdictModel::new(true, mode(modes.1), &[443], &nets(after));
            if after.denies_nothing_new(&before) {
                for p in probes {
                    let addr = IpAddr::V4(Ipv4Addr::from(u32::from(p) << 16));
                    // Newly denied, or newly dropped: neither may happen.
                    prop_assert!(before.denies(addr, 443) || !after.denies(addr, 443), "{}", addr);
                    prop_assert!(before.drops(addr, 443) || !after.drops(addr, 443), "{}", addr);
                }
            }
        }

        /// Membership agrees with a naive scan over the given prefixes.
        #[test]
        fn agrees_with_a_naive_scan(
            nets in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..40),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            let nets: Vec<IpNet> = nets
                .into_iter()
                .map(|(a, len)| IpNet::new(IpAddr::V4(Ipv4Addr::from(a)), len).unwrap().trunc())
                .collect();
            let gate = VerdictModel::new(true, Mode::Enforce, &[443], &nets);
            for p in probes {
                // Probe both random addresses and the edges of each prefix.
                let addr = IpAddr::V4(Ipv4Addr::from(p));
                prop_assert_eq!(gate.authorizes(addr), nets.iter().any(|n| n.contains(&addr)));
            }
            for n in &nets {
                prop_assert!(gate.authorizes(n.network()));
                prop_assert!(gate.authorizes(n.broadcast()));
            }
        }

        /// A policy's gate (merged ranges united with the always-allow list) answers and counts
        /// as merging every authorized prefix at once does.
        #[test]
        fn from_policy_unites_ranges_and_always_allow(
            ranges in proptest::collection::vec((any::<u32>(), 8u8..=32), 1..40),
            always in proptest::collection::vec((any::<u32>(), 8u8..=32), 0..8),
            v6 in proptest::collection::vec((any::<u128>(), 0u8..=128), 0..8),
            probes in proptest::collection::vec(any::<u32>(), 1..40),
        ) {
            // Prefixes clustered in 10.0.0.0/8 (so ranges and always-allow overlap and touch).
            let near = |(a, len): (u32, u8)| {
                IpNet::new(IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (a & 0x00ff_ffff))), len)
                    .unwrap()
                    .trunc()
            };
            let mut list: Vec<IpNet> = ranges.into_iter().map(near).collect();
            list.extend(v6.into_iter().map(|(a, len)| {
                IpNet::new(IpAddr::V6(a.into()), len).unwrap().trunc()
            }));
            list.sort();
            list.dedup();
            let always: Vec<IpNet> = always.into_iter().map(near).collect();
            let policy = Policy {
                ranges: crate::policy::AuthorizedRanges::new(
                    crate::policy::language::RangeList::Ranges(list.clone()),
                ),
                always_allow: always.clone(),
                ..Policy::default()
            };
            let gate = VerdictModel::from_policy(&policy);
            let all: Vec<IpNet> = list.iter().chain(&always).copied().collect();
            let merged = merge(&all);
            let v4 = merged.iter().filter(|n| matches!(n, IpNet::V4(_))).count();
            prop_assert_eq!(gate.counts(), FamilyCounts { v4, v6: merged.len() - v4 });
            let edges = all.iter().flat_map(|n| [n.network(), n.broadcast()]);
            let around = all.iter().flat_map(|n| {
                let (first, last) = (u32::from(ipv4(n.network())), u32::from(ipv4(n.broadcast())));
                [first.wrapping_sub(1), last.wrapping_add(1)].map(|a| IpAddr::V4(a.into()))
            });
            let random = probes.into_iter().map(|p| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (p & 0x00ff_ffff))));
            for addr in edges.chain(around).chain(random) {
                prop_assert_eq!(gate.authorizes(addr), all.iter().any(|n| n.contains(&addr)), "{}", addr);
            }
        }
    }
}
