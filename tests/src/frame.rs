//! Pure builders of Ethernet frames for `BPF_PROG_TEST_RUN`: optional VLAN tags, IPv4 (options,
//! fragments, malformed lengths) or IPv6 (extension header chains), TCP or UDP, and truncation.
//!
//! ```
//! use apifence_tests::frame::{ExtHeader, Frame};
//! let v4 = Frame::tcp4([198, 18, 0, 2].into(), [198, 18, 0, 1].into(), 6443)
//!     .vlan(0x8100, 10)
//!     .ipv4_options(8)
//!     .fragment(0, true)
//!     .bytes();
//! assert_eq!(v4.len(), 14 + 4 + 28 + 20);
//! let v6 = Frame::tcp6("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 6443)
//!     .ext(ExtHeader::hop_by_hop())
//!     .truncate(60)
//!     .bytes();
//! assert_eq!(v6.len(), 60);
//! ```
//!
//! Checksums (IPv4 header, TCP, UDP) are filled in for the frame as built, so well-formed frames
//! are also valid on the wire; overrides and truncation are applied without fixing them up.

use std::net::{Ipv4Addr, Ipv6Addr};

/// EtherType of IPv4.
pub const ETH_P_IP: u16 = 0x0800;
/// EtherType of IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// TPID of an 802.1Q (customer) VLAN tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// TPID of an 802.1ad (service, outer) VLAN tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// IP protocol number of TCP.
pub const IPPROTO_TCP: u8 = 6;
/// IP protocol number of UDP.
pub const IPPROTO_UDP: u8 = 17;
/// IP protocol number of ICMPv6.
pub const IPPROTO_ICMPV6: u8 = 58;
/// IPv6 "no next header".
pub const IPPROTO_NONE: u8 = 59;
/// TCP FIN flag.
pub const TCP_FIN: u8 = 0x01;
/// TCP SYN flag.
pub const TCP_SYN: u8 = 0x02;
/// TCP RST flag.
pub const TCP_RST: u8 = 0x04;
/// TCP ACK flag.
pub const TCP_ACK: u8 = 0x10;

/// Length of an Ethernet header without tags.
pub const ETH_HLEN: usize = 14;
/// Length of one VLAN tag.
pub const VLAN_HLEN: usize = 4;
/// Length of an IPv4 header without options.
pub const IPV4_HLEN: usize = 20;
/// Length of the fixed IPv6 header.
pub const IPV6_HLEN: usize = 40;
/// Length of a TCP header without options.
pub const TCP_HLEN: usize = 20;
/// Length of a UDP header.
pub const UDP_HLEN: usize = 8;

/// Source port used unless [`Frame::sport`] says otherwise.
pub const DEFAULT_SPORT: u16 = 40_000;

/// An IPv6 extension header, written in the order given to [`Frame::ext`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtHeader {
    /// Hop-by-hop options (protocol 0): `(ext_len + 1) * 8` bytes of PadN.
    HopByHop {
        /// The header's "Hdr Ext Len" field (extra 8-byte units).
        ext_len: u8,
    },
    /// Routing header (protocol 43) of an unassigned type, segments left 0.
    Routing {
        /// The header's "Hdr Ext Len" field (extra 8-byte units).
        ext_len: u8,
    },
    /// Destination options (protocol 60): `(ext_len + 1) * 8` bytes of PadN.
    DestOpts {
        /// The header's "Hdr Ext Len" field (extra 8-byte units).
        ext_len: u8,
    },
    /// Fragment header (protocol 44), 8 bytes.
    Fragment {
        /// Fragment offset in 8-byte units (13 bits).
        offset: u16,
        /// The M (more fragments) flag.
        more: bool,
    },
    /// Authentication header (protocol 51): `12 + 4 * icv_words` bytes; its length field
    /// counts 4-byte units minus 2, unlike the others.
    Ah {
        /// Length of the integrity check value in 4-byte words.
        icv_words: u8,
    },
}

