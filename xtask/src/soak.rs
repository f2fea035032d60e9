//! `cargo xtask soak [--minutes N]`: churn soak of the real daemon on a veth pair.
//!
//! The lab: an API server namespace (TCP servers on 6443, protected, and 8080, not) and a client
//! namespace holding candidate sources (four IPv4, four IPv6) and never-authorized sources (two
//! of each family), joined by a veth pair the soak creates; `apifence daemon` (release build,
//! `ranges_from = "state"`) attached to the API side. While probe threads open TCP connections
//! from random sources, one thread changes the filter continuously: `ranges set|add|remove`
//! through the CLI and the daemon (hosts and covering prefixes), `mode monitor|enforce`, config
//! reloads with good and bad files (`apifence reload`: a good one must be accepted, a bad one
//! refused), and `kill -9` of the daemon followed by a restart (the filter must keep enforcing
//! while the daemon is down and across the restart).
//!
//! The oracle knows the enforced list and mode after every change. A probe is judged only when
//! it started after the change before it returned and finished before the next change started
//! (probes that raced a change could legitimately see either state); restarts and the time the
//! daemon is down are not change windows. A judged probe is a wrongful drop when it should have
//! connected and timed out, a wrongful pass when it should have been dropped and connected. The
//! soak fails on any wrongful verdict, any unexpected command result, or when a category of
//! source (authorized, removed, never authorized; each family) was never judged.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::bpffs::BASE_DIR;
use apifence_tests::cmd::output_with_timeout;
use apifence_tests::{ApiAndClient, Bpffs, ConnectError, Endpoint, connect};

use crate::build;
use crate::process::is_root;

/// Options of `cargo xtask soak`.
#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    /// How long to churn, in minutes.
    #[arg(long, default_value_t = 2)]
    pub minutes: u64,
}

const API4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 1);
const CLIENT4: Ipv4Addr = Ipv4Addr::new(198, 18, 7, 2);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50a, 0, 0, 0, 0, 0, 1);
const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x50a, 0, 0, 0, 0, 0, 2);
const API_PORT: u16 = 6443;
const OTHER_PORT: u16 = 8080;
/// Candidates: 198.18.7.8 ..= .11 and fd00:50a::8 ..= ::b, inside the block entries below.
const CANDIDATES: usize = 4;
/// The block entries: they cover every candidate of their family and no other source.
const BLOCK4: &str = "198.18.7.8/29";
const BLOCK6: &str = "fd00:50a::8/125";
/// Probe threads.
const PROBERS: usize = 4;
/// A protected probe that gets no answer within this is dropped (veth answers in microseconds).
const CONNECT_TIMEOUT: Duration = Duration::from_millis(600);
/// Pause of each probe thread between probes.
const PROBE_PAUSE: Duration = Duration::from_millis(20);
/// Bound on one CLI run.
const CLI_WAIT: Duration = Duration::from_secs(60);
/// Bound on the daemon answering after a start.
const START_WAIT: Duration = Duration::from_secs(30);

fn candidate4(i: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(198, 18, 7, 8 + i as u8))
}

fn candidate6(i: usize) -> IpAddr {
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50a, 0, 0, 0, 0, 0, 8 + i as u16))
}

/// Sources never put in any list.
fn never() -> [IpAddr; 4] {
    [
        IpAddr::V4(Ipv4Addr::new(198, 18, 7, 200)),
        IpAddr::V4(Ipv4Addr::new(198, 18, 7, 201)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50a, 0, 0, 0, 0, 0, 0x200)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x50a, 0, 0, 0, 0, 0, 0x201)),
    ]
}

/// Every source a probe may use.
fn sources() -> Vec<IpAddr> {
    let mut all: Vec<IpAddr> = (0..CANDIDATES)
        .flat_map(|i| [candidate4(i), candidate6(i)])
        .collect();
    all.extend(never());
    all
}

/// One entry of the authorized list, as given to the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Entry {
    Host(IpAddr),
    Block4,
    Block6,
}

impl Entry {
    fn text(self) -> String {
        match self {
            Entry::Host(ip) => ip.to_string(),
            Entry::Block4 => BLOCK4.into(),
            Entry::Block6 => BLOCK6.into(),
        }
    }

    fn holds(self, ip: IpAddr) -> bool {
        let candidates = |f: fn(usize) -> IpAddr| (0..CANDIDATES).map(f).any(|c| c == ip);
        match self {
            Entry::Host(host) => host == ip,
            Entry::Block4 => candidates(candidate4),
            Entry::Block6 => candidates(candidate6),
        }
    }

