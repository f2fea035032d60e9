//! The bypass report's rule, as pure data: which interfaces of a namespace could deliver traffic
//! to the protected ports without passing the filter. The kernel layer reads the interfaces
//! ([`Interface`]); [`assess`] decides.
//!
//! The rule (the README's "Where to attach" explains it for operators):
//! - Only interfaces that are administratively up and not loopback are considered.
//! - Linux follows the weak host model: a packet addressed to any of the namespace's addresses
//!   is accepted on any interface that does IP, whether or not that interface has an address
//!   itself. So every up interface that does IP is a way in, addressed or not.
//! - An interface enslaved to a bond, bridge or team does no IP itself: its frames go up
//!   through its master. It is covered when it or its master is filtered.
//! - A device stacked on a lower device that receives the frames first (VLAN, macvlan, ipvlan)
//!   is covered when it or that lower device is filtered: XDP on the lower device sees the
//!   frames, VLAN tags included (the program walks up to two tags).
//! - A bond or bridge is covered when it is filtered, or when it has ports and every one of
//!   them is covered (all its traffic enters through them).
//! - A tunnel or overlay (VXLAN, Geneve, WireGuard, IPIP/SIT, GRE, xfrm/VTI, tun) hands the
//!   decapsulated packet to the IP layer on the tunnel device itself: the underlay's filter
//!   saw only the outer header (the tunnel peer's address). It is covered only when it is
//!   filtered itself.
//! - A dummy device receives nothing from outside, so it cannot deliver.

use std::net::IpAddr;

use serde::Serialize;

/// What kind of interface this is, as the kernel reports it (`IFLA_INFO_KIND`, else the
/// hardware type).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkKind {
    /// A NIC (no rtnetlink kind, Ethernet hardware type).
    Physical,
    /// A bond (or team) of ports.
    Bond,
    /// An 802.1Q/802.1ad VLAN on a lower device.
    Vlan,
    /// A bridge.
    Bridge,
    /// A VXLAN overlay device.
    Vxlan,
    /// A Geneve overlay device.
    Geneve,
    /// A WireGuard device.
    Wireguard,
    /// IPIP, SIT or ip6tnl: IP in IP.
    Ipip,
    /// GRE in any of its variants (gre, gretap, ip6gre, erspan).
    Gre,
    /// A tun or tap device (a userspace program writes packets into it).
    Tun,
    /// One end of a veth pair.
    Veth,
    /// Anything else; the kernel's name for it.
    Other(String),
}

impl LinkKind {
    /// The kind from the kernel's `IFLA_INFO_KIND` (if any) and the `ARPHRD_*` hardware type.
    pub fn from_kernel(info_kind: Option<&str>, hardware_type: u16) -> LinkKind {
        match info_kind {
            Some("bond" | "team") => LinkKind::Bond,
            Some("vlan") => LinkKind::Vlan,
            Some("bridge") => LinkKind::Bridge,
            Some("vxlan") => LinkKind::Vxlan,
            Some("geneve") => LinkKind::Geneve,
            Some("wireguard") => LinkKind::Wireguard,
            Some("ipip" | "sit" | "ip6tnl") => LinkKind::Ipip,
            Some("gre" | "gretap" | "ip6gre" | "ip6gretap" | "erspan" | "ip6erspan") => {
                LinkKind::Gre
            }
            Some("tun") => LinkKind::Tun,
            Some("veth") => LinkKind::Veth,
            Some(other) => LinkKind::Other(other.to_string()),
            // ARPHRD_ETHER without a software kind is a NIC's driver.
            None if hardware_type == ARPHRD_ETHER => LinkKind::Physical,
            None if hardware_type == ARPHRD_TUNNEL || hardware_type == ARPHRD_TUNNEL6 => {
                LinkKind::Ipip
            }
            None if hardware_type == ARPHRD_IPGRE => LinkKind::Gre,
            None => LinkKind::Other(format!("hardware type {hardware_type}")),
        }
    }

    /// The name shown to operators.
    pub fn name(&self) -> &str {
        match self {
            LinkKind::Physical => "physical",
            LinkKind::Bond => "bond",
            LinkKind::Vlan => "vlan",
            LinkKind::Bridge => "bridge",
            LinkKind::Vxlan => "vxlan",
            LinkKind::Geneve => "geneve",
            LinkKind::Wireguard => "wireguard",
            LinkKind::Ipip => "ipip",
            LinkKind::Gre => "gre",
            LinkKind::Tun => "tun",
            LinkKind::Veth => "veth",
            LinkKind::Other(name) => name,
        }
    }

