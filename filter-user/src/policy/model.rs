//! The desired state of the filter (`Policy`), and the record written next to each slot
//! (`Record`) so the pins always say what they enforce and for which attachment.

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::{AuthorizedRanges, language::list_words};

/// Default protected TCP destination ports: HTTPS and the Kubernetes API server.
pub const DEFAULT_PORTS: [u16; 2] = [443, 6443];

/// How to attach to an interface (`attach --xdp-mode`, config `xdp_mode`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum XdpModeChoice {
    /// Native (driver) mode, falling back to skb mode when the driver refuses, and saying so.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode only.
    Skb,
}

impl XdpModeChoice {
    /// Every choice, in the order help texts list them.
    pub const ALL: [Self; 3] = [Self::Auto, Self::Native, Self::Skb];

    /// The name used on the command line and in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }

    /// One line saying what the choice does.
    pub fn help(self) -> &'static str {
        match self {
            Self::Auto => {
                "Native (driver) mode, falling back to skb mode when the driver refuses, and saying so"
            }
            Self::Native => "Native (driver) mode only",
            Self::Skb => "Generic (skb) mode only",
        }
    }
}

/// Which lookup judges a packet's source (`attach --lookup`, config `lookup`). Chosen at the
/// first attach; fixed while attached.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Lookup {
    /// The table compiled in userspace into array maps (`filter_common::table`): a fixed,
    /// small number of inlined array reads per packet, whatever the list's size.
    #[default]
    Compiled,
    /// The kernel's LPM tries: a helper call whose cost grows with the list (the fallback).
    LpmTrie,
}

impl Lookup {
    /// Every choice, in the order help texts list them.
    pub const ALL: [Self; 2] = [Self::Compiled, Self::LpmTrie];

    /// The value of the program's `LOOKUP` constant (`filter_common::GLOBAL_LOOKUP`).
    pub fn global(self) -> u32 {
        match self {
            Self::Compiled => filter_common::LOOKUP_COMPILED,
            Self::LpmTrie => filter_common::LOOKUP_LPM_TRIE,
        }
    }

    /// The name used on the command line, in the config file and in status output.
    pub fn name(self) -> &'static str {
        match self {
            Self::Compiled => "compiled",
            Self::LpmTrie => "lpm-trie",
        }
    }

    /// One line saying what the choice does.
    pub fn help(self) -> &'static str {
        match self {
            Self::Compiled => {
                "Table compiled into BPF arrays: a few inlined reads per packet at any list size"
            }
            Self::LpmTrie => "The kernel's LPM trie (fallback); cost grows with the list",
        }
    }
}

/// Enforce (drop unauthorized packets) or monitor (count them as would-drop, pass them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Unauthorized protected traffic is dropped.
    #[default]
    Enforce,
    /// Nothing is dropped; what would have been is counted as would-drop.
    Monitor,
}

impl Mode {
    /// The name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Enforce => "enforce",
            Self::Monitor => "monitor",
        }
    }
}

/// What the user asked the filter to do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The authorized-range list, parsed and merged once: disabled (`""`), only the
    /// always-allow list (`"0.0.0.0/32"`), or the ranges as given. In JSON, its text.
    pub ranges: AuthorizedRanges,
    /// Sources that are never blocked (cluster egress, load-balancer outbound, jump hosts).
    pub always_allow: Vec<IpNet>,
    /// Protected TCP destination ports, ascending, no duplicates, never empty.
    pub ports: Vec<u16>,
    /// Enforce or monitor.
    pub mode: Mode,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            ranges: AuthorizedRanges::disabled(),
            always_allow: Vec::new(),
            ports: DEFAULT_PORTS.to_vec(),
            mode: Mode::Enforce,
        }
    }
}

/// How a program is attached to one interface.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachedMode {
    /// In the driver (native XDP).
    Native,
    /// Generic XDP in the network stack.
    Skb,
}

impl AttachedMode {
    /// The name used in output.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Skb => "skb",
        }
    }
}

