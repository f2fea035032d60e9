//! End to end: the daemon's features with the real daemon process, in namespaces the tests
//! create: service tags from the committed excerpt of the real file, expiry, the deny log
//! listing the test's unauthorized source, metrics scraped over HTTP, the lockout guard
//! refusing and `--force` overriding, and `--dry-run` changing nothing.

mod daemon_support;

use std::{io::Write, net::SocketAddr, time::Duration};

use apifence_tests::{connect_stream, require_privileges};
use daemon_support::*;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// The committed excerpt of the real Azure Service Tags file.
const TAGS_FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../filter-user/tests/fixtures/ServiceTags_Public_20251106_excerpt.json"
);
#[test]
fn service_tags_expiry_and_dry_run() {
    if !require_privileges("service_tags_expiry_and_dry_run") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_config(&format!(
        "ranges_from = \"state\"\nservice_tags_file = \"{TAGS_FIXTURE}\"\n\
         authorized_ranges = [\"{GOOD4}\", \"{GOOD6}\", \"AzureDevOps\"]"
    ));
    lab.start(&[]);

    // The tag is listed as given, with its expanded and merged counts.
    let shown = lab.json(&["ranges", "show", "--json"]);
    let ranges = shown["ranges"].as_array().expect("ranges");
    assert!(ranges.iter().any(|r| r == "AzureDevOps"), "{shown}");
    let tag = shown["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .find(|e| e["range"] == "AzureDevOps")
        .unwrap_or_else(|| panic!("no AzureDevOps entry: {shown}"));
    assert_eq!(tag["expanded"], 55, "{tag}");
    assert_eq!(tag["merged"], 55, "{tag}");
    assert_eq!(shown["given"]["v4"].as_u64(), Some(24 + 1), "{shown}");
    let text = lab.ok(&["ranges", "show"]);
    assert!(
        text.contains("AzureDevOps  (55 prefixes, 55 after merging)"),
        "{text}"
    );
    lab.assert_connects(v4(GOOD4), API_PORT, "authorized next to the tag");

    // An unknown tag names the closest known ones; nothing changes.
    let error = lab.fails(&["ranges", "add", "AzureDevOp"]);
    assert!(error.contains("\"AzureDevOp\""), "{error}");
    assert!(error.contains("did you mean \"AzureDevOps\"?"), "{error}");

    // A dry run prints the diff and changes nothing.
    let out = lab.ok(&["ranges", "set", &BAD4.to_string(), "--dry-run"]);
    assert!(out.contains("dry run: nothing was changed"), "{out}");
    assert!(out.contains(&format!("add     {BAD4}/32")), "{out}");
    assert!(out.contains("remove  AzureDevOps"), "{out}");
    assert!(out.contains("merged prefixes: IPv4 "), "{out}");
    assert_eq!(
        lab.json(&["ranges", "show", "--json"])["ranges"],
        shown["ranges"],
        "a dry run changed the list"
    );
    lab.assert_dropped(v4(BAD4), API_PORT, "a dry run applies nothing");

    // An expiry in the past is refused rather than dropped at once.
    let error = lab.fails(&[
        "ranges",
        "add",
        &BAD4.to_string(),
        "--expires",
        "2020-01-01T00:00:00Z",
    ]);
    assert!(
        error.contains("--expires 2020-01-01T00:00:00Z is not in the future"),
        "{error}"
    );

    // An entry with an expiry works until then, and is removed, logged and counted after.
    let expires = OffsetDateTime::now_utc() + time::Duration::seconds(3);
    let expires = expires.format(&Rfc3339).expect("format");
    lab.ok(&[
        "ranges",
        "add",
        &BAD4.to_string(),
        "--note",
        "break-glass",
        "--expires",
        &expires,
    ]);
    lab.assert_connects(v4(BAD4), API_PORT, "before its expiry");
    let bad = format!("{BAD4}/32");
    let gone = wait_until(Duration::from_secs(15), || {
        !lab.shown_ranges().contains(&bad)
    });
    assert!(gone, "{bad} still listed after its expiry:\n{}", lab.logs());
    lab.assert_dropped(v4(BAD4), API_PORT, "after its expiry");
    lab.assert_connects(v4(GOOD4), API_PORT, "other entries stay");
    let logs = lab.logs();
    assert!(
        logs.contains(&format!(
            "authorized range {bad} (\"break-glass\") expired at"
        )),
        "{logs}"
    );
    assert_eq!(lab.stop().code(), Some(0));
}

#[test]
fn deny_log_metrics_and_lockout_guard() {
    if !require_privileges("deny_log_metrics_and_lockout_guard") {
        return;
    }
    let lab = DaemonLab::new();
    lab.write_raw_config(&config_with_metrics(
        &lab,
        &format!("ranges_from = \"state\"\nauthorized_ranges = [\"{GOOD4}\", \"{GOOD6}\"]"),
    ));
    lab.start(&[]);

    // The deny log names the unauthorized source, its port and interface.
    lab.assert_dropped(v4(BAD4), API_PORT, "not authorized");
    let mut denied = serde_json::Value::Null;
    let listed = wait_until(Duration::from_secs(10), || {
        denied = lab.json(&["denied", "--json"]);
        denied
            .as_array()
            .is_some_and(|rows| rows.iter().any(|r| r["source"] == BAD4.to_string()))
    });
    assert!(
        listed,
        "{BAD4} not in the deny log: {denied}\n{}",
        lab.logs()
    );
    let rows = denied.as_array().expect("rows");
    let row = rows
        .iter()
        .find(|r| r["source"] == BAD4.to_string())
        .expect("row");
    assert_eq!(row["port"], API_PORT, "{row}");
    assert_eq!(row["interface"], "api0", "{row}");
    assert!(row["count"].as_u64().is_some_and(|n| n >= 1), "{row}");
    let mut keys: Vec<&str> = row
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "count",
            "first_seen",
            "interface",
            "last_seen",
            "port",
            "source"
        ]
    );
    for key in ["first_seen", "last_seen"] {
        let at = row[key].as_str().expect("a time");
        OffsetDateTime::parse(at, &Rfc3339).unwrap_or_else(|e| panic!("{key} {at}: {e}"));
    }
    let table = lab.ok(&["denied", "--top", "5"]);
    assert!(table.starts_with("SOURCE"), "{table}");
    assert!(table.contains(&BAD4.to_string()), "{table}");

    // Metrics, scraped over HTTP.
    lab.assert_connects(v4(GOOD4), API_PORT, "authorized");
    let (status, body) = http_get(&lab, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let dropped = sample(&body, "apifence_packets_total{verdict=\"dropped\"}");
    assert!(dropped.is_some_and(|n| n >= 1.0), "{body}");
    let hits = sample(
        &body,
        &format!("apifence_range_hits_total{{range=\"{GOOD4}/32\"}}"),
    );
    assert!(hits.is_some_and(|n| n >= 1.0), "{body}");
    assert_eq!(
        sample(&body, "apifence_entries{family=\"ipv4\"}"),
        Some(1.0),
        "{body}"
    );
    assert_eq!(
        sample(&body, "apifence_entries{family=\"ipv6\"}"),
        Some(1.0),
        "{body}"
    );
    assert!(
        sample(&body, "apifence_last_apply_timestamp_seconds").is_some_and(|t| t > 1.6e9),
        "{body}"
    );
    assert_eq!(
        sample(&body, "apifence_config_reload_failures_total"),
        Some(0.0),
        "{body}"
    );
    assert!(body.contains("# TYPE apifence_packets counter"), "{body}");
    assert!(
        body.ends_with("# EOF\n"),
        "OpenMetrics ends with # EOF: {body}"
    );
    assert_eq!(http_get(&lab, "/").0, "HTTP/1.1 404 Not Found");

    // The lockout guard: an established connection from GOOD4 is not cut without --force.
    let stream = connect_stream(
        &lab.client,
        v4(GOOD4),
        SocketAddr::new(v4(API4), API_PORT),
        CONNECT_WAIT,
    )
    .expect("a connection from the authorized client");
    let client = SocketAddr::new(v4(GOOD4), stream.local_addr().expect("local").port());
    let before = lab.shown_ranges();
    let (bad, good) = (BAD4.to_string(), format!("{GOOD4}/32"));
    for args in [["ranges", "set", &bad], ["ranges", "remove", &good]] {
        let error = lab.fails(&args);
        assert!(
            error.contains("would cut 1 established connection to protected ports"),
            "{args:?}: {error}"
        );
        assert!(
            error.contains(&format!("{client} -> ")),
            "{args:?}: {error}"
        );
        assert!(error.contains("--force"), "{args:?}: {error}");
    }
    assert_eq!(
        lab.shown_ranges(),
        before,
        "a refused change changed the list"
    );
    lab.assert_connects(v4(GOOD4), API_PORT, "still authorized after the refusals");

    // The dry run shows who would be cut and which recently denied source would get in.
    let out = lab.ok(&["ranges", "set", &BAD4.to_string(), "--dry-run"]);
    assert!(
        out.contains("established connections that would be cut (1):"),
        "{out}"
    );
    assert!(out.contains(&format!("{client} -> ")), "{out}");
    assert!(
        out.contains("recently denied sources that would be allowed (1):"),
        "{out}"
    );
    assert!(out.contains(&format!("{BAD4} on port {API_PORT}")), "{out}");
    assert_eq!(lab.shown_ranges(), before, "a dry run changed the list");

    // --force applies it.
    lab.ok(&["ranges", "set", &BAD4.to_string(), "--force"]);
    assert_eq!(lab.shown_ranges(), [format!("{BAD4}/32")]);
    lab.assert_connects(v4(BAD4), API_PORT, "now authorized");
    lab.assert_dropped(v4(GOOD4), API_PORT, "cut with --force");
    // The cut connection is still established (its packets are dropped): it holds up no later
    // change, neither an added range nor a removed one.
    lab.ok(&["ranges", "add", "198.18.200.0/24"]);
    lab.ok(&["ranges", "remove", "198.18.200.0/24"]);
    assert_eq!(lab.shown_ranges(), [format!("{BAD4}/32")]);

    // With the filter removed under the daemon nothing is dropped, and GOOD4 connects again.
    // The next change loads the filter again, which would cut both connections from GOOD4, so
    // even an added range is refused.
    lab.ok(&["detach", "--all"]);
    let second = connect_stream(
        &lab.client,
        v4(GOOD4),
        SocketAddr::new(v4(API4), API_PORT),
        CONNECT_WAIT,
    )
    .expect("nothing filters after detach");
    let second_client = SocketAddr::new(v4(GOOD4), second.local_addr().expect("local").port());
    let error = lab.fails(&["ranges", "add", "198.18.201.0/24"]);
    for peer in [client, second_client] {
        assert!(error.contains(&format!("{peer} -> ")), "{peer}: {error}");
    }
    // Authorizing GOOD4 loads the filter again, and both connections carry data: the first
    // one stayed established through its cut.
    lab.ok(&["ranges", "add", &good]);
    lab.assert_dropped(v6(BAD6), API_PORT, "the filter is loaded again");
    for (mut stream, peer) in [(stream, client), (second, second_client)] {
        let received = lab.api_server().bytes_from(peer);
        stream.write_all(b"still here").expect("write");
        assert_eq!(
            lab.api_server()
                .wait_for_bytes_from(peer, received + 10, CONNECT_WAIT),
            received + 10,
            "{peer}"
        );
    }
    assert_eq!(lab.stop().code(), Some(0));
}