    /// Whether packets reach the IP layer on this device after decapsulation (or from a
    /// userspace program), never through a lower device's receive path.
    pub fn decapsulates(&self) -> bool {
        match self {
            LinkKind::Vxlan
            | LinkKind::Geneve
            | LinkKind::Wireguard
            | LinkKind::Ipip
            | LinkKind::Gre
            | LinkKind::Tun => true,
            LinkKind::Other(name) => matches!(name.as_str(), "xfrm" | "vti" | "vti6"),
            _ => false,
        }
    }

    /// Whether frames reach this device through its lower device's receive path first.
    fn stacked(&self) -> bool {
        match self {
            LinkKind::Vlan => true,
            LinkKind::Other(name) => matches!(name.as_str(), "macvlan" | "macvtap" | "ipvlan"),
            _ => false,
        }
    }
}

/// Serialized as its [`LinkKind::name`].
impl Serialize for LinkKind {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.name())
    }
}

/// `ARPHRD_ETHER`.
const ARPHRD_ETHER: u16 = 1;
/// `ARPHRD_TUNNEL` (IPIP).
const ARPHRD_TUNNEL: u16 = 768;
/// `ARPHRD_TUNNEL6`.
const ARPHRD_TUNNEL6: u16 = 769;
/// `ARPHRD_IPGRE`.
const ARPHRD_IPGRE: u16 = 778;

/// One interface of the namespace, as the kernel layer read it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Interface {
    /// Its name.
    pub name: String,
    /// Its index.
    pub index: u32,
    /// Its kind.
    pub kind: LinkKind,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The loopback device.
    pub loopback: bool,
    /// The bond, bridge or team it is enslaved to (`IFLA_MASTER`).
    pub master: Option<u32>,
    /// The device it is stacked on (`IFLA_LINK`), in this namespace, when not itself.
    pub lower: Option<u32>,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// Whether apifence's attachment filters it now (a live link on its current index).
    pub filtered: bool,
    /// Why apifence can't be attached to it, if it can't: a link type whose frames the
    /// program does not parse (named by the kernel layer, e.g. `ARPHRD_SIT (776)`).
    pub unparsable: Option<String>,
}

/// What the report says about one up, non-loopback interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Assessment {
    /// The interface.
    pub name: String,
    /// Its kind.
    pub kind: LinkKind,
    /// Its addresses.
    pub addresses: Vec<IpAddr>,
    /// apifence is attached to it and the attachment is live.
    pub filtered: bool,
    /// Traffic arriving on it passes a filter (its own, or one it goes through first).
    pub covered: bool,
    /// It could deliver traffic to the protected ports that no filter saw.
    pub bypass: bool,
    /// Why, in one sentence, with the fix when it is a bypass.
    pub reason: String,
    /// apifence can be attached to it (its link type is one the program parses).
    pub attachable: bool,
}

