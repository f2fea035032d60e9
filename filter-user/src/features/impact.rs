//! The impact of a change, for `--dry-run` (and the lockout guard): merged prefixes per family
//! before and after, established connections that would be cut, and sources seen recently that
//! would flip (denied ones that would be let in, authorized ones that would be shut out).
//!
//! The entry-level diff (entries added and removed as given, merged prefixes added and removed)
//! is `daemon::desired::Diff`; this module adds what the change does to real traffic. Pure:
//! the caller passes the connections (from [`crate::features::lockout::established`]) and the recent
//! denied sources (from the [`crate::features::deny_log::DenyLog`]).

use std::{collections::BTreeSet, net::IpAddr};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::{
    daemon::denied::DeniedSource,
    features::lockout::{Connection, GuardOptions, would_cut},
    policy::compile::FamilyCounts,
    policy::verdict::VerdictModel,
};

/// A source whose verdict on a port would change.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Flip {
    /// The source address.
    pub source: IpAddr,
    /// The protected local port it was seen on.
    pub port: u16,
    /// Denied packets reported from it (from the deny log; 0 for a connection).
    pub denied_packets: u64,
    /// When it was last seen (deny log), if known.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub last_seen: Option<OffsetDateTime>,
}

/// What a change would do to traffic.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Impact {
    /// Authorized prefixes after merging (authorized ranges and always-allow), per family, now.
    pub merged_before: FamilyCounts,
    /// The same after the change.
    pub merged_after: FamilyCounts,
    /// Established connections to protected ports that the change would drop.
    pub cut: Vec<Connection>,
    /// Sources denied recently (deny log) that the change would let in.
    pub newly_allowed: Vec<Flip>,
    /// Sources authorized now (established connections, or `recent_authorized`) that the
    /// change would deny.
    pub newly_denied: Vec<Flip>,
}

/// Computes the impact of going from `before` to `after`.
///
/// `connections` are the established connections to protected ports now; `denied` the deny
/// log's rows; `recent_authorized` other (source, port) pairs known to be authorized now.
pub fn impact(
    before: &VerdictModel,
    after: &VerdictModel,
    connections: &[Connection],
    options: GuardOptions,
    denied: &[DeniedSource],
    recent_authorized: &[(IpAddr, u16)],
) -> Impact {
    let mut newly_allowed: Vec<Flip> = denied
        .iter()
        .filter(|d| before.denies(d.source, d.port) && !after.denies(d.source, d.port))
        .map(|d| Flip {
            source: d.source,
            port: d.port,
            denied_packets: d.count,
            last_seen: Some(d.last_seen),
        })
        .collect();
    newly_allowed.sort_by(|a, b| b.denied_packets.cmp(&a.denied_packets).then(a.cmp(b)));

    let authorized: BTreeSet<(IpAddr, u16)> = connections
        .iter()
        .map(|c| (c.remote.ip().to_canonical(), c.local.port()))
        .chain(
            recent_authorized
                .iter()
                .map(|(ip, port)| (ip.to_canonical(), *port)),
        )
        .collect();
    let newly_denied = authorized
        .into_iter()
        .filter(|(ip, port)| !before.denies(*ip, *port) && after.denies(*ip, *port))
        .map(|(source, port)| Flip {
            source,
            port,
            denied_packets: 0,
            last_seen: None,
        })
        .collect();

    Impact {
        merged_before: before.counts(),
        merged_after: after.counts(),
        cut: would_cut(connections, before, after, options),
        newly_allowed,
        newly_denied,
    }
}

