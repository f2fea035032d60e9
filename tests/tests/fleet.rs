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

    // On a host the document owns the list: local changes point to apifence fleet.
    let host = &lab.hosts[0];
    let refused = host.fails(&["ranges", "add", "203.0.113.7"]);
    assert!(refused.contains("apifence fleet"), "{refused}");
    let refused = host.fails(&["mode", "monitor"]);
    assert!(refused.contains("apifence fleet"), "{refused}");
    let status = host.ok(&["status"]);
    assert!(
        status.contains(&format!(
            "source:          etcd ok, enforcing revision {second}"
        )),
        "{status}"
    );
}

/// The daemon's own view of its source (`status --json` → `source`).
fn source(host: &DaemonLab) -> serde_json::Value {
    host.status()["source"].clone()
}

/// Waits (bounded) until every host's daemon says its source is healthy (or not).
fn wait_health(lab: &FleetLab, healthy: bool, why: &str) {
    for (i, host) in lab.hosts.iter().enumerate() {
        assert!(
            wait_until(NOTICE_WAIT, || source(host)["healthy"] == healthy),
            "host{i}: source healthy should be {healthy} ({why}): {}\n{}",
            source(host),
            lab.logs()
        );
    }
}

/// Waits (bounded) until `fleet status` shows every host in `state` at `revision`.
fn wait_fleet(lab: &FleetLab, state: &str, revision: Option<i64>) -> serde_json::Value {
    wait_fleet_error(lab, state, revision, "")
}

/// [`wait_fleet`], also until every host's error contains `error`.
fn wait_fleet_error(
    lab: &FleetLab,
    state: &str,
    revision: Option<i64>,
    error: &str,
) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let done = wait_until(NOTICE_WAIT, || {
        let out = lab.fleet(&["status", "--json"]);
        last = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let hosts = last["hosts"].as_array().cloned().unwrap_or_default();
        hosts.len() == lab.hosts.len()
            && hosts.iter().all(|h| {
                h["state"] == state
                    && revision.is_none_or(|r| h["applied_revision"] == r)
                    && h["error"].as_str().unwrap_or_default().contains(error)
            })
    });
    assert!(
        done,
        "fleet status never showed every host {state}: {last}\n{}",
        lab.logs()
    );
    last
}

