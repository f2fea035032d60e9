//! Liveness of attachments: an interface deleted and created again under the same name (a
//! driver reload, a bond or VF rebuild) leaves the pinned link attached to nothing. Without a
//! daemon, `apifence status` reports the stale attachment and fails, and `apifence attach`
//! repairs it; with a daemon, the link event makes it re-attach by itself.

mod daemon_support;

use apifence_tests::require_privileges;
use daemon_support::*;

/// Bound on the daemon noticing a recreated interface (it reacts to the link event at once and
/// checks every second anyway).
const REPAIR_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

#[test]
fn without_a_daemon_status_reports_a_stale_attachment_and_attach_repairs_it() {
    if !require_privileges(
        "without_a_daemon_status_reports_a_stale_attachment_and_attach_repairs_it",
    ) {
        return;
    }
    let lab = DaemonLab::new();
    lab.ok(&["attach", "api0"]);
    lab.ok(&["ranges", "set", &format!("{GOOD4},{GOOD6}")]);
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");

    lab.recreate_link();
    // The bypass issue 9 describes: the pin is there, but the new api0 is unfiltered.
    lab.assert_connects(
        v4(BAD4),
        API_PORT,
        "nothing filters the recreated interface",
    );
    let out = lab.cli(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stdout.contains("api0: stale (the interface was deleted and created again"),
        "{stdout}"
    );
    assert!(
        stderr.contains("1 of the attachments under")
            && stderr.contains("are stale and filter nothing: api0"),
        "{stderr}"
    );

    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["stale_interfaces"], serde_json::json!(["api0"]));

    let out = lab.ok(&["attach", "api0"]);
    assert!(out.contains("re-attached to api0"), "{out}");
    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["stale_interfaces"], serde_json::json!([]));
    lab.assert_dropped(v4(BAD4), API_PORT, "filtered again after the repair");
    lab.assert_dropped(v6(BAD6), API_PORT, "filtered again after the repair");
    lab.assert_connects(v4(GOOD4), API_PORT, "the list survived the repair");
    let out = lab.cli(&["status"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("api0: live"), "{stdout}");
    assert!(!stderr.contains("stale"), "{stderr}");
    // Still non-zero: no daemon answers.
    assert!(stderr.contains("no apifence daemon answers"), "{stderr}");
}

#[test]
fn the_daemon_reattaches_a_recreated_interface_by_itself() {
    if !require_privileges("the_daemon_reattaches_a_recreated_interface_by_itself") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!("authorized_ranges = [\"{GOOD4}\", \"{GOOD6}\"]"));
    lab.start(&[]);
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");
    let link_before = lab.status()["links"]["api0"]["link_id"].as_u64();

    lab.recreate_link();
    let repaired = wait_until(REPAIR_WAIT, || {
        let status = lab.cli(&["status", "--json"]);
        let Ok(status) = serde_json::from_slice::<serde_json::Value>(&status.stdout) else {
            return false;
        };
        status["reattachments"] == 1
            && status["links"]["api0"]["live"] == true
            && status["stale_interfaces"]
                .as_array()
                .is_some_and(Vec::is_empty)
    });
    assert!(
        repaired,
        "not re-attached within {REPAIR_WAIT:?}:\n{}",
        lab.logs()
    );
    let status = lab.status();
    assert_ne!(
        status["links"]["api0"]["link_id"].as_u64(),
        link_before,
        "a new link"
    );
    assert!(
        lab.logs()
            .contains("re-attached: the interface was deleted and created again"),
        "{}",
        lab.logs()
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "filtered on the recreated interface");
    lab.assert_connects(v4(GOOD4), API_PORT, "still authorized");
    lab.assert_connects(v6(GOOD6), API_PORT, "still authorized");

    // Recreated while no daemon ran: the daemon repairs it as it starts.
    assert!(lab.stop().success());
    lab.recreate_link();
    lab.assert_connects(
        v4(BAD4),
        API_PORT,
        "nothing filters it while no daemon runs",
    );
    lab.start(&[]);
    let status = lab.status();
    assert_eq!(status["reattachments"], 1, "{status:#}");
    assert_eq!(status["links"]["api0"]["live"], true, "{status:#}");
    lab.assert_dropped(v4(BAD4), API_PORT, "repaired at start");
}
