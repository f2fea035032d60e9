//! End to end: many hosts, one list. A real 3-member etcd cluster and 3 hosts (network
//! namespaces, each with its own daemon, bpffs, socket and state directory) following the
//! cluster's document (`ranges_from = "etcd"`); traffic is checked in each host's namespace.

mod daemon_support;
mod fleet_support;

use apifence_tests::require_privileges;
#[allow(unused_imports)]
use daemon_support::*;
use fleet_support::*;

/// Every host's `fleet status` entry.
fn hosts(status: &serde_json::Value) -> Vec<serde_json::Value> {
    status["hosts"].as_array().expect("hosts").clone()
}

#[test]
fn fleet_set_wait_converges_on_every_host_ipv4_and_ipv6() {
    if !require_privileges("fleet_set_wait_converges_on_every_host_ipv4_and_ipv6") {
        return;
    }
    let lab = FleetLab::new(3, false);
    lab.start_all();

    let first = lab.set(&list(true));
    lab.assert_enforces(true, "authorized by the first revision");

    let second = lab.set(&list(false));
    assert!(second > first);
    lab.assert_enforces(false, "the second revision swapped the list");

    let status = lab.status();
    assert_eq!(status["revision"], second);
    let hosts = hosts(&status);
    assert_eq!(hosts.len(), 3, "{status}");
    for host in &hosts {
        assert_eq!(host["state"], "ok", "{status}");
        assert_eq!(host["applied_revision"], second, "{status}");
        assert_eq!(host["merged"]["v4"], 1, "{status}");
        assert_eq!(host["merged"]["v6"], 1, "{status}");
    }
    let digest = &hosts[0]["kernel_digest"];
    assert!(digest.as_str().is_some_and(|d| d.starts_with("sha256:")));
    assert!(
        hosts.iter().all(|h| h["kernel_digest"] == *digest),
        "every kernel enforces the same policy: {status}"
    );
    assert!(lab.fleet(&["status"]).status.success());
}
