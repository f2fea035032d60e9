//! The bytes of the [`Record`] pinned next to each slot: a compact binary form (a versioned
//! header, then fixed-size entries per family), read on every change and every `ranges show`,
//! so that reading it costs a copy instead of a parse. Records written as JSON by earlier
//! versions (format 1) are still read, so a filter pinned by an older apifence keeps working
//! after an upgrade; the next change writes the binary form.
//!
//! Layout (little-endian), format [`RECORD_VERSION`]:
//!
//! | bytes | field |
//! |---|---|
//! | 4 | magic `AFRB` (a JSON record starts with `{`) |
//! | 2 | format version |
//! | 2 | header length (32; later formats may append fields, readers skip them) |
//! | 2 | flags: bits 0–1 list kind (0 disabled, 1 only the always-allow list, 2 ranges), bit 2 monitor mode, bit 3 bpffs mounted by apifence, bit 4 rule ids stored as runs, bit 5 managed by a daemon |
//! | 2 | reserved (0) |
//! | 4 | authorized ranges |
//! | 4 | always-allow prefixes |
//! | 4 | ports |
//! | 4 | rule id items (runs or single ids) |
//! | 4 | bytes of the names section |
//!
//! Then: the authorized ranges in the order given and the always-allow prefixes, each one tag
//! byte (0–32: an IPv4 prefix of that length, followed by 4 address bytes; 64–192: an IPv6
//! prefix of length tag − 64, followed by 16 address bytes); the ports (2 bytes each); the rule
//! ids (4 bytes each, or runs of consecutive ids as first id and count, 8 bytes, whichever is
//! smaller); the names section: the interface count (2 bytes), per interface its XDP mode
//! (0 native, 1 skb), name length (1 byte) and name, then the daemon's config path (4-byte
//! length and bytes) when managed.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, Ipv6Addr},
    os::unix::ffi::{OsStrExt, OsStringExt},
    path::PathBuf,
};

use filter_common::RuleId;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::policy::{
    AttachedMode, Attachment, AuthorizedRanges, Mode, Policy, RECORD_VERSION, Record,
    language::{ONLY_ALWAYS_ALLOWED, RangeList},
};

/// First bytes of a binary record.
const MAGIC: [u8; 4] = *b"AFRB";
/// Bytes of the header this version writes.
const HEADER_BYTES: usize = 32;
/// The first format: the record as JSON.
const JSON_FORMAT: u32 = 1;

const KIND_MASK: u16 = 0b11;
const KIND_DISABLED: u16 = 0;
const KIND_ONLY_ALWAYS_ALLOWED: u16 = 1;
const KIND_RANGES: u16 = 2;
const FLAG_MONITOR: u16 = 1 << 2;
const FLAG_MOUNTED_BPFFS: u16 = 1 << 3;
const FLAG_RULE_RUNS: u16 = 1 << 4;
const FLAG_MANAGED: u16 = 1 << 5;

/// First tag byte of an IPv6 prefix.
const V6_TAG: u8 = 64;

