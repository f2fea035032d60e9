//! End to end: the real daemon reloads its config when the file changes and on SIGHUP, and an
//! invalid config is rejected (logged, counted, reported by `apifence reload`) while the last
//! good state stays enforced.

mod daemon_support;

use std::{thread, time::Duration};

use apifence_tests::require_privileges;
use daemon_support::*;

fn list(entries: &[String]) -> String {
    let quoted: Vec<String> = entries.iter().map(|e| format!("\"{e}\"")).collect();
    format!("authorized_ranges = [{}]", quoted.join(", "))
}

#[test]
fn a_changed_config_file_is_applied_live() {
    if !require_privileges("a_changed_config_file_is_applied_live") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&list(&[GOOD4.to_string()]));
    lab.start(&[]);
    lab.assert_dropped(v4(BAD4), API_PORT, "not in the config yet");

    lab.write_config(&list(&[GOOD4.to_string(), format!("{BAD4}/32")]));
    let want = format!("{BAD4}/32");
    assert!(
        wait_until(RELOAD_WAIT, || lab.shown_ranges().contains(&want)),
        "the file change was not picked up:\n{}",
        lab.logs()
    );
    lab.assert_connects(v4(BAD4), API_PORT, "added by editing the file");
    assert!(lab.status()["reloads"].as_u64().unwrap_or(0) >= 1);

    // Editing ports and mode works the same way.
    lab.write_config(&format!(
        "{}\nmode = \"monitor\"\nports = [443, 6443]",
        list(&[GOOD4.to_string()])
    ));
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["mode"] == "monitor"),
        "{}",
        lab.logs()
    );
    lab.assert_connects(v4(BAD4), API_PORT, "monitor mode from the file");
    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["ports"], serde_json::json!([443, 6443]));
}

#[test]
fn sighup_reloads_even_without_file_watching() {
    if !require_privileges("sighup_reloads_even_without_file_watching") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&list(&[GOOD4.to_string()]));
    lab.start(&["--no-watch"]);

    lab.write_config(&list(&[GOOD4.to_string(), BAD4.to_string()]));
    // Three poll intervals of the watcher it doesn't run.
    thread::sleep(Duration::from_secs(3));
    assert_eq!(
        lab.shown_ranges(),
        [format!("{GOOD4}/32")],
        "reloaded without being asked"
    );
    lab.signal(libc::SIGHUP);
    let want = format!("{BAD4}/32");
    assert!(
        wait_until(RELOAD_WAIT, || lab.shown_ranges().contains(&want)),
        "SIGHUP did not reload:\n{}",
        lab.logs()
    );
    lab.assert_connects(v4(BAD4), API_PORT, "added by SIGHUP");

    // `apifence reload` does the same and reports what changed.
    lab.write_config(&list(&[GOOD4.to_string()]));
    let out = lab.ok(&["reload"]);
    assert!(out.contains(&format!("remove  {BAD4}/32")), "{out}");
    lab.assert_dropped(v4(BAD4), API_PORT, "removed by apifence reload");
    assert!(lab.logs().contains("reason=\"SIGHUP\""), "{}", lab.logs());
}

