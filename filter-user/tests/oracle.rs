//! Differential oracle: random frames built with `etherparse` (not the lab's own frame builder)
//! run through the real program with `BPF_PROG_TEST_RUN`, each compared with a naive model of
//! the rules written from the README ("What is filtered", "The range language") without any
//! code of the product: the verdict (pass/drop), the verdict counter that moved, the malformed
//! counter and, for authorized TCP, the merged prefix whose hits (as `stats` reports them) moved.
//! Every probe is judged by two programs: one with the compiled lookup table (the default) and
//! one with the LPM-trie lookup.
//!
//! The model's prefix rule: the list is searched linearly for the longest match; the kernel holds
//! the ranges and the always-allow list each merged to the fewest prefixes ("covered and adjacent
//! prefixes folded", hits "per merged prefix"), so the prefix a hit is counted to is the longest
//! of the two merged blocks holding the source: the largest prefix around the source that the
//! ranges (or the always-allow list) cover entirely. The longest match must lie inside it.
//!
//! Where the README is silent the model takes these readings (each also what the program does):
//! a frame cut inside a VLAN tag is malformed; a truncated IPv6 extension header is malformed
//! only when its next-header and length bytes (a fragment header: all 8 bytes) are cut, past
//! them the chain is followed as declared (so a cut TCP header means "port unreadable"); a later
//! fragment whose next header is not TCP or an extension header is not TCP; IPv4 total length
//! and IPv6 payload length are not compared with the frame length.
//!
//! `APIFENCE_ORACLE_PROBES` sets the number of probes (default 100,000; the documented long run
//! uses 1,000,000), `APIFENCE_ORACLE_SEED` replays a run (the seed is printed).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    time::Instant,
};

use apifence::{
    kernel::{operations::Filter, paths::PinLayout},
    policy::{Lookup, Mode, Policy},
};
use apifence_tests::{bpffs::Bpffs, require_privileges};
use aya::{
    maps::{Map, MapData, PerCpuArray},
    programs::{TestRun, TestRunOptions, Xdp},
};
use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader,
    VlanId, VlanPcp,
};
use filter_common::{
    COUNTER_DROPPED, COUNTER_MALFORMED, COUNTER_PASSED_AUTHORIZED, COUNTER_PASSED_DISABLED,
    COUNTER_PASSED_UNPROTECTED, COUNTER_WOULD_DROP, MAP_VERDICTS,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

mod support;

use support::{XDP_DROP, XDP_PASS};

/// Probes in a CI run.
const DEFAULT_PROBES: u64 = 100_000;
/// Probes judged against one list before the next list is applied.
const PROBES_PER_LIST: u64 = 400;
/// Mismatches printed in full before the run stops.
const MISMATCHES_SHOWN: usize = 5;
/// Destination of every probe (never looked at by the filter).
const API4: [u8; 4] = [198, 18, 0, 1];
const API6: [u8; 16] = [0xfd, 0, 0xaf, 0xde, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];

// ---------------------------------------------------------------------------------------------
// Random numbers: SplitMix64, so a seed replays a run exactly.

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// True with probability `percent`/100.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }

    fn u16(&mut self) -> u16 {
        self.next() as u16
    }
}

// ---------------------------------------------------------------------------------------------
// The list a batch of probes is judged against.

/// One policy: the authorized ranges as given, the always-allow list, ports, mode.
#[derive(Clone, Debug)]
struct List {
    /// `None`: filtering disabled (`""`). `Some(empty)`: only the always-allow list
    /// (`0.0.0.0/32`).
    ranges: Option<Vec<IpNet>>,
    always_allow: Vec<IpNet>,
    ports: Vec<u16>,
    mode: Mode,
}

impl List {
    fn policy(&self) -> Policy {
        let ranges = match &self.ranges {
            None => String::new(),
            Some(r) if r.is_empty() => "0.0.0.0/32".into(),
            Some(r) => r
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        };
        Policy {
            ranges: ranges.parse().expect("oracle list"),
            always_allow: self.always_allow.clone(),
            ports: self.ports.clone(),
            mode: self.mode,
        }
    }

    /// Every prefix of the list, ranges and always-allow.
    fn all(&self) -> Vec<IpNet> {
        let mut all = self.ranges.clone().unwrap_or_default();
        all.extend(&self.always_allow);
        all
    }
}

/// Bases the random prefixes gather around, so probes often land inside, next to and between
/// them, and lists overlap and touch.
const V4_BASES: [[u8; 4]; 4] = [
    [198, 51, 100, 0],
    [203, 0, 113, 0],
    [10, 20, 0, 0],
    [192, 0, 2, 128],
];
const V6_BASES: [[u16; 8]; 3] = [
    [0x2001, 0xdb8, 1, 0, 0, 0, 0, 0],
    [0x2001, 0xdb8, 2, 0x8000, 0, 0, 0, 0],
    [0xfd00, 0xabcd, 0, 0, 0, 0, 0, 0],
];

