//! End to end: the real `apifence` binary attached with real XDP to a veth pair between network
//! namespaces this test creates, real TCP servers and clients, IPv4 and IPv6, native and skb.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    process::{Command, Output, Stdio},
    thread,
    time::Duration,
};

use apifence_tests::{
    ApiAndClient, Bpffs, ConnectError, Endpoint, Netns, StreamOptions, TcpServer, apifence_bin,
    connect, require_privileges, stream_chunks,
};

const API4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const GOOD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe0, 0, 0, 0, 0, 0, 1);
const GOOD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe0, 0, 0, 0, 0, 0, 2);
const BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe0, 0, 0, 0, 0, 0, 3);
const API_PORT: u16 = 6443;
const OTHER_PORT: u16 = 8080;
/// How long a stranger's SYN is given before it counts as dropped.
const DROP_WAIT: Duration = Duration::from_millis(800);
const CONNECT_WAIT: Duration = Duration::from_secs(3);

/// An API server namespace and a client namespace joined by a veth pair, servers on the API
/// port and another port, and a private bpffs for the CLI's pins. Everything is removed on drop
/// (also when a test panics): the filter first, then namespaces and the bpffs.
struct Lab {
    api: Netns,
    client: Netns,
    bpffs: Bpffs,
    _servers: Vec<TcpServer>,
}

impl Lab {
    fn new() -> Lab {
        let ApiAndClient {
            api,
            client,
            servers,
        } = ApiAndClient::new(
            Endpoint::new("api0", API4, API6),
            Endpoint::new("cli0", GOOD4, GOOD6),
            &[(IpAddr::V4(BAD4), 24), (IpAddr::V6(BAD6), 64)],
            &[API_PORT, OTHER_PORT],
        )
        .expect("api and client namespaces");
        Lab {
            api,
            client,
            bpffs: Bpffs::new().expect("bpffs"),
            _servers: servers,
        }
    }

    /// Runs `apifence --netns <api> --bpffs <dir> ARGS`.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_with_stdin(args, None)
    }

    fn cli_with_stdin(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut command = Command::new(apifence_bin().expect("apifence binary"));
        command
            .arg("--netns")
            .arg(self.api.name())
            .arg("--bpffs")
            .arg(self.bpffs.path())
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn apifence");
        if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
            use std::io::Write;
            pipe.write_all(text.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("apifence output")
    }

    /// Runs the CLI and panics with its stderr unless it succeeds.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "apifence {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI expecting failure; returns stderr.
    fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "apifence {args:?} should have failed"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        serde_json::from_str(&self.ok(args)).expect("json output")
    }

    fn reach(&self, src: IpAddr, port: u16) -> Result<(), ConnectError> {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(API4),
            IpAddr::V6(_) => IpAddr::V6(API6),
        };
        let wait = if port == API_PORT {
            DROP_WAIT
        } else {
            CONNECT_WAIT
        };
        connect(&self.client, src, SocketAddr::new(dst, port), wait)
    }

    fn assert_connects(&self, src: IpAddr, port: u16, why: &str) {
        if let Err(e) = self.reach(src, port) {
            panic!("{src} -> :{port} should connect ({why}) but {e}");
        }
    }

    fn assert_dropped(&self, src: IpAddr, port: u16, why: &str) {
        match self.reach(src, port) {
            Err(ConnectError::TimedOut) => {}
            other => panic!("{src} -> :{port} should time out ({why}) but got {other:?}"),
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.cli(&["detach", "--all"]);
    }
}

fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

fn pins_left(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".debug"))
                .collect()
        })
        .unwrap_or_default()
}

