//! A lab for end-to-end tests of the real `apifence daemon` process: an API server namespace
//! and a client namespace joined by a veth pair (the client has an authorized and an
//! unauthorized address of each family), TCP servers on the API port and another port, and a
//! private directory holding the config file, the state directory, the socket and the bpffs
//! mount point (the daemon mounts bpffs there). Dropping the lab kills the daemon, detaches the
//! filter, unmounts the bpffs and deletes namespaces and directory, also when a test panics.
//! Every wait is bounded.

#![allow(dead_code)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Output, Stdio},
    sync::{
        Mutex, MutexGuard,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use apifence_tests::{
    ApiAndClient, Bpffs, ConnectError, Endpoint, Netns, TcpServer, VethPair, apifence_bin,
    bpffs::BASE_DIR,
    cmd::{output_with_timeout, wait_with_timeout},
    connect,
};

pub const API4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
pub const GOOD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
pub const BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
pub const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 1);
pub const GOOD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 2);
pub const BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 3);
pub const API_PORT: u16 = 6443;
pub const OTHER_PORT: u16 = 8080;
/// How long a stranger's SYN is given before it counts as dropped.
pub const DROP_WAIT: Duration = Duration::from_millis(800);
/// Bound on an expected connection.
pub const CONNECT_WAIT: Duration = Duration::from_secs(3);
/// Bound on the daemon becoming ready.
pub const START_WAIT: Duration = Duration::from_secs(30);
/// Bound on the daemon exiting after SIGTERM.
pub const STOP_WAIT: Duration = Duration::from_secs(15);
/// Bound on a reload becoming visible.
pub const RELOAD_WAIT: Duration = Duration::from_secs(10);
/// Bound on one CLI run.
pub const CLI_WAIT: Duration = Duration::from_secs(60);

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub fn v4(a: Ipv4Addr) -> IpAddr {
    IpAddr::V4(a)
}

pub fn v6(a: Ipv6Addr) -> IpAddr {
    IpAddr::V6(a)
}

/// Polls `done` every 100 ms for at most `timeout`; returns its last answer.
pub fn wait_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    apifence_tests::wait::wait_until(timeout, Duration::from_millis(100), done)
}

/// See the module docs.
pub struct DaemonLab {
    pub api: Netns,
    pub client: Netns,
    dir: PathBuf,
    servers: Vec<TcpServer>,
    /// The running daemon (interior mutability, so a test can restart it while another
    /// thread streams through the lab).
    daemon: Mutex<Option<Child>>,
    starts: AtomicU32,
}

impl DaemonLab {
    /// Builds the namespaces, the link, the servers and the lab directory.
    pub fn new() -> DaemonLab {
        let ApiAndClient {
            api,
            client,
            servers,
        } = ApiAndClient::new(
            Endpoint::new("api0", API4, API6),
            Endpoint::new("cli0", GOOD4, GOOD6),
            &[(v4(BAD4), 24), (v6(BAD6), 64)],
            &[API_PORT, OTHER_PORT],
        )
        .expect("api and client namespaces");
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(BASE_DIR).join(format!("daemon-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("lab directory");
        DaemonLab {
            api,
            client,
            dir,
            servers,
            daemon: Mutex::new(None),
            starts: AtomicU32::new(0),
        }
    }

    /// The bpffs directory (the daemon mounts a bpffs on it).
    pub fn bpffs(&self) -> PathBuf {
        self.dir.join("bpffs")
    }

    /// The daemon's socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("apifence.sock")
    }

    /// The daemon's state directory.
    pub fn state_dir(&self) -> PathBuf {
        self.dir.join("state")
    }

    /// The config file.
    pub fn config(&self) -> PathBuf {
        self.dir.join("apifence.toml")
    }

    /// The server on the API port.
    pub fn api_server(&self) -> &TcpServer {
        &self.servers[0]
    }

    /// The config text: this lab's interface (unless `body` names interfaces) and paths, then
    /// `body` (other keys).
    pub fn config_text(&self, body: &str) -> String {
        let interfaces = if body.contains("interfaces =") {
            ""
        } else {
            "interfaces = [\"api0\"]\n"
        };
        format!(
            "{interfaces}bpffs = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\n\
             metrics = \"\"\n{body}\n",
            self.bpffs().display(),
            self.state_dir().display(),
            self.socket().display()
        )
    }

    /// Writes the config file (lab keys plus `body`) atomically (write, then rename).
    pub fn write_config(&self, body: &str) {
        self.write_raw_config(&self.config_text(body));
    }

    /// Writes `text` as the whole config file, atomically.
    pub fn write_raw_config(&self, text: &str) {
        let tmp = self.dir.join("apifence.toml.tmp");
        std::fs::write(&tmp, text).expect("write config");
        std::fs::rename(&tmp, self.config()).expect("rename config");
    }

    /// Log file of the `n`-th daemon start.
    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.join(format!("daemon-{n}.log"))
    }

