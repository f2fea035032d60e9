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
