//! The IPv6 /24 filter in the kernel: the program reads a slot's filter words only when the
//! slot's flags say a writer that knows them wrote them (`SLOT_FLAG_V6_FILTER`), and then a
//! clear bit really ends the lookup. Stale words (as an older build writing the slot would
//! leave) are simulated by writing the pinned maps directly.

use std::net::Ipv6Addr;

use apifence::{kernel::operations::Filter, kernel::paths::PinLayout, policy::Lookup};
use apifence_tests::{bpffs::Bpffs, frame::Frame, require_privileges};
use aya::maps::{Array, Map, MapData};
use filter_common::{
    MAP_ACTIVE_SLOT, MAP_SLOT_CONFIG, MAP_TABLE_V6_FILTER, SLOT_FLAG_V6_FILTER, SlotConfig,
    table::filter_base,
};

mod support;

use support::{XDP_DROP, XDP_PASS, enforcing, load_with, test_run};

const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
/// Inside the list's only range.
const AUTHORIZED: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
/// Same /16 (2001::/16), another /24 (2001:0e00::/24): the filter answers it.
const ELSEWHERE: Ipv6Addr = Ipv6Addr::new(0x2001, 0xe00, 0, 0, 0, 0, 0, 5);

fn array<V: aya::Pod>(layout: &PinLayout, name: &str) -> Array<MapData, V> {
    let data = MapData::from_pin(layout.map(name)).expect("open the pinned map");
    Array::try_from(Map::Array(data)).expect("an array map")
}

#[test]
fn filter_words_are_read_only_when_the_slot_says_they_are_valid() {
    if !require_privileges("filter_words_are_read_only_when_the_slot_says_they_are_valid") {
        return;
    }
    let bpffs = Bpffs::new().expect("mount a private bpffs");
    let layout = PinLayout::new(bpffs.path());
    let program = load_with(&layout, enforcing("2001:db8:1::/48"), Lookup::Compiled);
    let verdict = |src: Ipv6Addr| test_run(&program, &Frame::tcp6(src, API6, 6443), 1);
    assert_eq!(verdict(AUTHORIZED), XDP_PASS);
    assert_eq!(verdict(ELSEWHERE), XDP_DROP);

    let slot = array::<u32>(&layout, MAP_ACTIVE_SLOT)
        .get(&0, 0)
        .expect("read ACTIVE_SLOT");
    let mut config = array::<SlotConfig>(&layout, MAP_SLOT_CONFIG);
    let flags = config.get(&slot, 0).expect("read SLOT_CONFIG").flags;
    assert_ne!(
        flags & SLOT_FLAG_V6_FILTER,
        0,
        "the writer marks its filter words valid"
    );

    // A stale word that says no prefix touches the authorized source's /24: read, so the
    // source is dropped.
    let o = AUTHORIZED.octets();
    let slash24 = (u32::from(o[0]) << 16) | (u32::from(o[1]) << 8) | u32::from(o[2]);
    let index = filter_base(slot) + (slash24 >> 6);
    let mut filter = array::<u64>(&layout, MAP_TABLE_V6_FILTER);
    let word = filter.get(&index, 0).expect("read the filter word");
    assert_eq!(
        word >> (slash24 & 63) & 1,
        1,
        "the authorized /24 is marked touched"
    );
    filter
        .set(index, word & !(1 << (slash24 & 63)), 0)
        .expect("write a stale word");
    assert_eq!(verdict(AUTHORIZED), XDP_DROP, "a clear bit ends the lookup");

    // The same word in a slot whose flags don't vouch for its filter words is not read.
    config
        .set(
            slot,
            SlotConfig {
                flags: flags & !SLOT_FLAG_V6_FILTER,
            },
            0,
        )
        .expect("clear the flag");
    assert_eq!(
        verdict(AUTHORIZED),
        XDP_PASS,
        "unflagged filter words are ignored"
    );
    assert_eq!(verdict(ELSEWHERE), XDP_DROP, "and the walk still misses");

    // The next writers rewrite the whole table of a slot without the flag: after two changes
    // (one per slot) both slots are flagged again and the stale word is gone.
    for ranges in ["2001:db8:1::/48, 2001:db8:2::/48", "2001:db8:1::/48"] {
        Filter::open_for_write(&layout)
            .expect("open for write")
            .apply_policy(enforcing(ranges))
            .expect("apply");
    }
    let slot = array::<u32>(&layout, MAP_ACTIVE_SLOT)
        .get(&0, 0)
        .expect("read ACTIVE_SLOT");
    assert_ne!(
        config.get(&slot, 0).expect("read SLOT_CONFIG").flags & SLOT_FLAG_V6_FILTER,
        0
    );
    assert_eq!(verdict(AUTHORIZED), XDP_PASS);
    assert_eq!(verdict(ELSEWHERE), XDP_DROP);
}
