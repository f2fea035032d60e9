//! Verdict table: hand-built frames for every parse path run through `BPF_PROG_TEST_RUN`
//! against the real program and real maps, checking the XDP action and the counters, with
//! each lookup (the compiled table and the LPM trie), and for both instances of the program:
//! Ethernet frames, and frames that start at the IP header (L3 devices).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use apifence::{
    kernel::framing::Framing,
    kernel::operations::{Filter, Stats},
    policy::{Lookup, Mode, Policy},
};
use apifence_tests::{
    frame::{ExtHeader, Frame},
    require_privileges,
};
use aya::maps::{Map, MapData, RingBuf};
use filter_common::{DENY_KIND_DROPPED, DenyEvent, MAP_DENY_EVENTS};

mod support;

use support::{Lab, XDP_DROP, XDP_PASS};

const API: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const AUTHORIZED: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 10);
const STRANGER: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const ALWAYS: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 9);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 1);
const AUTHORIZED6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 1, 0, 0, 0, 0, 5);
const STRANGER6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, 0, 5);

const RANGES: &str = "198.51.100.0/24, 2001:db8:1::/48";

/// Which verdict counter a frame must add to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Counted {
    Authorized,
    Unprotected,
    Disabled,
    Dropped,
    WouldDrop,
}

/// One row of the table.
struct Case {
    name: &'static str,
    frame: Frame,
    action: u32,
    counted: Counted,
    malformed: bool,
}

fn case(name: &'static str, frame: Frame, action: u32, counted: Counted) -> Case {
    Case {
        name,
        frame,
        action,
        counted,
        malformed: false,
    }
}

fn malformed(name: &'static str, frame: Frame, action: u32, counted: Counted) -> Case {
    Case {
        malformed: true,
        ..case(name, frame, action, counted)
    }
}

impl Lab {
    /// Runs the case and checks its action and that exactly the expected counters moved.
    fn check(&self, case: &Case) {
        let name = format!("{} ({})", case.name, self.lookup.name());
        let before = self.stats();
        let got = self.run(&case.frame);
        let after = self.stats();
        assert_eq!(got, case.action, "{name}: action");
        let delta = |f: fn(&Stats) -> u64| f(&after) - f(&before);
        let moved = [
            (Counted::Authorized, delta(|s| s.passed_authorized)),
            (Counted::Unprotected, delta(|s| s.passed_unprotected)),
            (Counted::Disabled, delta(|s| s.passed_disabled)),
            (Counted::Dropped, delta(|s| s.dropped)),
            (Counted::WouldDrop, delta(|s| s.would_drop)),
        ];
        for (which, by) in moved {
            let want = u64::from(which == case.counted);
            assert_eq!(
                by, want,
                "{name}: counter {which:?} moved by {by}, expected {want}"
            );
        }
        assert_eq!(
            delta(|s| s.malformed),
            u64::from(case.malformed),
            "{name}: malformed counter"
        );
    }
}

fn policy(ranges: &str, mode: Mode) -> Policy {
    Policy {
        ranges: ranges.parse().expect("test list"),
        always_allow: vec![IpAddr::V4(ALWAYS).into()],
        mode,
        ..Policy::default()
    }
}

fn tcp4(src: Ipv4Addr, port: u16) -> Frame {
    Frame::tcp4(src, API, port)
}

fn tcp6(src: Ipv6Addr, port: u16) -> Frame {
    Frame::tcp6(src, API6, port)
}

#[test]
fn verdict_table_enforce() {
    if !require_privileges("verdict_table_enforce") {
        return;
    }
    for lookup in Lookup::ALL {
        verdict_table_enforce_with(lookup);
    }
}