fn random_v4(rng: &mut Rng) -> Ipv4Addr {
    if rng.chance(15) {
        return Ipv4Addr::from(rng.next() as u32);
    }
    let base = u32::from_be_bytes(*rng.pick(&V4_BASES));
    // Vary the low 0..=16 bits.
    let spread = rng.below(17) as u32;
    let noise = if spread == 0 {
        0
    } else {
        (rng.next() as u32) & ((1u32 << spread) - 1)
    };
    Ipv4Addr::from(base ^ noise)
}

fn random_v6(rng: &mut Rng) -> Ipv6Addr {
    if rng.chance(15) {
        let hi = u128::from(rng.next()) << 64;
        return Ipv6Addr::from(hi | u128::from(rng.next()));
    }
    let base = u128::from(Ipv6Addr::from(*rng.pick(&V6_BASES)));
    let spread = rng.below(97) as u32;
    let all = (u128::from(rng.next()) << 64) | u128::from(rng.next());
    let noise = if spread == 0 {
        0
    } else {
        all & ((1u128 << spread) - 1)
    };
    Ipv6Addr::from(base ^ noise)
}

fn random_prefix(rng: &mut Rng, v6: bool) -> IpNet {
    if v6 {
        let len = match rng.below(20) {
            0 => rng.below(16) as u8,
            1..=4 => 128,
            _ => 16 + rng.below(113) as u8,
        };
        IpNet::V6(
            Ipv6Net::new(random_v6(rng), len)
                .expect("length <= 128")
                .trunc(),
        )
    } else {
        let len = match rng.below(40) {
            0 => 0,
            1..=3 => rng.below(8) as u8,
            4..=10 => 32,
            _ => 8 + rng.below(25) as u8,
        };
        IpNet::V4(
            Ipv4Net::new(random_v4(rng), len)
                .expect("length <= 32")
                .trunc(),
        )
    }
}

fn random_list(rng: &mut Rng) -> List {
    let ranges = match rng.below(20) {
        0 => None,
        1 => Some(Vec::new()),
        _ => {
            let n = 1 + rng.below(12);
            Some(
                (0..n)
                    .map(|_| {
                        let v6 = rng.chance(40);
                        random_prefix(rng, v6)
                    })
                    // 0.0.0.0/32 has a meaning of its own; a list made only of it is case 1.
                    .filter(|p| p.to_string() != "0.0.0.0/32")
                    .collect::<Vec<_>>(),
            )
            .filter(|r| !r.is_empty())
        }
    };
    let always_allow = (0..rng.below(4))
        .map(|_| {
            let v6 = rng.chance(40);
            if rng.chance(60) {
                // Single addresses, as usually given.
                let host = random_prefix(rng, v6);
                IpNet::new(host.addr(), host.max_prefix_len()).expect("host prefix")
            } else {
                random_prefix(rng, v6)
            }
        })
        .collect();
    let mut ports = vec![443, 6443];
    if rng.chance(30) {
        ports = (0..1 + rng.below(4)).map(|_| rng.u16()).collect();
        ports.push(*rng.pick(&[443u16, 6443, 0, 65535]));
    }
    ports.sort_unstable();
    ports.dedup();
    let mode = if rng.chance(25) {
        Mode::Monitor
    } else {
        Mode::Enforce
    };
    List {
        ranges,
        always_allow,
        ports,
        mode,
    }
}

// ---------------------------------------------------------------------------------------------
// Frames: a description, and its bytes written by etherparse.

/// IPv6 extension headers the generator writes.
#[derive(Clone, Copy, Debug)]
enum Ext {
    /// Hop-by-hop options, `(units + 1) * 8` bytes.
    HopByHop { units: u8 },
    /// Routing header, `(units + 1) * 8` bytes.
    Routing { units: u8 },
    /// Destination options, `(units + 1) * 8` bytes.
    DestOpts { units: u8 },
    /// Authentication header with `icv_words` 4-byte words of ICV.
    Auth { icv_words: u8 },
    /// Fragment header.
    Fragment { offset: u16, more: bool },
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Ext::HopByHop { .. } => 0,
            Ext::Routing { .. } => 43,
            Ext::Fragment { .. } => 44,
            Ext::Auth { .. } => 51,
            Ext::DestOpts { .. } => 60,
        }
    }
}

/// What follows the IP header(s).
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { dport: u16 },
    Udp { dport: u16 },
    Icmp,
}