impl ExtHeader {
    /// An 8-byte hop-by-hop header.
    pub fn hop_by_hop() -> ExtHeader {
        ExtHeader::HopByHop { ext_len: 0 }
    }
    /// An 8-byte routing header.
    pub fn routing() -> ExtHeader {
        ExtHeader::Routing { ext_len: 0 }
    }
    /// An 8-byte destination options header.
    pub fn dest_opts() -> ExtHeader {
        ExtHeader::DestOpts { ext_len: 0 }
    }
    /// A fragment header.
    pub fn fragment(offset: u16, more: bool) -> ExtHeader {
        ExtHeader::Fragment { offset, more }
    }
    /// A 24-byte AH (96-bit ICV, as with HMAC-SHA1-96).
    pub fn ah() -> ExtHeader {
        ExtHeader::Ah { icv_words: 3 }
    }

    /// The protocol number that announces this header.
    pub fn protocol(&self) -> u8 {
        match self {
            ExtHeader::HopByHop { .. } => 0,
            ExtHeader::Routing { .. } => 43,
            ExtHeader::Fragment { .. } => 44,
            ExtHeader::Ah { .. } => 51,
            ExtHeader::DestOpts { .. } => 60,
        }
    }

    /// The header's length in bytes.
    pub fn len(&self) -> usize {
        match *self {
            ExtHeader::HopByHop { ext_len }
            | ExtHeader::Routing { ext_len }
            | ExtHeader::DestOpts { ext_len } => (usize::from(ext_len) + 1) * 8,
            ExtHeader::Fragment { .. } => 8,
            ExtHeader::Ah { icv_words } => 12 + 4 * usize::from(icv_words),
        }
    }

    /// Always `false`: every extension header has a length.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Appends this header, announcing `next` as the following protocol.
    fn write(&self, next: u8, out: &mut Vec<u8>) {
        let start = out.len();
        out.resize(start + self.len(), 0);
        let h = &mut out[start..];
        h[0] = next;
        match *self {
            ExtHeader::HopByHop { ext_len } | ExtHeader::DestOpts { ext_len } => {
                h[1] = ext_len;
                // One PadN option covering the rest of the header.
                h[2] = 1;
                h[3] = (h.len() - 4) as u8;
            }
            ExtHeader::Routing { ext_len } => {
                h[1] = ext_len;
                h[2] = 253; // routing type reserved for experiments
                h[3] = 0; // segments left
            }
            ExtHeader::Fragment { offset, more } => {
                let field = (offset << 3) | u16::from(more);
                h[2..4].copy_from_slice(&field.to_be_bytes());
                h[4..8].copy_from_slice(&0x0000_abcd_u32.to_be_bytes());
            }
            ExtHeader::Ah { icv_words } => {
                h[1] = 1 + icv_words;
                h[4..8].copy_from_slice(&0x0000_0100_u32.to_be_bytes()); // SPI
                h[8..12].copy_from_slice(&1u32.to_be_bytes()); // sequence number
            }
        }
    }
}

/// Layer-3 part of a [`Frame`].
#[derive(Clone, Debug)]
enum L3 {
    V4 {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        options: usize,
        ihl: Option<u8>,
        total_length: Option<u16>,
        frag_offset: u16,
        more_fragments: bool,
    },
    V6 {
        src: Ipv6Addr,
        dst: Ipv6Addr,
        ext: Vec<ExtHeader>,
        payload_length: Option<u16>,
    },
}

/// Layer-4 part of a [`Frame`].
#[derive(Clone, Copy, Debug)]
enum L4 {
    Tcp { flags: u8 },
    Udp,
}

/// A frame under construction; every setter consumes and returns it. [`Frame::bytes`] renders.
#[derive(Clone, Debug)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlans: Vec<(u16, u16)>,
    ethertype: Option<u16>,
    l3: L3,
    l4: L4,
    protocol: Option<u8>,
    sport: u16,
    dport: u16,
    ttl: u8,
    payload: usize,
    truncate: Option<usize>,
    link_header: bool,
    version: Option<u8>,
}

