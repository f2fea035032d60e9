//! What a user would pick instead of apifence, configured the way its documentation says, in
//! the receiver namespace: nftables (netdev ingress hook, interval sets), iptables (raw
//! PREROUTING) with ipset `hash:net`, and xdp-filter (exact addresses only). Text generation is
//! pure; the rest runs the tools.

use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{Context, Result};
use aya::maps::{MapData, PerCpuHashMap, PerCpuValues};
use ipnet::IpNet;

use super::lab::RCV_IF;
use super::tools::{self, NsHandle};

/// nftables table of the end-to-end section.
pub const NFT_TABLE: &str = "afb";
/// nftables table of the control-plane section.
pub const NFT_CP_TABLE: &str = "afbcp";
/// The protected ports, as every alternative is told.
pub const PORTS: &str = "443, 6443";

/// Name of the set holding `family` (4 or 6) prefixes of list `label`.
pub fn set_name(family: u8, label: &str) -> String {
    format!("afb{family}_{label}")
}

/// An nft script creating `table` (netdev) with an empty interval set per family and label.
pub fn nft_tables(table: &str, sets: &[(u8, String)]) -> String {
    let mut s = format!("add table netdev {table}\n");
    for (family, name) in sets {
        let kind = if *family == 4 {
            "ipv4_addr"
        } else {
            "ipv6_addr"
        };
        let _ = writeln!(
            s,
            "add set netdev {table} {name} {{ type {kind}; flags interval; }}"
        );
    }
    s
}

/// An nft script replacing the contents of `set` with `prefixes`, atomically (one
/// transaction: flush and add).
pub fn nft_fill(table: &str, set: &str, prefixes: &[IpNet]) -> String {
    let mut s = format!("flush set netdev {table} {set}\n");
    if !prefixes.is_empty() {
        let _ = write!(s, "add element netdev {table} {set} {{ ");
        for (i, p) in prefixes.iter().enumerate() {
            if i > 0 {
                s.push_str(", ");
            }
            let _ = write!(s, "{p}");
        }
        s.push_str(" }\n");
    }
    s
}

/// An nft script hooking a chain on [`RCV_IF`]'s ingress that drops TCP to [`PORTS`] from
/// sources outside `set4` (and `set6`, when given).
pub fn nft_hook(set4: &str, set6: Option<&str>) -> String {
    let mut s = format!(
        "add chain netdev {NFT_TABLE} ingress {{ type filter hook ingress device \"{RCV_IF}\" \
         priority -500; policy accept; }}\n\
         add rule netdev {NFT_TABLE} ingress meta protocol ip tcp dport {{ {PORTS} }} \
         ip saddr != @{set4} counter drop\n"
    );
    if let Some(set6) = set6 {
        let _ = writeln!(
            s,
            "add rule netdev {NFT_TABLE} ingress meta protocol ip6 tcp dport {{ {PORTS} }} \
             ip6 saddr != @{set6} counter drop"
        );
    }
    s
}

/// An nft script removing the ingress chain.
pub fn nft_unhook() -> String {
    format!("flush chain netdev {NFT_TABLE} ingress\ndelete chain netdev {NFT_TABLE} ingress\n")
}

fn inet(family: u8) -> &'static str {
    if family == 4 { "inet" } else { "inet6" }
}

/// An `ipset restore` line creating the empty `hash:net` set `set` for up to `maxelem`
/// prefixes.
pub fn ipset_create(set: &str, family: u8, maxelem: usize) -> String {
    format!(
        "create {set} hash:net family {} maxelem {}\n",
        inet(family),
        maxelem.max(65_536).next_power_of_two()
    )
}

/// An `ipset restore` script that replaces the contents of the existing `set` with `prefixes`
/// through a temporary set and a swap, so the live set changes atomically.
pub fn ipset_replace(set: &str, family: u8, prefixes: &[IpNet]) -> String {
    let tmp = format!("{set}-t");
    let mut s = ipset_create(&tmp, family, prefixes.len());
    for p in prefixes {
        let _ = writeln!(s, "add {tmp} {p}");
    }
    let _ = writeln!(s, "swap {tmp} {set}\ndestroy {tmp}");
    s
}

