//! The model: the README's rules ("What is filtered", "The range language", `stats`), written
//! without any code of the product. [`seen`] reads a frame description, [`seen_bytes`] reads
//! raw bytes; [`judge`] consults the list.
//!
//! Where the README is silent the model takes these readings (each also what the program
//! does, and what the README now states): a frame cut inside a VLAN tag is malformed; a
//! truncated IPv6 extension header is malformed only when its next-header and length bytes (a
//! fragment header: all 8 bytes) are cut, past them the chain is followed as declared (so a cut
//! TCP header means "port unreadable"); a later fragment whose next header is not TCP or an
//! extension header is not TCP; IPv4 total length (beyond being at least the header) and IPv6
//! payload length are not compared with the frame length.
//!
//! The prefix a hit is counted to: the kernel holds the ranges and the always-allow list each
//! merged to the fewest prefixes ("covered and adjacent prefixes folded", hits "per merged
//! prefix"), so it is the longest of the two merged blocks holding the source: the largest
//! prefix around the source that the ranges (or the always-allow list) cover entirely. The
//! longest match over the list (a linear scan) must lie inside it.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

use super::list::{List, Mode};
use super::shape::{Ext, L3, L4, Layout, Shape, V4Damage};

/// `XDP_DROP`.
pub const XDP_DROP: u32 = 1;
/// `XDP_PASS`.
pub const XDP_PASS: u32 = 2;
/// VLAN tags the README says the parser walks; one more makes the frame malformed.
pub const MAX_VLAN_TAGS: usize = 2;
/// IPv6 extension headers the README says the parser walks; a longer chain leaves the port
/// unreadable.
pub const MAX_IPV6_EXTENSIONS: usize = 8;

/// What the README says about a frame, before the list is consulted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Seen {
    /// Not TCP to a protected port (other ports, UDP, ICMP, non-IP): passes.
    NotFiltered,
    /// TCP whose port can't be read, or TCP to a protected port: judged by its source.
    Judged(IpAddr),
    /// Malformed IP header, or more than two VLAN tags.
    Malformed,
}

/// Verdict counters, as named by the README's `stats`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Counted {
    /// `passed` of an authorized source.
    Authorized,
    /// Passed: not TCP to a protected port.
    Unprotected,
    /// Passed: filtering disabled.
    Disabled,
    /// Dropped (enforce).
    Dropped,
    /// Would have been dropped (monitor).
    WouldDrop,
}

/// The full outcome of one probe.
#[derive(Clone, Debug, PartialEq)]
pub struct Verdict {
    /// XDP action ([`XDP_PASS`] or [`XDP_DROP`]).
    pub action: u32,
    /// The one verdict counter that moved.
    pub counted: Counted,
    /// The malformed counter moved too.
    pub malformed: bool,
    /// The merged prefix whose hit counter moved.
    pub rule: Option<IpNet>,
}