impl Frame {
    fn new(l3: L3, l4: L4, dport: u16) -> Frame {
        Frame {
            src_mac: [0x02, 0, 0, 0, 0, 0x01],
            dst_mac: [0x02, 0, 0, 0, 0, 0x02],
            vlans: Vec::new(),
            ethertype: None,
            l3,
            l4,
            protocol: None,
            sport: DEFAULT_SPORT,
            dport,
            ttl: 64,
            payload: 0,
            truncate: None,
            link_header: true,
            version: None,
        }
    }

    fn v4(src: Ipv4Addr, dst: Ipv4Addr) -> L3 {
        L3::V4 {
            src,
            dst,
            options: 0,
            ihl: None,
            total_length: None,
            frag_offset: 0,
            more_fragments: false,
        }
    }

    fn v6(src: Ipv6Addr, dst: Ipv6Addr) -> L3 {
        L3::V6 {
            src,
            dst,
            ext: Vec::new(),
            payload_length: None,
        }
    }

    /// IPv4 TCP SYN from `src` to `dst:dport`.
    pub fn tcp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Frame {
        Frame::new(Frame::v4(src, dst), L4::Tcp { flags: TCP_SYN }, dport)
    }

    /// IPv4 UDP datagram from `src` to `dst:dport`.
    pub fn udp4(src: Ipv4Addr, dst: Ipv4Addr, dport: u16) -> Frame {
        Frame::new(Frame::v4(src, dst), L4::Udp, dport)
    }

    /// IPv6 TCP SYN from `src` to `dst:dport`.
    pub fn tcp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Frame {
        Frame::new(Frame::v6(src, dst), L4::Tcp { flags: TCP_SYN }, dport)
    }

    /// IPv6 UDP datagram from `src` to `dst:dport`.
    pub fn udp6(src: Ipv6Addr, dst: Ipv6Addr, dport: u16) -> Frame {
        Frame::new(Frame::v6(src, dst), L4::Udp, dport)
    }

    /// Source and destination MAC addresses.
    pub fn macs(mut self, src: [u8; 6], dst: [u8; 6]) -> Frame {
        self.src_mac = src;
        self.dst_mac = dst;
        self
    }

    /// Adds a VLAN tag with `tpid` (0x8100 or 0x88a8) and VLAN id `vid`; the first call gives
    /// the outermost tag.
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Frame {
        self.vlans.push((tpid, vid & 0x0fff));
        self
    }

    /// Overrides the EtherType after the tags (e.g. ARP's 0x0806 on an IP body).
    pub fn ethertype(mut self, ethertype: u16) -> Frame {
        self.ethertype = Some(ethertype);
        self
    }

    /// TCP/UDP source port.
    pub fn sport(mut self, port: u16) -> Frame {
        self.sport = port;
        self
    }

    /// TCP/UDP destination port.
    pub fn dport(mut self, port: u16) -> Frame {
        self.dport = port;
        self
    }

    /// TCP flags (default [`TCP_SYN`]); ignored for UDP.
    pub fn tcp_flags(mut self, flags: u8) -> Frame {
        if let L4::Tcp { flags: f } = &mut self.l4 {
            *f = flags;
        }
        self
    }

    /// Zero bytes of payload after the TCP/UDP header.
    pub fn payload(mut self, len: usize) -> Frame {
        self.payload = len;
        self
    }

    /// IPv4 TTL or IPv6 hop limit (default 64).
    pub fn ttl(mut self, ttl: u8) -> Frame {
        self.ttl = ttl;
        self
    }

    /// Overrides the protocol announced for the transport (IPv4 protocol field, or the last
    /// next-header of an IPv6 chain); the TCP/UDP bytes are still written.
    pub fn ip_protocol(mut self, protocol: u8) -> Frame {
        self.protocol = Some(protocol);
        self
    }

    /// `len` bytes of IPv4 options (NOPs), raising IHL to `5 + len / 4`.
    ///
    /// # Panics
    /// On an IPv6 frame, or if `len` is not a multiple of 4 up to 40.
    pub fn ipv4_options(mut self, len: usize) -> Frame {
        assert!(
            len.is_multiple_of(4) && len <= 40,
            "IPv4 options: {len} bytes"
        );
        match &mut self.l3 {
            L3::V4 { options, .. } => *options = len,
            L3::V6 { .. } => panic!("ipv4_options on an IPv6 frame"),
        }
        self
    }

