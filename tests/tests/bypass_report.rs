//! The bypass report (issue 9, point 2): `apifence check` names the up interfaces of the
//! namespace that could deliver traffic to the protected ports without passing the filter,
//! with their kinds, and fails until each is filtered or gone. Real devices in a namespace the
//! lab creates (and deletes with everything in it, also on failure).

mod daemon_support;

use apifence_tests::require_privileges;
use daemon_support::*;
use std::time::Duration;

/// The check's JSON entry for `name`.
fn entry<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["interfaces"]
        .as_array()
        .expect("interfaces array")
        .iter()
        .find(|i| i["name"] == name)
        .unwrap_or_else(|| panic!("{name} missing from {report}"))
}

#[test]
fn check_names_an_unfiltered_vxlan_and_tun_device_until_they_are_filtered_or_gone() {
    if !require_privileges(
        "check_names_an_unfiltered_vxlan_and_tun_device_until_they_are_filtered_or_gone",
    ) {
        return;
    }
    let lab = DaemonLab::new();
    lab.ok(&["attach", "api0"]);
    for args in [
        &[
            "link", "add", "vxlan42", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "api0",
        ][..],
        &["link", "set", "vxlan42", "up"],
        &["tuntap", "add", "dev", "tun0", "mode", "tun"],
        &["link", "set", "tun0", "up"],
    ] {
        lab.api
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    }

    // Human output: both named with their kinds, the fix in the error, exit non-zero.
    let out = lab.cli(&["check"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stdout}\n{stderr}");
    let line = |name: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing from\n{stdout}"))
            .to_string()
    };
    assert!(
        line("vxlan42").contains("vxlan") && line("vxlan42").contains("BYPASS"),
        "{stdout}"
    );
    assert!(
        line("tun0").contains("tun") && line("tun0").contains("BYPASS"),
        "{stdout}"
    );
    assert!(
        line("api0").contains("veth") && line("api0").contains("filtered"),
        "{stdout}"
    );
    assert!(!stdout.lines().any(|l| l.starts_with("lo ")), "{stdout}");
    assert!(
        stderr.contains("2 unfiltered interface(s) could deliver traffic to the protected ports")
            && stderr.contains("vxlan42 (vxlan)")
            && stderr.contains("tun0 (tun)")
            && stderr.contains("apifence attach vxlan42 tun0"),
        "{stderr}"
    );

    // JSON: the same, machine-readable.
    let out = lab.cli(&["check", "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert_eq!(report["unfiltered"], 2, "{report}");
    assert_eq!(entry(&report, "vxlan42")["kind"], "vxlan");
    assert_eq!(entry(&report, "vxlan42")["bypass"], true);
    assert_eq!(entry(&report, "tun0")["kind"], "tun");
    assert_eq!(entry(&report, "tun0")["bypass"], true);
    assert_eq!(entry(&report, "api0")["filtered"], true);
    assert_eq!(entry(&report, "api0")["bypass"], false);

    // Attaching to the vxlan device fixes one; the tun device is still named.
    lab.ok(&["attach", "--xdp-mode", "skb", "vxlan42"]);
    let out = lab.cli(&["check", "--json"]);
    assert!(!out.status.success());
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("check --json");
    assert_eq!(report["unfiltered"], 1, "{report}");
    assert_eq!(entry(&report, "vxlan42")["filtered"], true);
    assert_eq!(entry(&report, "tun0")["bypass"], true);

    // Deleting the tun device leaves nothing unfiltered: exit 0.
    lab.api.ip(&["link", "del", "tun0"]).expect("delete tun0");
    let out = lab.ok(&["check"]);
    assert!(!out.contains("BYPASS"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("vxlan42 ") && l.contains("filtered")),
        "{out}"
    );

    // A detached interface is a bypass again.
    lab.ok(&["detach", "vxlan42"]);
    let err = lab.fails(&["check"]);
    assert!(err.contains("vxlan42 (vxlan)"), "{err}");
}

#[test]
fn the_daemon_logs_the_bypass_report_and_counts_it_in_a_metric() {
    if !require_privileges("the_daemon_logs_the_bypass_report_and_counts_it_in_a_metric") {
        return;
    }
    let lab = DaemonLab::new();
    lab.api
        .ip(&["tuntap", "add", "dev", "tun0", "mode", "tun"])
        .expect("add tun0");
    lab.api.ip(&["link", "set", "tun0", "up"]).expect("tun0 up");
    lab.write_raw_config(&config_with_metrics(
        &lab,
        &format!("authorized_ranges = [\"{GOOD4}\", \"{GOOD6}\"]"),
    ));
    lab.start(&[]);

    // At start: the tun device is logged and counted (api0 is the daemon's, so filtered).
    let logged = wait_until(Duration::from_secs(10), || {
        lab.logs()
            .contains("unfiltered interface could deliver traffic")
    });
    let logs = lab.logs();
    assert!(
        logged && logs.contains("tun0") && logs.contains("kind=tun"),
        "{logs}"
    );
    let (status, body) = http_get(&lab, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert_eq!(
        sample(&body, "apifence_unfiltered_interfaces"),
        Some(1.0),
        "{body}"
    );

    // After a link change: a new vxlan device is logged and counted without a restart.
    for args in [
        &[
            "link", "add", "vxlan42", "type", "vxlan", "id", "42", "dstport", "4789", "dev", "api0",
        ][..],
        &["link", "set", "vxlan42", "up"],
    ] {
        lab.api
            .ip(args)
            .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    }
    let logged = wait_until(Duration::from_secs(10), || {
        lab.logs().contains("kind=vxlan")
    });
    assert!(logged, "{}", lab.logs());
    let (_, body) = http_get(&lab, "/metrics");
    assert_eq!(
        sample(&body, "apifence_unfiltered_interfaces"),
        Some(2.0),
        "{body}"
    );

    // Once both are gone, the count is 0 and the log says so.
    lab.api.ip(&["link", "del", "tun0"]).expect("delete tun0");
    lab.api
        .ip(&["link", "del", "vxlan42"])
        .expect("delete vxlan42");
    let cleared = wait_until(Duration::from_secs(10), || {
        lab.logs()
            .contains("no unfiltered interface can deliver traffic to the protected ports")
    });
    assert!(cleared, "{}", lab.logs());
    let (_, body) = http_get(&lab, "/metrics");
    assert_eq!(
        sample(&body, "apifence_unfiltered_interfaces"),
        Some(0.0),
        "{body}"
    );
    lab.ok(&["check"]);
}
