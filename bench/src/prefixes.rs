//! The lists the benchmark loads and the source addresses it sends: seeded synthetic prefix sets
//! of mixed lengths, the real `AzureCloud` service tag when `../shared/data` has it, and key sets
//! drawn inside those prefixes or uniformly outside them. Pure and deterministic.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use anyhow::{Context, Result};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// splitmix64: small, fast, good enough to spread addresses; seeded so runs are repeatable.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator with `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform value in `0..bound` (`bound` > 0).
    pub fn below(&mut self, bound: u64) -> u64 {
        // Lemire's multiply-shift; the tiny bias is irrelevant here.
        ((u128::from(self.next_u64()) * u128::from(bound)) >> 64) as u64
    }

    /// 128 random bits.
    pub fn next_u128(&mut self) -> u128 {
        (u128::from(self.next_u64()) << 64) | u128::from(self.next_u64())
    }

    /// Picks a prefix length from `(length, weight)` pairs.
    fn length(&mut self, table: &[(u8, u32)]) -> u8 {
        let total: u32 = table.iter().map(|(_, w)| w).sum();
        let mut pick = self.below(u64::from(total)) as u32;
        for &(len, weight) in table {
            if pick < weight {
                return len;
            }
            pick -= weight;
        }
        table[table.len() - 1].0
    }
}

/// IPv4 prefix lengths of the synthetic lists and their weights (per mille): mostly /24 and
/// host routes, as in real allow lists, with a few large blocks.
pub const V4_LENGTHS: [(u8, u32); 7] = [
    (16, 1),
    (20, 20),
    (22, 80),
    (24, 400),
    (26, 100),
    (28, 100),
    (32, 299),
];

/// IPv6 prefix lengths of the synthetic lists and their weights (per mille).
pub const V6_LENGTHS: [(u8, u32); 6] = [
    (32, 20),
    (40, 80),
    (48, 400),
    (56, 200),
    (64, 200),
    (128, 100),
];

/// IPv4 space synthetic prefixes and spoofed sources are drawn from: 1.0.0.0 up to the end of
/// 223.255.255.255 (unicast), minus [`V4_RESERVED`].
const V4_UNIVERSE: (u32, u32) = (0x0100_0000, 0xdfff_ffff);

/// IPv4 blocks no synthetic prefix may touch: 10/8 carries the end-to-end run's spoofed
/// sources (so every filter must drop them), 127/8 is loopback, 192.168/16 and 198.18/15 hold
/// the lab's own addresses.
pub const V4_RESERVED: [(u32, u32); 4] = [
    (0x0a00_0000, 0x0aff_ffff),
    (0x7f00_0000, 0x7fff_ffff),
    (0xc0a8_0000, 0xc0a8_ffff),
    (0xc612_0000, 0xc613_ffff),
];

/// IPv6 space of synthetic prefixes and spoofed sources: 2000::/3 (global unicast), minus
/// 2001:db8::/32 (the lab's own addresses).
const V6_UNIVERSE: (u128, u128) = (0x2000 << 112, (0x4000 << 112) - 1);
const V6_RESERVED: (u128, u128) = (0x2001_0db8 << 96, ((0x2001_0db8 + 1) << 96) - 1);

/// Non-overlapping, non-touching intervals, keyed by start: what a prefix set covers.
#[derive(Clone, Debug, Default)]
pub struct Cover<T: Ord + Copy> {
    intervals: BTreeMap<T, T>,
}

impl<T: Ord + Copy> Cover<T> {
    /// Whether `value` lies inside one of the intervals.
    pub fn contains(&self, value: T) -> bool {
        self.intervals
            .range(..=value)
            .next_back()
            .is_some_and(|(_, &end)| value <= end)
    }

    /// Whether `[start, end]` overlaps an interval or touches one (`before`/`after` are the
    /// values just outside it, when they exist).
    fn touches(&self, start: T, end: T, before: Option<T>, after: Option<T>) -> bool {
        let low = before.unwrap_or(start);
        let high = after.unwrap_or(end);
        if let Some((_, &prev_end)) = self.intervals.range(..=high).next_back()
            && prev_end >= low
        {
            return true;
        }
        false
    }

    fn insert(&mut self, start: T, end: T) {
        self.intervals.insert(start, end);
    }
}

/// `n` IPv4 prefixes with lengths drawn from [`V4_LENGTHS`], none overlapping or touching
/// another (so merging leaves exactly `n`), none touching [`V4_RESERVED`].
pub fn synthetic_v4(n: usize, rng: &mut Rng) -> Vec<Ipv4Net> {
    synthetic_v4_with(n, &V4_LENGTHS, rng)
}