    /// Overrides the IPv4 IHL field (4 bits) without changing what is written.
    ///
    /// # Panics
    /// On an IPv6 frame.
    pub fn ihl(mut self, value: u8) -> Frame {
        match &mut self.l3 {
            L3::V4 { ihl, .. } => *ihl = Some(value & 0x0f),
            L3::V6 { .. } => panic!("ihl on an IPv6 frame"),
        }
        self
    }

    /// Overrides the IPv4 total length field.
    ///
    /// # Panics
    /// On an IPv6 frame.
    pub fn total_length(mut self, value: u16) -> Frame {
        match &mut self.l3 {
            L3::V4 { total_length, .. } => *total_length = Some(value),
            L3::V6 { .. } => panic!("total_length on an IPv6 frame"),
        }
        self
    }

    /// Overrides the IPv6 payload length field.
    ///
    /// # Panics
    /// On an IPv4 frame.
    pub fn payload_length(mut self, value: u16) -> Frame {
        match &mut self.l3 {
            L3::V6 { payload_length, .. } => *payload_length = Some(value),
            L3::V4 { .. } => panic!("payload_length on an IPv4 frame"),
        }
        self
    }

    /// Marks the packet as a fragment: IPv4 sets the fragment offset (in 8-byte units) and MF
    /// flag; IPv6 appends an [`ExtHeader::Fragment`] to the extension chain. The transport
    /// header bytes are written either way.
    pub fn fragment(mut self, offset: u16, more: bool) -> Frame {
        match &mut self.l3 {
            L3::V4 {
                frag_offset,
                more_fragments,
                ..
            } => {
                *frag_offset = offset & 0x1fff;
                *more_fragments = more;
            }
            L3::V6 { ext, .. } => ext.push(ExtHeader::fragment(offset, more)),
        }
        self
    }

    /// Appends an IPv6 extension header to the chain (in call order).
    ///
    /// # Panics
    /// On an IPv4 frame.
    pub fn ext(mut self, header: ExtHeader) -> Frame {
        match &mut self.l3 {
            L3::V6 { ext, .. } => ext.push(header),
            L3::V4 { .. } => panic!("IPv6 extension header on an IPv4 frame"),
        }
        self
    }

    /// Renders without the Ethernet header (and tags): the frame starts at the IP header, as XDP
    /// sees it on an L3 device (tun, WireGuard).
    pub fn ip_first(mut self) -> Frame {
        self.link_header = false;
        self
    }

    /// Overrides the version nibble of the IP header without changing what is written.
    pub fn ip_version(mut self, version: u8) -> Frame {
        self.version = Some(version & 0x0f);
        self
    }

    /// Keeps only the first `len` bytes of the rendered frame.
    pub fn truncate(mut self, len: usize) -> Frame {
        self.truncate = Some(len);
        self
    }

    /// Offset of the IP header (after the Ethernet header and tags; 0 for [`Frame::ip_first`]).
    pub fn l3_offset(&self) -> usize {
        if self.link_header {
            ETH_HLEN + VLAN_HLEN * self.vlans.len()
        } else {
            0
        }
    }

    /// Offset of the TCP/UDP header (after IP options or the extension chain).
    pub fn l4_offset(&self) -> usize {
        self.l3_offset()
            + match &self.l3 {
                L3::V4 { options, .. } => IPV4_HLEN + options,
                L3::V6 { ext, .. } => IPV6_HLEN + ext.iter().map(ExtHeader::len).sum::<usize>(),
            }
    }

    /// Length of the transport header plus payload.
    fn l4_len(&self) -> usize {
        self.payload
            + match self.l4 {
                L4::Tcp { .. } => TCP_HLEN,
                L4::Udp => UDP_HLEN,
            }
    }

    /// Protocol number of the transport actually written.
    fn l4_protocol(&self) -> u8 {
        match self.l4 {
            L4::Tcp { .. } => IPPROTO_TCP,
            L4::Udp => IPPROTO_UDP,
        }
    }