fn verdict_table_enforce_with(lookup: Lookup) {
    use Counted::*;
    let lab = Lab::with_lookup(lookup, policy(RANGES, Mode::Enforce));
    let nine_ext = (0..9).fold(tcp6(STRANGER6, 8080), |f, _| f.ext(ExtHeader::dest_opts()));
    let table = vec![
        case(
            "ipv4 authorized 6443",
            tcp4(AUTHORIZED, 6443),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ipv4 stranger 6443",
            tcp4(STRANGER, 6443),
            XDP_DROP,
            Dropped,
        ),
        case("ipv4 stranger 443", tcp4(STRANGER, 443), XDP_DROP, Dropped),
        case(
            "ipv4 stranger other port",
            tcp4(STRANGER, 8080),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ipv4 always-allow",
            tcp4(ALWAYS, 6443),
            XDP_PASS,
            Authorized,
        ),
        case(
            "udp to a protected port",
            Frame::udp4(STRANGER, API, 6443),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ipv6 authorized",
            tcp6(AUTHORIZED6, 6443),
            XDP_PASS,
            Authorized,
        ),
        case("ipv6 stranger", tcp6(STRANGER6, 6443), XDP_DROP, Dropped),
        case(
            "ipv6 stranger other port",
            tcp6(STRANGER6, 8080),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "udp6 to a protected port",
            Frame::udp6(STRANGER6, API6, 443),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "802.1Q stranger",
            tcp4(STRANGER, 6443).vlan(0x8100, 10),
            XDP_DROP,
            Dropped,
        ),
        case(
            "802.1Q authorized",
            tcp4(AUTHORIZED, 6443).vlan(0x8100, 10),
            XDP_PASS,
            Authorized,
        ),
        case(
            "QinQ stranger",
            tcp4(STRANGER, 6443).vlan(0x88a8, 100).vlan(0x8100, 10),
            XDP_DROP,
            Dropped,
        ),
        case(
            "QinQ ipv6 authorized",
            tcp6(AUTHORIZED6, 443).vlan(0x88a8, 100).vlan(0x8100, 10),
            XDP_PASS,
            Authorized,
        ),
        malformed(
            "three VLAN tags are not let through unjudged",
            tcp4(AUTHORIZED, 8080)
                .vlan(0x88a8, 1)
                .vlan(0x8100, 2)
                .vlan(0x8100, 3),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv4 options stranger",
            tcp4(STRANGER, 6443).ipv4_options(12),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv4 options: port read after the options",
            tcp4(STRANGER, 8080).ipv4_options(40),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ipv4 later fragment stranger",
            tcp4(STRANGER, 8080).fragment(100, false),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv4 later fragment authorized",
            tcp4(AUTHORIZED, 8080).fragment(100, true),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ipv4 first fragment too short for the ports",
            tcp4(STRANGER, 8080).fragment(0, true).truncate(14 + 20 + 2),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ipv4 IHL < 5",
            tcp4(AUTHORIZED, 6443).ihl(4),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ipv4 truncated header",
            tcp4(AUTHORIZED, 6443).truncate(14 + 12),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ipv4 options cut off",
            tcp4(AUTHORIZED, 6443).ihl(15).truncate(14 + 40),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ipv6 truncated header",
            tcp6(AUTHORIZED6, 6443).truncate(14 + 30),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv6 extension chain stranger",
            tcp6(STRANGER6, 6443)
                .ext(ExtHeader::hop_by_hop())
                .ext(ExtHeader::routing())
                .ext(ExtHeader::dest_opts()),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv6 extension chain: port read after the chain",
            tcp6(STRANGER6, 8080)
                .ext(ExtHeader::hop_by_hop())
                .ext(ExtHeader::DestOpts { ext_len: 3 })
                .ext(ExtHeader::ah()),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ipv6 extension chain authorized",
            tcp6(AUTHORIZED6, 6443)
                .ext(ExtHeader::hop_by_hop())
                .ext(ExtHeader::ah()),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ipv6 first fragment to another port",
            tcp6(STRANGER6, 8080).fragment(0, true),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ipv6 later fragment stranger",
            tcp6(STRANGER6, 8080).fragment(64, false),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ipv6 chain longer than the bound",
            nine_ext,
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ipv6 truncated extension header",
            tcp6(STRANGER6, 8080)
                .ext(ExtHeader::hop_by_hop())
                .truncate(14 + 40 + 1),
            XDP_DROP,
            Dropped,
        ),
        case(
            "non-IP frame",
            tcp4(STRANGER, 6443).ethertype(0x0806),
            XDP_PASS,
            Unprotected,
        ),
    ];
    for row in &table {
        lab.check(row);
    }
}

#[test]
fn verdict_table_ip_first() {
    if !require_privileges("verdict_table_ip_first") {
        return;
    }
    for lookup in Lookup::ALL {
        verdict_table_ip_first_with(lookup);
    }
}