/// `n` distinct IPv4 host addresses (as in an exact-match list), outside [`V4_RESERVED`], no
/// two adjacent.
pub fn synthetic_v4_hosts(n: usize, rng: &mut Rng) -> Vec<Ipv4Addr> {
    synthetic_v4_with(n, &[(32, 1)], rng)
        .into_iter()
        .map(|p| p.addr())
        .collect()
}

fn synthetic_v4_with(n: usize, lengths: &[(u8, u32)], rng: &mut Rng) -> Vec<Ipv4Net> {
    let mut cover = Cover::<u32>::default();
    for &(start, end) in &V4_RESERVED {
        cover.insert(start, end);
    }
    let mut out = Vec::with_capacity(n);
    let span = u64::from(V4_UNIVERSE.1 - V4_UNIVERSE.0) + 1;
    while out.len() < n {
        let len = rng.length(lengths);
        let size: u64 = 1 << (32 - u32::from(len));
        let raw = V4_UNIVERSE.0 as u64 + rng.below(span);
        let start = (raw & !(size - 1)) as u32;
        let end = (u64::from(start) + size - 1) as u32;
        if start < V4_UNIVERSE.0 || end > V4_UNIVERSE.1 {
            continue;
        }
        if cover.touches(start, end, start.checked_sub(1), end.checked_add(1)) {
            continue;
        }
        cover.insert(start, end);
        out.push(Ipv4Net::new(Ipv4Addr::from(start), len).expect("length <= 32"));
    }
    out
}

/// `n` IPv6 prefixes inside 2000::/3 with lengths from [`V6_LENGTHS`], none overlapping or
/// touching another, none inside 2001:db8::/32.
pub fn synthetic_v6(n: usize, rng: &mut Rng) -> Vec<Ipv6Net> {
    let mut cover = Cover::<u128>::default();
    cover.insert(V6_RESERVED.0, V6_RESERVED.1);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let len = rng.length(&V6_LENGTHS);
        let host_bits = 128 - u32::from(len);
        let mask: u128 = if host_bits == 128 {
            u128::MAX
        } else {
            (1u128 << host_bits) - 1
        };
        let raw = V6_UNIVERSE.0 | (rng.next_u128() & (V6_UNIVERSE.1 - V6_UNIVERSE.0));
        let start = raw & !mask;
        let end = start | mask;
        if cover.touches(start, end, start.checked_sub(1), end.checked_add(1)) {
            continue;
        }
        cover.insert(start, end);
        out.push(Ipv6Net::new(Ipv6Addr::from(start), len).expect("length <= 128"));
    }
    out
}

/// The IPv4 intervals `prefixes` cover (which must not overlap).
pub fn cover_v4(prefixes: &[Ipv4Net]) -> Cover<u32> {
    let mut cover = Cover::default();
    for p in prefixes {
        cover.insert(u32::from(p.network()), u32::from(p.broadcast()));
    }
    cover
}

/// The IPv6 intervals `prefixes` cover (which must not overlap).
pub fn cover_v6(prefixes: &[Ipv6Net]) -> Cover<u128> {
    let mut cover = Cover::default();
    for p in prefixes {
        cover.insert(u128::from(p.network()), u128::from(p.broadcast()));
    }
    cover
}

/// `count` addresses, each inside a prefix picked uniformly from `prefixes`.
pub fn inside_v4(prefixes: &[Ipv4Net], count: usize, rng: &mut Rng) -> Vec<Ipv4Addr> {
    (0..count)
        .map(|_| {
            let p = prefixes[rng.below(prefixes.len() as u64) as usize];
            let size = u64::from(u32::from(p.broadcast()) - u32::from(p.network())) + 1;
            Ipv4Addr::from(u32::from(p.network()) + rng.below(size) as u32)
        })
        .collect()
}

/// `count` addresses, each inside a prefix picked uniformly from `prefixes`.
pub fn inside_v6(prefixes: &[Ipv6Net], count: usize, rng: &mut Rng) -> Vec<Ipv6Addr> {
    (0..count)
        .map(|_| {
            let p = prefixes[rng.below(prefixes.len() as u64) as usize];
            let host = u128::from(p.broadcast()) - u128::from(p.network());
            Ipv6Addr::from(u128::from(p.network()) + (rng.next_u128() & host))
        })
        .collect()
}

/// `count` addresses drawn uniformly from the IPv4 unicast space that no prefix of `cover`
/// holds (spoofed sources that miss). Bounded: gives up after `100 * count` draws.
pub fn miss_v4(cover: &Cover<u32>, count: usize, rng: &mut Rng) -> Vec<Ipv4Addr> {
    let span = u64::from(V4_UNIVERSE.1 - V4_UNIVERSE.0) + 1;
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.saturating_mul(100) {
        if out.len() == count {
            break;
        }
        let addr = V4_UNIVERSE.0 + rng.below(span) as u32;
        if !cover.contains(addr) {
            out.push(Ipv4Addr::from(addr));
        }
    }
    out
}