#[test]
fn all_members_down_every_host_keeps_enforcing_says_so_and_catches_up() {
    if !require_privileges("all_members_down_every_host_keeps_enforcing_says_so_and_catches_up") {
        return;
    }
    let mut lab = FleetLab::new(3, false);
    lab.start_all();
    let good = lab.set(&list(true));

    lab.etcd.kill_all();
    wait_health(&lab, false, "every etcd member was killed");
    for host in &lab.hosts {
        let error = source(host)["error"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(
            error.contains(&format!(
                "enforcing revision {good} (the last good document)"
            )),
            "{error}"
        );
        assert_eq!(source(host)["applied_revision"], good);
    }
    lab.assert_enforces(true, "etcd is down: the last good list stays enforced");
    let out = lab.fleet(&["status"]);
    assert!(!out.status.success(), "fleet status without etcd must fail");
    assert!(String::from_utf8_lossy(&out.stderr).contains("etcd"));

    lab.etcd.restart_all().expect("etcd back");
    // Written at once, while the hosts are still backing off: they catch up by reading.
    let out = lab.fleet_ok(&["set", &list(false)]);
    let latest = revision_written(&out);
    wait_fleet(&lab, "ok", Some(latest));
    wait_health(&lab, true, "etcd is back");
    lab.assert_enforces(
        false,
        "caught up with the revision written while they reconnected",
    );
    assert!(lab.logs().contains("fleet: etcd answers again"));
}

/// `sha256sum` of `bytes`, in hex.
fn sha256(bytes: &[u8]) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(bytes)
        .expect("write");
    let out = child.wait_with_output().expect("sha256sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

#[test]
fn an_invalid_document_is_rejected_by_every_host_and_shown_in_fleet_status() {
    if !require_privileges(
        "an_invalid_document_is_rejected_by_every_host_and_shown_in_fleet_status",
    ) {
        return;
    }
    let lab = FleetLab::new(3, false);
    lab.start_all();
    let good = lab.set(&list(true));

    // Not a pointer at all.
    let garbage = lab
        .etcd
        .put("/apifence/default/current", b"{not json")
        .expect("put");
    let status = wait_fleet_error(
        &lab,
        "failing",
        Some(good),
        &format!("revision {garbage} rejected"),
    );
    for host in status["hosts"].as_array().expect("hosts") {
        let error = host["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("revision {garbage} rejected")),
            "{status}"
        );
        assert!(error.contains("apifence fleet set"), "{status}");
    }
    let out = lab.fleet(&["status"]);
    assert!(!out.status.success(), "a failing host fails fleet status");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("3 live host(s) behind or failing"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_enforces(true, "a garbage pointer keeps the last good list");

    // A well-formed, correctly chunked document whose list breaks the range language.
    let document = br#"{"version":1,"authorized":{"enabled":true,"entries":[{"range":"198.18.1.3/8"}]},"always_allow":[],"mode":"enforce"}"#;
    let digest = sha256(document);
    lab.etcd
        .put(&format!("/apifence/default/chunks/{digest}"), document)
        .expect("put chunk");
    let pointer = format!(
        r#"{{"version":1,"digest":"sha256:{digest}","size":{},"chunks":["{digest}"]}}"#,
        document.len()
    );
    let invalid = lab
        .etcd
        .put("/apifence/default/current", pointer.as_bytes())
        .expect("put pointer");
    let status = wait_fleet_error(
        &lab,
        "failing",
        Some(good),
        &format!("revision {invalid} rejected"),
    );
    for host in status["hosts"].as_array().expect("hosts") {
        let error = host["error"].as_str().unwrap_or_default();
        assert!(
            error.contains(&format!("revision {invalid} rejected")),
            "{status}"
        );
        assert!(error.contains("198.18.1.3/8"), "{status}");
    }
    lab.assert_enforces(true, "an invalid list keeps the last good one");

    // A name no host can resolve: --wait fails, naming a host and why.
    let out = lab.fleet(&["set", "AzureCloud", CONVERGE_WAIT]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not apply revision"), "{stderr}");
    assert!(stderr.contains("AzureCloud"), "{stderr}");
    lab.assert_enforces(true, "an unresolvable name keeps the last good list");

    let fixed = lab.set(&list(false));
    wait_fleet(&lab, "ok", Some(fixed));
    lab.assert_enforces(false, "a valid document after invalid ones is applied");
}

#[test]
fn kill_9_and_restart_while_etcd_is_unreachable_enforces_the_persisted_list() {
    if !require_privileges(
        "kill_9_and_restart_while_etcd_is_unreachable_enforces_the_persisted_list",
    ) {
        return;
    }
    let mut lab = FleetLab::new(3, false);
    lab.start_all();
    let good = lab.set(&list(true));
    lab.etcd.kill_all();
    let host = &lab.hosts[0];
    host.kill9();
    // The config's own list is empty (filtering disabled): only the persisted document
    // drops the stranger.
    host.start(&[]);
    lab.assert_host_enforces(
        0,
        host,
        true,
        "restarted without etcd: the persisted document",
    );
    assert!(
        wait_until(NOTICE_WAIT, || source(host)["healthy"] == false),
        "{}",
        source(host)
    );
    assert_eq!(source(host)["applied_revision"], good);
    assert!(
        host.logs().contains("until etcd answers"),
        "{}",
        host.logs()
    );
}

#[test]
fn tls_with_client_certificates_and_refused_without_them() {
    if !require_privileges("tls_with_client_certificates_and_refused_without_them") {
        return;
    }
    let lab = FleetLab::new(3, true);
    lab.start_all();
    lab.set(&list(true));
    lab.assert_enforces(true, "converged over TLS with client certificates");
    let status = wait_fleet(&lab, "ok", None);
    assert_eq!(status["hosts"].as_array().map(Vec::len), Some(3));

    let pki = lab.pki.clone().expect("pki");
    let endpoints = lab.etcd.local_endpoints().join(",");
    let no_client_cert = [
        "--endpoints".to_string(),
        endpoints.clone(),
        "--ca".to_string(),
        pki.ca.display().to_string(),
    ];
    let out = lab.fleet_with(&["status"], &no_client_cert);
    assert!(
        !out.status.success(),
        "no client certificate must be refused"
    );
    let plain = [
        "--endpoints".to_string(),
        endpoints.replace("https://", "http://"),
    ];
    let out = lab.fleet_with(&["status"], &plain);
    assert!(
        !out.status.success(),
        "plain HTTP to a TLS cluster must fail"
    );
    let out = lab.fleet_with(&["set", &list(false)], &no_client_cert);
    assert!(!out.status.success());
    lab.assert_enforces(true, "refused writers changed nothing");

    // check-config --connect tries the host's TLS files for real.
    let host = &lab.hosts[0];
    let config = host.config().display().to_string();
    let out = host.ok(&["check-config", "--connect", &config]);
    assert!(out.contains("TLS with a client certificate"), "{out}");
    assert!(out.contains("connected:       document revision"), "{out}");
    let without = host.config().with_extension("nocert.toml");
    let text = std::fs::read_to_string(host.config()).expect("config");
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("cert =") && !l.starts_with("key ="))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(&without, text).expect("write config");
    let error = host.fails(&["check-config", "--connect", &without.display().to_string()]);
    assert!(error.contains("etcd"), "{error}");
}

#[test]
fn a_100k_prefix_list_goes_through_chunks_and_converges() {
    if !require_privileges("a_100k_prefix_list_goes_through_chunks_and_converges") {
        return;
    }
    let lab = FleetLab::new(3, false);
    lab.start_all();
    // 50,000 per family, spaced so that none merge, plus the lab's authorized addresses.
    let mut text = list(true).replace(',', "\n");
    for i in 0u32..50_000 {
        let v4 = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(20, 0, 0, 0)) + 2 * i);
        text.push_str(&format!(
            "\n{v4}\n2001:db8:{:x}:{:x}::/64",
            i >> 15,
            2 * (i & 0x7fff)
        ));
    }
    let file = lab.dir().join("100k.txt");
    std::fs::write(&file, &text).expect("list file");
    let out = lab.fleet_within(
        &["set", "--file", &file.display().to_string(), "--wait=240s"],
        &lab.etcd_flags(),
        std::time::Duration::from_secs(300),
    );
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        lab.logs()
    );
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let out = String::from_utf8_lossy(&out.stdout).into_owned();
    let revision = revision_written(&out);
    assert!(
        out.contains("all 3 live hosts enforce revision"),
        "{out}{err}{}",
        String::from_utf8_lossy(&lab.fleet(&["status", "--json"]).stdout)
    );
    let show = lab.fleet_ok(&["show", "--json"]);
    let show: serde_json::Value = serde_json::from_str(&show).expect("show json");
    assert!(
        show["chunks"].as_u64().is_some_and(|c| c >= 2),
        "chunked: {}",
        show["size"]
    );
    assert_eq!(show["revision"], revision);
    let status = wait_fleet(&lab, "ok", Some(revision));
    for host in status["hosts"].as_array().expect("hosts") {
        assert_eq!(host["merged"]["v4"], 50_001, "{host}");
        assert_eq!(host["merged"]["v6"], 50_001, "{host}");
    }
    lab.assert_enforces(true, "the 100k list authorizes GOOD and not BAD");
}