    fn all() -> Vec<Entry> {
        let mut all: Vec<Entry> = (0..CANDIDATES)
            .flat_map(|i| [Entry::Host(candidate4(i)), Entry::Host(candidate6(i))])
            .collect();
        all.extend([Entry::Block4, Entry::Block6]);
        all
    }
}

/// What the filter enforces.
#[derive(Clone, Debug, PartialEq)]
struct State {
    list: Vec<Entry>,
    monitor: bool,
}

impl State {
    fn passes(&self, src: IpAddr, port: u16) -> bool {
        port != API_PORT || self.monitor || self.list.iter().any(|e| e.holds(src))
    }
}

/// A change: it was in flight from `start` to `end`; `after` is enforced from `end` on.
struct Window {
    start: Instant,
    end: Instant,
    after: State,
}

/// One TCP probe.
struct Probe {
    src: IpAddr,
    port: u16,
    start: Instant,
    end: Instant,
    /// `Ok(true)` connected, `Ok(false)` timed out, `Err` anything else.
    outcome: Result<bool, String>,
}

/// Tiny xorshift generator (seeded from the clock, printed).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

/// The namespaces, the directory and the daemon; `Drop` tears everything down.
struct Lab {
    bin: PathBuf,
    net: ApiAndClient,
    dir: PathBuf,
    daemon: Mutex<Option<Child>>,
    starts: AtomicU32,
}

impl Lab {
    fn new(bin: PathBuf) -> Result<Lab> {
        let mut extra: Vec<(IpAddr, u8)> = Vec::new();
        for src in sources() {
            extra.push((src, if src.is_ipv4() { 24 } else { 64 }));
        }
        let net = ApiAndClient::new(
            Endpoint::new("api0", API4, API6),
            Endpoint::new("cli0", CLIENT4, CLIENT6),
            &extra,
            &[API_PORT, OTHER_PORT],
        )
        .context("soak namespaces")?;
        let dir = Path::new(BASE_DIR).join(format!("soak-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Lab {
            bin,
            net,
            dir,
            daemon: Mutex::new(None),
            starts: AtomicU32::new(0),
        })
    }

    fn config(&self) -> PathBuf {
        self.dir.join("apifence.toml")
    }

    /// Writes the config atomically: lab keys, a seed list, `ports`, and `extra` lines.
    fn write_config(&self, ports: &str, extra: &str) -> Result<()> {
        let text = format!(
            "interfaces = [\"api0\"]\nbpffs = \"{}\"\nstate_dir = \"{}\"\nsocket = \"{}\"\n\
             metrics = \"\"\nranges_from = \"state\"\nmode = \"enforce\"\n\
             authorized_ranges = [\"{}\", \"{}\"]\nports = {ports}\n{extra}\n",
            self.dir.join("bpffs").display(),
            self.dir.join("state").display(),
            self.dir.join("apifence.sock").display(),
            candidate4(0),
            candidate6(0),
        );
        let tmp = self.dir.join("apifence.toml.tmp");
        fs::write(&tmp, text).context("writing the config")?;
        fs::rename(&tmp, self.config()).context("replacing the config")
    }

    fn cli(&self, args: &[&str]) -> Result<Output> {
        let mut command = Command::new(&self.bin);
        command
            .arg("--netns")
            .arg(self.net.api.name())
            .arg("--bpffs")
            .arg(self.dir.join("bpffs"))
            .arg("--socket")
            .arg(self.dir.join("apifence.sock"))
            .args(args);
        output_with_timeout(&mut command, CLI_WAIT)
    }

