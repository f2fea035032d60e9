//! `apifence trace` end to end: the real binary attached with real XDP to a veth pair between
//! namespaces this test creates, real TCP from traced and untraced sources. The trace shows the
//! right verdicts for the traced sources only, the filter keeps enforcing throughout, the
//! production program is back on the link afterwards, and a trace process that dies leaves a
//! link that still enforces and that the next `attach` restores.

use std::{
    io::{BufRead, BufReader},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    process::{Child, Command, Output, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use apifence::kernel::{attach, paths::PinLayout};
use apifence_tests::{
    ApiAndClient, Bpffs, ConnectError, Endpoint, Netns, TcpServer, apifence_bin, connect,
    require_privileges,
};

const API4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// Authorized, inside the traced prefix.
const GOOD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Unauthorized, inside the traced prefix.
const BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 3);
/// Unauthorized, outside the traced prefix.
const OTHER4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 9);
/// Holds GOOD4 and BAD4, not OTHER4.
const TRACED: &str = "198.18.0.0/30";
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 2);
const API_PORT: u16 = 6443;
const OTHER_PORT: u16 = 8080;
/// How long a SYN is given before it counts as dropped.
const DROP_WAIT: Duration = Duration::from_millis(800);
const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Bound on every wait for the trace process.
const PROCESS_WAIT: Duration = Duration::from_secs(30);

/// Namespaces, servers, a private bpffs, and the trace process if one runs; removed on drop
/// (the process killed, the filter detached) also when the test fails.
struct Lab {
    api: Netns,
    client: Netns,
    bpffs: Bpffs,
    _servers: Vec<TcpServer>,
    trace: Option<Child>,
}

impl Lab {
    fn new() -> Lab {
        let ApiAndClient {
            api,
            client,
            servers,
        } = ApiAndClient::new(
            Endpoint::new("api0", API4, API6),
            Endpoint::new("cli0", GOOD4, CLIENT6),
            &[(IpAddr::V4(BAD4), 24), (IpAddr::V4(OTHER4), 24)],
            &[API_PORT, OTHER_PORT],
        )
        .expect("api and client namespaces");
        let lab = Lab {
            api,
            client,
            bpffs: Bpffs::new().expect("bpffs"),
            _servers: servers,
            trace: None,
        };
        lab.ok(&["attach", "api0"]);
        lab.ok(&["ranges", "set", &GOOD4.to_string()]);
        lab
    }

