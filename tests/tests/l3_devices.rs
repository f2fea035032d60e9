//! L3 devices (issue 9, point 2): on a tun device (`ARPHRD_NONE`, as WireGuard) frames start at
//! the IP header, with no Ethernet header. `apifence attach` gives such a device the program's
//! IP-first instance, in skb mode (no L3 driver has native XDP), and refuses a link type it
//! can't parse. Real TCP crosses a real tun device: two tun devices in two namespaces joined by
//! a packet relay (as a VPN daemon joins them), in namespaces the lab creates and deletes, also
//! on failure.

mod daemon_support;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use apifence_tests::{ConnectError, TunDevice, TunWire, connect, require_privileges};
use daemon_support::*;

/// The API server's end of the tunnel.
const TUN_API4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 1);
/// The client's authorized address on the tunnel.
const TUN_GOOD4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 2);
/// The client's unauthorized address on the tunnel.
const TUN_BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 9, 3);
const TUN_API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe9, 0, 0, 0, 0, 0, 1);
const TUN_GOOD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe9, 0, 0, 0, 0, 0, 2);
const TUN_BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe9, 0, 0, 0, 0, 0, 3);
/// The tun device in the API server's namespace (the one filtered) and the client's.
const TUN_API: &str = "tun9";
const TUN_CLIENT: &str = "tun9c";
/// Bound on the daemon noticing a recreated interface.
const REPAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// Adds the API server's addresses to its tun device (again after it is recreated).
fn address_api_side(lab: &DaemonLab) {
    for (address, prefix) in [(IpAddr::V4(TUN_API4), 24), (IpAddr::V6(TUN_API6), 64)] {
        apifence_tests::link::add_address(&lab.api, TUN_API, address, prefix)
            .expect("api tun address");
    }
}

/// The lab's namespaces joined by a tun wire, addressed on both sides.
fn tunnel(lab: &DaemonLab) -> TunWire {
    let wire = TunWire::new(&lab.api, TUN_API, &lab.client, TUN_CLIENT).expect("tun wire");
    address_api_side(lab);
    for (address, prefix) in [
        (IpAddr::V4(TUN_GOOD4), 24),
        (IpAddr::V4(TUN_BAD4), 24),
        (IpAddr::V6(TUN_GOOD6), 64),
        (IpAddr::V6(TUN_BAD6), 64),
    ] {
        apifence_tests::link::add_address(&lab.client, TUN_CLIENT, address, prefix)
            .expect("client tun address");
    }
    wire
}

/// A TCP connection from `src` through the tunnel to the API server's tun address.
fn through_tunnel(lab: &DaemonLab, src: IpAddr, port: u16) -> Result<(), ConnectError> {
    let dst = match src {
        IpAddr::V4(_) => IpAddr::V4(TUN_API4),
        IpAddr::V6(_) => IpAddr::V6(TUN_API6),
    };
    let wait = if port == API_PORT {
        DROP_WAIT
    } else {
        CONNECT_WAIT
    };
    connect(&lab.client, src, SocketAddr::new(dst, port), wait)
}

fn assert_tunnel_connects(lab: &DaemonLab, src: IpAddr, port: u16, why: &str) {
    if let Err(e) = through_tunnel(lab, src, port) {
        panic!("{src} -> tun :{port} should connect ({why}) but {e}");
    }
}

fn assert_tunnel_dropped(lab: &DaemonLab, src: IpAddr, port: u16, why: &str) {
    match through_tunnel(lab, src, port) {
        Err(ConnectError::TimedOut) => {}
        other => panic!("{src} -> tun :{port} should time out ({why}) but got {other:?}"),
    }
}

/// A counter of `stats --json`.
fn counter(lab: &DaemonLab, name: &str) -> u64 {
    lab.json(&["stats", "--json"])[name]
        .as_u64()
        .unwrap_or_else(|| panic!("counter {name}"))
}