#[test]
fn a_host_cut_off_through_changes_and_a_compaction_keeps_enforcing_then_catches_up() {
    if !require_privileges(
        "a_host_cut_off_through_changes_and_a_compaction_keeps_enforcing_then_catches_up",
    ) {
        return;
    }
    let lab = FleetLab::new(3, false);
    lab.start_all();
    lab.set(&list(true));
    let cut = &lab.hosts[2];
    cut.api
        .ip(&["link", "set", "mgmt0", "down"])
        .expect("cut host2 off");
    lab.fleet_ok(&["set", &list(false)]);
    let latest = revision_written(&lab.fleet_ok(&["add", "198.51.100.9"]));
    lab.etcd
        .compact(lab.etcd.revision().expect("revision"))
        .expect("compact");
    assert!(
        wait_until(NOTICE_WAIT, || source(cut)["healthy"] == false),
        "host2 notices it is cut off: {}",
        source(cut)
    );
    lab.assert_host_enforces(2, cut, true, "cut off: keeps its last good list");
    for (i, host) in lab.hosts.iter().enumerate().take(2) {
        assert!(wait_until(NOTICE_WAIT, || source(host)["applied_revision"] == latest));
        lab.assert_host_enforces(i, host, false, "connected hosts follow");
    }

    cut.api
        .ip(&["link", "set", "mgmt0", "up"])
        .expect("reconnect host2");
    assert!(
        wait_until(NOTICE_WAIT, || source(cut)["applied_revision"] == latest
            && source(cut)["healthy"] == true),
        "host2 catches up: {}\n{}",
        source(cut),
        lab.logs()
    );
    lab.assert_host_enforces(2, cut, false, "caught up after the compaction");
    wait_fleet(&lab, "ok", Some(latest));
}

#[test]
fn an_etcd_member_killed_changes_still_converge() {
    if !require_privileges("an_etcd_member_killed_changes_still_converge") {
        return;
    }
    let mut lab = FleetLab::new(3, false);
    lab.start_all();
    lab.set(&list(true));
    lab.etcd.kill(0);
    // A host whose connection went to the dead member reconnects; it is waited for below.
    let revision = revision_written(&lab.fleet_ok(&["set", &list(false), CONVERGE_WAIT]));
    wait_fleet(&lab, "ok", Some(revision));
    lab.assert_enforces(false, "converged with one member down");
    lab.etcd.restart(0).expect("member 0 back");
    let revision = lab.set(&list(true));
    lab.assert_enforces(true, "converged after the member came back");
    wait_fleet(&lab, "ok", Some(revision));
}
