//! What a [`Policy`] lets through, asked one source at a time: the userspace mirror of the XDP
//! verdict, for questions such as "which connections would this change cut?" and "which sources
//! seen recently would flip?". Pure; lookups are binary searches over the merged prefixes, so
//! asking about thousands of sources against thousands of prefixes stays cheap.

use std::{collections::BTreeSet, net::IpAddr};

use ipnet::IpNet;

use crate::{
    policy::compile::{FamilyCounts, authorized_prefixes},
    policy::{Mode, Policy},
    policy::{
        language::{RangeError, RangeList},
        merge::merge,
    },
};

/// A policy compiled for membership questions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VerdictModel {
    enabled: bool,
    mode: Mode,
    ports: BTreeSet<u16>,
    /// Sorted, disjoint `[first, last]` address intervals of the authorized IPv4 prefixes.
    v4: Vec<(u32, u32)>,
    /// The same for IPv6.
    v6: Vec<(u128, u128)>,
}

impl VerdictModel {
    /// The gate of `policy`: its authorized ranges and always-allow list, ports and mode.
    pub fn from_policy(policy: &Policy) -> Result<Self, RangeError> {
        let (list, prefixes) = authorized_prefixes(policy)?;
        Ok(Self::new(
            !matches!(list, RangeList::Disabled),
            policy.mode,
            &policy.ports,
            &prefixes,
        ))
    }

    /// A gate that, when `enabled`, authorizes exactly `prefixes` on `ports`.
    pub fn new(enabled: bool, mode: Mode, ports: &[u16], prefixes: &[IpNet]) -> Self {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in merge(prefixes) {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()))),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()))),
            }
        }
        Self {
            enabled,
            mode,
            ports: ports.iter().copied().collect(),
            v4,
            v6,
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
        FamilyCounts {
            v4: self.v4.len(),
            v6: self.v6.len(),
        }
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

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("test address")
    }

    fn policy(ranges: &str, always: &[&str], mode: Mode) -> Policy {
        Policy {
            ranges: ranges.into(),
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
        ))
        .unwrap();
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
        let disabled = VerdictModel::from_policy(&policy("", &[], Mode::Enforce)).unwrap();
        assert!(!disabled.enabled());
        assert!(!disabled.drops(ip("192.0.2.1"), 6443));

        let monitor = VerdictModel::from_policy(&policy("10.0.0.0/8", &[], Mode::Monitor)).unwrap();
        assert!(monitor.denies(ip("192.0.2.1"), 6443));
        assert!(!monitor.drops(ip("192.0.2.1"), 6443));

        let only =
            VerdictModel::from_policy(&policy("0.0.0.0/32", &["198.51.100.7/32"], Mode::Enforce))
                .unwrap();
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

    proptest! {
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
    }
}