fn authorize_and_flip(mode: &str) {
    let lab = Lab::new();
    let out = lab.ok(&["attach", "api0", "--xdp-mode", mode]);
    assert!(out.contains(&format!("({mode} mode)")), "{out}");
    // Attached but no list yet: filtering is disabled, everyone passes.
    lab.assert_connects(v4(BAD4), API_PORT, "no list yet");

    lab.ok(&["ranges", "set", &format!("{GOOD4}, {GOOD6}")]);
    lab.assert_connects(v4(GOOD4), API_PORT, "authorized v4");
    lab.assert_connects(v6(GOOD6), API_PORT, "authorized v6");
    lab.assert_dropped(v4(BAD4), API_PORT, "unauthorized v4");
    lab.assert_dropped(v6(BAD6), API_PORT, "unauthorized v6");
    lab.assert_connects(v4(BAD4), OTHER_PORT, "other ports are not protected");
    lab.assert_connects(v6(BAD6), OTHER_PORT, "other ports are not protected");

    lab.ok(&["ranges", "add", &format!("{BAD4} {BAD6}")]);
    lab.assert_connects(v4(BAD4), API_PORT, "added");
    lab.assert_connects(v6(BAD6), API_PORT, "added");

    lab.ok(&["ranges", "remove", &format!("{BAD4}/32,{BAD6}/128")]);
    lab.assert_dropped(v4(BAD4), API_PORT, "removed");
    lab.assert_dropped(v6(BAD6), API_PORT, "removed");
    lab.assert_connects(v4(GOOD4), API_PORT, "still authorized");

    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["enabled"], true);
    assert_eq!(shown["mode"], "enforce");
    assert_eq!(shown["ports"], serde_json::json!([443, 6443]));
    assert_eq!(
        shown["ranges"],
        serde_json::json!([format!("{GOOD4}/32"), format!("{GOOD6}/128")])
    );

    let stats = lab.json(&["stats", "--json"]);
    assert!(stats["dropped"].as_u64().unwrap_or(0) >= 4, "{stats}");
    assert!(stats["passed"].as_u64().unwrap_or(0) > 0, "{stats}");
    let hits = stats["ranges"]
        .as_array()
        .expect("ranges array")
        .iter()
        .find(|r| r["range"] == format!("{GOOD4}/32"))
        .and_then(|r| r["hits"].as_u64());
    assert!(hits.unwrap_or(0) > 0, "hits for {GOOD4}: {stats}");

    // Monitor mode: strangers pass, counted as would-drop.
    lab.ok(&["mode", "monitor"]);
    lab.assert_connects(v4(BAD4), API_PORT, "monitor mode drops nothing");
    let stats = lab.json(&["stats", "--json"]);
    assert!(stats["would_drop"].as_u64().unwrap_or(0) > 0, "{stats}");
    lab.ok(&["mode", "enforce"]);
    lab.assert_dropped(v4(BAD4), API_PORT, "enforcing again");

    // "" disables filtering.
    lab.ok(&["ranges", "set", ""]);
    lab.assert_connects(v4(BAD4), API_PORT, "filtering disabled");
    lab.ok(&["ranges", "set", &GOOD4.to_string()]);
    lab.assert_dropped(v4(BAD4), API_PORT, "enabled again");

    let out = lab.ok(&["detach", "api0"]);
    assert!(out.contains("removed program, maps and pins"), "{out}");
    lab.assert_connects(v4(BAD4), API_PORT, "detached");
    assert_eq!(pins_left(lab.bpffs.path()), Vec::<String>::new());
    let link = lab
        .api
        .ip(&["-d", "link", "show", "api0"])
        .expect("ip link");
    assert!(!link.contains("prog/xdp"), "{link}");
}

#[test]
fn native_mode_authorizes_flips_live_and_detaches_cleanly() {
    if !require_privileges("native_mode_authorizes_flips_live_and_detaches_cleanly") {
        return;
    }
    authorize_and_flip("native");
}

#[test]
fn skb_mode_authorizes_flips_live_and_detaches_cleanly() {
    if !require_privileges("skb_mode_authorizes_flips_live_and_detaches_cleanly") {
        return;
    }
    authorize_and_flip("skb");
}