    /// Everything the daemons of this lab logged.
    pub fn logs(&self) -> String {
        (1..=self.starts.load(Ordering::SeqCst))
            .map(|n| std::fs::read_to_string(self.log_path(n)).unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Spawns `apifence --netns <api> daemon --config <file> ARGS` without waiting.
    pub fn spawn(&self, args: &[&str]) -> Child {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = File::create(self.log_path(n)).expect("daemon log");
        Command::new(apifence_bin().expect("apifence binary"))
            .arg("--netns")
            .arg(self.api.name())
            .arg("daemon")
            .arg("--config")
            .arg(self.config())
            .args(args)
            .env("APIFENCE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn apifence daemon")
    }

    /// Starts the daemon and waits (bounded) until it answers on its socket.
    fn daemon(&self) -> MutexGuard<'_, Option<Child>> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn start(&self, args: &[&str]) {
        assert!(self.daemon().is_none(), "a daemon is already running");
        let mut child = self.spawn(args);
        let ready = wait_until(START_WAIT, || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the daemon exited ({status}) while starting:\n{}",
                    self.logs()
                );
            }
            self.cli(&["status", "--json"]).status.success()
        });
        if !ready {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "the daemon did not answer within {START_WAIT:?}:\n{}",
                self.logs()
            );
        }
        *self.daemon() = Some(child);
    }

    /// The running daemon's pid.
    pub fn pid(&self) -> u32 {
        self.daemon().as_ref().expect("daemon running").id()
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain syscall on our own child's pid.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({signal})");
    }

    /// SIGTERM, then waits (bounded) for the exit.
    pub fn stop(&self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.daemon().take().expect("daemon running");
        match wait_with_timeout(&mut child, STOP_WAIT).expect("wait for daemon") {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the daemon ignored SIGTERM for {STOP_WAIT:?}:\n{}",
                    self.logs()
                );
            }
        }
    }

    /// `kill -9`, then reaps it.
    pub fn kill9(&self) {
        let mut child = self.daemon().take().expect("daemon running");
        child.kill().expect("SIGKILL");
        let _ = child.wait();
    }

    /// `apifence --netns <api> --bpffs <dir> --socket <socket> ARGS`, bounded.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut command = Command::new(apifence_bin().expect("apifence binary"));
        command
            .arg("--netns")
            .arg(self.api.name())
            .arg("--bpffs")
            .arg(self.bpffs())
            .arg("--socket")
            .arg(self.socket())
            .args(args);
        output_with_timeout(&mut command, CLI_WAIT).expect("run apifence")
    }

    /// Runs the CLI; panics with its stderr (and the daemon's log) unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "apifence {args:?} failed: {}\ndaemon log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs the CLI expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            !out.status.success(),
            "apifence {args:?} should have failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Runs the CLI and parses its stdout as JSON.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let text = self.ok(args);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{args:?}: {e}: {text}"))
    }

    /// The daemon's `status --json`.
    pub fn status(&self) -> serde_json::Value {
        self.json(&["status", "--json"])
    }

    /// The `ranges` of `ranges show --json`.
    pub fn shown_ranges(&self) -> Vec<String> {
        self.json(&["ranges", "show", "--json"])["ranges"]
            .as_array()
            .expect("ranges array")
            .iter()
            .map(|r| r.as_str().unwrap_or_default().to_string())
            .collect()
    }

    /// The `dropped` counter of `stats --json` (read from the pins).
    pub fn dropped(&self) -> u64 {
        self.json(&["stats", "--json"])["dropped"]
            .as_u64()
            .expect("dropped counter")
    }

    pub fn reach(&self, src: IpAddr, port: u16) -> Result<(), ConnectError> {
        let dst = match src {
            IpAddr::V4(_) => v4(API4),
            IpAddr::V6(_) => v6(API6),
        };
        let wait = if port == API_PORT {
            DROP_WAIT
        } else {
            CONNECT_WAIT
        };
        connect(&self.client, src, SocketAddr::new(dst, port), wait)
    }

    /// Deletes the veth pair and creates it again with the same names and addresses (as a
    /// driver reload or a bond rebuild would): `api0` gets a new interface index.
    pub fn recreate_link(&self) {
        self.api.ip(&["link", "del", "api0"]).expect("delete api0");
        VethPair::create(
            &self.api,
            Endpoint::new("api0", API4, API6),
            &self.client,
            Endpoint::new("cli0", GOOD4, GOOD6),
        )
        .expect("recreate the veth pair");
        for (ip, prefix) in [(v4(BAD4), 24), (v6(BAD6), 64)] {
            apifence_tests::link::add_address(&self.client, "cli0", ip, prefix)
                .expect("client address");
        }
    }

    pub fn assert_connects(&self, src: IpAddr, port: u16, why: &str) {
        if let Err(e) = self.reach(src, port) {
            panic!("{src} -> :{port} should connect ({why}) but {e}");
        }
    }

    pub fn assert_dropped(&self, src: IpAddr, port: u16, why: &str) {
        match self.reach(src, port) {
            Err(ConnectError::TimedOut) => {}
            other => panic!("{src} -> :{port} should time out ({why}) but got {other:?}"),
        }
    }
}

