//! Compiles a [`Policy`] into the contents of one slot: merged prefixes with stable rule ids,
//! the port bitmap and the slot flags. Pure: the aya layer (`maps`) writes the result.

use std::collections::{BTreeMap, BTreeSet};

use filter_common::{PORT_WORDS_PER_SLOT, RuleId, SLOT_FLAG_ENABLED, SLOT_FLAG_MONITOR};
use ipnet::IpNet;

use crate::{
    policy::merge::merge,
    policy::{Mode, Policy},
};

/// Everything one slot holds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSlot {
    /// `SLOT_FLAG_*` bits.
    pub flags: u32,
    /// Port bitmap, [`PORT_WORDS_PER_SLOT`] words.
    pub port_words: Vec<u32>,
    /// Trie entries (IPv4 and IPv6) with their rule ids.
    pub entries: Vec<(IpNet, RuleId)>,
    /// Ids that were not in use in the active slot: their hit counters must be zeroed before
    /// the slot goes live.
    pub fresh_ids: Vec<RuleId>,
    /// Number of IPv4 and IPv6 entries.
    pub counts: FamilyCounts,
}

/// Entries per address family.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FamilyCounts {
    /// IPv4 prefixes.
    pub v4: usize,
    /// IPv6 prefixes.
    pub v6: usize,
}

/// Why a policy can't be compiled.
#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    /// More prefixes of one family than the maps hold.
    #[error(
        "the list compiles to {count} {family} prefixes after merging, but the filter holds at most {capacity} per family; \
         re-attach with a larger --capacity (apifence detach --all, then apifence attach ... --capacity {suggested})"
    )]
    OverCapacity {
        /// "IPv4" or "IPv6".
        family: &'static str,
        /// Prefixes after merging.
        count: usize,
        /// The maps' capacity.
        capacity: u32,
        /// A capacity that would fit.
        suggested: usize,
    },
}

/// The prefixes a policy authorizes, merged: the authorized ranges (merged once, when the
/// list was parsed) and the always-allow list, merged on its own (so hits stay attributable),
/// then united: the merged ranges in order, then the always-allow prefixes that are not also a
/// range.
pub fn authorized_prefixes(policy: &Policy) -> Vec<IpNet> {
    let ranges = policy.ranges.merged();
    let mut prefixes = Vec::with_capacity(ranges.len() + policy.always_allow.len());
    prefixes.extend_from_slice(ranges);
    // `ranges` is sorted (see `AuthorizedRanges::merged`).
    prefixes.extend(
        merge(&policy.always_allow)
            .into_iter()
            .filter(|p| ranges.binary_search(p).is_err()),
    );
    prefixes
}

/// The trie prefixes of `policy`, in the order [`compile`] writes them (none when disabled).
pub fn slot_prefixes(policy: &Policy) -> Vec<IpNet> {
    if policy.ranges.is_enabled() {
        authorized_prefixes(policy)
    } else {
        Vec::new()
    }
}

/// Compiles `policy` for a slot whose trie capacity is `capacity` per family. `active_ids` maps
/// the prefixes of the currently active slot to their rule ids; those keep their ids (so their
/// hit counts carry over) and new prefixes get ids that are free in the active slot.
pub fn compile(
    policy: &Policy,
    capacity: u32,
    active_ids: &BTreeMap<IpNet, RuleId>,
) -> Result<CompiledSlot, CompileError> {
    let enabled = policy.ranges.is_enabled();
    let prefixes = slot_prefixes(policy);

    let counts = FamilyCounts {
        v4: prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V4(_)))
            .count(),
        v6: prefixes
            .iter()
            .filter(|p| matches!(p, IpNet::V6(_)))
            .count(),
    };
    for (family, count) in [("IPv4", counts.v4), ("IPv6", counts.v6)] {
        if count > capacity as usize {
            return Err(CompileError::OverCapacity {
                family,
                count,
                capacity,
                suggested: count.next_power_of_two(),
            });
        }
    }

    let taken: BTreeSet<RuleId> = active_ids.values().copied().collect();
    let mut unused = (0..).filter(|id| !taken.contains(id));
    let mut fresh_ids = Vec::new();
    let mut entries = Vec::with_capacity(prefixes.len());
    for prefix in prefixes {
        let id = match active_ids.get(&prefix) {
            Some(id) => *id,
            None => {
                // `unused` is infinite, so this always yields.
                let id = unused.next().unwrap_or(RuleId::MAX);
                fresh_ids.push(id);
                id
            }
        };
        entries.push((prefix, id));
    }

    let mut flags = 0;
    if enabled {
        flags |= SLOT_FLAG_ENABLED;
    }
    if policy.mode == Mode::Monitor {
        flags |= SLOT_FLAG_MONITOR;
    }
    Ok(CompiledSlot {
        flags,
        port_words: port_bitmap(&policy.ports),
        entries,
        fresh_ids,
        counts,
    })
}