/// The instance for L3 devices: the same verdicts, with the version nibble choosing the family.
fn verdict_table_ip_first_with(lookup: Lookup) {
    use Counted::*;
    let lab = Lab::framed(Framing::Ip, lookup, policy(RANGES, Mode::Enforce));
    let ip = |frame: Frame| frame.ip_first();
    let table = vec![
        case(
            "ip-first ipv4 authorized 6443",
            ip(tcp4(AUTHORIZED, 6443)),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ip-first ipv4 stranger 6443",
            ip(tcp4(STRANGER, 6443)),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ip-first ipv4 stranger other port",
            ip(tcp4(STRANGER, 8080)),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ip-first ipv4 always-allow",
            ip(tcp4(ALWAYS, 443)),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ip-first udp to a protected port",
            ip(Frame::udp4(STRANGER, API, 6443)),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ip-first ipv4 options stranger",
            ip(tcp4(STRANGER, 6443).ipv4_options(12)),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ip-first ipv4 later fragment stranger",
            ip(tcp4(STRANGER, 8080).fragment(100, false)),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ip-first ipv6 authorized",
            ip(tcp6(AUTHORIZED6, 6443)),
            XDP_PASS,
            Authorized,
        ),
        case(
            "ip-first ipv6 stranger",
            ip(tcp6(STRANGER6, 6443)),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ip-first ipv6 stranger other port",
            ip(tcp6(STRANGER6, 8080)),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ip-first ipv6 extension chain stranger",
            ip(tcp6(STRANGER6, 6443)
                .ext(ExtHeader::hop_by_hop())
                .ext(ExtHeader::routing())),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ip-first ipv4 truncated header",
            ip(tcp4(AUTHORIZED, 6443)).truncate(14),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ip-first ipv4 IHL < 5",
            ip(tcp4(AUTHORIZED, 6443).ihl(4)),
            XDP_DROP,
            Dropped,
        ),
        malformed(
            "ip-first ipv6 truncated header",
            ip(tcp6(AUTHORIZED6, 6443)).truncate(30),
            XDP_DROP,
            Dropped,
        ),
        case(
            "ip-first ipv4 first fragment too short for the ports",
            ip(tcp4(STRANGER, 8080).fragment(0, true)).truncate(20 + 2),
            XDP_DROP,
            Dropped,
        ),
        // The IPv4 and IPv6 receive paths drop a packet whose version is not theirs: it can't
        // reach TCP, so it is not filtered (as a non-IP EtherType on Ethernet).
        case(
            "ip-first version nibble 5",
            ip(tcp4(STRANGER, 6443).ip_version(5)),
            XDP_PASS,
            Unprotected,
        ),
        case(
            "ip-first version nibble 0",
            ip(tcp6(STRANGER6, 6443).ip_version(0)),
            XDP_PASS,
            Unprotected,
        ),
        // Cut right after the destination port: still read.
        case(
            "ip-first ipv6 stranger cut after the port",
            ip(tcp6(STRANGER6, 6443)).truncate(40 + 4),
            XDP_DROP,
            Dropped,
        ),
        // An Ethernet frame on an L3 device starts with a MAC address, not IP (nibble 0).
        case(
            "ethernet frame given to the ip-first instance",
            tcp4(STRANGER, 6443),
            XDP_PASS,
            Unprotected,
        ),
    ];
    for row in &table {
        lab.check(row);
    }

    // The Ethernet instance, on the same maps, reads an IP-first frame's first bytes as MAC
    // addresses: nothing to judge. This is why an L3 device needs the other instance.
    let ethernet = Lab::with_lookup(lookup, policy(RANGES, Mode::Enforce));
    ethernet.check(&case(
        "ip-first frame given to the ethernet instance",
        ip(tcp4(STRANGER, 6443)),
        XDP_PASS,
        Unprotected,
    ));
}

#[test]
fn ip_first_monitor_mode_passes_and_counts_would_drop() {
    if !require_privileges("ip_first_monitor_mode_passes_and_counts_would_drop") {
        return;
    }
    use Counted::*;
    let lab = Lab::framed(
        Framing::Ip,
        Lookup::default(),
        policy(RANGES, Mode::Monitor),
    );
    lab.check(&case(
        "ip-first stranger",
        tcp4(STRANGER, 6443).ip_first(),
        XDP_PASS,
        WouldDrop,
    ));
    lab.check(&case(
        "ip-first authorized v6",
        tcp6(AUTHORIZED6, 443).ip_first(),
        XDP_PASS,
        Authorized,
    ));
    lab.check(&malformed(
        "ip-first malformed",
        tcp4(AUTHORIZED, 6443).ihl(3).ip_first(),
        XDP_PASS,
        WouldDrop,
    ));
}

#[test]
fn monitor_mode_passes_and_counts_would_drop() {
    if !require_privileges("monitor_mode_passes_and_counts_would_drop") {
        return;
    }
    for lookup in Lookup::ALL {
        monitor_mode_passes_and_counts_would_drop_with(lookup);
    }
}

