//! Section 4: map memory per prefix, read from the kernel for the in-kernel section's pinned
//! filters: each map's `memlock` in `/proc/self/fdinfo` (the kernel's own accounting, what
//! `bpftool map show` prints as `memlock`), cross-checked with bpftool when it is installed,
//! and the kernel memory this process's memory cgroup was charged while a list was applied.

use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result};
use apifence::policy::Lookup;
use aya::maps::MapData;
use filter_common::{
    ALL_MAPS, MAP_POLICY, MAP_RULE_HITS, MAP_TABLE_CHUNKS, MAP_TABLE_ENTRIES, MAP_TABLE_ROOTS,
};
use serde::{Deserialize, Serialize};

use super::kernel::{Family, Setup};
use super::tools;

/// Memory of one pinned filter holding one list.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryRow {
    /// Size label.
    pub size: String,
    /// Family of the list.
    pub family: Family,
    /// Lookup of the filter (`compiled` or `lpm-trie`).
    #[serde(default)]
    pub lookup: String,
    /// `--capacity` the filter was loaded with (sizes the hit counters and the table maps).
    #[serde(default)]
    pub capacity: u32,
    /// Prefixes in the trie.
    pub prefixes: usize,
    /// `memlock` of the lookup structure of one slot: the trie holding the list, or half of
    /// the compiled table's maps (which hold both slots and both families, sized by capacity).
    pub trie_bytes: u64,
    /// `trie_bytes / prefixes`.
    pub trie_bytes_per_prefix: f64,
    /// Per prefix once both slots hold a list this size (after the next replacement).
    pub both_slots_bytes_per_prefix: f64,
    /// `memlock` of the per-rule hit counters (sized by capacity, not by the list).
    pub rule_hits_bytes: u64,
    /// `memlock` of the serialized-policy map.
    pub policy_bytes: u64,
    /// `memlock` of every map of the filter.
    pub all_maps_bytes: u64,
    /// `all_maps_bytes / prefixes`: every map, both slots, per-CPU maps counted per CPU.
    #[serde(default)]
    pub all_maps_bytes_per_prefix: f64,
    /// What `bpftool map show` reports for the trie (`bytes_memlock`), when installed.
    pub bpftool_trie_bytes: Option<u64>,
    /// Kernel memory charged to this cgroup while the list was applied (tries, policy record,
    /// allocator slack), when the cgroup exposes it.
    pub charged_bytes: Option<i64>,
    /// `charged_bytes / prefixes`.
    pub charged_bytes_per_prefix: Option<f64>,
}

/// What the section found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MemoryResults {
    /// Where the "charged" column comes from.
    pub cgroup_source: Option<String>,
    /// One row per list.
    pub rows: Vec<MemoryRow>,
}

