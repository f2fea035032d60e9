//! Which instance of the program fits an interface. XDP hands the program the frame from the
//! device's link-layer header on: an Ethernet header on Ethernet devices, nothing on L3 devices
//! (tun, WireGuard, IPIP/SIT/ip6tnl), whose frames start at the IP header. The program is loaded
//! once per framing with the load-time constant `filter_common::GLOBAL_FRAMING` set, both
//! instances sharing the pinned maps; an interface gets the instance of its link type
//! (`ARPHRD_*`, as rtnetlink reports it), and a link type neither parses is refused.
//!
//! Only link types whose frames were seen starting where the instance expects are accepted:
//! in skb (generic) mode XDP starts the frame at the skb's MAC header, which each tunnel
//! driver sets itself. SIT sets it to the outer IPv4 header and GRE (`ARPHRD_IPGRE`) to the
//! outer header too, so the IP-first parser would judge the tunnel peer's packet, not the
//! client's. IPIP (`ARPHRD_TUNNEL`) leaves it where the underlay put it on some kernels: on
//! Debian's 5.10 (5.10.262) `cargo xtask vm-test` saw every packet of an IPIP tunnel counted as
//! unprotected, so a refused source got through. All of these are refused, as are ip6tnl and
//! anything else not tested here; tun and WireGuard (`ARPHRD_NONE`) are accepted.

/// Where the frames of an interface start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// At an Ethernet header (then up to two VLAN tags).
    Ethernet,
    /// At the IP header: IPv4 or IPv6, as the version nibble says.
    Ip,
}

/// `ARPHRD_ETHER`: Ethernet, and everything that looks like it (veth, bond, bridge, VLAN, VXLAN,
/// Geneve, tap, macvlan, ...).
pub const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_TUNNEL`: IPIP (`tunl0`, `ip link add ... type ipip`); refused (on 5.10 its frames do
/// not start at the inner IP header).
pub const ARPHRD_TUNNEL: u16 = 768;
/// `ARPHRD_TUNNEL6`: ip6tnl (IPv4 or IPv6 in IPv6); refused (not tested).
pub const ARPHRD_TUNNEL6: u16 = 769;
/// `ARPHRD_LOOPBACK`: `lo`, whose frames carry an Ethernet header.
pub const ARPHRD_LOOPBACK: u16 = 772;
/// `ARPHRD_SIT`: SIT (IPv6 in IPv4, `sit0`); refused (its frames start at the outer header).
pub const ARPHRD_SIT: u16 = 776;
/// `ARPHRD_NONE`: no link-layer header at all (tun in `IFF_TUN` mode, WireGuard, xfrm).
pub const ARPHRD_NONE: u16 = 65534;

impl Framing {
    /// Every framing, each one program instance.
    pub const ALL: [Framing; 2] = [Framing::Ethernet, Framing::Ip];

    /// The framing of a device of link type `hardware_type` (`ARPHRD_*`), or `None` when the
    /// program can't be trusted to parse its frames (SIT, GRE and, on 5.10, IPIP, whose
    /// generic-XDP frames do not start at the inner IP header; ip6tnl, PPP, InfiniBand, ...:
    /// not tested).
    pub fn of_link_type(hardware_type: u16) -> Option<Framing> {
        match hardware_type {
            ARPHRD_ETHER | ARPHRD_LOOPBACK => Some(Framing::Ethernet),
            ARPHRD_NONE => Some(Framing::Ip),
            _ => None,
        }
    }

    /// The value of the program's `FRAMING` constant (`filter_common::GLOBAL_FRAMING`).
    pub fn global(self) -> u32 {
        match self {
            Framing::Ethernet => filter_common::FRAMING_ETHERNET,
            Framing::Ip => filter_common::FRAMING_IP,
        }
    }

    /// The name shown to operators.
    pub fn name(self) -> &'static str {
        match self {
            Framing::Ethernet => "ethernet",
            Framing::Ip => "ip",
        }
    }
}

/// The kernel's name for link type `hardware_type`, for messages (`ARPHRD_IPGRE (778)`).
pub fn link_type_name(hardware_type: u16) -> String {
    let name = match hardware_type {
        ARPHRD_ETHER => "ARPHRD_ETHER",
        ARPHRD_TUNNEL => "ARPHRD_TUNNEL",
        ARPHRD_TUNNEL6 => "ARPHRD_TUNNEL6",
        ARPHRD_LOOPBACK => "ARPHRD_LOOPBACK",
        ARPHRD_SIT => "ARPHRD_SIT",
        ARPHRD_NONE => "ARPHRD_NONE",
        32 => "ARPHRD_INFINIBAND",
        512 => "ARPHRD_PPP",
        778 => "ARPHRD_IPGRE",
        823 => "ARPHRD_IP6GRE",
        _ => return format!("link type {hardware_type}"),
    };
    format!("{name} ({hardware_type})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ethernet_like_and_ip_first_link_types_get_their_instance_and_others_none() {
        assert_eq!(Framing::of_link_type(ARPHRD_ETHER), Some(Framing::Ethernet));
        assert_eq!(
            Framing::of_link_type(ARPHRD_LOOPBACK),
            Some(Framing::Ethernet)
        );
        assert_eq!(Framing::of_link_type(ARPHRD_NONE), Some(Framing::Ip));
        for refused in [
            ARPHRD_TUNNEL,
            ARPHRD_SIT,
            ARPHRD_TUNNEL6,
            778,
            823,
            512,
            32,
            0,
        ] {
            assert_eq!(Framing::of_link_type(refused), None, "{refused}");
        }
    }

    #[test]
    fn the_globals_are_the_programs_constants() {
        assert_eq!(Framing::Ethernet.global(), filter_common::FRAMING_ETHERNET);
        assert_eq!(Framing::Ip.global(), filter_common::FRAMING_IP);
        assert_ne!(Framing::Ethernet.global(), Framing::Ip.global());
    }

    #[test]
    fn link_types_are_named_with_their_number() {
        assert_eq!(link_type_name(778), "ARPHRD_IPGRE (778)");
        assert_eq!(link_type_name(65534), "ARPHRD_NONE (65534)");
        assert_eq!(link_type_name(4242), "link type 4242");
    }
}
