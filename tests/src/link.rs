//! Veth pairs between namespaces, extra addresses and routes.
//!
//! Links are created directly inside their namespaces (`ip -n A link add ... netns B`), so
//! interface names only need to be unique within the namespaces involved.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use crate::netns::Netns;

/// How long [`VethPair::create`] waits for both ends to report carrier.
const CARRIER_TIMEOUT: Duration = Duration::from_secs(5);

/// One end of a veth pair: its interface name and its IPv4 and IPv6 addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    /// Interface name inside its namespace (at most 15 bytes).
    pub ifname: String,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv4 prefix length of the link's subnet.
    pub v4_prefix: u8,
    /// IPv6 address (added with `nodad`, usable at once).
    pub v6: Ipv6Addr,
    /// IPv6 prefix length of the link's subnet.
    pub v6_prefix: u8,
}

impl Endpoint {
    /// An endpoint on a /24 (IPv4) and /64 (IPv6) link.
    pub fn new(ifname: &str, v4: Ipv4Addr, v6: Ipv6Addr) -> Endpoint {
        Endpoint {
            ifname: ifname.to_owned(),
            v4,
            v4_prefix: 24,
            v6,
            v6_prefix: 64,
        }
    }
}

/// A veth pair joining two namespaces, both ends addressed and up. It lives as long as the
/// namespaces (deleting either deletes the pair), so it has no `Drop`.
#[derive(Clone, Debug)]
pub struct VethPair {
    /// The end in the first namespace.
    pub a: Endpoint,
    /// The end in the second namespace.
    pub b: Endpoint,
}

impl VethPair {
    /// Creates veth `a.ifname` in `a_ns` with peer `b.ifname` in `b_ns`, adds both addresses to
    /// each end (so each side reaches the other over the connected routes, both families), sets
    /// the links up and waits (bounded) until both report carrier.
    pub fn create(a_ns: &Netns, a: Endpoint, b_ns: &Netns, b: Endpoint) -> Result<VethPair> {
        a_ns.ip(&[
            "link",
            "add",
            &a.ifname,
            "type",
            "veth",
            "peer",
            "name",
            &b.ifname,
            "netns",
            b_ns.name(),
        ])?;
        for (ns, end) in [(a_ns, &a), (b_ns, &b)] {
            add_address(ns, &end.ifname, IpAddr::V4(end.v4), end.v4_prefix)?;
            add_address(ns, &end.ifname, IpAddr::V6(end.v6), end.v6_prefix)?;
            ns.ip(&["link", "set", &end.ifname, "up"])?;
        }
        wait_for_carrier(a_ns, &a.ifname)?;
        wait_for_carrier(b_ns, &b.ifname)?;
        Ok(VethPair { a, b })
    }
}

/// Adds `ip/prefix` to interface `ifname` in `ns` (IPv6 with `nodad`, so it is usable at once).
/// Use it to give a client several source addresses (one authorized, one not).
pub fn add_address(ns: &Netns, ifname: &str, ip: IpAddr, prefix: u8) -> Result<()> {
    let cidr = format!("{ip}/{prefix}");
    let mut args = vec!["addr", "add", &cidr, "dev", ifname];
    if ip.is_ipv6() {
        args.push("nodad");
    }
    ns.ip(&args).map(|_| ())
}

/// Routes `dest` (a CIDR such as `198.18.1.0/24`) out of `ifname` in `ns`, optionally via a
/// gateway: needed when a peer uses a source address outside the link's subnet.
pub fn add_route(ns: &Netns, dest: &str, ifname: &str, via: Option<IpAddr>) -> Result<()> {
    let via = via.map(|v| v.to_string());
    let mut args = vec!["route", "add", dest];
    if let Some(v) = &via {
        args.extend_from_slice(&["via", v]);
    }
    args.extend_from_slice(&["dev", ifname]);
    ns.ip(&args).map(|_| ())
}

/// Polls `ip link show` until `ifname` in `ns` has `LOWER_UP`, for at most [`CARRIER_TIMEOUT`].
fn wait_for_carrier(ns: &Netns, ifname: &str) -> Result<()> {
    let deadline = Instant::now() + CARRIER_TIMEOUT;
    loop {
        let out = ns.ip(&["-o", "link", "show", "dev", ifname])?;
        if out.contains("LOWER_UP") {
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{ifname} in {} has no carrier after {CARRIER_TIMEOUT:?}",
                ns.name()
            );
        }
        thread::sleep(Duration::from_millis(20));
    }
}