/// Deliberate damage to an IPv4 header (applied to the bytes etherparse wrote).
#[derive(Clone, Copy, Debug, PartialEq)]
enum V4Damage {
    None,
    /// Version field not 4.
    Version(u8),
    /// IHL below 5.
    Ihl(u8),
    /// Total length smaller than the header.
    TotalLength(u16),
}

#[derive(Clone, Debug)]
enum L3 {
    V4 {
        source: Ipv4Addr,
        /// Option bytes (a multiple of 4, at most 40).
        options: usize,
        /// Fragment offset in 8-byte units.
        fragment_offset: u16,
        more_fragments: bool,
        damage: V4Damage,
        l4: L4,
    },
    V6 {
        source: Ipv6Addr,
        exts: Vec<Ext>,
        /// Version field not 6.
        bad_version: Option<u8>,
        l4: L4,
    },
    /// Not IP (ARP, LLDP, ...): only the EtherType is written.
    Other { ethertype: u16 },
}

#[derive(Clone, Debug)]
struct Shape {
    /// TPIDs of the VLAN tags, outermost first.
    tags: Vec<u16>,
    l3: L3,
    /// Cut the frame to this many bytes (at least the Ethernet header).
    truncate: Option<usize>,
}

/// Where the generator put each header (offsets into the frame before truncation).
#[derive(Debug, Default)]
struct Layout {
    /// End of each VLAN tag.
    tag_ends: Vec<usize>,
    /// Start of the IP header.
    ip: usize,
    /// End of the IPv4 header (options included).
    ip_end: usize,
    /// Start of each IPv6 extension header.
    ext_starts: Vec<usize>,
    /// Start of the transport header.
    l4: usize,
}

fn l4_number(l4: L4, v6: bool) -> u8 {
    match l4 {
        L4::Tcp { .. } => 6,
        L4::Udp { .. } => 17,
        L4::Icmp if v6 => 58,
        L4::Icmp => 1,
    }
}

fn write_l4(out: &mut Vec<u8>, l4: L4, v6: bool) {
    match l4 {
        L4::Tcp { dport } => {
            let mut tcp = TcpHeader::new(40_000, dport, 1, 64_240);
            tcp.syn = true;
            tcp.write(out).expect("write TCP");
        }
        L4::Udp { dport } => UdpHeader {
            source_port: 40_000,
            destination_port: dport,
            length: 8,
            checksum: 0,
        }
        .write(out)
        .expect("write UDP"),
        L4::Icmp if v6 => {
            Icmpv6Header::new(Icmpv6Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }))
                .write(out)
                .expect("write ICMPv6")
        }
        L4::Icmp => Icmpv4Header::new(Icmpv4Type::EchoRequest(IcmpEchoHeader { id: 1, seq: 1 }))
            .write(out)
            .expect("write ICMP"),
    }
}

fn l4_len(l4: L4) -> usize {
    match l4 {
        L4::Tcp { .. } => 20,
        L4::Udp { .. } | L4::Icmp => 8,
    }
}

fn ext_len(ext: Ext) -> usize {
    match ext {
        Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
            (usize::from(units) + 1) * 8
        }
        Ext::Auth { icv_words } => 12 + usize::from(icv_words) * 4,
        Ext::Fragment { .. } => 8,
    }
}