    /// Renders the frame.
    pub fn bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.l4_offset() + self.l4_len());
        if self.link_header {
            out.extend_from_slice(&self.dst_mac);
            out.extend_from_slice(&self.src_mac);
            for &(tpid, vid) in &self.vlans {
                out.extend_from_slice(&tpid.to_be_bytes());
                out.extend_from_slice(&vid.to_be_bytes());
            }
            let inner = match self.l3 {
                L3::V4 { .. } => ETH_P_IP,
                L3::V6 { .. } => ETH_P_IPV6,
            };
            out.extend_from_slice(&self.ethertype.unwrap_or(inner).to_be_bytes());
        }
        let pseudo = match &self.l3 {
            L3::V4 { .. } => self.write_ipv4(&mut out),
            L3::V6 { .. } => self.write_ipv6(&mut out),
        };
        self.write_l4(pseudo, &mut out);
        if let Some(version) = self.version {
            let at = self.l3_offset();
            out[at] = (version << 4) | (out[at] & 0x0f);
        }
        if let Some(len) = self.truncate {
            out.truncate(len);
        }
        out
    }

    /// Writes the IPv4 header; returns the transport pseudo-header sum.
    fn write_ipv4(&self, out: &mut Vec<u8>) -> u32 {
        let L3::V4 {
            src,
            dst,
            options,
            ihl,
            total_length,
            frag_offset,
            more_fragments,
        } = self.l3
        else {
            unreachable!()
        };
        let start = out.len();
        let hlen = IPV4_HLEN + options;
        let ihl = ihl.unwrap_or((hlen / 4) as u8);
        let total = total_length.unwrap_or((hlen + self.l4_len()) as u16);
        let frag = (u16::from(more_fragments) << 13) | frag_offset;
        out.push(0x40 | ihl);
        out.push(0);
        out.extend_from_slice(&total.to_be_bytes());
        out.extend_from_slice(&0x1234u16.to_be_bytes());
        out.extend_from_slice(&frag.to_be_bytes());
        out.push(self.ttl);
        out.push(self.protocol.unwrap_or(self.l4_protocol()));
        out.extend_from_slice(&[0, 0]);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        out.resize(start + hlen, 1); // options: NOPs
        let csum = checksum(sum16(&out[start..start + hlen], 0));
        out[start + 10..start + 12].copy_from_slice(&csum.to_be_bytes());
        let mut pseudo = sum16(&src.octets(), 0);
        pseudo = sum16(&dst.octets(), pseudo);
        pseudo + u32::from(self.l4_protocol()) + self.l4_len() as u32
    }

    /// Writes the IPv6 header and extension chain; returns the transport pseudo-header sum.
    fn write_ipv6(&self, out: &mut Vec<u8>) -> u32 {
        let L3::V6 {
            src,
            dst,
            ext,
            payload_length,
        } = &self.l3
        else {
            unreachable!()
        };
        let ext_len: usize = ext.iter().map(ExtHeader::len).sum();
        let last = self.protocol.unwrap_or(self.l4_protocol());
        let first = ext.first().map_or(last, ExtHeader::protocol);
        out.extend_from_slice(&0x6000_0000u32.to_be_bytes());
        let plen = payload_length.unwrap_or((ext_len + self.l4_len()) as u16);
        out.extend_from_slice(&plen.to_be_bytes());
        out.push(first);
        out.push(self.ttl);
        out.extend_from_slice(&src.octets());
        out.extend_from_slice(&dst.octets());
        for (i, h) in ext.iter().enumerate() {
            let next = ext.get(i + 1).map_or(last, ExtHeader::protocol);
            h.write(next, out);
        }
        let mut pseudo = sum16(&src.octets(), 0);
        pseudo = sum16(&dst.octets(), pseudo);
        pseudo + u32::from(self.l4_protocol()) + self.l4_len() as u32
    }

    /// Writes the TCP or UDP header and payload, with its checksum over `pseudo`.
    fn write_l4(&self, pseudo: u32, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&self.sport.to_be_bytes());
        out.extend_from_slice(&self.dport.to_be_bytes());
        let csum_at = match self.l4 {
            L4::Tcp { flags } => {
                out.extend_from_slice(&1u32.to_be_bytes()); // sequence number
                out.extend_from_slice(&0u32.to_be_bytes()); // acknowledgment number
                out.push((TCP_HLEN as u8 / 4) << 4);
                out.push(flags);
                out.extend_from_slice(&64_240u16.to_be_bytes()); // window
                out.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent pointer
                start + 16
            }
            L4::Udp => {
                out.extend_from_slice(&(self.l4_len() as u16).to_be_bytes());
                out.extend_from_slice(&[0, 0]);
                start + 6
            }
        };
        out.resize(start + self.l4_len(), 0);
        let mut csum = checksum(sum16(&out[start..], pseudo));
        if csum == 0 && matches!(self.l4, L4::Udp) {
            csum = 0xffff;
        }
        out[csum_at..csum_at + 2].copy_from_slice(&csum.to_be_bytes());
    }
}