/// Why pinned record bytes can't be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordFormatError {
    /// A format-1 (JSON) record that does not parse.
    #[error("format-1 (JSON) record: {0}")]
    Json(#[source] serde_json::Error),
    /// Neither JSON nor a binary record.
    #[error("not an apifence record (unknown first bytes)")]
    Magic,
    /// A binary format this version does not know.
    #[error(
        "record format {0} is newer than this apifence understands (up to {RECORD_VERSION}); use the apifence version that attached the filter"
    )]
    Version(u16),
    /// The record ends early.
    #[error("record truncated: {0} missing")]
    Truncated(&'static str),
    /// A field holds a value no writer produces.
    #[error("record field {0} is invalid")]
    Invalid(&'static str),
}

impl Record {
    /// The record's pinned form: binary, format [`RECORD_VERSION`] (whatever `version` says).
    pub fn encode(&self) -> Vec<u8> {
        let policy = &self.policy;
        let list = policy.ranges.list();
        let runs = rule_runs(&self.rule_ids);
        let as_runs = runs.len() * 2 < self.rule_ids.len();
        let mut names = Vec::new();
        names.extend_from_slice(&(self.attachment.interfaces.len() as u16).to_le_bytes());
        for (name, mode) in &self.attachment.interfaces {
            names.push(match mode {
                AttachedMode::Native => 0,
                AttachedMode::Skb => 1,
            });
            // Interface names are at most 15 bytes (IFNAMSIZ).
            let name = &name.as_bytes()[..name.len().min(u8::MAX.into())];
            names.push(name.len() as u8);
            names.extend_from_slice(name);
        }
        if let Some(config) = &self.managed_by {
            let path = config.as_os_str().as_bytes();
            names.extend_from_slice(&(path.len() as u32).to_le_bytes());
            names.extend_from_slice(path);
        }

        let mut flags = match list {
            RangeList::Disabled => KIND_DISABLED,
            RangeList::OnlyAlwaysAllowed => KIND_ONLY_ALWAYS_ALLOWED,
            RangeList::Ranges(_) => KIND_RANGES,
        };
        if policy.mode == Mode::Monitor {
            flags |= FLAG_MONITOR;
        }
        if self.attachment.mounted_bpffs {
            flags |= FLAG_MOUNTED_BPFFS;
        }
        if as_runs {
            flags |= FLAG_RULE_RUNS;
        }
        if self.managed_by.is_some() {
            flags |= FLAG_MANAGED;
        }
        let entries = list.entries();
        let rule_items = if as_runs {
            runs.len()
        } else {
            self.rule_ids.len()
        };
        let mut out = Vec::with_capacity(
            HEADER_BYTES
                + 17 * (entries.len() + policy.always_allow.len())
                + 2 * policy.ports.len()
                + 8 * rule_items
                + names.len(),
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&(RECORD_VERSION as u16).to_le_bytes());
        out.extend_from_slice(&(HEADER_BYTES as u16).to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        for count in [
            entries.len(),
            policy.always_allow.len(),
            policy.ports.len(),
            rule_items,
            names.len(),
        ] {
            out.extend_from_slice(&(count as u32).to_le_bytes());
        }
        for net in entries.iter().chain(&policy.always_allow) {
            put_prefix(&mut out, net);
        }
        for port in &policy.ports {
            out.extend_from_slice(&port.to_le_bytes());
        }
        if as_runs {
            for (first, count) in runs {
                out.extend_from_slice(&first.to_le_bytes());
                out.extend_from_slice(&count.to_le_bytes());
            }
        } else {
            for id in &self.rule_ids {
                out.extend_from_slice(&id.to_le_bytes());
            }
        }
        out.extend_from_slice(&names);
        out
    }

    /// Reads pinned record bytes: the binary form, or the JSON of format 1.
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordFormatError> {
        if bytes.first() == Some(&b'{') {
            let mut record: Record =
                serde_json::from_slice(bytes).map_err(RecordFormatError::Json)?;
            record.version = record.version.min(JSON_FORMAT);
            return Ok(record);
        }
        let mut reader = Reader { bytes, at: 0 };
        if reader.take(4, "magic")? != MAGIC {
            return Err(RecordFormatError::Magic);
        }
        let version = reader.u16("version")?;
        if u32::from(version) <= JSON_FORMAT || u32::from(version) > RECORD_VERSION {
            return Err(RecordFormatError::Version(version));
        }
        let header = usize::from(reader.u16("header length")?);
        if header < HEADER_BYTES {
            return Err(RecordFormatError::Invalid("header length"));
        }
        let flags = reader.u16("flags")?;
        reader.u16("reserved")?;
        let ranges = reader.count("range count")?;
        let always = reader.count("always-allow count")?;
        let ports = reader.count("port count")?;
        let rule_items = reader.count("rule id count")?;
        let names_len = reader.count("names length")?;
        reader.take(header - HEADER_BYTES, "header")?;

        let mut entries = Vec::with_capacity(ranges.min(bytes.len() / 5));
        for _ in 0..ranges {
            entries.push(reader.prefix("authorized range")?);
        }
        let list = match flags & KIND_MASK {
            KIND_DISABLED if entries.is_empty() => RangeList::Disabled,
            KIND_ONLY_ALWAYS_ALLOWED if entries.is_empty() => RangeList::OnlyAlwaysAllowed,
            KIND_RANGES if !entries.is_empty() && !entries.contains(&ONLY_ALWAYS_ALLOWED) => {
                RangeList::Ranges(entries)
            }
            _ => return Err(RecordFormatError::Invalid("list kind")),
        };
        let mut always_allow = Vec::with_capacity(always.min(bytes.len() / 5));
        for _ in 0..always {
            always_allow.push(reader.prefix("always-allow prefix")?);
        }
        let mut port_list = Vec::with_capacity(ports.min(bytes.len() / 2));
        for _ in 0..ports {
            port_list.push(reader.u16("port")?);
        }
        let mut rule_ids = Vec::new();
        if flags & FLAG_RULE_RUNS != 0 {
            for _ in 0..rule_items {
                let first = reader.u32("rule id run")?;
                let count = reader.u32("rule id run")?;
                let end = first
                    .checked_add(count)
                    .ok_or(RecordFormatError::Invalid("rule id run"))?;
                // A slot holds at most one prefix per entry (merging only removes some).
                if rule_ids.len() + count as usize > ranges + always {
                    return Err(RecordFormatError::Invalid("rule id run"));
                }
                rule_ids.extend(first..end);
            }
        } else {
            rule_ids.reserve(rule_items.min(bytes.len() / 4));
            for _ in 0..rule_items {
                rule_ids.push(reader.u32("rule id")?);
            }
        }
        let mut names = Reader {
            bytes: reader.take(names_len, "names")?,
            at: 0,
        };
        let mut interfaces = BTreeMap::new();
        for _ in 0..names.u16("interface count")? {
            let mode = match names.take(1, "interface mode")?[0] {
                0 => AttachedMode::Native,
                1 => AttachedMode::Skb,
                _ => return Err(RecordFormatError::Invalid("interface mode")),
            };
            let len = usize::from(names.take(1, "interface name length")?[0]);
            let name = std::str::from_utf8(names.take(len, "interface name")?)
                .map_err(|_| RecordFormatError::Invalid("interface name"))?;
            interfaces.insert(name.to_owned(), mode);
        }
        let managed_by = if flags & FLAG_MANAGED != 0 {
            let len = names.count("config path length")?;
            let path = names.take(len, "config path")?;
            Some(PathBuf::from(std::ffi::OsString::from_vec(path.to_vec())))
        } else {
            None
        };
        if names.at != names.bytes.len() || reader.at != bytes.len() {
            return Err(RecordFormatError::Invalid(
                "length (bytes after the record)",
            ));
        }
        Ok(Record {
            version: u32::from(version),
            policy: Policy {
                ranges: AuthorizedRanges::new(list),
                always_allow,
                ports: port_list,
                mode: if flags & FLAG_MONITOR != 0 {
                    Mode::Monitor
                } else {
                    Mode::Enforce
                },
            },
            attachment: Attachment {
                interfaces,
                mounted_bpffs: flags & FLAG_MOUNTED_BPFFS != 0,
            },
            rule_ids,
            managed_by,
        })
    }
}

/// `ids` as runs of consecutive ids: (first, count).
fn rule_runs(ids: &[RuleId]) -> Vec<(RuleId, u32)> {
    let mut runs: Vec<(RuleId, u32)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((first, count)) if first.checked_add(*count) == Some(id) => *count += 1,
            _ => runs.push((id, 1)),
        }
    }
    runs
}