/// Writes `shape` with etherparse; returns the bytes and where each header went.
fn build(shape: &Shape) -> (Vec<u8>, Layout) {
    let mut out = Vec::with_capacity(128);
    let mut layout = Layout::default();
    let l3_type = match shape.l3 {
        L3::V4 { .. } => 0x0800,
        L3::V6 { .. } => 0x86dd,
        L3::Other { ethertype } => ethertype,
    };
    let first = shape.tags.first().copied().unwrap_or(l3_type);
    Ethernet2Header {
        source: [2, 0, 0, 0, 0, 2],
        destination: [2, 0, 0, 0, 0, 1],
        ether_type: EtherType(first),
    }
    .write(&mut out)
    .expect("write Ethernet");
    for (i, _) in shape.tags.iter().enumerate() {
        let inner = shape.tags.get(i + 1).copied().unwrap_or(l3_type);
        SingleVlanHeader {
            pcp: VlanPcp::ZERO,
            drop_eligible_indicator: false,
            vlan_id: VlanId::try_new(10 + i as u16).expect("vlan id"),
            ether_type: EtherType(inner),
        }
        .write(&mut out)
        .expect("write VLAN tag");
        layout.tag_ends.push(out.len());
    }
    layout.ip = out.len();
    match &shape.l3 {
        L3::V4 {
            source,
            options,
            fragment_offset,
            more_fragments,
            damage,
            l4,
        } => {
            let option_bytes: Vec<u8> = (0..*options)
                .map(|i| if i % 4 == 3 { 0 } else { 1 })
                .collect();
            let mut ip = Ipv4Header::new(
                l4_len(*l4) as u16,
                64,
                IpNumber(l4_number(*l4, false)),
                source.octets(),
                API4,
            )
            .expect("IPv4 header");
            ip.options = Ipv4Options::try_from(&option_bytes[..]).expect("IPv4 options");
            ip.total_len = (20 + options + l4_len(*l4)) as u16;
            ip.fragment_offset = IpFragOffset::try_new(*fragment_offset).expect("offset");
            ip.more_fragments = *more_fragments;
            ip.dont_fragment = false;
            ip.header_checksum = ip.calc_header_checksum();
            ip.write(&mut out).expect("write IPv4");
            layout.ip_end = out.len();
            layout.l4 = out.len();
            write_l4(&mut out, *l4, false);
            let at = layout.ip;
            match damage {
                V4Damage::None => {}
                V4Damage::Version(v) => out[at] = (v << 4) | (out[at] & 0x0f),
                V4Damage::Ihl(ihl) => out[at] = (out[at] & 0xf0) | ihl,
                V4Damage::TotalLength(len) => {
                    out[at + 2..at + 4].copy_from_slice(&len.to_be_bytes())
                }
            }
        }
        L3::V6 {
            source,
            exts,
            bad_version,
            l4,
        } => {
            let chain: usize = exts.iter().map(|e| ext_len(*e)).sum();
            let first_next = exts.first().map_or(l4_number(*l4, true), |e| e.number());
            Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: (chain + l4_len(*l4)) as u16,
                next_header: IpNumber(first_next),
                hop_limit: 64,
                source: source.octets(),
                destination: API6,
            }
            .write(&mut out)
            .expect("write IPv6");
            if let Some(v) = bad_version {
                out[layout.ip] = (v << 4) | (out[layout.ip] & 0x0f);
            }
            for (i, ext) in exts.iter().enumerate() {
                let next = IpNumber(exts.get(i + 1).map_or(l4_number(*l4, true), |e| e.number()));
                layout.ext_starts.push(out.len());
                match *ext {
                    Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
                        // PadN filling the header; for routing: type 253 (experimental),
                        // segments left 0.
                        let mut payload = vec![0u8; 6 + usize::from(units) * 8];
                        if matches!(ext, Ext::Routing { .. }) {
                            payload[0] = 253;
                        } else {
                            payload[0] = 1;
                            payload[1] = (payload.len() - 2) as u8;
                        }
                        Ipv6RawExtHeader::new_raw(next, &payload)
                            .expect("extension header")
                            .write(&mut out)
                            .expect("write extension header");
                    }
                    Ext::Auth { icv_words } => {
                        let icv = vec![0xa5u8; usize::from(icv_words) * 4];
                        IpAuthHeader::new(next, 0x100, 1, &icv)
                            .expect("AH")
                            .write(&mut out)
                            .expect("write AH");
                    }
                    Ext::Fragment { offset, more } => Ipv6FragmentHeader::new(
                        next,
                        IpFragOffset::try_new(offset).expect("offset"),
                        more,
                        7,
                    )
                    .write(&mut out)
                    .expect("write fragment header"),
                }
            }
            layout.l4 = out.len();
            write_l4(&mut out, *l4, true);
        }
        L3::Other { .. } => out.extend_from_slice(&[0u8; 28]),
    }
    if let Some(len) = shape.truncate {
        out.truncate(len);
    }
    (out, layout)
}

fn random_l4(rng: &mut Rng, ports: &[u16]) -> L4 {
    let dport = match rng.below(10) {
        0..=4 => *rng.pick(ports),
        5 => *rng.pick(&[0u16, 1, 442, 444, 6442, 6444, 65535]),
        _ => rng.u16(),
    };
    match rng.below(10) {
        0..=6 => L4::Tcp { dport },
        7 | 8 => L4::Udp { dport },
        _ => L4::Icmp,
    }
}

fn random_ext(rng: &mut Rng) -> Ext {
    match rng.below(5) {
        0 => Ext::HopByHop {
            units: rng.below(3) as u8,
        },
        1 => Ext::Routing {
            units: rng.below(3) as u8,
        },
        2 => Ext::DestOpts {
            units: rng.below(3) as u8,
        },
        3 => Ext::Auth {
            icv_words: (1 + rng.below(4)) as u8,
        },
        _ => Ext::Fragment {
            offset: if rng.chance(50) {
                0
            } else {
                1 + rng.below(8000) as u16
            },
            more: rng.chance(50),
        },
    }
}