/// `count` addresses drawn uniformly from 2000::/3 that no prefix of `cover` holds.
pub fn miss_v6(cover: &Cover<u128>, count: usize, rng: &mut Rng) -> Vec<Ipv6Addr> {
    let mut out = Vec::with_capacity(count);
    for _ in 0..count.saturating_mul(100) {
        if out.len() == count {
            break;
        }
        let addr = V6_UNIVERSE.0 | (rng.next_u128() & (V6_UNIVERSE.1 - V6_UNIVERSE.0));
        if !cover.contains(addr) {
            out.push(Ipv6Addr::from(addr));
        }
    }
    out
}

/// The `AzureCloud` tag's prefixes from a "Service Tags – Public" JSON file, split by family.
pub fn azure_cloud(path: &Path) -> Result<(Vec<Ipv4Net>, Vec<Ipv6Net>)> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let doc: serde_json::Value =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let values = doc["values"]
        .as_array()
        .context("service tags file has no \"values\" array")?;
    let tag = values
        .iter()
        .find(|v| v["name"] == "AzureCloud")
        .context("service tags file has no AzureCloud tag")?;
    let prefixes = tag["properties"]["addressPrefixes"]
        .as_array()
        .context("AzureCloud has no addressPrefixes")?;
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for p in prefixes {
        let text = p.as_str().context("a prefix is not a string")?;
        match text
            .parse::<IpNet>()
            .with_context(|| format!("AzureCloud prefix {text:?}"))?
        {
            IpNet::V4(net) => v4.push(net),
            IpNet::V6(net) => v6.push(net),
        }
    }
    Ok((v4, v6))
}

/// `prefixes` joined into one list in apifence's range language (comma separated).
pub fn range_text<T: std::fmt::Display>(prefixes: &[T]) -> String {
    let mut text = String::with_capacity(prefixes.len() * 20);
    for (i, p) in prefixes.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        text.push_str(&p.to_string());
    }
    text
}

/// Prefixes merged the way apifence compiles them (so the counts are what the maps hold).
pub fn merged(prefixes: &[IpNet]) -> Vec<IpNet> {
    apifence::policy::merge::merge(prefixes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn synthetic_sets_have_exactly_n_prefixes_after_merging() {
        let mut rng = Rng::new(7);
        let v4 = synthetic_v4(2000, &mut rng);
        let v6 = synthetic_v6(2000, &mut rng);
        let all: Vec<IpNet> = v4
            .iter()
            .map(|p| IpNet::V4(*p))
            .chain(v6.iter().map(|p| IpNet::V6(*p)))
            .collect();
        assert_eq!(merged(&all).len(), 4000);
    }

    #[test]
    fn synthetic_v4_avoids_the_reserved_blocks_and_mixes_lengths() {
        let mut rng = Rng::new(1);
        let v4 = synthetic_v4(5000, &mut rng);
        let reserved: Vec<Ipv4Net> = ["10.0.0.0/8", "127.0.0.0/8", "192.168.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        for p in &v4 {
            for r in &reserved {
                assert!(!r.contains(p) && !p.contains(r), "{p} touches {r}");
            }
        }
        let lengths: std::collections::BTreeSet<u8> = v4.iter().map(|p| p.prefix_len()).collect();
        assert!(lengths.len() >= 5, "{lengths:?}");
    }

    #[test]
    fn inside_keys_hit_and_miss_keys_miss() {
        let mut rng = Rng::new(3);
        let v4 = synthetic_v4(300, &mut rng);
        let v6 = synthetic_v6(300, &mut rng);
        let (c4, c6) = (cover_v4(&v4), cover_v6(&v6));
        for a in inside_v4(&v4, 1000, &mut rng) {
            assert!(c4.contains(u32::from(a)));
            assert!(v4.iter().any(|p| p.contains(&a)));
        }
        for a in inside_v6(&v6, 1000, &mut rng) {
            assert!(v6.iter().any(|p| p.contains(&a)));
        }
        let miss4 = miss_v4(&c4, 1000, &mut rng);
        assert_eq!(miss4.len(), 1000);
        for a in miss4 {
            assert!(!v4.iter().any(|p| p.contains(&a)));
        }
        for a in miss_v6(&c6, 1000, &mut rng) {
            assert!(!v6.iter().any(|p| p.contains(&a)));
        }
    }

    #[test]
    fn generation_is_deterministic() {
        let a = synthetic_v4(100, &mut Rng::new(9));
        let b = synthetic_v4(100, &mut Rng::new(9));
        assert_eq!(a, b);
    }

    #[test]
    fn range_text_is_comma_separated() {
        let v: Vec<Ipv4Net> = vec![
            "192.0.2.0/24".parse().unwrap(),
            "198.51.100.7/32".parse().unwrap(),
        ];
        assert_eq!(range_text(&v), "192.0.2.0/24,198.51.100.7/32");
    }
}