/// Reads the memory of every instance of the in-kernel section.
pub fn measure(setup: &Setup) -> Result<MemoryResults> {
    let mut rows = Vec::new();
    for inst in &setup.instances {
        let tries: [&str; 2] = match inst.family {
            Family::Ipv4 => [filter_common::MAP_V4_SLOT0, filter_common::MAP_V4_SLOT1],
            Family::Ipv6 => [filter_common::MAP_V6_SLOT0, filter_common::MAP_V6_SLOT1],
        };
        let table = [MAP_TABLE_ROOTS, MAP_TABLE_CHUNKS, MAP_TABLE_ENTRIES];
        let mut table_bytes = 0;
        let mut all = 0;
        let mut trie = (0u64, tries[0]);
        let mut hits = 0;
        let mut policy = 0;
        for name in ALL_MAPS {
            let path = inst.layout.map(name);
            if !path.exists() {
                continue;
            }
            let bytes = memlock(&path)?;
            all += bytes;
            if tries.contains(&name) && bytes > trie.0 {
                trie = (bytes, name);
            }
            if table.contains(&name) {
                table_bytes += bytes;
            }
            if name == MAP_RULE_HITS {
                hits = bytes;
            }
            if name == MAP_POLICY {
                policy = bytes;
            }
        }
        let per = |b: f64| b / inst.prefixes.max(1) as f64;
        // The lookup's own structure: one slot's trie, or (compiled) half of the table maps,
        // which hold both slots and both families.
        let (structure, bpftool_map) = match inst.lookup {
            Lookup::LpmTrie => (trie.0, trie.1),
            Lookup::Compiled => (table_bytes / 2, MAP_TABLE_CHUNKS),
        };
        rows.push(MemoryRow {
            size: inst.size.label(),
            family: inst.family,
            lookup: inst.lookup.name().into(),
            capacity: inst.capacity,
            prefixes: inst.prefixes,
            trie_bytes: structure,
            trie_bytes_per_prefix: per(structure as f64),
            both_slots_bytes_per_prefix: per(2.0 * structure as f64),
            all_maps_bytes_per_prefix: per(all as f64),
            rule_hits_bytes: hits,
            policy_bytes: policy,
            all_maps_bytes: all,
            bpftool_trie_bytes: bpftool_memlock(&inst.layout.map(bpftool_map)),
            charged_bytes: inst.kernel_memory_delta,
            charged_bytes_per_prefix: inst.kernel_memory_delta.map(|d| per(d as f64)),
        });
    }
    Ok(MemoryResults {
        cgroup_source: cgroup_kernel_memory_file().map(|p| p.display().to_string()),
        rows,
    })
}

/// The `memlock` the kernel reports for the map pinned at `path`.
pub fn memlock(path: &Path) -> Result<u64> {
    let map = MapData::from_pin(path).with_context(|| format!("opening {}", path.display()))?;
    let fd = map.fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .context("reading the map's fdinfo")?;
    fdinfo_field(&info, "memlock").context("no memlock in the map's fdinfo")
}

/// A numeric field of an fdinfo text.
pub fn fdinfo_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == field)
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

/// `bytes_memlock` from `bpftool -j map show pinned PATH`, if bpftool is installed.
fn bpftool_memlock(path: &Path) -> Option<u64> {
    let bpftool = crate::process::which("bpftool")?;
    let out = tools::try_output(
        Command::new(bpftool)
            .args(["-j", "map", "show", "pinned"])
            .arg(path),
    )?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["bytes_memlock"].as_u64()
}

/// The file holding this process's memory cgroup's kernel memory: cgroup v1
/// `memory.kmem.usage_in_bytes`, or cgroup v2 `memory.stat` (its `kernel` line).
fn cgroup_kernel_memory_file() -> Option<std::path::PathBuf> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        let rel = path.trim_start_matches('/');
        if controllers.split(',').any(|c| c == "memory") {
            let file = Path::new("/sys/fs/cgroup/memory")
                .join(rel)
                .join("memory.kmem.usage_in_bytes");
            if file.is_file() {
                return Some(file);
            }
        }
        if controllers.is_empty() {
            let file = Path::new("/sys/fs/cgroup").join(rel).join("memory.stat");
            if file.is_file() {
                return Some(file);
            }
        }
    }
    None
}

/// Kernel memory charged to this process's memory cgroup now, if exposed.
pub fn kernel_memory_bytes() -> Option<u64> {
    let file = cgroup_kernel_memory_file()?;
    let text = std::fs::read_to_string(&file).ok()?;
    if file.ends_with("memory.stat") {
        text.lines().find_map(|l| {
            l.strip_prefix("kernel ")
                .and_then(|v| v.trim().parse().ok())
        })
    } else {
        text.trim().parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fdinfo_fields() {
        let text =
            "pos:\t0\nflags:\t02000002\nmap_type:\t11\nmemlock:\t4194304\nmax_entries:\t65536\n";
        assert_eq!(fdinfo_field(text, "memlock"), Some(4_194_304));
        assert_eq!(fdinfo_field(text, "max_entries"), Some(65_536));
        assert_eq!(fdinfo_field(text, "owner"), None);
    }
}