#[test]
fn replacing_the_list_under_a_stream_loses_none_of_its_packets() {
    if !require_privileges("replacing_the_list_under_a_stream_loses_none_of_its_packets") {
        return;
    }
    let lab = Lab::new();
    lab.ok(&["attach", "api0"]);
    lab.ok(&["ranges", "set", &format!("{GOOD4}/32, 192.0.2.0/24")]);
    let server = TcpServer::start(&lab.api, IpAddr::V4(API4), 443).expect("server on 443");
    let options = StreamOptions {
        chunks: 3000,
        chunk_size: 512,
        interval: Duration::from_millis(1),
        time_limit: Duration::from_secs(30),
        ..StreamOptions::default()
    };
    let report = thread::scope(|scope| {
        let streaming = scope.spawn(|| {
            stream_chunks(
                &lab.client,
                v4(GOOD4),
                SocketAddr::new(v4(API4), 443),
                &server,
                &options,
            )
        });
        // Both lists hold the streaming client; each replacement rewrites the whole set.
        let lists = [
            format!("198.18.0.0/30, 203.0.113.0/24, {GOOD6}"),
            format!("{GOOD4}/32, 192.0.2.0/24"),
        ];
        let mut replacements = 0;
        while !streaming.is_finished() && replacements < 200 {
            lab.ok(&["ranges", "set", &lists[replacements % 2]]);
            replacements += 1;
        }
        assert!(
            replacements >= 5,
            "only {replacements} replacements happened mid-stream"
        );
        streaming.join().expect("stream thread")
    })
    .expect("stream connects");
    assert!(report.complete(&options), "{report:?}");
    let stats = lab.json(&["stats", "--json"]);
    assert_eq!(
        stats["dropped"], 0,
        "packets dropped during replacement: {stats}"
    );
}

