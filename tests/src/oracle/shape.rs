//! Frame descriptions ([`Shape`]) and their bytes, written by `etherparse` (a packet library
//! the product doesn't use), with a [`Layout`] saying where each header went, for the model to
//! reason about truncation.

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{
    EtherType, Ethernet2Header, IcmpEchoHeader, Icmpv4Header, Icmpv4Type, Icmpv6Header, Icmpv6Type,
    IpAuthHeader, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options, Ipv6FlowLabel,
    Ipv6FragmentHeader, Ipv6Header, Ipv6RawExtHeader, SingleVlanHeader, TcpHeader, UdpHeader,
    VlanId, VlanPcp,
};

/// Destination of every IPv4 frame (never looked at by the filter).
pub const API4: [u8; 4] = [198, 18, 0, 1];
/// Destination of every IPv6 frame (never looked at by the filter).
pub const API6: [u8; 16] = [0xfd, 0, 0xaf, 0xde, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
/// TPID of an 802.1Q tag.
pub const TPID_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (QinQ service) tag.
pub const TPID_8021AD: u16 = 0x88a8;
/// Largest `units` of a hop-by-hop, routing or destination-options header (`(units + 1) * 8`
/// bytes).
pub const MAX_EXT_UNITS: u8 = 2;
/// Largest number of 4-byte ICV words of an AH header.
pub const MAX_AUTH_ICV_WORDS: u8 = 4;
/// Largest IPv4 option bytes (IHL 15).
pub const MAX_V4_OPTIONS: usize = 40;
/// Largest 13-bit fragment offset.
pub const MAX_FRAGMENT_OFFSET: u16 = 0x1fff;

/// IPv6 extension headers the generator writes.
#[derive(Clone, Copy, Debug)]
pub enum Ext {
    /// Hop-by-hop options, `(units + 1) * 8` bytes.
    HopByHop {
        /// Length in 8-byte units, minus one.
        units: u8,
    },
    /// Routing header, `(units + 1) * 8` bytes.
    Routing {
        /// Length in 8-byte units, minus one.
        units: u8,
    },
    /// Destination options, `(units + 1) * 8` bytes.
    DestOpts {
        /// Length in 8-byte units, minus one.
        units: u8,
    },
    /// Authentication header with `icv_words` 4-byte words of ICV.
    Auth {
        /// 4-byte words of integrity check value (at least 1).
        icv_words: u8,
    },
    /// Fragment header.
    Fragment {
        /// Fragment offset in 8-byte units.
        offset: u16,
        /// The more-fragments flag.
        more: bool,
    },
}

impl Ext {
    /// Its IP protocol number (the previous header's next-header value).
    pub fn number(self) -> u8 {
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
pub enum L4 {
    /// A TCP SYN to `dport`.
    Tcp {
        /// Destination port.
        dport: u16,
    },
    /// A UDP datagram to `dport`.
    Udp {
        /// Destination port.
        dport: u16,
    },
    /// An ICMP (ICMPv6 under IPv6) echo request.
    Icmp,
}

/// Deliberate damage to an IPv4 header (applied to the bytes etherparse wrote).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum V4Damage {
    /// A valid header.
    None,
    /// Version field not 4.
    Version(u8),
    /// IHL below 5.
    Ihl(u8),
    /// Total length smaller than the header.
    TotalLength(u16),
}

/// The network layer of a frame.
#[derive(Clone, Debug)]
pub enum L3 {
    /// IPv4.
    V4 {
        /// Source address.
        source: Ipv4Addr,
        /// Option bytes (a multiple of 4, at most 40).
        options: usize,
        /// Fragment offset in 8-byte units.
        fragment_offset: u16,
        /// The more-fragments flag.
        more_fragments: bool,
        /// Damage done to the written header.
        damage: V4Damage,
        /// What follows.
        l4: L4,
    },
    /// IPv6.
    V6 {
        /// Source address.
        source: Ipv6Addr,
        /// Extension headers, in order.
        exts: Vec<Ext>,
        /// Version field not 6.
        bad_version: Option<u8>,
        /// What follows the last extension header.
        l4: L4,
    },
    /// Not IP (ARP, LLDP, ...): only the EtherType is written.
    Other {
        /// The EtherType.
        ethertype: u16,
    },
}

/// A frame description.
#[derive(Clone, Debug)]
pub struct Shape {
    /// TPIDs of the VLAN tags, outermost first.
    pub tags: Vec<u16>,
    /// The network layer.
    pub l3: L3,
    /// Cut the frame to this many bytes (at least the Ethernet header).
    pub truncate: Option<usize>,
}

/// Where the generator put each header (offsets into the frame before truncation).
#[derive(Debug, Default)]
pub struct Layout {
    /// End of each VLAN tag.
    pub tag_ends: Vec<usize>,
    /// Start of the IP header.
    pub ip: usize,
    /// End of the IPv4 header (options included).
    pub ip_end: usize,
    /// Start of each IPv6 extension header.
    pub ext_starts: Vec<usize>,
    /// Start of the transport header.
    pub l4: usize,
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

/// Bytes of `ext` on the wire.
pub fn ext_len(ext: Ext) -> usize {
    match ext {
        Ext::HopByHop { units } | Ext::Routing { units } | Ext::DestOpts { units } => {
            (usize::from(units) + 1) * 8
        }
        Ext::Auth { icv_words } => 12 + usize::from(icv_words) * 4,
        Ext::Fragment { .. } => 8,
    }
}

/// Writes `shape` with etherparse; returns the bytes and where each header went.
pub fn build(shape: &Shape) -> (Vec<u8>, Layout) {
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