/// What the parser can see of `shape`, cut to `len` bytes.
pub fn seen(shape: &Shape, layout: &Layout, len: usize, ports: &[u16]) -> Seen {
    if shape.tags.len() > MAX_VLAN_TAGS {
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
                if i == MAX_IPV6_EXTENSIONS {
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
pub fn covered(list: &[IpNet], p: IpNet) -> bool {
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
pub fn block(list: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    let max = if addr.is_ipv4() { 32 } else { 128 };
    (0..=max)
        .map(|len| IpNet::new(addr, len).expect("valid length").trunc())
        .find(|p| covered(list, *p))
}

/// The longest prefix of `list` holding `addr` (a linear scan).
pub fn longest_match(list: &[IpNet], addr: IpAddr) -> Option<IpNet> {
    list.iter()
        .filter(|p| p.contains(&addr))
        .max_by_key(|p| p.prefix_len())
        .copied()
}

/// The README's verdict for `shape` (cut to `len` bytes) under `list`.
pub fn model(list: &List, shape: &Shape, layout: &Layout, len: usize) -> Verdict {
    judge(list, seen(shape, layout, len, &list.ports))
}

/// The README's verdict for a frame the parser sees as `seen`, under `list`.
pub fn judge(list: &List, seen: Seen) -> Verdict {
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
    match seen {
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

/// EtherType of IPv4.
const ETHERTYPE_IPV4: u16 = 0x0800;
/// EtherType of IPv6.
const ETHERTYPE_IPV6: u16 = 0x86dd;
/// IP protocol numbers of TCP and of the IPv6 extension headers the README names.
const PROTO_TCP: u8 = 6;
const EXT_HOP_BY_HOP: u8 = 0;
const EXT_ROUTING: u8 = 43;
const EXT_FRAGMENT: u8 = 44;
const EXT_AUTH: u8 = 51;
const EXT_DEST_OPTS: u8 = 60;

/// What the parser can see of the raw bytes of `frame`: the README's rules applied to bytes,
/// with the same readings as [`seen`] (which the fuzz target checks it against on every frame
/// it describes).
pub fn seen_bytes(frame: &[u8], ports: &[u16]) -> Seen {
    let Some(mut ethertype) = be16(frame, 12) else {
        // Shorter than an Ethernet header: nothing to filter.
        return Seen::NotFiltered;
    };
    let mut at = 14;
    let mut tags = 0;
    while ethertype == super::shape::TPID_8021Q || ethertype == super::shape::TPID_8021AD {
        if tags == MAX_VLAN_TAGS {
            return Seen::Malformed;
        }
        // A tag is 4 bytes, the inner EtherType its last two.
        let Some(inner) = be16(frame, at + 2) else {
            return Seen::Malformed;
        };
        ethertype = inner;
        at += 4;
        tags += 1;
    }
    match ethertype {
        ETHERTYPE_IPV4 => seen_ipv4(frame, at, ports),
        ETHERTYPE_IPV6 => seen_ipv6(frame, at, ports),
        _ => Seen::NotFiltered,
    }
}

/// `n` bytes of `frame` at `at`, if the frame holds them.
fn bytes(frame: &[u8], at: usize, n: usize) -> Option<&[u8]> {
    frame.get(at..at.checked_add(n)?)
}

/// The big-endian 16-bit value at `at`.
fn be16(frame: &[u8], at: usize) -> Option<u16> {
    bytes(frame, at, 2).map(|b| u16::from_be_bytes([b[0], b[1]]))
}

/// TCP from `source` whose header starts at `at`: judged when the port is protected or
/// unreadable.
fn tcp_at(frame: &[u8], at: usize, source: IpAddr, ports: &[u16]) -> Seen {
    match be16(frame, at + 2) {
        Some(port) if !ports.contains(&port) => Seen::NotFiltered,
        _ => Seen::Judged(source),
    }
}

fn seen_ipv4(frame: &[u8], at: usize, ports: &[u16]) -> Seen {
    let Some(h) = bytes(frame, at, 20) else {
        return Seen::Malformed;
    };
    let version = h[0] >> 4;
    let header_len = usize::from(h[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([h[2], h[3]]));
    if version != 4 || header_len < 20 || total_len < header_len {
        return Seen::Malformed;
    }
    if bytes(frame, at, header_len).is_none() {
        return Seen::Malformed;
    }
    if h[9] != PROTO_TCP {
        return Seen::NotFiltered;
    }
    let source = IpAddr::V4(Ipv4Addr::new(h[12], h[13], h[14], h[15]));
    let fragment_offset = u16::from_be_bytes([h[6], h[7]]) & 0x1fff;
    if fragment_offset != 0 {
        return Seen::Judged(source);
    }
    tcp_at(frame, at + header_len, source, ports)
}

fn is_extension(next: u8) -> bool {
    matches!(
        next,
        EXT_HOP_BY_HOP | EXT_ROUTING | EXT_FRAGMENT | EXT_AUTH | EXT_DEST_OPTS
    )
}

fn seen_ipv6(frame: &[u8], at: usize, ports: &[u16]) -> Seen {
    let Some(h) = bytes(frame, at, 40) else {
        return Seen::Malformed;
    };
    if h[0] >> 4 != 6 {
        return Seen::Malformed;
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&h[8..24]);
    let source = IpAddr::V6(Ipv6Addr::from(source));
    let mut next = h[6];
    let mut at = at + 40;
    for _ in 0..MAX_IPV6_EXTENSIONS {
        match next {
            PROTO_TCP => return tcp_at(frame, at, source, ports),
            EXT_FRAGMENT => {
                let Some(f) = bytes(frame, at, 8) else {
                    return Seen::Malformed;
                };
                next = f[0];
                if u16::from_be_bytes([f[2], f[3]]) >> 3 != 0 {
                    // A later fragment: no transport header to read.
                    return if next == PROTO_TCP || is_extension(next) {
                        Seen::Judged(source)
                    } else {
                        Seen::NotFiltered
                    };
                }
                at += 8;
            }
            EXT_HOP_BY_HOP | EXT_ROUTING | EXT_DEST_OPTS | EXT_AUTH => {
                // Next header and length first; AH counts 4-byte words minus 2, the others
                // 8-byte units minus 1.
                let Some(e) = bytes(frame, at, 2) else {
                    return Seen::Malformed;
                };
                at += if next == EXT_AUTH {
                    (usize::from(e[1]) + 2) * 4
                } else {
                    (usize::from(e[1]) + 1) * 8
                };
                next = e[0];
            }
            _ => return Seen::NotFiltered,
        }
    }
    if next == PROTO_TCP {
        tcp_at(frame, at, source, ports)
    } else if is_extension(next) {
        Seen::Judged(source)
    } else {
        Seen::NotFiltered
    }
}