    fn layout(&self) -> PinLayout {
        PinLayout::new(self.bpffs.path())
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(apifence_bin().expect("apifence binary"));
        command
            .arg("--netns")
            .arg(self.api.name())
            .arg("--bpffs")
            .arg(self.bpffs.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run apifence")
    }

    fn ok(&self, args: &[&str]) -> Output {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "apifence {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Starts `apifence trace ARGS` and waits until it says it traces; returns a channel of
    /// its further stderr lines.
    fn start_trace(&mut self, args: &[&str]) -> mpsc::Receiver<String> {
        let mut full = vec!["trace", "--json"];
        full.extend_from_slice(args);
        let mut child = self.command(&full).spawn().expect("spawn apifence trace");
        let stderr = child.stderr.take().expect("stderr");
        self.trace = Some(child);
        let (send, receive) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let started = Instant::now();
        loop {
            let left = PROCESS_WAIT.saturating_sub(started.elapsed());
            match receive.recv_timeout(left) {
                Ok(line) if line.starts_with("tracing ") => return receive,
                Ok(line) => eprintln!("apifence trace: {line}"),
                Err(e) => panic!("apifence trace did not start tracing: {e}"),
            }
        }
    }

    /// Waits (bounded) for the trace process to end; returns its stdout lines as JSON.
    fn wait_trace(&mut self) -> Vec<serde_json::Value> {
        let mut child = self.trace.take().expect("a trace runs");
        let started = Instant::now();
        while child.try_wait().expect("try_wait").is_none() {
            assert!(
                started.elapsed() < PROCESS_WAIT,
                "apifence trace did not end within {PROCESS_WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("trace output");
        assert!(
            out.status.success(),
            "apifence trace failed: {:?}",
            out.status
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|line| serde_json::from_str(line).expect("one JSON object per line"))
            .collect()
    }

    /// Sends `signal` to the trace process.
    fn signal_trace(&self, signal: libc::c_int) {
        let child = self.trace.as_ref().expect("a trace runs");
        // SAFETY: signals a child process this test started and has not reaped.
        assert_eq!(unsafe { libc::kill(child.id() as libc::pid_t, signal) }, 0);
    }

    fn reach(&self, src: Ipv4Addr, port: u16, wait: Duration) -> Result<(), ConnectError> {
        connect(
            &self.client,
            IpAddr::V4(src),
            SocketAddr::new(IpAddr::V4(API4), port),
            wait,
        )
    }

    fn assert_connects(&self, src: Ipv4Addr, port: u16, why: &str) {
        if let Err(e) = self.reach(src, port, CONNECT_WAIT) {
            panic!("{src} -> :{port} should connect ({why}) but {e}");
        }
    }

    fn assert_dropped(&self, src: Ipv4Addr, port: u16, why: &str) {
        match self.reach(src, port, DROP_WAIT) {
            Err(ConnectError::TimedOut) => {}
            other => panic!("{src} -> :{port} should time out ({why}) but got {other:?}"),
        }
    }

    /// Kernel id of the program the api0 link runs, and that program's name.
    fn link_program(&self) -> (u32, String) {
        let (_, program_id) = attach::link_ids(&self.layout(), "api0").expect("api0's link");
        let name = aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .find(|info| info.id() == program_id)
            .and_then(|info| info.name_as_str().map(str::to_owned))
            .expect("the link's program is loaded");
        (program_id, name)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.trace.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.run(&["detach", "--all"]);
    }
}

/// The lines whose source is `source`.
fn lines_of(lines: &[serde_json::Value], source: Ipv4Addr) -> Vec<&serde_json::Value> {
    lines
        .iter()
        .filter(|l| l["source"] == source.to_string())
        .collect()
}

#[test]
fn trace_shows_the_traced_sources_verdicts_while_the_filter_keeps_enforcing() {
    if !require_privileges(
        "trace_shows_the_traced_sources_verdicts_while_the_filter_keeps_enforcing",
    ) {
        return;
    }
    let mut lab = Lab::new();
    let production = attach::program_id(&lab.layout()).expect("pinned program");
    assert_eq!(lab.link_program(), (production, "apifence".to_owned()));

    lab.start_trace(&["--source", TRACED, "--count", "1000", "--seconds", "120"]);
    let (traced_id, traced_name) = lab.link_program();
    assert_eq!(
        traced_name, "apifence_trace",
        "the trace program runs on api0"
    );
    assert_ne!(traced_id, production);

    lab.assert_connects(GOOD4, API_PORT, "authorized, traced");
    lab.assert_dropped(
        BAD4,
        API_PORT,
        "unauthorized: still dropped during the trace",
    );
    lab.assert_dropped(OTHER4, API_PORT, "unauthorized, not traced: still dropped");
    lab.assert_connects(GOOD4, OTHER_PORT, "port not protected");
    lab.assert_connects(OTHER4, OTHER_PORT, "port not protected, not traced");

    lab.signal_trace(libc::SIGINT);
    let lines = lab.wait_trace();

    assert!(
        lines_of(&lines, OTHER4).is_empty(),
        "a source outside --source {TRACED} was traced: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l["source"] == GOOD4.to_string() || l["source"] == BAD4.to_string()),
        "only the traced sources: {lines:?}"
    );
    let good = lines_of(&lines, GOOD4);
    let authorized = good
        .iter()
        .find(|l| l["port"] == API_PORT)
        .unwrap_or_else(|| panic!("no line for {GOOD4} -> :{API_PORT}: {lines:?}"));
    assert_eq!(authorized["verdict"], "pass", "{authorized}");
    assert_eq!(authorized["reason"], "authorized", "{authorized}");
    assert_eq!(authorized["lookup"], "hit", "{authorized}");
    assert_eq!(authorized["range"], format!("{GOOD4}/32"), "{authorized}");
    assert!(authorized["rule"].is_u64(), "{authorized}");
    assert_eq!(authorized["interface"], "api0", "{authorized}");
    assert_eq!(authorized["path"], "eth/ipv4/tcp", "{authorized}");
    let unprotected = good
        .iter()
        .find(|l| l["port"] == OTHER_PORT)
        .unwrap_or_else(|| panic!("no line for {GOOD4} -> :{OTHER_PORT}: {lines:?}"));
    assert_eq!(unprotected["verdict"], "pass", "{unprotected}");
    assert_eq!(unprotected["reason"], "port-not-protected", "{unprotected}");
    assert_eq!(unprotected["lookup"], "skipped", "{unprotected}");
    let bad = lines_of(&lines, BAD4);
    assert!(!bad.is_empty(), "no line for {BAD4}: {lines:?}");
    for line in &bad {
        assert_eq!(line["port"], API_PORT, "{line}");
        assert_eq!(line["verdict"], "drop", "{line}");
        assert_eq!(line["reason"], "no-rule-matched", "{line}");
        assert_eq!(line["lookup"], "miss", "{line}");
        assert!(line["rule"].is_null(), "{line}");
    }

    assert_eq!(
        lab.link_program(),
        (production, "apifence".to_owned()),
        "the production program runs on api0 again"
    );
    assert_eq!(attach::program_id(&lab.layout()), Some(production));
    lab.assert_dropped(BAD4, API_PORT, "after the trace");
    lab.assert_connects(GOOD4, API_PORT, "after the trace");
}

#[test]
fn trace_stops_after_count_packets() {
    if !require_privileges("trace_stops_after_count_packets") {
        return;
    }
    let mut lab = Lab::new();
    let production = attach::program_id(&lab.layout()).expect("pinned program");
    lab.start_trace(&[
        "--source",
        &BAD4.to_string(),
        "--count",
        "1",
        "--seconds",
        "120",
    ]);
    lab.assert_connects(GOOD4, API_PORT, "authorized, not traced");
    lab.assert_dropped(BAD4, API_PORT, "unauthorized, traced");
    let lines = lab.wait_trace();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["source"], BAD4.to_string());
    assert_eq!(lines[0]["verdict"], "drop");
    assert_eq!(lab.link_program(), (production, "apifence".to_owned()));
}

#[test]
fn a_killed_trace_keeps_enforcing_and_attach_restores_the_filter() {
    if !require_privileges("a_killed_trace_keeps_enforcing_and_attach_restores_the_filter") {
        return;
    }
    let mut lab = Lab::new();
    let production = attach::program_id(&lab.layout()).expect("pinned program");
    lab.start_trace(&["--source", TRACED, "--seconds", "120"]);
    lab.signal_trace(libc::SIGKILL);
    let mut child = lab.trace.take().expect("trace");
    child.wait().expect("reap the killed trace");

    let (left_id, left_name) = lab.link_program();
    assert_eq!(
        left_name, "apifence_trace",
        "the dead trace's program is still attached"
    );
    assert_ne!(left_id, production);
    lab.assert_dropped(BAD4, API_PORT, "the left trace program still enforces");
    lab.assert_connects(GOOD4, API_PORT, "the left trace program still authorizes");

    let out = lab.ok(&["attach", "api0"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("api0 still ran the trace program"),
        "attach says it restored the filter: {stderr}"
    );
    assert_eq!(lab.link_program(), (production, "apifence".to_owned()));
    lab.assert_dropped(BAD4, API_PORT, "after the restore");
}

#[test]
fn a_detach_during_the_trace_ends_it_cleanly() {
    if !require_privileges("a_detach_during_the_trace_ends_it_cleanly") {
        return;
    }
    let mut lab = Lab::new();
    let stderr = lab.start_trace(&["--source", TRACED, "--seconds", "120"]);
    lab.ok(&["detach", "--all"]);
    lab.assert_connects(BAD4, API_PORT, "nothing is attached any more");
    lab.signal_trace(libc::SIGINT);
    lab.wait_trace();
    // The process ended, so its stderr closes and the reader's channel disconnects.
    let mut said = Vec::new();
    while let Ok(line) = stderr.recv_timeout(PROCESS_WAIT) {
        said.push(line);
    }
    assert!(
        said.iter()
            .any(|l| l.contains("api0") && l.contains("the filter was detached")),
        "the trace says the filter went away under it: {said:?}"
    );
}
