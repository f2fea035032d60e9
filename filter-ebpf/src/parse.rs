//! Frame parsing: Ethernet and up to two VLAN tags (or, on L3 devices, nothing: the frame starts
//! at the IP header, see [`FRAMING`]), IPv4 (real header length) or IPv6 (a bounded walk over
//! extension headers), then the TCP destination port. Headers are `network-types`' structs (the
//! aya ecosystem's); the IPv6 extension and fragment headers, which it has no structs for, are
//! read as bytes. Every read goes through [`Cursor::read`], which checks the frame end; offsets
//! are capped by [`MAX_L4_OFFSET`] so the verifier can bound them.

use aya_ebpf::programs::XdpContext;
use filter_common::{FRAMING_ETHERNET, FRAMING_IP, Ipv4Bytes, Ipv6Bytes};
use network_types::{
    eth::{EthHdr, EtherType},
    ip::{IpProto, Ipv4Hdr, Ipv6Hdr},
    tcp::TcpHdr,
    vlan::VlanHdr,
};

/// EtherTypes as they are on the wire (network-types stores them in network byte order).
const ETHERTYPE_IPV4: u16 = EtherType::Ipv4 as u16;
const ETHERTYPE_IPV6: u16 = EtherType::Ipv6 as u16;
const ETHERTYPE_VLAN: u16 = EtherType::Ieee8021q as u16;
const ETHERTYPE_QINQ: u16 = EtherType::Ieee8021ad as u16;
/// VLAN tags walked before the frame counts as malformed.
const MAX_VLAN_TAGS: usize = 2;

const IPPROTO_TCP: u8 = IpProto::Tcp as u8;
const IPV6_HOP_BY_HOP: u8 = IpProto::HopOpt as u8;
const IPV6_ROUTING: u8 = IpProto::Ipv6Route as u8;
const IPV6_FRAGMENT: u8 = IpProto::Ipv6Frag as u8;
const IPV6_AUTH: u8 = IpProto::Ah as u8;
const IPV6_DEST_OPTS: u8 = IpProto::Ipv6Opts as u8;
/// Bytes of the IPv6 fragment header (network-types has no struct for it).
const IPV6_FRAGMENT_LEN: usize = 8;
/// Offset of the destination port in the TCP header.
const TCP_DEST_OFFSET: usize = core::mem::offset_of!(TcpHdr, dest);
/// IPv6 extension headers walked before the destination port counts as unreadable.
pub const MAX_IPV6_EXT_HEADERS: usize = 8;
/// No header starts beyond this offset: larger offsets mean "port unreadable".
const MAX_L4_OFFSET: usize = 4096;

/// What the parser walked through, told to the verdict trace (`crate::trace`). The production
/// program passes `()`, whose methods are empty, so its code is the same as without this.
pub trait Walk {
    /// One VLAN tag.
    #[inline(always)]
    fn vlan_tag(&mut self) {}
    /// An IPv4 header with options.
    #[inline(always)]
    fn ipv4_options(&mut self) {}
    /// One IPv6 extension header (fragment headers included).
    #[inline(always)]
    fn ipv6_extension(&mut self) {}
    /// A non-first fragment: there is no TCP header to read the port from.
    #[inline(always)]
    fn later_fragment(&mut self) {}
}

impl Walk for () {}

/// Where a frame's headers start (`filter_common::GLOBAL_FRAMING`): a load-time constant in
/// `.rodata` that the loader sets with `EbpfLoader::set_global`, [`FRAMING_ETHERNET`] for the
/// instance attached to Ethernet devices, [`FRAMING_IP`] for the one attached to L3 devices. The
/// verifier knows its value, so the other parse path is pruned as dead code.
#[unsafe(no_mangle)]
static FRAMING: u32 = FRAMING_ETHERNET;

/// Whether frames start at the IP header (this instance is for L3 devices).
#[inline(always)]
fn ip_framing() -> bool {
    // SAFETY: reads a plain `u32` static; volatile so the compiler can't fold the default.
    unsafe { core::ptr::read_volatile(&FRAMING) == FRAMING_IP }
}

/// [`Class::Tcp`]'s port when the destination port can't be read: outside `u16`. A plain
/// integer rather than an `Option<u16>`, whose payload is undefined when `None`: LLVM may then
/// load it from a stack slot written on one path only, which Linux 5.10's verifier refuses
/// ("invalid read from stack").
pub const PORT_UNREADABLE: u32 = 0x1_0000;

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
    /// TCP from `source` to destination `port`, which is [`PORT_UNREADABLE`] when the port
    /// can't be read (non-first fragment, first fragment too short, extension chain too long).
    Tcp { source: Source, port: u32 },
    /// An IP header that can't be valid (bad version, IHL < 5, truncated).
    Malformed,
}

/// Bounds-checked reader over the frame.
struct Cursor {
    start: usize,
    end: usize,
}

impl Cursor {
    /// Copies the `T` (a header or a byte array) at `offset`, or `None` if it runs past the
    /// frame end.
    #[inline(always)]
    fn read<T: Copy>(&self, offset: usize) -> Option<T> {
        if offset > MAX_L4_OFFSET {
            return None;
        }
        let at = self.start + offset;
        if at + core::mem::size_of::<T>() > self.end {
            return None;
        }
        // SAFETY: `at .. at + size_of::<T>()` lies inside the frame (checked just above), and
        // every `T` read here is plain data valid for any bytes.
        Some(unsafe { core::ptr::read_unaligned(at as *const T) })
    }