/// The iptables rule (after `-A`/`-D` and the chain) of the iptables + ipset variant.
pub fn iptables_rule(set: &str) -> Vec<String> {
    [
        "-p",
        "tcp",
        "-m",
        "multiport",
        "--dports",
        "443,6443",
        "-m",
        "set",
        "!",
        "--match-set",
        set,
        "src",
        "-j",
        "DROP",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect()
}

/// Runs an nft script in `ns`.
pub fn nft(ns: &NsHandle, script: &str) -> Result<std::time::Duration> {
    tools::run_with_stdin(ns.command("nft").args(["-f", "-"]), script.as_bytes()).context("nft -f")
}

/// Runs an `ipset restore` script in `ns`.
pub fn ipset_restore(ns: &NsHandle, script: &str) -> Result<std::time::Duration> {
    tools::run_with_stdin(ns.command("ipset").arg("restore"), script.as_bytes())
        .context("ipset restore")
}

/// Adds (`-I`) or deletes (`-D`) the iptables rule for `set` in the raw table.
pub fn iptables(ns: &NsHandle, action: &str, set: &str) -> Result<()> {
    tools::run(
        ns.command("iptables")
            .args(["-w", "-t", "raw", action, "PREROUTING"])
            .args(iptables_rule(set)),
    )
    .map(|_| ())
}

/// `Size in memory` of an ipset, from `ipset list -t`.
pub fn ipset_memory(ns: &NsHandle, set: &str) -> Result<u64> {
    let out = tools::run(ns.command("ipset").args(["list", "-t", set]))?;
    out.lines()
        .find_map(|l| l.strip_prefix("Size in memory:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no \"Size in memory\" for ipset {set}"))
}

/// Runs `xdp-filter ARGS` in `ns` with `bpffs` as its `/sys/fs/bpf` (see
/// [`NsHandle::command_with_bpffs`]): its pins go to `bpffs/xdp-filter/`.
fn xdp_filter(ns: &NsHandle, bpffs: &Path, args: &[&str]) -> Result<()> {
    tools::run(ns.command_with_bpffs("xdp-filter", bpffs)?.args(args)).map(|_| ())
}

/// Loads xdp-filter on [`RCV_IF`] (native mode, deny policy: only listed sources pass).
pub fn xdp_filter_load(ns: &NsHandle, bpffs: &Path) -> Result<()> {
    xdp_filter(
        ns,
        bpffs,
        &[
            "load",
            RCV_IF,
            "--mode",
            "native",
            "--policy",
            "deny",
            "--features",
            "ipv4",
        ],
    )
}

/// Unloads xdp-filter from [`RCV_IF`] (its maps go with it).
pub fn xdp_filter_unload(ns: &NsHandle, bpffs: &Path) -> Result<()> {
    xdp_filter(ns, bpffs, &["unload", RCV_IF])
}

/// Adds one address through the tool itself (to check the map format used by
/// [`xdp_filter_fill`]).
pub fn xdp_filter_add(ns: &NsHandle, bpffs: &Path, addr: Ipv4Addr) -> Result<()> {
    xdp_filter(ns, bpffs, &["ip", &addr.to_string(), "--mode", "src"])
}

/// xdp-filter's flag for "match the source address" (`MAP_FLAG_SRC` in its
/// `common_kern_user.h`).
const XDP_FILTER_FLAG_SRC: u64 = 1;

/// xdp-filter's pinned IPv4 map.
fn xdp_filter_map(bpffs: &Path) -> Result<PerCpuHashMap<MapData, u32, u64>> {
    let path = bpffs.join("xdp-filter").join("filter_ipv4");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    Ok(PerCpuHashMap::try_from(aya::maps::Map::PerCpuHashMap(
        data,
    ))?)
}

/// Writes `addresses` into xdp-filter's pinned IPv4 map the way `xdp-filter ip --mode src`
/// does (a per-CPU `u64` of flags, key the address in network byte order), without one
/// process per address.
pub fn xdp_filter_fill(bpffs: &Path, addresses: &[Ipv4Addr]) -> Result<()> {
    let mut map = xdp_filter_map(bpffs)?;
    let cpus = aya::util::nr_cpus().map_err(|(_, e)| e)?;
    for addr in addresses {
        let key = u32::from_ne_bytes(addr.octets());
        let values = PerCpuValues::try_from(vec![XDP_FILTER_FLAG_SRC; cpus])?;
        map.insert(key, values, 0)
            .with_context(|| format!("adding {addr} to xdp-filter's map"))?;
    }
    Ok(())
}

/// Whether xdp-filter's map holds `addr` with the source flag (what the tool itself wrote).
pub fn xdp_filter_has(bpffs: &Path, addr: Ipv4Addr) -> Result<bool> {
    let map = xdp_filter_map(bpffs)?;
    let key = u32::from_ne_bytes(addr.octets());
    Ok(map
        .get(&key, 0)
        .is_ok_and(|v| v.iter().all(|f| f & XDP_FILTER_FLAG_SRC != 0)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn nft_fill_is_one_flush_and_one_add() {
        let s = nft_fill(
            "afb",
            "afb4_200",
            &nets(&["192.0.2.0/24", "198.51.100.7/32"]),
        );
        assert_eq!(
            s,
            "flush set netdev afb afb4_200\n\
             add element netdev afb afb4_200 { 192.0.2.0/24, 198.51.100.7/32 }\n"
        );
    }

    #[test]
    fn nft_hook_drops_protected_ports_outside_the_sets() {
        let s = nft_hook("afb4_200", Some("afb6_200"));
        assert!(s.contains("hook ingress device \"afbr0\""));
        assert!(s.contains("tcp dport { 443, 6443 } ip saddr != @afb4_200 counter drop"));
        assert!(s.contains("ip6 saddr != @afb6_200"));
    }

    #[test]
    fn ipset_replace_swaps_a_filled_temporary_set() {
        let s = ipset_replace("cp4", 4, &nets(&["192.0.2.0/24"]));
        assert!(s.starts_with("create cp4-t hash:net family inet maxelem 65536\n"));
        assert_eq!(
            ipset_create("cp6", 6, 100_000),
            "create cp6 hash:net family inet6 maxelem 131072\n"
        );
        assert!(s.contains("add cp4-t 192.0.2.0/24\n"));
        assert!(s.ends_with("swap cp4-t cp4\ndestroy cp4-t\n"));
    }

    #[test]
    fn iptables_rule_matches_outside_the_set() {
        let rule = iptables_rule("afb4_200").join(" ");
        assert_eq!(
            rule,
            "-p tcp -m multiport --dports 443,6443 -m set ! --match-set afb4_200 src -j DROP"
        );
    }
}