/// A source for a probe: often inside a prefix of the list, next to one, or near the bases.
fn probe_source(rng: &mut Rng, list: &List, v6: bool) -> IpAddr {
    let own: Vec<IpNet> = list
        .all()
        .into_iter()
        .filter(|p| matches!(p, IpNet::V6(_)) == v6)
        .collect();
    if !own.is_empty() && rng.chance(75) {
        let p = *rng.pick(&own);
        return match p {
            IpNet::V4(p) => {
                let lo = u32::from(p.network());
                let hi = u32::from(p.broadcast());
                Ipv4Addr::from(match rng.below(4) {
                    0 => lo.wrapping_sub(1),
                    1 => hi.wrapping_add(1),
                    2 => *rng.pick(&[lo, hi]),
                    _ => lo + (rng.next() as u32) % (hi - lo).saturating_add(1).max(1),
                })
                .into()
            }
            IpNet::V6(p) => {
                let lo = u128::from(p.network());
                let hi = u128::from(p.broadcast());
                let r = (u128::from(rng.next()) << 64) | u128::from(rng.next());
                Ipv6Addr::from(match rng.below(4) {
                    0 => lo.wrapping_sub(1),
                    1 => hi.wrapping_add(1),
                    2 => *rng.pick(&[lo, hi]),
                    _ => lo | (r & (hi - lo)),
                })
                .into()
            }
        };
    }
    if v6 {
        random_v6(rng).into()
    } else {
        random_v4(rng).into()
    }
}

fn random_shape(rng: &mut Rng, list: &List) -> Shape {
    let tags = match rng.below(20) {
        0..=13 => vec![],
        14 | 15 => vec![0x8100],
        16 => vec![0x88a8],
        17 => vec![0x88a8, 0x8100],
        18 => vec![0x8100, 0x8100],
        _ => vec![0x88a8, 0x8100, 0x8100],
    };
    let l4 = random_l4(rng, &list.ports);
    let l3 = match rng.below(20) {
        0..=9 => L3::V4 {
            source: match probe_source(rng, list, false) {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("asked for IPv4"),
            },
            options: if rng.chance(30) {
                4 * rng.below(11) as usize
            } else {
                0
            },
            fragment_offset: if rng.chance(15) {
                rng.below(0x2000) as u16
            } else {
                0
            },
            more_fragments: rng.chance(20),
            damage: match rng.below(40) {
                0 => V4Damage::Version(*rng.pick(&[0u8, 5, 6, 15])),
                1 => V4Damage::Ihl(rng.below(5) as u8),
                2 => V4Damage::TotalLength(rng.below(20) as u16),
                _ => V4Damage::None,
            },
            l4,
        },
        10..=18 => {
            let n = match rng.below(10) {
                0..=3 => 0,
                4..=7 => 1 + rng.below(3),
                _ => 4 + rng.below(7),
            };
            L3::V6 {
                source: match probe_source(rng, list, true) {
                    IpAddr::V6(a) => a,
                    IpAddr::V4(_) => unreachable!("asked for IPv6"),
                },
                exts: (0..n).map(|_| random_ext(rng)).collect(),
                bad_version: rng.chance(3).then(|| *rng.pick(&[0u8, 4, 7, 15])),
                l4,
            }
        }
        _ => L3::Other {
            ethertype: *rng.pick(&[0x0806, 0x88cc, 0x8847, 0x0000, 0xffff]),
        },
    };
    let mut shape = Shape {
        tags,
        l3,
        truncate: None,
    };
    if rng.chance(15) {
        let full = build(&shape).0.len();
        shape.truncate = Some(14 + rng.below((full - 14 + 1) as u64) as usize);
    }
    shape
}

// ---------------------------------------------------------------------------------------------
// The model, from the README.

/// What the README says about a frame, before the list is consulted.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Seen {
    /// Not TCP to a protected port (other ports, UDP, ICMP, non-IP): passes.
    NotFiltered,
    /// TCP whose port can't be read, or TCP to a protected port: judged by its source.
    Judged(IpAddr),
    /// Malformed IP header, or more than two VLAN tags.
    Malformed,
}

/// Verdict counters, as named by the README's `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Counted {
    Authorized,
    Unprotected,
    Disabled,
    Dropped,
    WouldDrop,
}

/// The full outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
struct Verdict {
    action: u32,
    counted: Counted,
    malformed: bool,
    /// The merged prefix whose hit counter moved.
    rule: Option<IpNet>,
}