    /// The TCP destination port of the TCP header at `offset`, or [`PORT_UNREADABLE`].
    #[inline(always)]
    fn tcp_dest_port(&self, offset: usize) -> u32 {
        match self.read::<[u8; 2]>(offset + TCP_DEST_OFFSET) {
            Some(bytes) => u32::from(u16::from_be_bytes(bytes)),
            None => PORT_UNREADABLE,
        }
    }
}

/// Classifies the frame in `ctx`, telling `walk` the way.
#[inline(always)]
pub fn classify(ctx: &XdpContext, walk: &mut impl Walk) -> Class {
    let cursor = Cursor {
        start: ctx.data(),
        end: ctx.data_end(),
    };
    if ip_framing() {
        return classify_ip(&cursor, walk);
    }
    let Some(eth) = cursor.read::<EthHdr>(0) else {
        return Class::Unfiltered;
    };
    let mut ethertype = eth.ether_type;
    let mut offset = EthHdr::LEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETHERTYPE_VLAN && ethertype != ETHERTYPE_QINQ {
            break;
        }
        let Some(tag) = cursor.read::<VlanHdr>(offset) else {
            return Class::Malformed;
        };
        walk.vlan_tag();
        ethertype = tag.ether_type;
        offset += VlanHdr::LEN;
    }
    match ethertype {
        ETHERTYPE_IPV4 => classify_ipv4(&cursor, offset, walk),
        ETHERTYPE_IPV6 => classify_ipv6(&cursor, offset, walk),
        // A third tag: the parser can't see what is inside, so it is not let through unjudged.
        ETHERTYPE_VLAN | ETHERTYPE_QINQ => Class::Malformed,
        _ => Class::Unfiltered,
    }
}

/// Classifies a frame that starts at the IP header: the version nibble says which. A frame with
/// another version is not IP: the kernel's IPv4 and IPv6 receive paths drop a packet whose
/// version is not theirs, so it can't reach TCP (as a non-IP EtherType can't on Ethernet).
#[inline(always)]
fn classify_ip(cursor: &Cursor, walk: &mut impl Walk) -> Class {
    // Two bytes, not one: LLVM turns a one-byte bound at a constant offset into
    // `data >= data_end`, which the verifier does not take as proof of one readable byte. A
    // frame of less than two bytes holds no IP header of either version.
    let Some([first, _]) = cursor.read::<[u8; 2]>(0) else {
        return Class::Unfiltered;
    };
    match first >> 4 {
        4 => classify_ipv4(cursor, 0, walk),
        6 => classify_ipv6(cursor, 0, walk),
        _ => Class::Unfiltered,
    }
}

#[inline(always)]
fn classify_ipv4(cursor: &Cursor, ip: usize, walk: &mut impl Walk) -> Class {
    let Some(header) = cursor.read::<Ipv4Hdr>(ip) else {
        return Class::Malformed;
    };
    let header_len = usize::from(header.ihl());
    if header.version() != 4
        || header_len < Ipv4Hdr::LEN
        || usize::from(header.tot_len()) < header_len
    {
        return Class::Malformed;
    }
    // The options must be present too.
    if cursor.read::<u8>(ip + header_len - 1).is_none() {
        return Class::Malformed;
    }
    if header.proto != IPPROTO_TCP {
        return Class::Unfiltered;
    }
    if header_len > Ipv4Hdr::LEN {
        walk.ipv4_options();
    }
    let source = Source::V4(header.src_addr);
    let port = if header.frag_offset() != 0 {
        walk.later_fragment();
        PORT_UNREADABLE
    } else {
        cursor.tcp_dest_port(ip + header_len)
    };
    Class::Tcp { source, port }
}

#[inline(always)]
fn classify_ipv6(cursor: &Cursor, ip: usize, walk: &mut impl Walk) -> Class {
    let Some(header) = cursor.read::<Ipv6Hdr>(ip) else {
        return Class::Malformed;
    };
    if header.version() != 6 {
        return Class::Malformed;
    }
    let source = Source::V6(header.src_addr);
    let mut next = header.next_hdr;
    let mut offset = ip + Ipv6Hdr::LEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_TCP => {
                return Class::Tcp {
                    source,
                    port: cursor.tcp_dest_port(offset),
                };
            }
            IPV6_HOP_BY_HOP | IPV6_ROUTING | IPV6_DEST_OPTS | IPV6_AUTH => {
                walk.ipv6_extension();
                // Every extension header starts with its next header and its length.
                let Some([following, len]) = cursor.read::<[u8; 2]>(offset) else {
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
                walk.ipv6_extension();
                let Some(fragment) = cursor.read::<[u8; IPV6_FRAGMENT_LEN]>(offset) else {
                    return Class::Malformed;
                };
                next = fragment[0];
                let fragment_offset = u16::from_be_bytes([fragment[2], fragment[3]]) >> 3;
                if fragment_offset != 0 {
                    walk.later_fragment();
                    // Later fragments carry no L4 header: judge them unless they are surely
                    // not TCP.
                    return if next == IPPROTO_TCP || is_extension(next) {
                        Class::Tcp {
                            source,
                            port: PORT_UNREADABLE,
                        }
                    } else {
                        Class::Unfiltered
                    };
                }
                offset += IPV6_FRAGMENT_LEN;
            }
            _ => return Class::Unfiltered,
        }
    }
    if next == IPPROTO_TCP {
        Class::Tcp {
            source,
            port: cursor.tcp_dest_port(offset),
        }
    } else if is_extension(next) {
        // Chain longer than the bound: the port can't be read, so it counts as protected.
        Class::Tcp {
            source,
            port: PORT_UNREADABLE,
        }
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