impl Drop for DaemonLab {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.cli(&["detach", "--all"]);
        if let Err(e) = Bpffs::unmount(&self.bpffs()) {
            eprintln!("warning: {e:#}");
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The metrics endpoint, inside the API server namespace.
pub const METRICS: &str = "127.0.0.1:9640";

/// The lab's config with `body`, the metrics endpoint turned on.
pub fn config_with_metrics(lab: &DaemonLab, body: &str) -> String {
    lab.config_text(body)
        .replace("metrics = \"\"", &format!("metrics = \"{METRICS}\""))
}

/// `GET path` over HTTP/1.1 from inside the API namespace; returns the status line and body.
pub fn http_get(lab: &DaemonLab, path: &str) -> (String, String) {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    let response = lab
        .api
        .run(move || -> std::io::Result<String> {
            let addr: SocketAddr = METRICS.parse().expect("address");
            let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(3))?;
            stream.set_read_timeout(Some(Duration::from_secs(10)))?;
            stream.set_write_timeout(Some(Duration::from_secs(10)))?;
            stream.write_all(request.as_bytes())?;
            let mut text = String::new();
            stream.read_to_string(&mut text)?;
            Ok(text)
        })
        .expect("run in the API namespace")
        .expect("scrape the metrics endpoint");
    let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
    (
        head.lines().next().unwrap_or_default().to_owned(),
        body.to_owned(),
    )
}

/// The value of the sample line `series` (`name{labels}`) in exposition `text`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.parse().ok())
}