fn monitor_mode_passes_and_counts_would_drop_with(lookup: Lookup) {
    use Counted::*;
    let lab = Lab::with_lookup(lookup, policy(RANGES, Mode::Monitor));
    lab.check(&case("stranger", tcp4(STRANGER, 6443), XDP_PASS, WouldDrop));
    lab.check(&case(
        "authorized",
        tcp4(AUTHORIZED, 6443),
        XDP_PASS,
        Authorized,
    ));
    lab.check(&malformed(
        "malformed",
        tcp4(AUTHORIZED, 6443).ihl(3),
        XDP_PASS,
        WouldDrop,
    ));
}

#[test]
fn disabled_list_passes_everything_still_counted() {
    if !require_privileges("disabled_list_passes_everything_still_counted") {
        return;
    }
    for lookup in Lookup::ALL {
        disabled_list_passes_everything_still_counted_with(lookup);
    }
}

fn disabled_list_passes_everything_still_counted_with(lookup: Lookup) {
    use Counted::*;
    let lab = Lab::with_lookup(lookup, policy("", Mode::Enforce));
    lab.check(&case("stranger", tcp4(STRANGER, 6443), XDP_PASS, Disabled));
    lab.check(&case(
        "other port",
        tcp4(STRANGER, 8080),
        XDP_PASS,
        Unprotected,
    ));
}

#[test]
fn only_always_allowed_blocks_everyone_else() {
    if !require_privileges("only_always_allowed_blocks_everyone_else") {
        return;
    }
    for lookup in Lookup::ALL {
        only_always_allowed_blocks_everyone_else_with(lookup);
    }
}

fn only_always_allowed_blocks_everyone_else_with(lookup: Lookup) {
    use Counted::*;
    let lab = Lab::with_lookup(lookup, policy("0.0.0.0/32", Mode::Enforce));
    let formerly = case(
        "formerly authorized",
        tcp4(AUTHORIZED, 6443),
        XDP_DROP,
        Dropped,
    );
    lab.check(&formerly);
    lab.check(&case(
        "always-allow",
        tcp4(ALWAYS, 6443),
        XDP_PASS,
        Authorized,
    ));
}

#[test]
fn rule_hits_and_deny_events_name_the_range_and_the_source() {
    if !require_privileges("rule_hits_and_deny_events_name_the_range_and_the_source") {
        return;
    }
    for lookup in Lookup::ALL {
        rule_hits_and_deny_events_name_the_range_and_the_source_with(lookup);
    }
}

fn rule_hits_and_deny_events_name_the_range_and_the_source_with(lookup: Lookup) {
    let lab = Lab::with_lookup(lookup, policy(RANGES, Mode::Enforce));
    for _ in 0..3 {
        assert_eq!(lab.run(&tcp4(AUTHORIZED, 443)), XDP_PASS);
    }
    assert_eq!(lab.run(&tcp4(ALWAYS, 443)), XDP_PASS);
    assert_eq!(lab.run(&tcp4(STRANGER, 6443)), XDP_DROP);

    let stats = lab.stats();
    let find = |range: &str| {
        stats
            .ranges
            .iter()
            .find(|r| r.range == range)
            .unwrap_or_else(|| panic!("{range} missing from {:?}", stats.ranges))
            .clone()
    };
    assert_eq!(find("198.51.100.0/24").hits, 3);
    assert!(!find("198.51.100.0/24").always_allow);
    assert_eq!(find("203.0.113.9/32").hits, 1);
    assert!(find("203.0.113.9/32").always_allow);
    assert_eq!(find("2001:db8:1::/48").hits, 0);

    // Hits survive a policy change that keeps the range.
    Filter::open_for_write(&lab.layout)
        .expect("open")
        .apply_policy(policy("198.51.100.0/24, 192.0.2.128/25", Mode::Enforce))
        .expect("apply");
    let after = lab.stats();
    let kept = after.ranges.iter().find(|r| r.range == "198.51.100.0/24");
    assert_eq!(kept.map(|r| r.hits), Some(3));
    let added = after.ranges.iter().find(|r| r.range == "192.0.2.128/25");
    assert_eq!(added.map(|r| r.hits), Some(0));

    let map = MapData::from_pin(lab.layout.map(MAP_DENY_EVENTS))
        .and_then(Map::from_map_data)
        .expect("open deny events");
    let mut ring = RingBuf::try_from(map).expect("ring buffer");
    let item = ring.next().expect("one deny event");
    assert_eq!(item.len(), std::mem::size_of::<DenyEvent>());
    // SAFETY: the program writes exactly one `DenyEvent` per record (length checked above).
    let event: DenyEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
    assert_eq!(event.family, 4);
    assert_eq!(event.source[..4], STRANGER.octets());
    assert_eq!(event.port, 6443);
    assert_eq!(event.kind, DENY_KIND_DROPPED);
}
