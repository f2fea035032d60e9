//! Upgrade over old pins: a filter whose slot records were written as JSON (record format 1, as
//! apifence wrote them before the binary form) keeps being read and enforced, and the next
//! change starts from what those records say (kept prefixes keep the rule ids they give) and
//! leaves binary records behind. Verdicts come from the real
//! program through `BPF_PROG_TEST_RUN`, with each lookup.

use std::net::Ipv4Addr;

use apifence::{
    kernel::maps::FilterMaps,
    kernel::operations::Filter,
    policy::{Lookup, Mode, Policy, Record, compile::slot_prefixes},
};
use apifence_tests::{frame::Frame, require_privileges};
use aya::maps::{HashMap, Map, MapData};
use filter_common::{MAP_POLICY, POLICY_CHUNK_BYTES, PolicyChunk, policy_chunk_key};
use ipnet::IpNet;

mod support;

use support::{Lab, XDP_DROP, XDP_PASS};

const API: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const KEPT: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const REMOVED: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 77);
const ADDED: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 5);
const ALWAYS: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 7);

const OLD_RANGES: &str = "198.51.100.0/24, 192.0.2.0/24, 2001:db8:1::/48";
const NEW_RANGES: &str = "198.51.100.0/24, 2001:db8:1::/48, 203.0.113.0/24";

fn policy(ranges: &str) -> Policy {
    Policy {
        ranges: ranges.parse().expect("test list"),
        always_allow: vec!["198.18.7.7/32".parse().expect("prefix")],
        ports: vec![443, 6443],
        mode: Mode::Enforce,
    }
}

/// Stores `json` as the record of `slot` the way apifence wrote format-1 records: behind a
/// 4-byte length, in chunks, the first one written last.
fn write_json_record(layout: &apifence::kernel::paths::PinLayout, slot: u32, json: &[u8]) {
    let path = layout.map(MAP_POLICY);
    let map =
        Map::from_map_data(MapData::from_pin(&path).expect("policy map pin")).expect("policy map");
    let mut chunks: HashMap<MapData, u32, PolicyChunk> = map.try_into().expect("hash map");
    // Drop the binary record first (all its chunks), as an old writer would have found none.
    for index in 0..64 {
        let _ = chunks.remove(&policy_chunk_key(slot, index));
    }
    let mut bytes = (json.len() as u32).to_le_bytes().to_vec();
    bytes.extend_from_slice(json);
    for (index, piece) in bytes.chunks(POLICY_CHUNK_BYTES).enumerate().rev() {
        let mut chunk = PolicyChunk {
            bytes: [0; POLICY_CHUNK_BYTES],
        };
        chunk.bytes[..piece.len()].copy_from_slice(piece);
        chunks
            .insert(policy_chunk_key(slot, index as u32), chunk, 0)
            .expect("write a chunk");
    }
}

/// `record` in format 1: what the old `serde_json::to_vec(&record)` produced, built field by
/// field.
fn record_json(record: &Record) -> Vec<u8> {
    let policy = &record.policy;
    serde_json::to_vec(&serde_json::json!({
        "version": 1,
        "policy": {
            "ranges": policy.ranges.to_text(),
            "always_allow": policy.always_allow.iter().map(ToString::to_string).collect::<Vec<_>>(),
            "ports": policy.ports,
            "mode": policy.mode.as_str(),
        },
        "attachment": {
            "interfaces": record
                .attachment
                .interfaces
                .iter()
                .map(|(name, mode)| (name.clone(), mode.as_str()))
                .collect::<std::collections::BTreeMap<_, _>>(),
            "mounted_bpffs": record.attachment.mounted_bpffs,
        },
        "rule_ids": record.rule_ids,
    }))
    .expect("json")
}

fn verdict(lab: &Lab, source: Ipv4Addr) -> u32 {
    lab.run(&Frame::tcp4(source, API, 6443))
}