    /// Starts the daemon and waits (bounded) until it answers.
    fn start(&self) -> Result<()> {
        let n = self.starts.fetch_add(1, Ordering::SeqCst) + 1;
        let log = fs::File::create(self.dir.join(format!("daemon-{n}.log")))?;
        let mut child = Command::new(&self.bin)
            .arg("--netns")
            .arg(self.net.api.name())
            .arg("daemon")
            .arg("--config")
            .arg(self.config())
            .env("APIFENCE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning apifence daemon")?;
        let deadline = Instant::now() + START_WAIT;
        loop {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "the daemon exited ({status}) while starting:\n{}",
                    self.logs()
                );
            }
            if self.cli(&["status", "--json"])?.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "the daemon did not answer within {START_WAIT:?}:\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
        *self.child() = Some(child);
        Ok(())
    }

    fn child(&self) -> std::sync::MutexGuard<'_, Option<Child>> {
        self.daemon.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn kill9(&self) -> Result<()> {
        let mut child = self.child().take().context("no daemon to kill")?;
        child.kill().context("SIGKILL")?;
        child.wait()?;
        Ok(())
    }

    fn logs(&self) -> String {
        (1..=self.starts.load(Ordering::SeqCst))
            .map(|n| {
                fs::read_to_string(self.dir.join(format!("daemon-{n}.log"))).unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Packets the filter judged, from `apifence stats --json`.
    fn packets(&self) -> Result<u64> {
        let out = self.cli(&["stats", "--json"])?;
        let stats: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("parsing stats --json")?;
        ["passed", "dropped", "would_drop"]
            .iter()
            .map(|key| {
                stats[key]
                    .as_u64()
                    .with_context(|| format!("stats --json has no number {key}: {stats}"))
            })
            .sum()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut child) = self.child().take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = self.cli(&["detach", "--all"]);
        if let Err(e) = Bpffs::unmount(&self.dir.join("bpffs")) {
            eprintln!("warning: {e:#}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// Counts of what the churn thread did.
#[derive(Default, Debug)]
struct Churn {
    sets: u64,
    adds: u64,
    removes: u64,
    mode_switches: u64,
    good_reloads: u64,
    bad_reloads: u64,
    restarts: u64,
    /// Commands whose result was not the expected one.
    surprises: Vec<String>,
}

impl Churn {
    fn changes(&self) -> u64 {
        self.sets
            + self.adds
            + self.removes
            + self.mode_switches
            + self.good_reloads
            + self.bad_reloads
    }
}

/// Runs the soak for `args.minutes`.
pub fn run(args: &SoakArgs) -> Result<()> {
    if !is_root() {
        bail!("the soak needs root (network namespaces, XDP): run it with sudo");
    }
    let bin = build::release()?;
    let lab = Lab::new(bin)?;
    lab.write_config("[443, 6443]", "")?;
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    println!("soak: {} minute(s), seed {seed}", args.minutes);
    let duration = Duration::from_secs(args.minutes * 60);

    let start = Instant::now();
    lab.start()?;
    let initial = State {
        list: vec![Entry::Host(candidate4(0)), Entry::Host(candidate6(0))],
        monitor: false,
    };
    let windows = Arc::new(Mutex::new(vec![Window {
        start,
        end: Instant::now(),
        after: initial.clone(),
    }]));
    let probes = Arc::new(Mutex::new(Vec::<Probe>::new()));
    let stop = Arc::new(AtomicBool::new(false));

    let mut churn = Churn::default();
    let outcome = thread::scope(|scope| -> Result<()> {
        for n in 0..PROBERS {
            let probes = Arc::clone(&probes);
            let stop = Arc::clone(&stop);
            let client = &lab.net.client;
            scope.spawn(move || {
                let mut rng = Rng(seed.wrapping_mul(n as u64 + 3) | 1);
                let all = sources();
                while !stop.load(Ordering::Relaxed) {
                    let src = all[rng.below(all.len())];
                    let port = if rng.below(5) == 0 {
                        OTHER_PORT
                    } else {
                        API_PORT
                    };
                    let dst = match src {
                        IpAddr::V4(_) => IpAddr::V4(API4),
                        IpAddr::V6(_) => IpAddr::V6(API6),
                    };
                    let start = Instant::now();
                    let result = connect(client, src, SocketAddr::new(dst, port), CONNECT_TIMEOUT);
                    let end = Instant::now();
                    let outcome = match result {
                        Ok(()) => Ok(true),
                        Err(ConnectError::TimedOut) => Ok(false),
                        Err(e) => Err(e.to_string()),
                    };
                    probes
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(Probe {
                            src,
                            port,
                            start,
                            end,
                            outcome,
                        });
                    // Paced, so the lab's accept loop keeps up (an overflowing listen backlog
                    // drops SYNs the filter passed, which would look like wrongful drops).
                    thread::sleep(PROBE_PAUSE);
                }
            });
        }
        let result = churn_loop(&lab, &mut churn, initial, &windows, seed, start + duration);
        stop.store(true, Ordering::Relaxed);
        result
    });
    outcome?;

    let packets = lab.packets()?;
    let windows = windows.lock().unwrap_or_else(|p| p.into_inner());
    let probes = probes.lock().unwrap_or_else(|p| p.into_inner());
    let verdict = judge(&windows, &probes);
    println!(
        "soak: {} changes (set {}, add {}, remove {}, mode {}, good reloads {}, bad reloads {}), \
         {} kill -9 restarts, {} probes ({} judged, {} raced a change), {} packets judged by XDP, \
         {} wrongful drops, {} wrongful passes, {} probe errors, {:.0} s",
        churn.changes(),
        churn.sets,
        churn.adds,
        churn.removes,
        churn.mode_switches,
        churn.good_reloads,
        churn.bad_reloads,
        churn.restarts,
        probes.len(),
        verdict.judged,
        verdict.raced,
        packets,
        verdict.wrongful_drops.len(),
        verdict.wrongful_passes.len(),
        verdict.errors.len(),
        start.elapsed().as_secs_f64()
    );
    println!("soak: judged per kind {:?}", verdict.kinds);
    let mut failures = String::new();
    for (what, list) in [
        ("wrongful drop", &verdict.wrongful_drops),
        ("wrongful pass", &verdict.wrongful_passes),
        ("probe error", &verdict.errors),
        ("unexpected command result", &churn.surprises),
    ] {
        for line in list.iter().take(10) {
            let _ = writeln!(failures, "{what}: {line}");
        }
    }
    for kind in [
        "authorized v4",
        "authorized v6",
        "removed v4",
        "removed v6",
        "never v4",
        "never v6",
    ] {
        if !verdict.kinds.iter().any(|(k, n)| k == kind && *n > 0) {
            let _ = writeln!(failures, "no judged probe from a {kind} source");
        }
    }
    if churn.restarts == 0 || churn.bad_reloads == 0 || churn.good_reloads == 0 {
        let _ = writeln!(failures, "the churn missed a kind of change: {churn:?}");
    }
    if !failures.is_empty() {
        bail!(
            "soak failed (seed {seed}):\n{failures}daemon logs:\n{}",
            tail(&lab.logs(), 40)
        );
    }
    Ok(())
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Changes the filter until `deadline`, recording every change window.
/// The churn's roll that means "replace the list, leaving out what the initial list had".
const FORCED_REMOVAL: usize = 1000;

fn churn_loop(
    lab: &Lab,
    churn: &mut Churn,
    mut state: State,
    windows: &Mutex<Vec<Window>>,
    seed: u64,
    deadline: Instant,
) -> Result<()> {
    let mut rng = Rng(seed.rotate_left(17) | 1);
    let mut wide_ports = false;
    let mut round = 0u64;
    while Instant::now() < deadline {
        // Let probes run against the settled state.
        thread::sleep(Duration::from_millis(1200 + 100 * rng.below(10) as u64));
        // Restarts and reloads come in a fixed rotation, so even a short run has several of
        // each; the list and mode changes in between are random.
        round += 1;
        // Slot 1 replaces the list with one that leaves out the first host of each family and
        // both blocks, so every run judges sources that were authorized and then removed.
        let roll = match round % 8 {
            7 => 0,
            1 => FORCED_REMOVAL,
            3 => 90,
            5 => 97,
            _ => 6 + rng.below(82),
        };
        if roll < 6 {
            lab.kill9()?;
            // The filter keeps enforcing while no daemon runs (probes go on, judged).
            thread::sleep(Duration::from_millis(1500));
            lab.start()?;
            churn.restarts += 1;
            continue;
        }
        let begin = Instant::now();
        let mut next = state.clone();
        let (ok, expect_ok, shown) = if roll < 40 || roll == FORCED_REMOVAL {
            let all = Entry::all();
            let mut list: Vec<Entry> = if roll == FORCED_REMOVAL {
                let first = [
                    Entry::Host(candidate4(0)),
                    Entry::Host(candidate6(0)),
                    Entry::Block4,
                    Entry::Block6,
                ];
                all.iter().copied().filter(|e| !first.contains(e)).collect()
            } else {
                all.iter().copied().filter(|_| rng.below(3) == 0).collect()
            };
            if list.is_empty() {
                list.push(all[rng.below(all.len())]);
            }
            let text = list.iter().map(|e| e.text()).collect::<Vec<_>>().join(",");
            next.list = list;
            churn.sets += 1;
            let out = lab.cli(&["ranges", "set", &text, "--force"])?;
            (
                out.status.success(),
                true,
                format!("ranges set {text}: {}", stderr(&out)),
            )
        } else if roll < 62 {
            let missing: Vec<Entry> = Entry::all()
                .into_iter()
                .filter(|e| !state.list.contains(e))
                .collect();
            if missing.is_empty() {
                continue;
            }
            let entry = missing[rng.below(missing.len())];
            next.list.push(entry);
            churn.adds += 1;
            let out = lab.cli(&["ranges", "add", &entry.text(), "--force"])?;
            (
                out.status.success(),
                true,
                format!("ranges add {}: {}", entry.text(), stderr(&out)),
            )
        } else if roll < 78 {
            if state.list.len() < 2 {
                continue;
            }
            let entry = state.list[rng.below(state.list.len())];
            next.list.retain(|e| *e != entry);
            churn.removes += 1;
            let out = lab.cli(&["ranges", "remove", &entry.text(), "--force"])?;
            (
                out.status.success(),
                true,
                format!("ranges remove {}: {}", entry.text(), stderr(&out)),
            )
        } else if roll < 88 {
            next.monitor = !state.monitor;
            let mode = if next.monitor { "monitor" } else { "enforce" };
            churn.mode_switches += 1;
            let out = lab.cli(&["mode", mode, "--force"])?;
            (
                out.status.success(),
                true,
                format!("mode {mode}: {}", stderr(&out)),
            )
        } else if roll < 94 {
            // A good file: only the protected-port set beside 6443 changes (no verdict does).
            wide_ports = !wide_ports;
            lab.write_config(
                if wide_ports {
                    "[6443, 9443]"
                } else {
                    "[443, 6443]"
                },
                "",
            )?;
            churn.good_reloads += 1;
            let out = lab.cli(&["reload"])?;
            (
                out.status.success(),
                true,
                format!("good reload: {}", stderr(&out)),
            )
        } else {
            let ports = if wide_ports {
                "[6443, 9443]"
            } else {
                "[443, 6443]"
            };
            let bad = [
                ("[443,, 6443]", ""),
                (ports, "colour = \"blue\""),
                (ports, "capacity = \"lots\""),
            ][rng.below(3)];
            lab.write_config(bad.0, bad.1)?;
            churn.bad_reloads += 1;
            let out = lab.cli(&["reload"])?;
            let refused = !out.status.success();
            // Put a good file back, so the poller and the next restart read a valid one.
            lab.write_config(ports, "")?;
            let settle = lab.cli(&["reload"])?;
            if !settle.status.success() {
                churn
                    .surprises
                    .push(format!("reload after a bad file: {}", stderr(&settle)));
            }
            (!refused, false, format!("bad reload {bad:?} was accepted"))
        };
        let end = Instant::now();
        if ok != expect_ok {
            churn.surprises.push(shown);
        }
        if ok {
            state = next;
        }
        windows
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Window {
                start: begin,
                end,
                after: state.clone(),
            });
    }
    Ok(())
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

/// The oracle's findings.
#[derive(Default)]
struct Verdicts {
    judged: u64,
    raced: u64,
    wrongful_drops: Vec<String>,
    wrongful_passes: Vec<String>,
    errors: Vec<String>,
    kinds: Vec<(String, u64)>,
}

/// Judges every probe that lies wholly between two changes.
fn judge(windows: &[Window], probes: &[Probe]) -> Verdicts {
    let mut verdicts = Verdicts::default();
    let mut kinds: std::collections::BTreeMap<String, u64> = Default::default();
    for probe in probes {
        // The last change that returned before the probe started.
        let Some(i) = windows.iter().rposition(|w| w.end <= probe.start) else {
            verdicts.raced += 1;
            continue;
        };
        if windows
            .get(i + 1)
            .is_some_and(|next| next.start < probe.end)
        {
            verdicts.raced += 1;
            continue;
        }
        verdicts.judged += 1;
        let state = &windows[i].after;
        let expected = state.passes(probe.src, probe.port);
        let family = if probe.src.is_ipv4() { "v4" } else { "v6" };
        let was_listed = windows[..=i]
            .iter()
            .any(|w| w.after.list.iter().any(|e| e.holds(probe.src)));
        let kind = if probe.port != API_PORT {
            format!("unprotected {family}")
        } else if state.list.iter().any(|e| e.holds(probe.src)) {
            format!("authorized {family}")
        } else if was_listed {
            format!("removed {family}")
        } else {
            format!("never {family}")
        };
        *kinds.entry(kind).or_default() += 1;
        let at = probe.start.duration_since(windows[0].start).as_secs_f64();
        let line = format!(
            "{} -> :{} at {at:.3} s, state {:?} (monitor {})",
            probe.src,
            probe.port,
            state.list.iter().map(|e| e.text()).collect::<Vec<_>>(),
            state.monitor
        );
        match &probe.outcome {
            Ok(true) if !expected => verdicts.wrongful_passes.push(line),
            Ok(false) if expected => verdicts.wrongful_drops.push(line),
            Ok(_) => {}
            Err(e) => verdicts.errors.push(format!("{line}: {e}")),
        }
    }
    verdicts.kinds = kinds.into_iter().collect();
    verdicts
}