/// Assesses every up, non-loopback interface of `interfaces` by the module's rule.
pub fn assess(interfaces: &[Interface]) -> Vec<Assessment> {
    let by_index = |index: u32| interfaces.iter().find(|i| i.index == index);
    let ports = |master: &Interface| -> Vec<&Interface> {
        interfaces
            .iter()
            .filter(|i| i.master == Some(master.index))
            .collect()
    };
    interfaces
        .iter()
        .filter(|i| i.up && !i.loopback)
        .map(|interface| {
            let kind = interface.kind.name();
            let attach = match &interface.unparsable {
                None => format!(
                    "attach to it (`apifence attach {}`) or take it down if nothing should \
                     arrive there",
                    interface.name
                ),
                Some(why) => format!(
                    "apifence can't be attached to it ({why}): restrict what reaches it (the \
                     tunnel's peers) or take it down if nothing should arrive there"
                ),
            };
            let (covered, bypass, reason) = if interface.filtered {
                (true, false, "apifence is attached (live)".to_string())
            } else if let Some(master) = interface.master.and_then(by_index) {
                if master.filtered {
                    (
                        true,
                        false,
                        format!("port of {}, which apifence filters", master.name),
                    )
                } else {
                    (
                        false,
                        false,
                        format!(
                            "port of {}: its traffic is delivered there, so it is reported there",
                            master.name
                        ),
                    )
                }
            } else if interface.kind == LinkKind::Tun {
                (
                    false,
                    true,
                    format!(
                        "tun device: packets a userspace program writes into it (a VPN, say) \
                         reach the IP layer here without passing any other interface; {attach}"
                    ),
                )
            } else if interface.kind.decapsulates() {
                (
                    false,
                    true,
                    format!(
                        "{kind} device: decapsulated packets reach the IP layer here, and a filter \
                         on the underlay saw only the outer header; {attach}"
                    ),
                )
            } else if interface.kind == LinkKind::Other("dummy".into()) {
                (
                    false,
                    false,
                    "dummy device: receives nothing from outside".to_string(),
                )
            } else if let Some(lower) = interface
                .lower
                .filter(|_| interface.kind.stacked())
                .and_then(by_index)
                .filter(|lower| lower.filtered)
            {
                (
                    true,
                    false,
                    format!(
                        "{kind} on {}, which apifence filters (it sees these frames first)",
                        lower.name
                    ),
                )
            } else if matches!(interface.kind, LinkKind::Bond | LinkKind::Bridge)
                && !ports(interface).is_empty()
                && ports(interface).iter().all(|p| p.filtered)
            {
                (
                    true,
                    false,
                    format!(
                        "every port of this {kind} is filtered ({})",
                        ports(interface)
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            } else {
                let addressed = if interface.addresses.is_empty() {
                    "it has no address, but Linux accepts packets for any local address on any \
                     interface"
                } else {
                    "it has an address, and Linux accepts packets for any local address on any \
                     interface"
                };
                (
                    false,
                    true,
                    format!("{kind} device, up and unfiltered: {addressed}; {attach}"),
                )
            };
            Assessment {
                name: interface.name.clone(),
                kind: interface.kind.clone(),
                addresses: interface.addresses.clone(),
                filtered: interface.filtered,
                covered,
                bypass,
                reason,
                attachable: interface.unparsable.is_none(),
            }
        })
        .collect()
}

/// The interfaces of an assessment that could deliver unfiltered traffic.
pub fn bypasses(assessments: &[Assessment]) -> Vec<&Assessment> {
    assessments.iter().filter(|a| a.bypass).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interface(name: &str, index: u32, kind: LinkKind) -> Interface {
        Interface {
            name: name.into(),
            index,
            kind,
            up: true,
            loopback: false,
            master: None,
            lower: None,
            addresses: vec![],
            filtered: false,
            unparsable: None,
        }
    }

    fn find<'a>(assessed: &'a [Assessment], name: &str) -> &'a Assessment {
        assessed.iter().find(|a| a.name == name).expect(name)
    }

    #[test]
    fn an_unparsable_tunnel_is_a_bypass_whose_fix_is_not_attach() {
        let mut sit = interface("sit1", 7, LinkKind::Ipip);
        sit.unparsable = Some("link type ARPHRD_SIT (776)".into());
        let ipip = interface("tunl0", 8, LinkKind::Ipip);
        let assessed = assess(&[sit, ipip]);
        let sit = find(&assessed, "sit1");
        assert!(sit.bypass);
        assert!(
            sit.reason
                .contains("can't be attached to it (link type ARPHRD_SIT (776))")
        );
        assert!(!sit.reason.contains("apifence attach"), "{}", sit.reason);
        assert!(!sit.attachable);
        let ipip = find(&assessed, "tunl0");
        assert!(ipip.bypass && ipip.reason.contains("apifence attach tunl0"));
        assert!(ipip.attachable);
    }

    #[test]
    fn kinds_come_from_the_kernel_kind_then_the_hardware_type() {
        assert_eq!(LinkKind::from_kernel(None, 1), LinkKind::Physical);
        assert_eq!(LinkKind::from_kernel(Some("vxlan"), 1), LinkKind::Vxlan);
        assert_eq!(LinkKind::from_kernel(Some("tun"), 65534), LinkKind::Tun);
        assert_eq!(LinkKind::from_kernel(Some("sit"), 776), LinkKind::Ipip);
        assert_eq!(LinkKind::from_kernel(Some("gretap"), 1), LinkKind::Gre);
        assert_eq!(LinkKind::from_kernel(None, 768), LinkKind::Ipip);
        assert_eq!(LinkKind::from_kernel(None, 778), LinkKind::Gre);
        assert_eq!(
            LinkKind::from_kernel(Some("macvlan"), 1),
            LinkKind::Other("macvlan".into())
        );
        assert_eq!(
            LinkKind::from_kernel(None, 65534).name(),
            "hardware type 65534"
        );
    }

    #[test]
    fn down_and_loopback_interfaces_are_not_listed() {
        let mut lo = interface("lo", 1, LinkKind::Other("loopback".into()));
        lo.loopback = true;
        let mut down = interface("eth1", 3, LinkKind::Physical);
        down.up = false;
        let assessed = assess(&[lo, down, interface("eth0", 2, LinkKind::Physical)]);
        assert_eq!(assessed.len(), 1);
        assert_eq!(assessed[0].name, "eth0");
    }

    #[test]
    fn an_unfiltered_interface_is_a_bypass_with_or_without_an_address() {
        let mut addressed = interface("eth0", 2, LinkKind::Physical);
        addressed.addresses = vec!["10.0.0.1".parse().unwrap()];
        let bare = interface("eth1", 3, LinkKind::Veth);
        let assessed = assess(&[addressed, bare]);
        for name in ["eth0", "eth1"] {
            let a = find(&assessed, name);
            assert!(a.bypass && !a.covered, "{a:?}");
            assert!(
                a.reason.contains(&format!("apifence attach {name}")),
                "{a:?}"
            );
        }
        assert!(find(&assessed, "eth1").reason.contains("no address"));
    }

    #[test]
    fn a_filtered_interface_is_covered() {
        let mut eth0 = interface("eth0", 2, LinkKind::Physical);
        eth0.filtered = true;
        let a = &assess(&[eth0])[0];
        assert!(a.filtered && a.covered && !a.bypass, "{a:?}");
    }

    #[test]
    fn tunnels_are_bypasses_even_when_their_underlay_is_filtered() {
        let mut eth0 = interface("eth0", 2, LinkKind::Physical);
        eth0.filtered = true;
        let mut vxlan = interface("vxlan42", 3, LinkKind::Vxlan);
        vxlan.lower = Some(2);
        let tun = interface("tun0", 4, LinkKind::Tun);
        let assessed = assess(&[eth0, vxlan, tun]);
        for name in ["vxlan42", "tun0"] {
            let a = find(&assessed, name);
            assert!(a.bypass && !a.covered, "{a:?}");
        }
        assert!(find(&assessed, "vxlan42").reason.contains("decapsulated"));
        assert!(find(&assessed, "tun0").reason.contains("userspace program"));
        let mut filtered_tunnel = interface("wg0", 5, LinkKind::Wireguard);
        filtered_tunnel.filtered = true;
        assert!(!assess(&[filtered_tunnel])[0].bypass);
    }

    #[test]
    fn a_vlan_is_covered_by_its_filtered_lower_device_and_a_bypass_otherwise() {
        let mut eth0 = interface("eth0", 2, LinkKind::Physical);
        let mut vlan = interface("eth0.10", 3, LinkKind::Vlan);
        vlan.lower = Some(2);
        let assessed = assess(&[eth0.clone(), vlan.clone()]);
        assert!(find(&assessed, "eth0.10").bypass);
        eth0.filtered = true;
        let assessed = assess(&[eth0, vlan]);
        let a = find(&assessed, "eth0.10");
        assert!(a.covered && !a.bypass, "{a:?}");
        assert!(a.reason.contains("eth0"), "{a:?}");
    }

    #[test]
    fn bond_ports_report_through_their_master_and_a_bond_is_covered_by_all_its_ports() {
        let bond = interface("bond0", 2, LinkKind::Bond);
        let mut p1 = interface("eth0", 3, LinkKind::Physical);
        p1.master = Some(2);
        let mut p2 = interface("eth1", 4, LinkKind::Physical);
        p2.master = Some(2);
        let assessed = assess(&[bond.clone(), p1.clone(), p2.clone()]);
        assert!(find(&assessed, "bond0").bypass);
        assert!(!find(&assessed, "eth0").bypass && !find(&assessed, "eth0").covered);
        p1.filtered = true;
        let assessed = assess(&[bond.clone(), p1.clone(), p2.clone()]);
        assert!(find(&assessed, "bond0").bypass, "one port is not filtered");
        p2.filtered = true;
        let assessed = assess(&[bond.clone(), p1.clone(), p2.clone()]);
        assert!(find(&assessed, "bond0").covered && !find(&assessed, "bond0").bypass);
        let mut filtered_bond = bond;
        filtered_bond.filtered = true;
        p1.filtered = false;
        p2.filtered = false;
        let assessed = assess(&[filtered_bond, p1, p2]);
        assert!(find(&assessed, "eth0").covered && find(&assessed, "eth1").covered);
        assert!(bypasses(&assessed).is_empty());
    }

    #[test]
    fn a_dummy_device_cannot_deliver() {
        let a = &assess(&[interface("dummy0", 2, LinkKind::Other("dummy".into()))])[0];
        assert!(!a.bypass && !a.covered, "{a:?}");
    }
}
