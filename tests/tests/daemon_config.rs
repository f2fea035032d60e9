//! `apifence check-config` with the real binary (no root needed): valid files print what they
//! compile to, invalid ones fail naming the key and the fix, the shipped example is valid, and
//! the daemon refuses to start on an invalid file.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
};

use apifence_tests::{apifence_bin, cmd::output_with_timeout};

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("apifence-check-config-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

fn apifence(args: &[&str]) -> Output {
    let mut command = Command::new(apifence_bin().expect("apifence binary"));
    command.args(args);
    output_with_timeout(&mut command, std::time::Duration::from_secs(60)).expect("run apifence")
}

#[test]
fn check_config_prints_entries_per_family_before_and_after_merging() {
    let path = temp_file(
        "ok.toml",
        r#"
interfaces = ["eth0"]
ports = [443, 6443]
mode = "enforce"
ranges_from = "config"
authorized_ranges = ["73.140.245.0/25", "73.140.245.128/25", "2001:db8::/32",
                     { range = "203.0.113.0/24", note = "on-call VPN", expires = "2026-12-01T00:00:00Z" }]
always_allow = ["198.51.100.7"]
metrics = ""
"#,
    );
    let path = path.to_str().expect("utf-8 path");
    let out = apifence(&["check-config", path, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["given"], serde_json::json!({"v4": 4, "v6": 1}));
    assert_eq!(report["compiled"], serde_json::json!({"v4": 3, "v6": 1}));
    assert_eq!(report["entries"][3]["note"], "on-call VPN");
    assert_eq!(report["entries"][3]["expires"], "2026-12-01T00:00:00Z");

    let out = apifence(&["check-config", path]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("IPv4 4 given -> 3 after merging; IPv6 1 given -> 1 after merging"),
        "{text}"
    );
}

#[test]
fn check_config_names_the_problem_and_the_fix() {
    let cases = [
        (
            "ports = [443, 70000]",
            "ports entry 2 (70000) is not a TCP port number from 1 to 65535; for example: ports = [443, 6443]",
        ),
        (
            "intefaces = [\"eth0\"]",
            "unknown key \"intefaces\"; did you mean \"interfaces\"?",
        ),
        (
            "authorized_ranges = [\"137.117.106.90/29\"]",
            "authorized_ranges: entry 1 \"137.117.106.90/29\" is not the first address of its range; did you mean 137.117.106.88/29?",
        ),
        (
            "authorized_ranges = [\"AzureDevOps\"]",
            "\"AzureDevOps\" is a name (a service tag such as AzureCloud), which needs service_tags_file in the config",
        ),
        (
            "authorized_ranges = [{ range = \"10.0.0.0/8\", expires = \"soon\" }]",
            "authorized_ranges entry 1: expires = \"soon\" is not an RFC 3339 date-time",
        ),
    ];
    for (n, (text, want)) in cases.iter().enumerate() {
        let path = temp_file(&format!("bad{n}.toml"), text);
        let out = apifence(&["check-config", path.to_str().expect("utf-8")]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{text} was accepted");
        assert!(stderr.contains(want), "{text}: {stderr}");
        assert!(
            stderr.contains(&path.display().to_string()),
            "names the file: {stderr}"
        );
    }
}

#[test]
fn the_example_config_is_valid() {
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../filter-user/examples/apifence.toml");
    let out = apifence(&["check-config", example.to_str().expect("utf-8")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_daemon_refuses_an_invalid_config_before_touching_anything() {
    let path = temp_file(
        "daemon-bad.toml",
        "bpffs = \"/nonexistent/apifence-bpffs\"\nports = []",
    );
    let out = apifence(&["daemon", "--config", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("ports is empty; protect at least one TCP port"),
        "{stderr}"
    );
    assert!(!Path::new("/nonexistent/apifence-bpffs").exists());
    let out = apifence(&["daemon", "--config", "/nonexistent/apifence.toml"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("reading config file /nonexistent/apifence.toml"),
        "{stderr}"
    );
}

/// Whether any mount point in this mount namespace is `path`.
fn mounted_at(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .expect("mountinfo")
        .lines()
        .any(|line| line.split(' ').nth(4) == Some(path))
}

#[test]
fn a_bpffs_over_a_directory_apifence_did_not_make_is_refused() {
    let etc_mounted_before = mounted_at("/etc");
    let path = temp_file("bpffs-etc.toml", "bpffs = \"/etc\"");
    let path = path.to_str().expect("utf-8");
    let out = apifence(&["check-config", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "check-config accepted bpffs = /etc");
    assert!(
        stderr.contains("bpffs directory /etc is not on a bpffs and is not empty"),
        "{stderr}"
    );
    assert!(
        stderr.contains("choose a path that does not exist yet"),
        "{stderr}"
    );

    let out = apifence(&["daemon", "--config", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "the daemon started with bpffs = /etc"
    );
    assert!(stderr.contains("bpffs directory /etc"), "{stderr}");
    assert_eq!(
        mounted_at("/etc"),
        etc_mounted_before,
        "something was mounted on /etc"
    );
}

#[test]
fn a_state_dir_others_can_write_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let base = std::env::temp_dir().join(format!("apifence-insecure-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&base);
    let state = base.join("state");
    std::fs::create_dir_all(&state).expect("state dir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let text = format!(
        "bpffs = \"{0}/bpffs\"\nstate_dir = \"{0}/state\"\nsocket = \"{0}/run/apifence.sock\"\n",
        base.display()
    );
    let path = temp_file("insecure.toml", &text);
    let path = path.to_str().expect("utf-8");
    let fix = format!("chmod go-w {}", state.display());
    let out = apifence(&["check-config", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "check-config accepted a 0777 state_dir"
    );
    assert!(stderr.contains("writable by group and others"), "{stderr}");
    assert!(stderr.contains(&fix), "{stderr}");

    let out = apifence(&["daemon", "--config", path]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the daemon used a 0777 state_dir");
    assert!(stderr.contains(&fix), "{stderr}");
    // Nothing was written or created: no lock file, no socket directory, no bpffs directory.
    let left: Vec<_> = std::fs::read_dir(&base)
        .expect("list")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["state"], "the daemon created {left:?}");
    assert_eq!(std::fs::read_dir(&state).expect("list").count(), 0);
    std::fs::remove_dir_all(&base).expect("clean up");
}

#[test]
fn hostile_names_are_refused_escaped_and_never_panic() {
    // A NUL in an interface name used to pass check-config and make the daemon panic in aya.
    let path = temp_file(
        "nul-interface.toml",
        "interfaces = [\"eth\\u0000x\"]\nbpffs = \"/nonexistent/apifence-nul\"",
    );
    let path = path.to_str().expect("utf-8");
    for args in [vec!["check-config", path], vec!["daemon", "--config", path]] {
        let out = apifence(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(
            stderr.contains("interfaces entry 1 \"eth\\u{0}x\" contains \\u{0}, which is not a printable ASCII character"),
            "{args:?}: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }

    // Terminal escape sequences in a list are echoed escaped.
    let path = temp_file(
        "escape-range.toml",
        "authorized_ranges = [\"10.0.0.1\\u001b[2J/8\"]",
    );
    let out = apifence(&["check-config", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("\"10.0.0.1\\u{1b}[2J/8\""), "{stderr}");
    assert!(
        !stderr.contains('\u{1b}'),
        "a raw ESC reached the terminal: {stderr:?}"
    );

    // --netns names a namespace, not a path.
    let out = apifence(&["--netns", "../../proc/self/ns/net", "status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "--netns with a path was accepted");
    assert!(
        stderr.contains("network namespace name \"../../proc/self/ns/net\" contains '/'"),
        "{stderr}"
    );
}

#[test]
fn oversized_config_and_list_files_are_refused_with_a_clear_error() {
    // 9 MiB of comments: valid TOML, but over the config limit.
    let line = format!("# {}\n", "x".repeat(1021));
    let path = temp_file("huge.toml", &line.repeat(9 * 1024));
    let out = apifence(&["check-config", path.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 9 MiB config was accepted");
    assert!(
        stderr.contains("it is larger than 8 MiB, the limit for this input"),
        "{stderr}"
    );
    assert!(stderr.contains("huge.toml"), "names the file: {stderr}");
    std::fs::remove_file(&path).expect("clean up");

    let path = temp_file("huge-list.txt", &"10.0.0.0/8\n".repeat(33 << 20 >> 3));
    let out = apifence(&[
        "--socket",
        "/nonexistent/apifence.sock",
        "ranges",
        "set",
        "--file",
        path.to_str().expect("utf-8"),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a 33 MiB list was accepted");
    assert!(
        stderr.contains("reading the list from") && stderr.contains("larger than 32 MiB"),
        "{stderr}"
    );
    std::fs::remove_file(&path).expect("clean up");
}
