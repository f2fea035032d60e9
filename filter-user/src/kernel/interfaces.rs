//! The interfaces of the current network namespace, read from rtnetlink (`RTM_GETLINK` and
//! `RTM_GETADDR` dumps), so it answers for the namespace the process is in (`--netns`) even
//! where /sys still shows another one. Whether apifence filters each is the caller's answer
//! (the pinned links' liveness, `attach::filters`). The link type of one interface picks the
//! program instance attached to it ([`link_type`]).

use std::{
    collections::HashMap,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use crate::{
    kernel::framing::{Framing, link_type_name},
    policy::bypass::{Interface, LinkKind},
};

/// Reading the interfaces failed.
#[derive(Debug, thiserror::Error)]
pub enum InterfacesError {
    /// The netlink socket could not be opened or used.
    #[error("asking the kernel for its {what} over rtnetlink")]
    Netlink {
        /// Links or addresses.
        what: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_GETLINK: u16 = 18;
const RTM_NEWLINK: u16 = 16;
const RTM_GETADDR: u16 = 22;
const RTM_NEWADDR: u16 = 20;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINK: u16 = 5;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// Bounds the number of datagrams one dump may take (a namespace with 65k interfaces fits).
const MAX_DATAGRAMS: usize = 65_536;

/// One netlink message: its type and payload.
struct Message<'a> {
    kind: u16,
    payload: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The messages of one datagram.
fn messages(mut datagram: &[u8]) -> Vec<Message<'_>> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u32_at(datagram, 0), u16_at(datagram, 4)) {
        let len = len as usize;
        if len < 16 || len > datagram.len() {
            break;
        }
        out.push(Message {
            kind,
            payload: &datagram[16..len],
        });
        let step = len.div_ceil(4) * 4;
        if step >= datagram.len() {
            break;
        }
        datagram = &datagram[step..];
    }
    out
}

/// The `(type, value)` attributes in `b`.
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while let (Some(len), Some(kind)) = (u16_at(b, 0), u16_at(b, 2)) {
        let len = len as usize;
        if len < 4 || len > b.len() {
            break;
        }
        // NLA_F_NESTED and NLA_F_NET_BYTEORDER live in the top bits.
        out.push((kind & 0x3fff, &b[4..len]));
        let step = len.div_ceil(4) * 4;
        if step >= b.len() {
            break;
        }
        b = &b[step..];
    }
    out
}

/// Sends one dump request of `kind` with `header` (the family header) and returns every
/// datagram of the answer.
fn dump(kind: u16, header: &[u8], what: &'static str) -> Result<Vec<Vec<u8>>, InterfacesError> {
    let error = |source| InterfacesError::Netlink { what, source };
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    // SAFETY: socket(2) just returned this descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = 16 + header.len();
    let mut request = Vec::with_capacity(len);
    request.extend_from_slice(&(len as u32).to_ne_bytes());
    request.extend_from_slice(&kind.to_ne_bytes());
    request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes());
    request.extend_from_slice(&0u32.to_ne_bytes());
    request.extend_from_slice(header);
    // SAFETY: a valid socket and a buffer of the length given; the kernel is the destination
    // of an unbound netlink send.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), len, 0) };
    if sent < 0 {
        return Err(error(io::Error::last_os_error()));
    }
    let mut datagrams = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    for _ in 0..MAX_DATAGRAMS {
        // SAFETY: a valid socket and a buffer of the length given.
        let got = unsafe {
            libc::recv(
                socket.as_raw_fd(),
                buffer.as_mut_ptr().cast(),
                buffer.len(),
                0,
            )
        };
        if got < 0 {
            return Err(error(io::Error::last_os_error()));
        }
        let datagram = buffer[..got as usize].to_vec();
        let mut done = got == 0;
        for message in messages(&datagram) {
            match message.kind {
                NLMSG_DONE => done = true,
                NLMSG_ERROR => {
                    let code = u32_at(message.payload, 0).unwrap_or(0) as i32;
                    if code != 0 {
                        return Err(error(io::Error::from_raw_os_error(-code)));
                    }
                    done = true;
                }
                _ => {}
            }
        }
        datagrams.push(datagram);
        if done {
            return Ok(datagrams);
        }
    }
    Err(error(io::Error::other(format!(
        "the dump did not end within {MAX_DATAGRAMS} datagrams"
    ))))
}

/// A link as `RTM_NEWLINK` describes it.
struct RawLink {
    index: u32,
    hardware_type: u16,
    flags: u32,
    name: String,
    link: Option<u32>,
    master: Option<u32>,
    info_kind: Option<String>,
}

fn parse_link(payload: &[u8]) -> Option<RawLink> {
    // struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }
    let hardware_type = u16_at(payload, 2)?;
    let index = u32_at(payload, 4)?;
    let flags = u32_at(payload, 8)?;
    let mut link = RawLink {
        index,
        hardware_type,
        flags,
        name: String::new(),
        link: None,
        master: None,
        info_kind: None,
    };
    for (kind, value) in attributes(payload.get(16..)?) {
        match kind {
            IFLA_IFNAME => {
                link.name = String::from_utf8_lossy(value.split(|b| *b == 0).next()?).into();
            }
            IFLA_LINK => link.link = u32_at(value, 0),
            IFLA_MASTER => link.master = u32_at(value, 0),
            IFLA_LINKINFO => {
                for (inner, value) in attributes(value) {
                    if inner == IFLA_INFO_KIND {
                        let text = value.split(|b| *b == 0).next().unwrap_or_default();
                        link.info_kind = Some(String::from_utf8_lossy(text).into());
                    }
                }
            }
            _ => {}
        }
    }
    Some(link)
}