#[test]
fn a_tun_device_is_filtered_with_the_ip_first_parser_in_skb_mode() {
    if !require_privileges("a_tun_device_is_filtered_with_the_ip_first_parser_in_skb_mode") {
        return;
    }
    let lab = DaemonLab::new();
    let _wire = tunnel(&lab);
    // The tunnel carries real TCP, and nothing filters it yet.
    assert_tunnel_connects(&lab, v4(TUN_BAD4), API_PORT, "not attached yet");
    assert_tunnel_connects(&lab, v6(TUN_BAD6), API_PORT, "not attached yet");

    // Native mode is refused by the tun driver, with the fix in the message.
    let err = lab.fails(&["attach", "--xdp-mode", "native", TUN_API]);
    assert!(
        err.contains(&format!("attaching to {TUN_API} in native mode"))
            && err.contains("an L3 device")
            && err.contains("--xdp-mode skb or auto"),
        "{err}"
    );
    // Auto picks skb mode, and the IP-first instance.
    let out = lab.cli(&["attach", "api0", TUN_API]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "attached to {TUN_API} (skb mode, an L3 device: frames parsed from the IP header)"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("attached to api0 (native mode)"),
        "{stdout}"
    );
    assert!(
        stderr.contains(&format!("native XDP is not available on {TUN_API}")),
        "{stderr}"
    );
    let shown = lab
        .api
        .ip(&["link", "show", TUN_API])
        .expect("ip link show");
    assert!(shown.contains("xdpgeneric"), "{shown}");
    assert!(
        lab.bpffs().join("apifence_ip").exists(),
        "the IP-first instance is pinned"
    );

    lab.ok(&[
        "ranges",
        "set",
        &format!("{GOOD4},{GOOD6},{TUN_GOOD4},{TUN_GOOD6}/128"),
    ]);
    let before = (
        counter(&lab, "dropped"),
        counter(&lab, "passed_authorized"),
        counter(&lab, "passed_unprotected"),
    );
    assert_tunnel_connects(&lab, v4(TUN_GOOD4), API_PORT, "authorized");
    assert_tunnel_connects(&lab, v6(TUN_GOOD6), API_PORT, "authorized");
    assert_tunnel_dropped(&lab, v4(TUN_BAD4), API_PORT, "not authorized");
    assert_tunnel_dropped(&lab, v6(TUN_BAD6), API_PORT, "not authorized");
    assert_tunnel_connects(&lab, v4(TUN_BAD4), OTHER_PORT, "unprotected port");
    assert_tunnel_connects(&lab, v6(TUN_BAD6), OTHER_PORT, "unprotected port");
    // The Ethernet instance on api0 still works, on the same maps.
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized on api0");
    lab.assert_connects(v4(GOOD4), API_PORT, "authorized on api0");

    let after = (
        counter(&lab, "dropped"),
        counter(&lab, "passed_authorized"),
        counter(&lab, "passed_unprotected"),
    );
    // Each dropped connect retransmits its SYN: at least one drop per refused source.
    assert!(after.0 >= before.0 + 3, "dropped {before:?} -> {after:?}");
    // Each authorized connection: SYN, ACK (and the close) from the client.
    assert!(
        after.1 >= before.1 + 6,
        "authorized {before:?} -> {after:?}"
    );
    assert!(
        after.2 >= before.2 + 4,
        "unprotected {before:?} -> {after:?}"
    );
    let text = lab.ok(&["stats"]);
    let hits = |range: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(range))
            .unwrap_or_else(|| panic!("{range} missing from\n{text}"))
            .split_whitespace()
            .nth(1)
            .and_then(|n| n.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("hits of {range} in\n{text}"))
    };
    assert!(hits(&format!("{TUN_GOOD4}/32")) >= 2, "{text}");
    assert!(hits(&format!("{TUN_GOOD6}/128")) >= 2, "{text}");

    // The bypass report counts the tun device as filtered.
    let report = lab.json(&["check", "--json"]);
    let tun = report["interfaces"]
        .as_array()
        .expect("interfaces")
        .iter()
        .find(|i| i["name"] == TUN_API)
        .unwrap_or_else(|| panic!("{TUN_API} missing from {report}"));
    assert_eq!(tun["filtered"], true, "{report}");
    assert_eq!(report["unfiltered"], 0, "{report}");

    // Detaching the tun device leaves it unfiltered again.
    lab.ok(&["detach", TUN_API]);
    assert_tunnel_connects(&lab, v4(TUN_BAD4), API_PORT, "detached");
}