fn put_prefix(out: &mut Vec<u8>, net: &IpNet) {
    match net {
        IpNet::V4(net) => {
            out.push(net.prefix_len());
            out.extend_from_slice(&net.addr().octets());
        }
        IpNet::V6(net) => {
            out.push(V6_TAG + net.prefix_len());
            out.extend_from_slice(&net.addr().octets());
        }
    }
}

/// A cursor over record bytes; every read says what it was reading when the bytes end.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], RecordFormatError> {
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or(RecordFormatError::Truncated(what))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16, RecordFormatError> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32, RecordFormatError> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn count(&mut self, what: &'static str) -> Result<usize, RecordFormatError> {
        self.u32(what).map(|n| n as usize)
    }

    /// One tagged prefix; its host bits must be clear (the writer only stores canonical ones).
    fn prefix(&mut self, what: &'static str) -> Result<IpNet, RecordFormatError> {
        let tag = self.take(1, what)?[0];
        let net = if tag <= 32 {
            let b = self.take(4, what)?;
            Ipv4Net::new(Ipv4Addr::new(b[0], b[1], b[2], b[3]), tag).map(IpNet::V4)
        } else if (V6_TAG..=V6_TAG + 128).contains(&tag) {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(self.take(16, what)?);
            Ipv6Net::new(Ipv6Addr::from(octets), tag - V6_TAG).map(IpNet::V6)
        } else {
            return Err(RecordFormatError::Invalid(what));
        };
        match net {
            Ok(net) if net.trunc() == net => Ok(net),
            _ => Err(RecordFormatError::Invalid(what)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(ranges: &str) -> Record {
        let mut record = Record {
            version: RECORD_VERSION,
            ..Record::default()
        };
        record.policy.ranges = ranges.parse().expect("test list");
        record
    }

    #[test]
    fn every_field_round_trips() {
        let mut full = record("10.0.0.0/8, 2001:db8::/32 192.0.2.7 ::/0 0.0.0.0/0");
        full.policy.always_allow = vec![
            "198.51.100.7/32".parse().unwrap(),
            "2001:db8:1::/48".parse().unwrap(),
        ];
        full.policy.ports = vec![22, 443, 6443, 65535];
        full.policy.mode = Mode::Monitor;
        full.attachment
            .interfaces
            .insert("eth0".into(), AttachedMode::Native);
        full.attachment
            .interfaces
            .insert("veth-x.1".into(), AttachedMode::Skb);
        full.attachment.mounted_bpffs = true;
        full.rule_ids = vec![0, 1, 2, 7, 3, 4, 5];
        full.managed_by = Some("/etc/apifence/apifence.toml".into());
        let mut cases = vec![full, record(""), record("0.0.0.0/32"), Record::default()];
        let mut sequential = record("192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24");
        sequential.rule_ids = vec![5, 6, 7];
        cases.push(sequential);
        for case in cases {
            let bytes = case.encode();
            assert_eq!(&bytes[..4], b"AFRB");
            let back = Record::decode(&bytes).expect("decodes");
            assert_eq!(back.version, RECORD_VERSION);
            let mut want = case.clone();
            want.version = RECORD_VERSION;
            assert_eq!(back, want);
            assert_eq!(back.policy.ranges.merged(), case.policy.ranges.merged());
        }
    }

    #[test]
    fn consecutive_ids_are_stored_as_runs_and_v4_prefixes_take_five_bytes() {
        let list: Vec<String> = (0..1000u32)
            .map(|i| format!("10.{}.{}.0/24", i / 256, i % 256))
            .collect();
        let mut big = record(&list.join(","));
        big.rule_ids = (0..1000).collect();
        let bytes = big.encode();
        // Header, 5 bytes per prefix, two ports, one run of ids, the interface count.
        assert_eq!(bytes.len(), HEADER_BYTES + 5 * 1000 + 2 * 2 + 8 + 2);
        assert_eq!(Record::decode(&bytes).expect("decodes"), big);
    }

    #[test]
    fn a_format_1_json_record_is_still_read() {
        let json = br#"{"version":1,"policy":{"ranges":"10.0.0.0/8,2001:db8::/32","always_allow":["198.51.100.7/32"],"ports":[443,6443],"mode":"monitor"},"attachment":{"interfaces":{"eth0":"skb"},"mounted_bpffs":true},"rule_ids":[0,1,2],"managed_by":"/etc/apifence/apifence.toml"}"#;
        let record = Record::decode(json).expect("JSON record");
        assert_eq!(record.version, 1);
        assert_eq!(record.policy.ranges.to_text(), "10.0.0.0/8,2001:db8::/32");
        assert_eq!(record.policy.mode, Mode::Monitor);
        assert_eq!(record.rule_ids, vec![0, 1, 2]);
        assert_eq!(
            record.attachment.interfaces.get("eth0"),
            Some(&AttachedMode::Skb)
        );
        assert_eq!(
            record.managed_by.as_deref(),
            Some(std::path::Path::new("/etc/apifence/apifence.toml"))
        );
        // Written again, it is binary and says the same.
        let again = Record::decode(&record.encode()).expect("binary");
        assert_eq!(again.policy, record.policy);
        assert_eq!(again.attachment, record.attachment);
        assert_eq!(again.rule_ids, record.rule_ids);
        assert_eq!(again.managed_by, record.managed_by);
    }

    #[test]
    fn damaged_records_are_errors_not_policies() {
        let mut good = record("10.0.0.0/8,192.0.2.0/24");
        good.rule_ids = vec![4, 9];
        let bytes = good.encode();
        for len in 0..bytes.len() {
            assert!(Record::decode(&bytes[..len]).is_err(), "cut at {len}");
        }
        let mut newer = bytes.clone();
        newer[4] = 99;
        assert!(matches!(
            Record::decode(&newer),
            Err(RecordFormatError::Version(99))
        ));
        let mut host_bits = bytes.clone();
        host_bits[HEADER_BYTES + 2] = 1; // 10.1.0.0/8
        assert!(matches!(
            Record::decode(&host_bits),
            Err(RecordFormatError::Invalid(_))
        ));
        let mut kind = bytes.clone();
        kind[8] = KIND_DISABLED as u8; // disabled, yet with ranges
        assert!(Record::decode(&kind).is_err());
        assert!(matches!(
            Record::decode(b"XXXXXXXX"),
            Err(RecordFormatError::Magic)
        ));
        assert!(matches!(
            Record::decode(b"{\"version\":1"),
            Err(RecordFormatError::Json(_))
        ));
    }

    proptest! {
        #[test]
        fn random_records_round_trip(
            nets in proptest::collection::vec((any::<u128>(), any::<bool>(), any::<u8>()), 0..64),
            always in proptest::collection::vec((any::<u32>(), 0u8..=32), 0..4),
            ids in proptest::collection::vec(0u32..100, 0..64),
            ports in proptest::collection::btree_set(1u16.., 1..5),
        ) {
            let mut prefixes = Vec::new();
            for (bits, v6, len) in nets {
                let net = if v6 {
                    IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len % 129).unwrap())
                } else {
                    IpNet::V4(Ipv4Net::new(Ipv4Addr::from(bits as u32), len % 33).unwrap())
                };
                let net = net.trunc();
                if net != ONLY_ALWAYS_ALLOWED && !prefixes.contains(&net) {
                    prefixes.push(net);
                }
            }
            let list = if prefixes.is_empty() { RangeList::Disabled } else { RangeList::Ranges(prefixes) };
            let mut record = Record { version: RECORD_VERSION, ..Record::default() };
            record.policy.ranges = AuthorizedRanges::new(list);
            record.policy.always_allow = always
                .into_iter()
                .map(|(a, len)| IpNet::V4(Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc()))
                .collect();
            record.policy.ports = ports.into_iter().collect();
            record.rule_ids = ids;
            let back = Record::decode(&record.encode()).expect("decodes");
            prop_assert_eq!(back, record);
        }
    }
}