fn parse_address(payload: &[u8]) -> Option<(u32, IpAddr)> {
    // struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
    let family = *payload.first()?;
    let index = u32_at(payload, 4)?;
    let mut address = None;
    for (kind, value) in attributes(payload.get(8..)?) {
        // IFA_LOCAL is the local end on point-to-point links; prefer it when present.
        if kind == IFA_LOCAL || (kind == IFA_ADDRESS && address.is_none()) {
            address = match (i32::from(family), value.len()) {
                (libc::AF_INET, 4) => {
                    Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(value).ok()?)))
                }
                (libc::AF_INET6, 16) => Some(IpAddr::V6(Ipv6Addr::from(
                    <[u8; 16]>::try_from(value).ok()?,
                ))),
                _ => address,
            };
        }
    }
    Some((index, address?))
}

/// The link type (`ARPHRD_*`) of the interface called `name` in the current network namespace,
/// or `None` when there is no such interface.
pub fn link_type(name: &str) -> Result<Option<u16>, InterfacesError> {
    for datagram in dump(RTM_GETLINK, &[0u8; 16], "links")? {
        for message in messages(&datagram) {
            if message.kind != RTM_NEWLINK {
                continue;
            }
            if let Some(raw) = parse_link(message.payload)
                && raw.name == name
            {
                return Ok(Some(raw.hardware_type));
            }
        }
    }
    Ok(None)
}

/// Every interface of the current network namespace, with whether apifence filters it now
/// (`filtered`, asked with the interface's name).
pub fn list(filtered: impl Fn(&str) -> bool) -> Result<Vec<Interface>, InterfacesError> {
    let mut addresses: HashMap<u32, Vec<IpAddr>> = HashMap::new();
    for datagram in dump(RTM_GETADDR, &[0u8; 8], "addresses")? {
        for message in messages(&datagram) {
            if message.kind == RTM_NEWADDR
                && let Some((index, address)) = parse_address(message.payload)
            {
                addresses.entry(index).or_default().push(address);
            }
        }
    }
    let mut interfaces = Vec::new();
    for datagram in dump(RTM_GETLINK, &[0u8; 16], "links")? {
        for message in messages(&datagram) {
            if message.kind != RTM_NEWLINK {
                continue;
            }
            let Some(raw) = parse_link(message.payload) else {
                continue;
            };
            let filtered = filtered(&raw.name);
            interfaces.push(Interface {
                kind: LinkKind::from_kernel(raw.info_kind.as_deref(), raw.hardware_type),
                up: raw.flags & libc::IFF_UP as u32 != 0,
                loopback: raw.flags & libc::IFF_LOOPBACK as u32 != 0,
                master: raw.master.filter(|m| *m != 0),
                lower: raw.link.filter(|l| *l != 0 && *l != raw.index),
                addresses: addresses.remove(&raw.index).unwrap_or_default(),
                filtered,
                unparsable: Framing::of_link_type(raw.hardware_type)
                    .is_none()
                    .then(|| format!("link type {}", link_type_name(raw.hardware_type))),
                name: raw.name,
                index: raw.index,
            });
        }
    }
    interfaces.sort_by_key(|i| i.index);
    Ok(interfaces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_stop_at_a_truncated_one() {
        // IFLA_IFNAME "lo\0" padded, then an attribute claiming more than is there.
        let mut b = vec![7, 0, 3, 0, b'l', b'o', 0, 0];
        b.extend_from_slice(&[40, 0, 5, 0, 1, 0, 0, 0]);
        let attrs = attributes(&b);
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0], (IFLA_IFNAME, &b"lo\0"[..]));
    }

    #[test]
    fn messages_stop_at_a_short_header() {
        let mut m = Vec::new();
        m.extend_from_slice(&20u32.to_ne_bytes());
        m.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        m.extend_from_slice(&[0; 14]);
        m.extend_from_slice(&[1, 2, 3]);
        let parsed = messages(&m);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].kind, NLMSG_DONE);
        assert_eq!(parsed[0].payload.len(), 4);
    }

    #[test]
    fn this_namespace_has_a_loopback_device() {
        let listed = list(|_| false).expect("rtnetlink dump");
        let lo = listed
            .iter()
            .find(|i| i.loopback)
            .expect("a loopback device");
        assert_eq!(lo.name, "lo");
        assert!(!lo.filtered);
    }

    #[test]
    fn the_loopback_device_has_the_loopback_link_type_and_a_missing_one_none() {
        assert_eq!(
            link_type("lo").expect("rtnetlink dump"),
            Some(crate::kernel::framing::ARPHRD_LOOPBACK)
        );
        assert_eq!(link_type("no-such-if0").expect("rtnetlink dump"), None);
    }
}