/// The port bitmap of one slot: bit `p % 32` of word `p / 32` set for each port `p`.
pub fn port_bitmap(ports: &[u16]) -> Vec<u32> {
    let mut words = vec![0u32; PORT_WORDS_PER_SLOT as usize];
    for &port in ports {
        words[usize::from(port >> 5)] |= 1 << (port & 31);
    }
    words
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(ranges: &str) -> Policy {
        Policy {
            ranges: ranges.parse().expect("test list"),
            ..Policy::default()
        }
    }

    fn net(text: &str) -> IpNet {
        text.parse().expect("test prefix")
    }

    #[test]
    fn port_bitmap_sets_exactly_the_ports() {
        let words = port_bitmap(&[443, 6443, 65535]);
        let set: Vec<u32> = (0..=65535u32)
            .filter(|p| words[(p / 32) as usize] >> (p % 32) & 1 == 1)
            .collect();
        assert_eq!(set, vec![443, 6443, 65535]);
    }

    #[test]
    fn disabled_list_compiles_to_no_entries_and_no_enable_flag() {
        let slot = compile(&policy(""), 16, &BTreeMap::new()).expect("compiles");
        assert_eq!(slot.flags & SLOT_FLAG_ENABLED, 0);
        assert!(slot.entries.is_empty());
    }

    #[test]
    fn only_always_allowed_is_enabled_with_just_the_always_allow_entries() {
        let mut p = policy("0.0.0.0/32");
        p.always_allow = vec![net("198.51.100.7/32")];
        let slot = compile(&p, 16, &BTreeMap::new()).expect("compiles");
        assert_ne!(slot.flags & SLOT_FLAG_ENABLED, 0);
        assert_eq!(slot.entries, vec![(net("198.51.100.7/32"), 0)]);
    }

    #[test]
    fn monitor_mode_sets_the_monitor_flag() {
        let mut p = policy("10.0.0.0/8");
        p.mode = Mode::Monitor;
        let slot = compile(&p, 16, &BTreeMap::new()).expect("compiles");
        assert_eq!(slot.flags, SLOT_FLAG_ENABLED | SLOT_FLAG_MONITOR);
    }

    #[test]
    fn kept_prefixes_keep_their_ids_and_new_ones_take_free_ids() {
        let active = BTreeMap::from([(net("10.0.0.0/8"), 0), (net("192.0.2.0/24"), 1)]);
        let slot = compile(&policy("192.0.2.0/24, 2001:db8::/32"), 16, &active).expect("compiles");
        assert_eq!(
            slot.entries,
            vec![(net("192.0.2.0/24"), 1), (net("2001:db8::/32"), 2)]
        );
        assert_eq!(slot.fresh_ids, vec![2]);
        assert_eq!(slot.counts, FamilyCounts { v4: 1, v6: 1 });
    }

    #[test]
    fn adjacent_ranges_are_merged_before_counting_capacity() {
        let slot =
            compile(&policy("10.0.0.0/25,10.0.0.128/25"), 1, &BTreeMap::new()).expect("fits");
        assert_eq!(slot.entries, vec![(net("10.0.0.0/24"), 0)]);
    }

    #[test]
    fn over_capacity_is_an_error_that_suggests_a_capacity() {
        let err =
            compile(&policy("10.0.0.0/24,10.0.2.0/24"), 1, &BTreeMap::new()).expect_err("too many");
        let message = err.to_string();
        assert!(message.contains("2 IPv4 prefixes"), "{message}");
        assert!(message.contains("--capacity 2"), "{message}");
    }

    #[test]
    fn always_allow_prefix_equal_to_a_range_is_stored_once() {
        let mut p = policy("198.51.100.7");
        p.always_allow = vec![net("198.51.100.7/32")];
        let slot = compile(&p, 16, &BTreeMap::new()).expect("compiles");
        assert_eq!(slot.entries.len(), 1);
    }
}