#[test]
fn bad_input_is_refused_with_a_clear_error_and_changes_nothing() {
    if !require_privileges("bad_input_is_refused_with_a_clear_error_and_changes_nothing") {
        return;
    }
    let lab = Lab::new();
    let err = lab.fails(&["ranges", "show"]);
    assert!(err.contains("not attached"), "{err}");
    lab.ok(&["attach", "api0", "--capacity", "4"]);
    lab.ok(&["ranges", "set", "198.18.0.2"]);
    let before = lab.ok(&["ranges", "show", "--json"]);
    let cases: [(&[&str], &str); 8] = [
        (
            &["ranges", "set", "137.117.106.90/29"],
            "did you mean 137.117.106.88/29",
        ),
        (&["ranges", "set", "10.0.0.0/33"], "/32"),
        (&["ranges", "set", "2001:db8::/129"], "/128"),
        (&["ranges", "add", "10.0.0.0/8,,10.1.0.0/16"], "entry 2"),
        (&["ranges", "set", "0.0.0.0/32, 10.0.0.0/8"], "0.0.0.0/32"),
        (&["ranges", "set", "not-an-address!"], "not-an-address!"),
        (&["ranges", "remove", "192.0.2.0/24"], "192.0.2.0/24"),
        (
            &[
                "ranges",
                "set",
                "10.0.0.0/24,10.0.2.0/24,10.0.4.0/24,10.0.6.0/24,10.0.8.0/24",
            ],
            "--capacity",
        ),
    ];
    for (args, needle) in cases {
        let err = lab.fails(args);
        assert!(err.contains(needle), "{args:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
        assert_eq!(
            lab.ok(&["ranges", "show", "--json"]),
            before,
            "{args:?} changed state"
        );
    }
    let err = lab.fails(&["attach", "api0", "--ports", "443,https"]);
    assert!(err.contains("https"), "{err}");
    let err = lab.fails(&["attach", "nosuch0"]);
    assert!(err.contains("nosuch0"), "{err}");
    let err = lab.fails(&["attach", "nosuch0", "--monitor", "--ports", "8443"]);
    assert!(err.contains("nosuch0"), "{err}");
    assert_eq!(
        lab.ok(&["ranges", "show", "--json"]),
        before,
        "a failed attach changed the policy"
    );
    let err = lab.fails(&["detach", "nosuch0"]);
    assert!(err.contains("nosuch0"), "{err}");
    assert_eq!(lab.ok(&["ranges", "show", "--json"]), before);
}

#[test]
fn long_lists_come_from_a_file_or_stdin() {
    if !require_privileges("long_lists_come_from_a_file_or_stdin") {
        return;
    }
    let lab = Lab::new();
    lab.ok(&["attach", "api0"]);
    // 20,000 /32s: far more than one command-line argument may hold (128 KiB).
    let mut list = String::from("# generated\n");
    for i in 0..20_000u32 {
        let [_, _, c, d] = (0x0a00_0000 + i * 2).to_be_bytes();
        list.push_str(&format!("10.{}.{c}.{d}\n", i >> 15));
    }
    list.push_str(&format!("{GOOD4} # the test client\n"));
    assert!(list.len() > 128 * 1024);
    let path = std::env::temp_dir().join(format!("apifence-list-{}.txt", std::process::id()));
    std::fs::write(&path, &list).expect("write list");
    let from_file = lab.ok(&["ranges", "set", "--file", &path.to_string_lossy()]);
    let _ = std::fs::remove_file(&path);
    assert!(from_file.contains("IPv4"), "{from_file}");
    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(shown["ranges"].as_array().map(Vec::len), Some(20_001));
    lab.assert_connects(v4(GOOD4), API_PORT, "in the file");
    lab.assert_dropped(v4(BAD4), API_PORT, "not in the file");

    let out = lab.cli_with_stdin(
        &["ranges", "add", "--file", "-"],
        Some(&format!("{BAD4}\n")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    lab.assert_connects(v4(BAD4), API_PORT, "added from stdin");
}

#[test]
fn every_subcommand_help_has_an_example() {
    let bin = match apifence_bin() {
        Ok(bin) => bin,
        Err(e) => panic!("{e:#}"),
    };
    let subcommands: [&[&str]; 9] = [
        &["attach"],
        &["detach"],
        &["ranges", "set"],
        &["ranges", "add"],
        &["ranges", "remove"],
        &["ranges", "show"],
        &["stats"],
        &["mode"],
        &["ranges"],
    ];
    for sub in subcommands {
        let out = Command::new(&bin)
            .args(sub)
            .arg("--help")
            .output()
            .expect("help");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{sub:?} --help failed");
        assert!(
            text.contains("Example"),
            "{sub:?} --help has no example:\n{text}"
        );
    }
}

#[test]
fn a_closed_or_full_stdout_ends_quietly_or_says_whether_the_change_was_applied() {
    if !require_privileges(
        "a_closed_or_full_stdout_ends_quietly_or_says_whether_the_change_was_applied",
    ) {
        return;
    }
    let lab = Lab::new();
    lab.ok(&["attach", "api0"]);
    lab.ok(&["ranges", "set", "198.18.0.2"]);
    let run = |args: &[&str], stdout: Stdio, stderr: Stdio| -> Output {
        Command::new(apifence_bin().expect("apifence binary"))
            .arg("--netns")
            .arg(lab.api.name())
            .arg("--bpffs")
            .arg(lab.bpffs.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .output()
            .expect("run apifence")
    };
    let full = || {
        Stdio::from(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .expect("/dev/full"),
        )
    };

    // A reader that is already gone: quiet, success, no panic.
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = run(&["stats", "--json"], Stdio::from(writer), Stdio::piped());
    assert!(out.status.success(), "{out:?}");
    assert!(
        out.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A full stdout on a read: an error message and exit 1, not a panic (101).
    let out = run(&["ranges", "show"], full(), Stdio::piped());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.starts_with("error: writing to stdout"), "{stderr}");

    // A full stdout after a change: the change stands and exit 3 says so.
    let out = run(
        &["ranges", "set", "198.18.0.2,198.18.0.7"],
        full(),
        Stdio::piped(),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("the change was applied"), "{stderr}");
    let shown = lab.json(&["ranges", "show", "--json"]);
    assert_eq!(
        shown["ranges"],
        serde_json::json!(["198.18.0.2/32", "198.18.0.7/32"])
    );

    // A full stderr on a failure: still exit 1, not a panic.
    let out = run(&["ranges", "set", "10.0.0.0/33"], Stdio::null(), full());
    assert_eq!(out.status.code(), Some(1), "{out:?}");

    // One list syntax: an empty port entry is refused like an empty range entry.
    let err = lab.fails(&["attach", "api0", "--ports", "443,,6443"]);
    assert!(err.contains("entry 2 of the port list is empty"), "{err}");
}