/// What the parser can see of `shape`, cut to `len` bytes.
fn seen(shape: &Shape, layout: &Layout, len: usize, ports: &[u16]) -> Seen {
    if shape.tags.len() > 2 {
        return Seen::Malformed;
    }
    if layout.tag_ends.iter().any(|end| len < *end) {
        return Seen::Malformed;
    }
    let tcp_to = |source: IpAddr, port_at: usize, dport: u16| {
        if len < port_at + 4 || ports.contains(&dport) {
            Seen::Judged(source)
        } else {
            Seen::NotFiltered
        }
    };
    match &shape.l3 {
        L3::Other { .. } => Seen::NotFiltered,
        L3::V4 {
            source,
            fragment_offset,
            damage,
            l4,
            ..
        } => {
            if len < layout.ip + 20 || *damage != V4Damage::None || len < layout.ip_end {
                return Seen::Malformed;
            }
            match l4 {
                L4::Tcp { .. } if *fragment_offset != 0 => Seen::Judged((*source).into()),
                L4::Tcp { dport } => tcp_to((*source).into(), layout.l4, *dport),
                _ => Seen::NotFiltered,
            }
        }
        L3::V6 {
            source,
            exts,
            bad_version,
            l4,
        } => {
            let source = IpAddr::V6(*source);
            if len < layout.ip + 40 || bad_version.is_some() {
                return Seen::Malformed;
            }
            for (i, ext) in exts.iter().enumerate() {
                if i == 8 {
                    // Chain longer than the bound: the port can't be read.
                    return Seen::Judged(source);
                }
                let start = layout.ext_starts[i];
                let need = if matches!(ext, Ext::Fragment { .. }) {
                    8
                } else {
                    2
                };
                if len < start + need {
                    return Seen::Malformed;
                }
                if let Ext::Fragment { offset, .. } = ext
                    && *offset != 0
                {
                    let tcp_or_more = i + 1 < exts.len() || matches!(l4, L4::Tcp { .. });
                    return if tcp_or_more {
                        Seen::Judged(source)
                    } else {
                        Seen::NotFiltered
                    };
                }
            }
            match l4 {
                L4::Tcp { dport } => tcp_to(source, layout.l4, *dport),
                _ => Seen::NotFiltered,
            }
        }
    }
}

/// Whether the prefixes in `list` cover every address of `p`.
fn covered(list: &[IpNet], p: IpNet) -> bool {
    if list.iter().any(|k| k.contains(&p)) {
        return true;
    }
    if p.prefix_len() == p.max_prefix_len() || !list.iter().any(|k| p.contains(k)) {
        return false;
    }
    p.subnets(p.prefix_len() + 1)
        .expect("one bit longer")
        .all(|half| covered(list, half))
}

/// The largest prefix around `addr` that `list` covers entirely (the merged block holding it).
fn block(list: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (0..=max)
        .map(|len| IpNet::new(addr, len).expect("valid length").trunc())
        .find(|p| covered(list, *p))
}

/// The longest prefix of `list` holding `addr` (a linear scan).
fn longest_match(list: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    list.iter()
        .filter(|p| p.contains(&addr))
        .max_by_key(|p| p.prefix_len())
        .copied()
}