impl Impact {
    /// Human-readable lines for `--dry-run`.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "merged prefixes: IPv4 {} -> {}, IPv6 {} -> {}",
            self.merged_before.v4,
            self.merged_after.v4,
            self.merged_before.v6,
            self.merged_after.v6
        )];
        if self.cut.is_empty() {
            lines.push("established connections that would be cut: none".into());
        } else {
            lines.push(format!(
                "established connections that would be cut ({}):",
                self.cut.len()
            ));
            lines.extend(self.cut.iter().map(|c| format!("  {c}")));
        }
        let flips = |title: &str, flips: &[Flip], lines: &mut Vec<String>| {
            if flips.is_empty() {
                lines.push(format!("{title}: none"));
                return;
            }
            lines.push(format!("{title} ({}):", flips.len()));
            for flip in flips {
                let mut line = format!("  {} on port {}", flip.source, flip.port);
                if flip.denied_packets > 0 {
                    line.push_str(&format!(", {} packets denied", flip.denied_packets));
                }
                if let Some(at) = flip.last_seen {
                    line.push_str(&format!(", last {}", crate::policy::timestamp::rfc3339(at)));
                }
                lines.push(line);
            }
        };
        flips(
            "recently denied sources that would be allowed",
            &self.newly_allowed,
            &mut lines,
        );
        flips(
            "authorized sources that would be denied",
            &self.newly_denied,
            &mut lines,
        );
        lines
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Mode, Policy};
    use std::net::SocketAddr;

    fn gate(ranges: &str) -> VerdictModel {
        VerdictModel::from_policy(&Policy {
            ranges: ranges.parse().unwrap(),
            always_allow: vec!["198.51.100.7/32".parse().unwrap()],
            mode: Mode::Enforce,
            ..Policy::default()
        })
    }

    fn conn(local: &str, remote: &str) -> Connection {
        Connection {
            local: local.parse::<SocketAddr>().unwrap(),
            remote: remote.parse::<SocketAddr>().unwrap(),
            uid: 0,
            inode: 0,
        }
    }

    fn denied(source: &str, port: u16, count: u64) -> DeniedSource {
        DeniedSource {
            source: source.parse().unwrap(),
            count,
            first_seen: OffsetDateTime::UNIX_EPOCH,
            last_seen: OffsetDateTime::UNIX_EPOCH + time::Duration::days(20_000),
            port,
            interface: "eth0".into(),
            ifindex: 2,
            would_drop: false,
        }
    }

    #[test]
    fn finds_cuts_and_flips() {
        let before = gate("10.0.0.0/8, 192.0.2.0/24");
        let after = gate("10.0.0.0/8, 203.0.113.0/24, 2001:db8::/32");
        let connections = [
            conn("10.9.9.9:6443", "192.0.2.7:50000"),
            conn("10.9.9.9:6443", "10.1.1.1:50001"),
            conn("10.9.9.9:6443", "198.51.100.7:50002"),
        ];
        let log = [
            denied("203.0.113.9", 6443, 5),
            denied("203.0.113.10", 443, 50),
            denied("192.0.2.200", 22, 1), // unprotected port: never a flip
            denied("172.16.0.1", 6443, 9),
            denied("2001:db8::5", 6443, 2),
        ];
        let impact = impact(
            &before,
            &after,
            &connections,
            GuardOptions::default(),
            &log,
            &["192.0.2.99".parse::<IpAddr>().map(|ip| (ip, 443)).unwrap()],
        );
        assert_eq!(impact.merged_before, FamilyCounts { v4: 3, v6: 0 });
        assert_eq!(impact.merged_after, FamilyCounts { v4: 3, v6: 1 });
        assert_eq!(impact.cut, [connections[0]]);
        let allowed: Vec<(String, u64)> = impact
            .newly_allowed
            .iter()
            .map(|f| (f.source.to_string(), f.denied_packets))
            .collect();
        assert_eq!(
            allowed,
            [
                ("203.0.113.10".into(), 50),
                ("203.0.113.9".into(), 5),
                ("2001:db8::5".into(), 2)
            ]
        );
        let denied: Vec<String> = impact
            .newly_denied
            .iter()
            .map(|f| format!("{}:{}", f.source, f.port))
            .collect();
        assert_eq!(denied, ["192.0.2.7:6443", "192.0.2.99:443"]);

        let text = impact.describe().join("\n");
        assert_eq!(
            text,
            "merged prefixes: IPv4 3 -> 3, IPv6 0 -> 1\n\
             established connections that would be cut (1):\n  \
             192.0.2.7:50000 -> 10.9.9.9:6443\n\
             recently denied sources that would be allowed (3):\n  \
             203.0.113.10 on port 443, 50 packets denied, last 2024-10-04T00:00:00Z\n  \
             203.0.113.9 on port 6443, 5 packets denied, last 2024-10-04T00:00:00Z\n  \
             2001:db8::5 on port 6443, 2 packets denied, last 2024-10-04T00:00:00Z\n\
             authorized sources that would be denied (2):\n  \
             192.0.2.7 on port 6443\n  \
             192.0.2.99 on port 443"
        );
        let json = serde_json::to_value(&impact).unwrap();
        assert_eq!(json["cut"][0]["remote"], "192.0.2.7:50000");
        assert_eq!(
            json["newly_denied"][0]["last_seen"],
            serde_json::Value::Null
        );
    }

    #[test]
    fn no_change_no_impact() {
        let same = gate("10.0.0.0/8");
        let impact = impact(
            &same,
            &same,
            &[conn("10.9.9.9:6443", "10.1.1.1:1")],
            GuardOptions::default(),
            &[denied("192.0.2.1", 6443, 3)],
            &[],
        );
        assert!(
            impact.cut.is_empty()
                && impact.newly_allowed.is_empty()
                && impact.newly_denied.is_empty()
        );
        assert_eq!(
            impact.describe()[1],
            "established connections that would be cut: none"
        );
    }

    proptest::proptest! {
        /// The lockout guard skips reading connections when `after.denies_nothing_new(&before)`:
        /// that is sound only if, then, no connection could be cut or newly denied.
        #[test]
        fn denies_nothing_new_means_no_cut_and_no_newly_denied(
            before in proptest::collection::vec((0u8..4, 10u8..=12), 0..4),
            extra in proptest::collection::vec((0u8..4, 10u8..=12), 0..3),
            modes in (proptest::prelude::any::<bool>(), proptest::prelude::any::<bool>()),
            remotes in proptest::collection::vec((0u8..4, proptest::prelude::any::<u16>()), 1..16),
        ) {
            let list = |nets: &[(u8, u8)]| -> String {
                nets.iter()
                    .map(|(a, len)| format!("10.{}.0.0/{len}", a * 64))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let mode = |monitor: bool| if monitor { Mode::Monitor } else { Mode::Enforce };
            let gate = |text: String, monitor| {
                VerdictModel::from_policy(&Policy {
                    ranges: text.parse().unwrap(),
                    mode: mode(monitor),
                    ..Policy::default()
                })
            };
            let wider: Vec<(u8, u8)> = before.iter().chain(&extra).copied().collect();
            let (before, after) = (gate(list(&before), modes.0), gate(list(&wider), modes.1));
            let connections: Vec<Connection> = remotes
                .iter()
                .map(|(a, low)| {
                    conn(
                        "10.255.0.1:6443",
                        &format!("10.{}.{}.{}:40000", a * 64, low >> 8, low & 0xff),
                    )
                })
                .collect();
            if after.denies_nothing_new(&before) {
                let options = GuardOptions::default();
                let impact = impact(&before, &after, &connections, options, &[], &[]);
                proptest::prop_assert!(impact.cut.is_empty(), "{:?}", impact.cut);
                proptest::prop_assert!(impact.newly_denied.is_empty(), "{:?}", impact.newly_denied);
            }
        }
    }
}