#[test]
fn the_daemon_reattaches_a_recreated_tun_device_with_the_ip_first_parser() {
    if !require_privileges("the_daemon_reattaches_a_recreated_tun_device_with_the_ip_first_parser")
    {
        return;
    }
    let lab = DaemonLab::new();
    let mut wire = tunnel(&lab);
    lab.write_config(&format!(
        "interfaces = [\"api0\", \"{TUN_API}\"]\nauthorized_ranges = [\"{GOOD4}\", \"{TUN_GOOD4}\"]"
    ));
    lab.start(&[]);
    assert_tunnel_dropped(&lab, v4(TUN_BAD4), API_PORT, "not authorized");
    assert_tunnel_connects(&lab, v4(TUN_GOOD4), API_PORT, "authorized");
    let link_before = lab.status()["links"][TUN_API]["link_id"].as_u64();
    assert!(link_before.is_some(), "{}", lab.status());

    // A VPN daemon restart: the device goes away and comes back with a new index.
    wire.recreate_a(&lab.api).expect("recreate the tun device");
    address_api_side(&lab);
    let repaired = wait_until(REPAIR_WAIT, || {
        let status = lab.cli(&["status", "--json"]);
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&status.stdout) else {
            return false;
        };
        status["reattachments"] == 1 && status["links"][TUN_API]["live"] == true
    });
    assert!(
        repaired,
        "not re-attached within {REPAIR_WAIT:?}:\n{}",
        lab.logs()
    );
    assert_ne!(
        lab.status()["links"][TUN_API]["link_id"].as_u64(),
        link_before,
        "a new link"
    );
    assert!(
        lab.logs().contains("framing=\"ip\"") || lab.logs().contains("framing=ip"),
        "the re-attach used the IP-first instance:\n{}",
        lab.logs()
    );
    // With the Ethernet instance these would pass unjudged.
    assert_tunnel_dropped(&lab, v4(TUN_BAD4), API_PORT, "filtered after the re-attach");
    assert_tunnel_connects(&lab, v4(TUN_GOOD4), API_PORT, "still authorized");

    // A restart that replaces the program swaps each instance on its own links.
    assert!(lab.stop().success());
    lab.start(&["--replace-program"]);
    let logs = lab.logs();
    let replaced_ip = logs.lines().any(|l| {
        l.contains("replaced the program on the existing links")
            && (l.contains("framing=\"ip\"") || l.contains("framing=ip"))
            && l.contains(TUN_API)
            && !l.contains("api0")
    });
    assert!(replaced_ip, "{logs}");
    assert_tunnel_dropped(
        &lab,
        v4(TUN_BAD4),
        API_PORT,
        "filtered after the replacement",
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "api0 filtered after the replacement");
    assert_tunnel_connects(&lab, v4(TUN_GOOD4), API_PORT, "still authorized");
}

#[test]
fn a_link_type_the_filter_cannot_parse_is_refused_naming_the_interface_and_type() {
    if !require_privileges(
        "a_link_type_the_filter_cannot_parse_is_refused_naming_the_interface_and_type",
    ) {
        return;
    }
    let lab = DaemonLab::new();
    lab.ok(&["attach", "api0"]);
    // A tun device whose link type a GRE daemon would set (ARPHRD_IPGRE): XDP's frames there
    // would not start where either parser expects.
    let gre = TunDevice::create(&lab.api, "gre9").expect("tun device");
    gre.set_link_type(778).expect("TUNSETLINK");
    lab.api.ip(&["link", "set", "gre9", "up"]).expect("gre9 up");
    let err = lab.fails(&["attach", "gre9"]);
    assert!(
        err.contains("interface \"gre9\" has link type ARPHRD_IPGRE (778)")
            && err.contains("not attached"),
        "{err}"
    );
    let shown = lab.api.ip(&["link", "show", "gre9"]).expect("ip link show");
    assert!(!shown.contains("xdp"), "nothing attached: {shown}");
    // Nothing else changed: api0 is still the only attachment, still filtering.
    assert!(!lab.bpffs().join("links/gre9").exists(), "no link pinned");
    assert!(
        lab.bpffs().join("links/api0").exists(),
        "api0 still attached"
    );
    assert!(
        !lab.bpffs().join("apifence_ip").exists(),
        "no IP-first instance loaded for a refused device"
    );
    lab.ok(&["ranges", "set", &format!("{GOOD4}")]);
    lab.assert_dropped(v4(BAD4), API_PORT, "api0 still filtered");
    drop(gre);
}