/// Adds `data` as big-endian 16-bit words (odd tail padded with zero) to `acc`.
fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for pair in data.chunks(2) {
        let hi = u32::from(pair[0]) << 8;
        acc += hi | pair.get(1).map_or(0, |&b| u32::from(b));
    }
    acc
}

/// Folds a one's-complement sum and complements it.
fn checksum(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
    const DST4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

    fn src6() -> Ipv6Addr {
        "fd00:afde::2".parse().unwrap()
    }
    fn dst6() -> Ipv6Addr {
        "fd00:afde::1".parse().unwrap()
    }
    fn be16(b: &[u8], at: usize) -> u16 {
        u16::from_be_bytes([b[at], b[at + 1]])
    }

    #[test]
    fn plain_tcp4_syn_layout() {
        let f = Frame::tcp4(SRC4, DST4, 6443);
        let b = f.bytes();
        assert_eq!(b.len(), 54);
        assert_eq!(&b[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&b[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(be16(&b, 12), ETH_P_IP);
        assert_eq!(b[14], 0x45);
        assert_eq!(be16(&b, 16), 40); // total length
        assert_eq!(be16(&b, 20), 0); // no fragment bits
        assert_eq!(b[22], 64); // ttl
        assert_eq!(b[23], IPPROTO_TCP);
        assert_eq!(&b[26..30], &SRC4.octets());
        assert_eq!(&b[30..34], &DST4.octets());
        assert_eq!(f.l4_offset(), 34);
        assert_eq!(be16(&b, 34), DEFAULT_SPORT);
        assert_eq!(be16(&b, 36), 6443);
        assert_eq!(b[46], 0x50); // data offset 5
        assert_eq!(b[47], TCP_SYN);
        // Checksums verify: header sums to 0xffff, TCP with its pseudo-header too.
        assert_eq!(checksum(sum16(&b[14..34], 0)), 0);
        let pseudo = sum16(&b[26..34], 0) + u32::from(IPPROTO_TCP) + 20;
        assert_eq!(checksum(sum16(&b[34..], pseudo)), 0);
    }

    #[test]
    fn vlan_tags_shift_everything_by_four_each() {
        let f = Frame::tcp4(SRC4, DST4, 443)
            .vlan(ETH_P_8021AD, 100)
            .vlan(ETH_P_8021Q, 10);
        let b = f.bytes();
        assert_eq!(b.len(), 62);
        assert_eq!(be16(&b, 12), ETH_P_8021AD);
        assert_eq!(be16(&b, 14), 100);
        assert_eq!(be16(&b, 16), ETH_P_8021Q);
        assert_eq!(be16(&b, 18), 10);
        assert_eq!(be16(&b, 20), ETH_P_IP);
        assert_eq!(f.l3_offset(), 22);
        assert_eq!(b[22], 0x45);
        assert_eq!(be16(&b, 22 + 20 + 2), 443);
    }

    #[test]
    fn ip_first_frames_are_the_ethernet_frame_without_its_header() {
        let full = Frame::tcp4(SRC4, DST4, 6443).vlan(ETH_P_8021Q, 10).bytes();
        let f = Frame::tcp4(SRC4, DST4, 6443)
            .vlan(ETH_P_8021Q, 10)
            .ip_first();
        assert_eq!(f.l3_offset(), 0);
        assert_eq!(f.l4_offset(), 20);
        assert_eq!(f.bytes(), full[18..]);
        let v6 = Frame::tcp6(src6(), dst6(), 443).ip_first().bytes();
        assert_eq!(v6.len(), 40 + 20);
        assert_eq!(v6[0] >> 4, 6);
        assert_eq!(be16(&v6, 40 + 2), 443);
        let cut = Frame::tcp4(SRC4, DST4, 6443)
            .ip_first()
            .truncate(14)
            .bytes();
        assert_eq!(cut, full[18..32]);
    }

    #[test]
    fn the_version_nibble_can_be_overridden() {
        let b = Frame::tcp4(SRC4, DST4, 6443).ip_version(5).bytes();
        assert_eq!(b[14], 0x55);
        let b = Frame::tcp6(src6(), dst6(), 6443)
            .ip_first()
            .ip_version(0)
            .bytes();
        assert_eq!(b[0], 0x00);
    }

    #[test]
    fn ipv4_options_raise_ihl_and_move_ports() {
        let f = Frame::tcp4(SRC4, DST4, 6443).ipv4_options(8);
        let b = f.bytes();
        assert_eq!(b.len(), 14 + 28 + 20);
        assert_eq!(b[14], 0x47);
        assert_eq!(be16(&b, 16), 48);
        assert_eq!(&b[34..42], &[1; 8]);
        assert_eq!(f.l4_offset(), 42);
        assert_eq!(be16(&b, 44), 6443);
        assert_eq!(checksum(sum16(&b[14..42], 0)), 0);
    }

    #[test]
    fn ipv4_fragment_fields() {
        let b = Frame::tcp4(SRC4, DST4, 6443).fragment(0, true).bytes();
        assert_eq!(be16(&b, 20), 0x2000);
        let b = Frame::tcp4(SRC4, DST4, 6443).fragment(185, false).bytes();
        assert_eq!(be16(&b, 20), 185);
        let b = Frame::tcp4(SRC4, DST4, 6443).fragment(0x1fff, true).bytes();
        assert_eq!(be16(&b, 20), 0x3fff);
    }

    #[test]
    fn malformed_ipv4_overrides_and_truncation() {
        let b = Frame::tcp4(SRC4, DST4, 6443)
            .ihl(4)
            .total_length(1500)
            .bytes();
        assert_eq!(b[14], 0x44);
        assert_eq!(be16(&b, 16), 1500);
        assert_eq!(b.len(), 54);
        let b = Frame::tcp4(SRC4, DST4, 6443).ihl(15).bytes();
        assert_eq!(b[14], 0x4f);
        let b = Frame::tcp4(SRC4, DST4, 6443).truncate(36).bytes();
        assert_eq!(b.len(), 36);
        assert_eq!(be16(&b, 34), DEFAULT_SPORT);
        let b = Frame::tcp4(SRC4, DST4, 6443).truncate(1000).bytes();
        assert_eq!(b.len(), 54);
    }

    #[test]
    fn udp4_and_payload() {
        let f = Frame::udp4(SRC4, DST4, 6443).sport(53).payload(10);
        let b = f.bytes();
        assert_eq!(b.len(), 14 + 20 + 8 + 10);
        assert_eq!(b[23], IPPROTO_UDP);
        assert_eq!(be16(&b, 16), 38);
        assert_eq!(be16(&b, 34), 53);
        assert_eq!(be16(&b, 36), 6443);
        assert_eq!(be16(&b, 38), 18);
        let pseudo = sum16(&b[26..34], 0) + u32::from(IPPROTO_UDP) + 18;
        assert_eq!(checksum(sum16(&b[34..], pseudo)), 0);
    }

    #[test]
    fn tcp_flags_protocol_and_ethertype_overrides() {
        let b = Frame::tcp4(SRC4, DST4, 6443)
            .tcp_flags(TCP_ACK)
            .ip_protocol(1)
            .ethertype(0x0806)
            .ttl(1)
            .bytes();
        assert_eq!(be16(&b, 12), 0x0806);
        assert_eq!(b[22], 1);
        assert_eq!(b[23], 1);
        assert_eq!(b[47], TCP_ACK);
    }

    #[test]
    fn plain_tcp6_syn_layout() {
        let f = Frame::tcp6(src6(), dst6(), 6443);
        let b = f.bytes();
        assert_eq!(b.len(), 14 + 40 + 20);
        assert_eq!(be16(&b, 12), ETH_P_IPV6);
        assert_eq!(b[14] >> 4, 6);
        assert_eq!(be16(&b, 18), 20); // payload length
        assert_eq!(b[20], IPPROTO_TCP);
        assert_eq!(b[21], 64);
        assert_eq!(&b[22..38], &src6().octets());
        assert_eq!(&b[38..54], &dst6().octets());
        assert_eq!(f.l4_offset(), 54);
        assert_eq!(be16(&b, 56), 6443);
        assert_eq!(b[67], TCP_SYN);
        let mut pseudo = sum16(&b[22..54], 0);
        pseudo += u32::from(IPPROTO_TCP) + 20;
        assert_eq!(checksum(sum16(&b[54..], pseudo)), 0);
    }

    #[test]
    fn ipv6_extension_chain() {
        let f = Frame::tcp6(src6(), dst6(), 6443)
            .vlan(ETH_P_8021Q, 7)
            .ext(ExtHeader::hop_by_hop())
            .ext(ExtHeader::Routing { ext_len: 1 })
            .ext(ExtHeader::dest_opts())
            .fragment(0, true)
            .ext(ExtHeader::ah());
        let b = f.bytes();
        let ip = 18;
        assert_eq!(f.l3_offset(), ip);
        let ext_total = 8 + 16 + 8 + 8 + 24;
        assert_eq!(be16(&b, ip + 4), (ext_total + 20) as u16);
        assert_eq!(b[ip + 6], 0); // -> hop-by-hop
        let hbh = ip + 40;
        assert_eq!(&b[hbh..hbh + 4], &[43, 0, 1, 4]);
        let rt = hbh + 8;
        assert_eq!(&b[rt..rt + 4], &[60, 1, 253, 0]);
        let dst = rt + 16;
        assert_eq!(&b[dst..dst + 4], &[44, 0, 1, 4]);
        let frag = dst + 8;
        assert_eq!(b[frag], 51);
        assert_eq!(be16(&b, frag + 2), 1); // offset 0, M set
        let ah = frag + 8;
        assert_eq!(b[ah], IPPROTO_TCP);
        assert_eq!(b[ah + 1], 4); // (24 / 4) - 2
        assert_eq!(f.l4_offset(), ah + 24);
        assert_eq!(be16(&b, ah + 24 + 2), 6443);
        assert_eq!(b.len(), ah + 24 + 20);
    }

    #[test]
    fn ipv6_fragment_offset_and_overrides() {
        let b = Frame::udp6(src6(), dst6(), 6443)
            .fragment(100, false)
            .payload_length(9999)
            .ip_protocol(IPPROTO_NONE)
            .bytes();
        assert_eq!(be16(&b, 18), 9999);
        assert_eq!(b[20], 44);
        assert_eq!(b[54], IPPROTO_NONE);
        assert_eq!(be16(&b, 56), 100 << 3);
        assert_eq!(be16(&b, 62 + 2), 6443);
    }

    #[test]
    fn ext_header_lengths() {
        assert_eq!(ExtHeader::HopByHop { ext_len: 2 }.len(), 24);
        assert_eq!(ExtHeader::Ah { icv_words: 1 }.len(), 16);
        assert_eq!(ExtHeader::fragment(1, false).len(), 8);
        let mut v = Vec::new();
        ExtHeader::DestOpts { ext_len: 1 }.write(6, &mut v);
        assert_eq!(v.len(), 16);
        assert_eq!(&v[..4], &[6, 1, 1, 12]);
    }

    #[test]
    #[should_panic(expected = "IPv6 extension header on an IPv4 frame")]
    fn ext_on_ipv4_panics() {
        let _ = Frame::tcp4(SRC4, DST4, 1).ext(ExtHeader::ah());
    }
}