#[test]
fn an_invalid_config_keeps_the_last_good_state() {
    if !require_privileges("an_invalid_config_keeps_the_last_good_state") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&list(&[GOOD4.to_string()]));
    lab.start(&[]);

    // Host bits set: rejected, named, counted; the old list stays enforced.
    lab.write_config(&list(&["198.18.1.3/24".to_string()]));
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["reload_failures"] == 1),
        "{}",
        lab.logs()
    );
    let status = lab.status();
    let error = status["last_reload_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("authorized_ranges: entry 1 \"198.18.1.3/24\"")
            && error.contains("did you mean 198.18.1.0/24?"),
        "{status}"
    );
    lab.assert_connects(v4(GOOD4), API_PORT, "the last good list stays");
    lab.assert_dropped(v4(BAD4), API_PORT, "the invalid list was not applied");
    let err = lab.fails(&["reload"]);
    assert!(
        err.contains("did you mean 198.18.1.0/24?")
            && err.contains("the last good state stays enforced"),
        "{err}"
    );
    assert!(lab.logs().contains("reload rejected"), "{}", lab.logs());

    // An unknown key, and a file that is not TOML at all: the same.
    lab.write_raw_config(&format!(
        "{}\nintefaces = [\"api0\"]",
        lab.config_text(&list(&[BAD4.to_string()]))
    ));
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["reload_failures"]
            .as_u64()
            .unwrap_or(0)
            >= 3),
        "{}",
        lab.logs()
    );
    let status = lab.status();
    assert!(
        status["last_reload_error"]
            .as_str()
            .unwrap_or_default()
            .contains("did you mean \"interfaces\"?"),
        "{status}"
    );
    lab.write_raw_config("authorized_ranges = [\"198.18.1.3\"");
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["last_reload_error"]
            .as_str()
            .unwrap_or_default()
            .contains("not valid TOML")),
        "{}",
        lab.logs()
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "still the last good list");
    lab.assert_connects(v4(GOOD4), API_PORT, "still the last good list");

    // Fixed: applied, and the error is cleared.
    lab.write_config(&list(&[GOOD4.to_string(), BAD4.to_string()]));
    let want = format!("{BAD4}/32");
    assert!(
        wait_until(RELOAD_WAIT, || lab.shown_ranges().contains(&want)),
        "{}",
        lab.logs()
    );
    assert_eq!(lab.status()["last_reload_error"], serde_json::Value::Null);
    lab.assert_connects(v4(BAD4), API_PORT, "the fixed config applies");
}

#[test]
fn interfaces_are_attached_when_they_appear_or_are_added() {
    if !require_privileges("interfaces_are_attached_when_they_appear_or_are_added") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!(
        "interfaces = [\"api0\", \"late0\"]\n{}",
        list(&[GOOD4.to_string()])
    ));
    lab.start(&[]);
    let status = lab.status();
    assert_eq!(
        status["missing_interfaces"],
        serde_json::json!(["late0"]),
        "{status}"
    );
    assert!(status["links"]["api0"]["link_id"].is_u64(), "{status}");
    lab.assert_dropped(v4(BAD4), API_PORT, "api0 is filtered meanwhile");

    // The interface appears: attached by the retry, without a reload.
    lab.api
        .ip(&[
            "link", "add", "late0", "type", "veth", "peer", "name", "late1",
        ])
        .expect("late veth");
    lab.api
        .ip(&["link", "set", "late0", "up"])
        .expect("late0 up");
    lab.api
        .ip(&["link", "set", "late1", "up"])
        .expect("late1 up");
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["links"]["late0"]["link_id"]
            .is_u64()),
        "late0 was not attached:\n{}",
        lab.logs()
    );
    assert_eq!(lab.status()["missing_interfaces"], serde_json::json!([]));

    // Added to the config: attached on reload. Removed: left attached (fail-static).
    lab.api
        .ip(&[
            "link", "add", "new0", "type", "veth", "peer", "name", "new1",
        ])
        .expect("new veth");
    lab.api.ip(&["link", "set", "new0", "up"]).expect("new0 up");
    lab.api.ip(&["link", "set", "new1", "up"]).expect("new1 up");
    lab.write_config(&format!(
        "interfaces = [\"api0\", \"new0\"]\n{}",
        list(&[GOOD4.to_string()])
    ));
    assert!(
        wait_until(RELOAD_WAIT, || lab.status()["links"]["new0"]["link_id"]
            .is_u64()),
        "new0 was not attached on reload:\n{}",
        lab.logs()
    );
    let status = lab.status();
    assert!(status["links"]["late0"]["link_id"].is_u64(), "{status}");
    assert!(
        lab.logs()
            .contains("attached but not in the config; left attached"),
        "{}",
        lab.logs()
    );
}
