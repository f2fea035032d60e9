//! The list a frame is judged against, in the README's terms: the authorized ranges as given,
//! the always-allow list, the protected ports and the mode. Written without the product's
//! types; the kernel side turns it into the product's policy.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// Enforce (drop) or monitor (count as would-drop and pass).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Refused packets are dropped.
    Enforce,
    /// Refused packets pass, counted as would-drop.
    Monitor,
}

/// One policy.
#[derive(Clone, Debug)]
pub struct List {
    /// `None`: filtering disabled (`""`). `Some(empty)`: only the always-allow list
    /// (`0.0.0.0/32`).
    pub ranges: Option<Vec<IpNet>>,
    /// The always-allow list.
    pub always_allow: Vec<IpNet>,
    /// The protected TCP destination ports.
    pub ports: Vec<u16>,
    /// Enforce or monitor.
    pub mode: Mode,
}

impl List {
    /// The ranges in the range language (`""`, `0.0.0.0/32` or the prefixes joined by `, `).
    pub fn ranges_text(&self) -> String {
        match &self.ranges {
            None => String::new(),
            Some(r) if r.is_empty() => "0.0.0.0/32".into(),
            Some(r) => r
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", "),
        }
    }

    /// Every prefix of the list, ranges and always-allow.
    pub fn all(&self) -> Vec<IpNet> {
        let mut all = self.ranges.clone().unwrap_or_default();
        all.extend(&self.always_allow);
        all
    }
}

/// Where around a prefix [`source_near`] puts an address.
#[derive(Clone, Copy, Debug)]
pub enum Near {
    /// The address just below the prefix.
    Below,
    /// The address just above the prefix.
    Above,
    /// The first address of the prefix.
    First,
    /// The last address of the prefix.
    Last,
    /// Inside the prefix, its host bits taken from the given bits.
    Inside(u128),
}

/// An address at `near` of prefix `p` (wrapping around the address space at its ends).
pub fn source_near(p: IpNet, near: Near) -> IpAddr {
    match p {
        IpNet::V4(p) => {
            let lo = u32::from(p.network());
            let hi = u32::from(p.broadcast());
            Ipv4Addr::from(match near {
                Near::Below => lo.wrapping_sub(1),
                Near::Above => hi.wrapping_add(1),
                Near::First => lo,
                Near::Last => hi,
                Near::Inside(bits) => lo | (bits as u32 & (hi - lo)),
            })
            .into()
        }
        IpNet::V6(p) => {
            let lo = u128::from(p.network());
            let hi = u128::from(p.broadcast());
            Ipv6Addr::from(match near {
                Near::Below => lo.wrapping_sub(1),
                Near::Above => hi.wrapping_add(1),
                Near::First => lo,
                Near::Last => hi,
                Near::Inside(bits) => lo | (bits & (hi - lo)),
            })
            .into()
        }
    }
}