/// Facts about the attachment that outlive any one policy.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// Attached interfaces and their XDP mode.
    pub interfaces: BTreeMap<String, AttachedMode>,
    /// The bpffs directory was not a bpffs mount and apifence mounted one on it (so a full
    /// detach unmounts it again).
    pub mounted_bpffs: bool,
}

/// What is stored next to each slot: the policy it enforces and the attachment it belongs to.
/// Pinned in the binary form of [`record_format`](super::record_format) (JSON before format 2).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version of this record.
    pub version: u32,
    /// The policy the slot was compiled from.
    pub policy: Policy,
    /// Interfaces and mount facts.
    pub attachment: Attachment,
    /// Rule id of each trie entry, in the order `compile::slot_prefixes` lists the policy's
    /// prefixes; lets the next writer know the slot's contents without reading the tries.
    #[serde(default)]
    pub rule_ids: Vec<filter_common::RuleId>,
    /// Config file of the `apifence daemon` that owns this filter. While set, the CLI refuses
    /// to change the pins directly when the daemon doesn't answer (unless `--force`), so a
    /// change can't be silently replaced when the daemon starts again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub managed_by: Option<std::path::PathBuf>,
}

/// Current [`Record::version`]: 2, the binary form of [`record_format`](super::record_format);
/// 1 was JSON.
pub const RECORD_VERSION: u32 = 2;

/// A bad `--ports` value.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PortsError {
    /// The list had no ports.
    #[error("no ports given; protect at least one TCP port, for example --ports 443,6443")]
    Empty,
    /// Two commas in a row (or one at an end).
    #[error(
        "entry {0} of the port list is empty; remove the extra comma, for example --ports 443,6443"
    )]
    EmptyEntry(usize),
    /// An entry was not a number from 1 to 65535.
    #[error("port {0:?} is not a TCP port number from 1 to 65535; for example --ports 443,6443")]
    Invalid(String),
}

/// Parses a port list (the range language's list syntax: commas and/or whitespace) into
/// ascending unique ports.
pub fn parse_ports(text: &str) -> Result<Vec<u16>, PortsError> {
    let words = list_words(text).map_err(|e| PortsError::EmptyEntry(e.position))?;
    let mut ports = Vec::with_capacity(words.len());
    for (_, word) in words {
        match word.parse::<u16>() {
            Ok(port) if port != 0 => ports.push(port),
            _ => return Err(PortsError::Invalid(word.to_string())),
        }
    }
    if ports.is_empty() {
        return Err(PortsError::Empty);
    }
    ports.sort_unstable();
    ports.dedup();
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_parse_sorted_and_unique() {
        assert_eq!(parse_ports("6443, 443,443"), Ok(vec![443, 6443]));
        assert_eq!(parse_ports("8443"), Ok(vec![8443]));
    }

    #[test]
    fn bad_ports_name_the_entry() {
        assert_eq!(parse_ports(""), Err(PortsError::Empty));
        assert_eq!(parse_ports("0"), Err(PortsError::Invalid("0".into())));
        assert_eq!(
            parse_ports("443,https"),
            Err(PortsError::Invalid("https".into()))
        );
        assert_eq!(parse_ports("443,,6443"), Err(PortsError::EmptyEntry(2)));
        assert_eq!(parse_ports(",443"), Err(PortsError::EmptyEntry(1)));
        assert_eq!(
            parse_ports("70000"),
            Err(PortsError::Invalid("70000".into()))
        );
        assert!(
            PortsError::Invalid("x".into())
                .to_string()
                .contains("--ports 443,6443")
        );
    }

    #[test]
    fn record_round_trips_through_json() {
        let mut record = Record {
            version: RECORD_VERSION,
            ..Record::default()
        };
        record.policy.ranges = "10.0.0.0/8".parse().expect("test list");
        record.policy.mode = Mode::Monitor;
        record
            .attachment
            .interfaces
            .insert("eth0".into(), AttachedMode::Skb);
        let text = serde_json::to_string(&record).expect("serialize");
        let back: Record = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, record);
    }
}
