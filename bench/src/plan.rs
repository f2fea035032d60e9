//! How much each section measures: list sizes, rounds, repeats, packet counts. One place, so a
//! full run and `--quick` differ only here.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::BenchArgs;

/// A list size: synthetic with `n` prefixes, or the real AzureCloud service tag.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Size {
    /// `n` seeded synthetic prefixes of mixed lengths.
    Synthetic(usize),
    /// The `AzureCloud` tag of the service tags file.
    AzureCloud,
}

impl Size {
    /// Short label for tables and JSON (`200`, `10k`, `1M`, `AzureCloud`).
    pub fn label(&self) -> String {
        match self {
            Size::Synthetic(n) => short_count(*n),
            Size::AzureCloud => "AzureCloud".into(),
        }
    }
}

/// `1`, `200`, `10k`, `100k`, `1M`.
pub fn short_count(n: usize) -> String {
    if n >= 1_000_000 && n.is_multiple_of(1_000_000) {
        format!("{}M", n / 1_000_000)
    } else if n >= 1000 && n.is_multiple_of(1000) {
        format!("{}k", n / 1000)
    } else {
        n.to_string()
    }
}

/// Everything a run measures.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Plan {
    /// A `--quick` run.
    pub quick: bool,
    /// Seed of every synthetic list and key set.
    pub seed: u64,
    /// The service tags file, when present.
    pub service_tags: Option<PathBuf>,
    /// In-kernel section: list sizes (per address family).
    pub kernel_sizes: Vec<Size>,
    /// In-kernel section: `BPF_PROG_TEST_RUN` repeat count per sample.
    pub kernel_repeat: u32,
    /// In-kernel section: interleaved rounds.
    pub kernel_rounds: usize,
    /// Distinct source addresses per rotating key set.
    pub keys_per_set: u32,
    /// End-to-end section: list sizes (IPv4).
    pub e2e_sizes: Vec<Size>,
    /// End-to-end section: packets offered per variant and round.
    pub e2e_packets: u64,
    /// End-to-end section: interleaved rounds.
    pub e2e_rounds: usize,
    /// Control-plane section: list sizes (IPv4 and IPv6, 3:1).
    pub control_sizes: Vec<Size>,
    /// Control-plane section: replacements per size (alternating two lists).
    pub control_replacements: usize,
    /// Control-plane section: single-range add/remove pairs per size.
    pub control_incremental: usize,
    /// Control-plane section: the largest size incremental changes are timed at.
    pub control_incremental_max: usize,
    /// Control-plane section: the large list whose replacement alone is timed (no traffic, no
    /// other tools: nft and ipset take minutes at this size); 0: none.
    #[serde(default)]
    pub control_large: usize,
    /// Control-plane section: probe packets per source per second during replacements.
    pub probe_rate_per_source: u32,
    /// Fleet section: list sizes.
    #[serde(default)]
    pub fleet_sizes: Vec<usize>,
    /// Fleet section: changes per size.
    #[serde(default)]
    pub fleet_changes: usize,
    /// Fleet section: lightweight watchers of the fan-out run (0: none).
    #[serde(default)]
    pub fleet_fanout_watchers: usize,
    /// Fleet section: changes of the fan-out run.
    #[serde(default)]
    pub fleet_fanout_changes: usize,
}

/// Where the AzureCloud data lives, relative to the repository root.
pub const SERVICE_TAGS: &str = "../shared/data/ServiceTags_Public_20251106.json";

impl Plan {
    /// The plan for `args` (full or quick), looking for the service tags file under `root`.
    pub fn new(args: &BenchArgs, root: &std::path::Path) -> Plan {
        let tags = root.join(SERVICE_TAGS);
        let service_tags = tags.is_file().then_some(tags);
        let azure = service_tags.is_some();
        let with_azure = |mut sizes: Vec<Size>| {
            if azure {
                sizes.push(Size::AzureCloud);
            }
            sizes
        };
        let mut plan = if args.quick {
            Plan {
                quick: true,
                seed: 0x00af_e4ce,
                service_tags,
                kernel_sizes: vec![
                    Size::Synthetic(1),
                    Size::Synthetic(200),
                    Size::Synthetic(10_000),
                ],
                kernel_repeat: 1_000_000,
                kernel_rounds: 3,
                keys_per_set: super::object::key_set_len(true),
                e2e_sizes: vec![Size::Synthetic(200)],
                e2e_packets: 200_000,
                e2e_rounds: 2,
                control_sizes: vec![Size::Synthetic(200), Size::Synthetic(10_000)],
                control_replacements: 4,
                control_incremental: 5,
                control_incremental_max: 200,
                control_large: 0,
                probe_rate_per_source: 5_000,
                fleet_sizes: vec![200, 10_000],
                fleet_changes: 6,
                fleet_fanout_watchers: 20,
                fleet_fanout_changes: 3,
            }
        } else {
            Plan {
                quick: false,
                seed: 0x00af_e4ce,
                kernel_sizes: with_azure(vec![
                    Size::Synthetic(1),
                    Size::Synthetic(200),
                    Size::Synthetic(10_000),
                    Size::Synthetic(100_000),
                    Size::Synthetic(1_000_000),
                ]),
                service_tags,
                kernel_repeat: 1_000_000,
                kernel_rounds: 9,
                keys_per_set: super::object::key_set_len(false),
                e2e_sizes: with_azure(vec![
                    Size::Synthetic(200),
                    Size::Synthetic(10_000),
                    Size::Synthetic(100_000),
                ]),
                e2e_packets: 1_000_000,
                e2e_rounds: 7,
                control_sizes: with_azure(vec![
                    Size::Synthetic(200),
                    Size::Synthetic(10_000),
                    Size::Synthetic(100_000),
                ]),
                control_replacements: 10,
                control_incremental: 25,
                control_incremental_max: 10_000,
                control_large: 1_000_000,
                probe_rate_per_source: 10_000,
                fleet_sizes: vec![200, 10_000],
                fleet_changes: 120,
                fleet_fanout_watchers: 100,
                fleet_fanout_changes: 30,
            }
        };
        if let Some(rounds) = args.rounds {
            plan.kernel_rounds = rounds;
            plan.e2e_rounds = rounds;
        }
        plan
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_counts() {
        assert_eq!(short_count(1), "1");
        assert_eq!(short_count(200), "200");
        assert_eq!(short_count(10_000), "10k");
        assert_eq!(short_count(1_000_000), "1M");
        assert_eq!(short_count(13_080), "13080");
    }
}