/// Prefix → rule id of the active slot, as its record says.
fn ids_of(record: &Record) -> Vec<(IpNet, u32)> {
    slot_prefixes(&record.policy)
        .into_iter()
        .zip(record.rule_ids.iter().copied())
        .collect()
}

#[test]
fn json_records_of_older_pins_are_read_and_replaced_by_binary_ones() {
    if !require_privileges("json_records_of_older_pins_are_read_and_replaced_by_binary_ones") {
        return;
    }
    for lookup in Lookup::ALL {
        upgrade_with(lookup);
    }
}

fn upgrade_with(lookup: Lookup) {
    let lab = Lab::with_lookup(lookup, policy(OLD_RANGES));
    let maps = FilterMaps::open(&lab.layout).expect("maps");
    let active = maps.active_slot().expect("active slot");
    // Both slots as an older apifence would have left them: the same records, as JSON.
    let mut ids = Vec::new();
    for slot in [active, 1 - active] {
        let binary = maps.read_record(slot).expect("read").expect("a record");
        assert_eq!(
            &binary[..4],
            b"AFRB",
            "{lookup:?}: this version writes binary"
        );
        let record = Record::decode(&binary).expect("decode");
        if slot == active {
            ids.clone_from(&record.rule_ids);
        }
        write_json_record(&lab.layout, slot, &record_json(&record));
        let json = maps.read_record(slot).expect("read").expect("a record");
        assert_eq!(json[0], b'{', "{lookup:?}: slot {slot} holds JSON now");
    }

    let old = Filter::open(&lab.layout)
        .expect("open")
        .record()
        .expect("the JSON record is read");
    assert_eq!(old.version, 1, "{lookup:?}");
    assert_eq!(old.policy, policy(OLD_RANGES), "{lookup:?}");
    assert_eq!(old.rule_ids, ids, "{lookup:?}");
    let stats = Filter::open(&lab.layout)
        .expect("open")
        .stats()
        .expect("stats over a JSON record");
    assert_eq!(
        stats.ranges.len(),
        ids.len(),
        "{lookup:?}: one row per prefix"
    );
    for (source, want) in [
        (KEPT, XDP_PASS),
        (REMOVED, XDP_PASS),
        (ADDED, XDP_DROP),
        (ALWAYS, XDP_PASS),
    ] {
        assert_eq!(verdict(&lab, source), want, "{lookup:?}: {source} before");
    }

    let mut filter = Filter::open_for_write(&lab.layout).expect("open for write");
    filter
        .apply_policy(policy(NEW_RANGES))
        .expect("a change over JSON records");
    drop(filter);
    for (source, want) in [
        (KEPT, XDP_PASS),
        (REMOVED, XDP_DROP),
        (ADDED, XDP_PASS),
        (ALWAYS, XDP_PASS),
    ] {
        assert_eq!(verdict(&lab, source), want, "{lookup:?}: {source} after");
    }
    let new = Filter::open(&lab.layout)
        .expect("open")
        .record()
        .expect("record");
    assert_eq!(
        new.version, 2,
        "{lookup:?}: the change wrote a binary record"
    );
    assert_eq!(new.policy, policy(NEW_RANGES), "{lookup:?}");
    let now_active = maps.active_slot().expect("active slot");
    assert_ne!(now_active, active, "{lookup:?}: the change flipped");
    let bytes = maps.read_record(now_active).expect("read").expect("record");
    assert_eq!(&bytes[..4], b"AFRB", "{lookup:?}");
    // Prefixes in both lists kept the ids the JSON record gave them (their hit counts carry
    // over), so the JSON record, not the tries, was the starting point.
    let before = ids_of(&old);
    for (prefix, id) in ids_of(&new) {
        if let Some((_, old_id)) = before.iter().find(|(p, _)| *p == prefix) {
            assert_eq!(id, *old_id, "{lookup:?}: {prefix} kept its rule id");
        }
    }
}