/// The README's verdict for `shape` under `list`.
fn model(list: &List, shape: &Shape, layout: &Layout, len: usize) -> Verdict {
    let pass = |counted| Verdict {
        action: XDP_PASS,
        counted,
        malformed: false,
        rule: None,
    };
    let refuse = |malformed| Verdict {
        action: if list.mode == Mode::Enforce {
            XDP_DROP
        } else {
            XDP_PASS
        },
        counted: if list.mode == Mode::Enforce {
            Counted::Dropped
        } else {
            Counted::WouldDrop
        },
        malformed,
        rule: None,
    };
    match seen(shape, layout, len, &list.ports) {
        Seen::NotFiltered => pass(Counted::Unprotected),
        Seen::Malformed if list.ranges.is_none() => Verdict {
            malformed: true,
            ..pass(Counted::Disabled)
        },
        Seen::Malformed => refuse(true),
        Seen::Judged(_) if list.ranges.is_none() => pass(Counted::Disabled),
        Seen::Judged(source) => {
            let ranges = list.ranges.clone().unwrap_or_default();
            let Some(best) = longest_match(&list.all(), source) else {
                return refuse(false);
            };
            let rule = [block(&ranges, source), block(&list.always_allow, source)]
                .into_iter()
                .flatten()
                .max_by_key(|p| p.prefix_len())
                .expect("a list prefix holds the source");
            assert!(
                rule.contains(&best),
                "model: merged block {rule} must hold the longest match {best}"
            );
            Verdict {
                rule: Some(rule),
                ..pass(Counted::Authorized)
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel side.

/// The program and the maps the oracle reads.
struct Kernel {
    program: Xdp,
    lookup: Lookup,
    layout: PinLayout,
    verdicts: PerCpuArray<MapData, u64>,
    /// Counter values after the last probe.
    counters: [u64; 6],
    /// Read side of the pins, for `stats` (reopened after every apply).
    filter: Filter,
    /// Hits per merged prefix (`stats`) after the last probe.
    hits: BTreeMap<IpNet, u64>,
    _bpffs: Bpffs,
}

const COUNTERS: [u32; 6] = [
    COUNTER_PASSED_AUTHORIZED,
    COUNTER_PASSED_UNPROTECTED,
    COUNTER_PASSED_DISABLED,
    COUNTER_DROPPED,
    COUNTER_WOULD_DROP,
    COUNTER_MALFORMED,
];

fn open_map(layout: &PinLayout, name: &str) -> Map {
    MapData::from_pin(layout.map(name))
        .and_then(Map::from_map_data)
        .unwrap_or_else(|e| panic!("open map {name}: {e}"))
}

fn sum(values: aya::maps::PerCpuValues<u64>) -> u64 {
    values.iter().sum()
}

impl Kernel {
    fn new(first: &List, lookup: Lookup) -> Kernel {
        let bpffs = Bpffs::new().expect("mount a private bpffs");
        let layout = PinLayout::new(bpffs.path());
        let program = support::load_with(&layout, first.policy(), lookup);
        let verdicts = PerCpuArray::try_from(open_map(&layout, MAP_VERDICTS)).expect("VERDICTS");
        let filter = Filter::open(&layout).expect("open the filter");
        let mut kernel = Kernel {
            program,
            lookup,
            layout,
            verdicts,
            counters: [0; 6],
            filter,
            hits: BTreeMap::new(),
            _bpffs: bpffs,
        };
        kernel.refresh();
        kernel
    }

    fn apply(&mut self, list: &List) {
        Filter::open_for_write(&self.layout)
            .expect("open the filter")
            .apply_policy(list.policy())
            .unwrap_or_else(|e| panic!("apply {:?}: {e:#}", list.policy()));
        self.filter = Filter::open(&self.layout).expect("open the filter");
        self.refresh();
    }

    /// The hits per merged prefix, as `apifence stats` reports them.
    fn range_hits(&self) -> BTreeMap<IpNet, u64> {
        self.filter
            .stats()
            .expect("stats")
            .ranges
            .into_iter()
            .map(|r| (r.range.parse().expect("stats range is a prefix"), r.hits))
            .collect()
    }

    /// Reads the counters and the hits per merged prefix.
    fn refresh(&mut self) {
        for (i, index) in COUNTERS.iter().enumerate() {
            self.counters[i] = sum(self.verdicts.get(index, 0).expect("read counter"));
        }
        self.hits = self.range_hits();
    }

    /// Runs `frame` once and reads what moved.
    fn run(&mut self, frame: &[u8]) -> Verdict {
        let mut out = vec![0u8; frame.len() + 256];
        let action = self
            .program
            .test_run(TestRunOptions {
                data_in: Some(frame),
                data_out: Some(&mut out),
                repeat: 1,
                ..TestRunOptions::default()
            })
            .expect("BPF_PROG_TEST_RUN")
            .return_value;
        let mut moved = [0u64; 6];
        for (i, index) in COUNTERS.iter().enumerate() {
            let now = sum(self.verdicts.get(index, 0).expect("read counter"));
            moved[i] = now - self.counters[i];
            self.counters[i] = now;
        }
        let named = [
            Counted::Authorized,
            Counted::Unprotected,
            Counted::Disabled,
            Counted::Dropped,
            Counted::WouldDrop,
        ];
        let counted: Vec<Counted> = named
            .iter()
            .zip(moved)
            .filter(|(_, by)| *by > 0)
            .map(|(c, _)| *c)
            .collect();
        assert!(
            counted.len() == 1 && moved[..5].iter().sum::<u64>() == 1,
            "one frame must move exactly one verdict counter by one; moved {moved:?} for {}",
            hex(frame)
        );
        let mut rule = None;
        if counted[0] == Counted::Authorized {
            let now = self.range_hits();
            for (net, hits) in &now {
                if self.hits.get(net).copied().unwrap_or(0) != *hits {
                    assert!(
                        rule.is_none(),
                        "two ranges counted one frame: {}",
                        hex(frame)
                    );
                    rule = Some(*net);
                }
            }
            self.hits = now;
        }
        Verdict {
            action,
            counted: counted[0],
            malformed: moved[5] == 1,
            rule,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Which of the shapes a probe had, for the coverage summary.
fn kind(shape: &Shape) -> &'static str {
    if shape.truncate.is_some() {
        return "truncated";
    }
    if !shape.tags.is_empty() {
        return if shape.tags.len() == 1 {
            "vlan"
        } else {
            "qinq+"
        };
    }
    match &shape.l3 {
        L3::Other { .. } => "non-ip",
        L3::V4 { damage, .. } if *damage != V4Damage::None => "ipv4 damaged",
        L3::V4 {
            fragment_offset, ..
        } if *fragment_offset != 0 => "ipv4 later fragment",
        L3::V4 { options, .. } if *options > 0 => "ipv4 options",
        L3::V4 {
            l4: L4::Tcp { .. }, ..
        } => "ipv4 tcp",
        L3::V4 {
            l4: L4::Udp { .. }, ..
        } => "ipv4 udp",
        L3::V4 { .. } => "ipv4 icmp",
        L3::V6 {
            bad_version: Some(_),
            ..
        } => "ipv6 damaged",
        L3::V6 { exts, .. } if exts.iter().any(|e| matches!(e, Ext::Fragment { .. })) => {
            "ipv6 fragment"
        }
        L3::V6 { exts, .. } if exts.len() > 8 => "ipv6 chain > 8",
        L3::V6 { exts, .. } if !exts.is_empty() => "ipv6 extensions",
        L3::V6 {
            l4: L4::Tcp { .. }, ..
        } => "ipv6 tcp",
        L3::V6 {
            l4: L4::Udp { .. }, ..
        } => "ipv6 udp",
        L3::V6 { .. } => "ipv6 icmp",
    }
}

#[test]
fn random_frames_match_the_readme_model() {
    if !require_privileges("random_frames_match_the_readme_model") {
        return;
    }
    let probes: u64 = std::env::var("APIFENCE_ORACLE_PROBES")
        .map(|v| {
            v.parse()
                .expect("APIFENCE_ORACLE_PROBES: a number of probes")
        })
        .unwrap_or(DEFAULT_PROBES);
    let seed: u64 = std::env::var("APIFENCE_ORACLE_SEED")
        .map(|v| v.parse().expect("APIFENCE_ORACLE_SEED: a number"))
        .unwrap_or_else(|_| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock after 1970")
                .as_nanos() as u64
        });
    println!("oracle: seed {seed} (replay with APIFENCE_ORACLE_SEED={seed}), {probes} probes");
    let started = Instant::now();
    let mut rng = Rng(seed);

    let mut list = random_list(&mut rng);
    // Every probe is judged by both lookups (the compiled table, the default, and the tries).
    let mut kernels: Vec<Kernel> = Lookup::ALL
        .iter()
        .map(|lookup| Kernel::new(&list, *lookup))
        .collect();
    let mut mismatches = Vec::new();
    let mut outcomes: BTreeMap<(Counted, bool), u64> = BTreeMap::new();
    let mut kinds: BTreeMap<&'static str, u64> = BTreeMap::new();
    let mut lists = 1u64;
    let mut run = 0u64;
    while run < probes && mismatches.len() < MISMATCHES_SHOWN {
        if run > 0 && run.is_multiple_of(PROBES_PER_LIST) {
            list = random_list(&mut rng);
            for kernel in &mut kernels {
                kernel.apply(&list);
            }
            lists += 1;
        }
        let shape = random_shape(&mut rng, &list);
        let (frame, layout) = build(&shape);
        let want = model(&list, &shape, &layout, frame.len());
        *outcomes.entry((want.counted, want.malformed)).or_default() += 1;
        *kinds.entry(kind(&shape)).or_default() += 1;
        for kernel in &mut kernels {
            let got = kernel.run(&frame);
            if got != want {
                mismatches.push(format!(
                    "probe {run}: frame {}\n  shape {shape:?}\n  policy {:?}\n  model  {want:?}\n  kernel ({:?} lookup) {got:?}",
                    hex(&frame),
                    list.policy(),
                    kernel.lookup
                ));
            }
        }
        run += 1;
    }
    let elapsed = started.elapsed();
    println!(
        "oracle: {run} probes over {lists} lists in {:.1} s, {} mismatches",
        elapsed.as_secs_f64(),
        mismatches.len()
    );
    println!("oracle: outcomes (counter, malformed) {outcomes:?}");
    println!("oracle: shapes {kinds:?}");
    assert!(
        mismatches.is_empty(),
        "seed {seed}: the kernel disagrees with the model:\n{}",
        mismatches.join("\n")
    );
    // Nothing vacuous: every outcome and every shape was exercised.
    for outcome in [
        (Counted::Authorized, false),
        (Counted::Unprotected, false),
        (Counted::Disabled, false),
        (Counted::Disabled, true),
        (Counted::Dropped, false),
        (Counted::Dropped, true),
        (Counted::WouldDrop, false),
        (Counted::WouldDrop, true),
    ] {
        assert!(
            outcomes.get(&outcome).copied().unwrap_or(0) > 0 || probes < DEFAULT_PROBES,
            "seed {seed}: no probe ended as {outcome:?}"
        );
    }
    assert!(
        kinds.len() >= 17 || probes < DEFAULT_PROBES,
        "seed {seed}: only these shapes were made: {kinds:?}"
    );
}
