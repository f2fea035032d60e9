//! Frame parsing: Ethernet, up to two VLAN tags, IPv4 (real header length) or IPv6 (a bounded
//! walk over extension headers), then the TCP destination port. Every read goes through
//! [`Cursor::read`], which checks the frame end; offsets are capped by [`MAX_L4_OFFSET`] so the
//! verifier can bound them.

use aya_ebpf::programs::XdpContext;
use filter_common::{Ipv4Bytes, Ipv6Bytes};

const ETH_HEADER_LEN: usize = 14;
const ETHERTYPE_IPV4: u16 = 0x0800;
const ETHERTYPE_IPV6: u16 = 0x86dd;
const ETHERTYPE_VLAN: u16 = 0x8100;
const ETHERTYPE_QINQ: u16 = 0x88a8;
/// VLAN tags walked before the frame counts as malformed.
const MAX_VLAN_TAGS: usize = 2;
const VLAN_TAG_LEN: usize = 4;

const IPV4_MIN_HEADER_LEN: usize = 20;
const IPV6_HEADER_LEN: usize = 40;
const IPPROTO_TCP: u8 = 6;
const IPV6_HOP_BY_HOP: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_AUTH: u8 = 51;
const IPV6_DEST_OPTS: u8 = 60;
/// IPv6 extension headers walked before the destination port counts as unreadable.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No header starts beyond this offset: larger offsets mean "port unreadable".
const MAX_L4_OFFSET: usize = 4096;

/// A packet's source address.
#[derive(Clone, Copy)]
pub enum Source {
    /// IPv4 source, network byte order.
    V4(Ipv4Bytes),
    /// IPv6 source, network byte order.
    V6(Ipv6Bytes),
}

/// What the filter needs to know about a frame.
pub enum Class {
    /// Not TCP over IP (or not IP at all): never filtered.
    Unfiltered,
    /// TCP from `source`; `port` is `None` when the destination port can't be read
    /// (non-first fragment, first fragment too short, extension chain too long).
    Tcp { source: Source, port: Option<u16> },
    /// An IP header that can't be valid (bad version, IHL < 5, truncated).
    Malformed,
}

/// Bounds-checked reader over the frame.
struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    /// Copies `N` bytes at `offset`, or `None` if they run past the frame end.
    #[inline(always)]
    fn read<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        if offset > MAX_L4_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + N > self.end {
            return None;
        }
        // SAFETY: `at .. at + N` lies inside the frame (checked just above).
        Some(unsafe { core::ptr::read_unaligned(at as *const [u8; N]) })
    }

    #[inline(always)]
    fn be16_at(&self, offset: usize) -> Option<u16> {
        self.read::<2>(offset).map(u16::from_be_bytes)
    }
}

/// Classifies the frame in `ctx`.
#[inline(always)]
pub fn classify(ctx: &XdpContext) -> Class {
    let cursor = Cursor {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    let Some(mut ethertype) = cursor.be16_at(ETH_HEADER_LEN - 2) else {
        return Class::Unfiltered;
    };
    let mut offset = ETH_HEADER_LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let Some(inner) = cursor.be16_at(offset + 2) else {
            return Class::Malformed;
        };
        ethertype = inner;
        offset += VLAN_TAG_LEN;
    }
    match ethertype {
        ETHERTYPE_IPV4 => classify_ipv4(&cursor, offset),
        ETHERTYPE_IPV6 => classify_ipv6(&cursor, offset),
        // A third tag: the parser can't see what is inside, so it is not let through unjudged.
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => Class::Malformed,
        _ => Class::Unfiltered,
    }
}

#[inline(always)]
fn classify_ipv4(cursor: &Cursor, ip: usize) -> Class {
    let Some(header) = cursor.read::<IPV4_MIN_HEADER_LEN>(ip) else {
        return Class::Malformed;
    };
    let version = header[0] >> 4;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let total_len = usize::from(u16::from_be_bytes([header[2], header[3]]));
    if version != 4 || header_len < IPV4_MIN_HEADER_LEN || total_len < header_len {
        return Class::Malformed;
    }
    // The options must be present too.
    if cursor.read::<1>(ip + header_len - 1).is_none() {
        return Class::Malformed;
    }
    if header[9] != IPPROTO_TCP {
        return Class::Unfiltered;
    }
    let source = Source::V4([header[12], header[13], header[14], header[15]]);
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let port = if fragment_offset != 0 {
        None
    } else {
        cursor.be16_at(ip + header_len + 2)
    };
    Class::Tcp { source, port }
}

#[inline(always)]
fn classify_ipv6(cursor: &Cursor, ip: usize) -> Class {
    let Some(header) = cursor.read::<IPV6_HEADER_LEN>(ip) else {
        return Class::Malformed;
    };
    if header[0] >> 4 != 6 {
        return Class::Malformed;
    }
    let mut source = [0u8; 16];
    source.copy_from_slice(&header[8..24]);
    let source = Source::V6(source);
    let mut next = header[6];
    let mut offset = ip + IPV6_HEADER_LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => {
                return Class::Tcp {
                    source,
                    port: cursor.be16_at(offset + 2),
                };
            }
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH => {
                let Some([following, len]) = cursor.read::<2>(offset) else {
                    return Class::Malformed;
                };
                // AH counts its length in 4-byte units minus 2; the others in 8-byte units
                // minus 1.
                offset += if next == IPV6_AUTH {
                    (usize::from(len) + 2) * 4
                } else {
                    (usize::from(len) + 1) * 8
                };
                next = following;
            }
            IPV6_FRAGMENT => {
                let Some(fragment) = cursor.read::<8>(offset) else {
                    return Class::Malformed;
                };
                next = fragment[0];
                let fragment_offset = u16::from_be_bytes([fragment[2], fragment[3]]) >> 3;
                if fragment_offset != 0 {
                    // Later fragments carry no L4 header: judge them unless they are surely
                    // not TCP.
                    return if next == IPPROTO_TCP || is_extension(next) {
                        Class::Tcp { source, port: None }
                    } else {
                        Class::Unfiltered
                    };
                }
                offset += 8;
            }
            _ => return Class::Unfiltered,
        }
    }
    if next == IPPROTO_TCP {
        Class::Tcp {
            source,
            port: cursor.be16_at(offset + 2),
        }
    } else if is_extension(next) {
        // Chain longer than the bound: the port can't be read, so it counts as protected.
        Class::Tcp { source, port: None }
    } else {
        Class::Unfiltered
    }
}

/// Whether `next_header` is an IPv6 extension header the walk understands.
#[inline(always)]
fn is_extension(next_header: u8) -> bool {
    matches!(
        next_header,
        IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_FRAGMENT | IPV6_AUTH | IPV6_DEST_OPTS
    )
}
