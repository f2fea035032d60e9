//! Section 3: the control plane. For each list size, apifence (attached natively to the
//! receiver) has its list replaced again and again through the CLI (`apifence ranges set
//! --file`) while probe traffic flows from four sources: two present in both lists ("keep") and
//! two present in only one ("flip"). Every probe carries a sequence number and its send time is
//! recorded; a capture behind the XDP program records what got through. From that:
//!
//! - the command's wall time;
//! - where enforcement happened relative to the command's return (the send time of the first
//!   flip probe that passed after an add, the last one that passed before a removal);
//! - keep probes dropped (must be 0) and flip probes that passed although sent after the
//!   command removing them returned (must be 0).
//!
//! The same lists are loaded with `nft -f` (one transaction) and `ipset restore` (fill a
//! temporary set, swap), and single ranges added and removed with each tool.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use apifence_tests::Frame;
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::alternatives as alt;
use super::lab::{self, BenchBpffs, GEN_IF, Lab, RCV_IF, check_interrupted};
use super::plan::{Plan, Size};
use super::prefixes::{self, Rng};
use super::sockets::PacketSocket;
use super::stats::Summary;
use super::tools;

/// Probe sources: in both lists (keep) or only in list A (flip).
const KEEP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 10);
const FLIP4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 20);
const KEEP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x10);
const FLIP6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0xffff, 0, 0, 0, 0, 0x20);
/// The probe sources, indexed by `sequence % 4`.
const SOURCES: [IpAddr; 4] = [
    IpAddr::V4(KEEP4),
    IpAddr::V4(FLIP4),
    IpAddr::V6(KEEP6),
    IpAddr::V6(FLIP6),
];

fn is_flip(source: usize) -> bool {
    source % 2 == 1
}

/// Bound on one probe session.
const PROBE_LIMIT: Duration = Duration::from_secs(600);
/// Pause between two replacements, so probes see each list for a while.
const DWELL: Duration = Duration::from_millis(25);

/// Times of one replacement, relative to the probe epoch.
#[derive(Clone, Copy, Debug)]
struct Command {
    adds_flip: bool,
    start_ns: u64,
    end_ns: u64,
}

/// Probe verdicts checked against the replacements.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Correctness {
    /// Probes sent from the keep sources.
    pub keep_sent: u64,
    /// Keep probes that did not arrive (must be 0).
    pub keep_dropped: u64,
    /// Flip probes sent after a command removing them returned (before the next add began).
    pub removed_sent_after_return: u64,
    /// Of those, the ones that still passed (must be 0).
    pub removed_passed_after_return: u64,
    /// Flip probes sent after a command adding them returned (before the next removal began).
    pub added_sent_after_return: u64,
    /// Of those, the ones dropped (must be 0).
    pub added_dropped_after_return: u64,
    /// Frames the capture socket itself lost (would show up as drops above).
    pub capture_losses: u64,
    /// Time between two probes of one source, µs (the resolution of the enforcement times).
    pub probe_interval_us: f64,
}

/// Timings of one tool at one size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Wall times, ms.
    pub samples_ms: Vec<f64>,
    /// Their summary.
    pub summary: Option<Summary>,
}

impl Timings {
    fn push(&mut self, d: Duration) {
        self.samples_ms.push(d.as_secs_f64() * 1e3);
    }

    fn finish(&mut self) {
        self.summary = Summary::of(&self.samples_ms);
    }
}

/// Single-range changes at one size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Incremental {
    /// `apifence ranges add X`.
    pub apifence_add: Timings,
    /// `apifence ranges remove X`.
    pub apifence_remove: Timings,
    /// `nft add element …`.
    pub nft_add: Timings,
    /// `nft delete element …`.
    pub nft_remove: Timings,
    /// `ipset add …`.
    pub ipset_add: Timings,
    /// `ipset del …`.
    pub ipset_remove: Timings,
}

/// Everything measured at one list size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlRow {
    /// Size label.
    pub size: String,
    /// IPv4 prefixes in the list.
    pub v4: usize,
    /// IPv6 prefixes in the list.
    pub v6: usize,
    /// `apifence ranges set --file` wall times.
    pub apifence_set: Timings,
    /// Per replacement: when enforcement happened relative to the command's return, µs
    /// (negative: before it returned).
    pub enforced_relative_us: Vec<f64>,
    /// Their summary.
    pub enforced_relative: Option<Summary>,
    /// Probe checks.
    pub correctness: Correctness,
    /// `nft -f` (flush + add, both families, one transaction) wall times.
    pub nft_replace: Timings,
    /// `ipset restore` (fill temporary sets, swap, destroy) wall times.
    pub ipset_replace: Timings,
    /// Single-range changes, when measured at this size.
    pub incremental: Option<Incremental>,
}

/// `apifence ranges set` of a large list, timed alone (see [`Plan::control_large`]).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LargeRow {
    /// Size label.
    pub size: String,
    /// Prefixes in the list (IPv4 and IPv6, 3:1).
    pub prefixes: usize,
    /// The attach capacity used.
    pub capacity: u32,
    /// The first set, into empty slots, ms.
    pub first_set_ms: f64,
    /// Replacements alternating with a list that lacks 1% of the prefixes.
    pub replace: Timings,
}

/// What the section found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ControlResults {
    /// Replacements per size (each a removal and an add).
    pub replacements: usize,
    /// One row per size.
    pub rows: Vec<ControlRow>,
    /// The large list, when the plan has one.
    #[serde(default)]
    pub large: Option<LargeRow>,
}

/// The lists of one size.
struct Lists {
    size: Size,
    base: Vec<IpNet>,
    with_flip: Vec<IpNet>,
    without_flip: Vec<IpNet>,
    file_with: PathBuf,
    file_without: PathBuf,
}

/// Runs the section in `lab`.
pub fn run(plan: &Plan, lab: &Lab, apifence_bin: &Path, workdir: &Path) -> Result<ControlResults> {
    let bpffs = BenchBpffs::new("control")?;
    let dir = bpffs.path().join("apifence");
    let mut all = Vec::new();
    for size in &plan.control_sizes {
        all.push(lists(plan, size, workdir)?);
    }
    let capacity = all
        .iter()
        .map(|l| l.with_flip.len())
        .max()
        .unwrap_or(1)
        .max(1024)
        .next_power_of_two();
    let apifence = Cli {
        bin: apifence_bin.to_path_buf(),
        dir,
    };
    apifence.run(&[
        "--netns",
        lab.rcv.name(),
        "attach",
        RCV_IF,
        "--xdp-mode",
        "native",
        "--capacity",
        &capacity.to_string(),
    ])?;
    let ns = &lab.rcv_handle;
    alt::nft(
        ns,
        &alt::nft_tables(alt::NFT_CP_TABLE, &[(4, "cp4".into()), (6, "cp6".into())]),
    )?;
    alt::ipset_restore(
        ns,
        &(alt::ipset_create("cp4", 4, capacity) + &alt::ipset_create("cp6", 6, capacity)),
    )?;
    let mut rows = Vec::new();
    for l in &all {
        check_interrupted()?;
        eprintln!(
            "bench: control: {} list ({} prefixes)",
            l.size.label(),
            l.with_flip.len()
        );
        rows.push(measure_size(plan, lab, &apifence, l)?);
    }
    apifence.run(&["detach", "--all"])?;
    let large = match plan.control_large {
        0 => None,
        n => Some(large_list(plan, lab, apifence_bin, workdir, n)?),
    };
    Ok(ControlResults {
        replacements: plan.control_replacements,
        rows,
        large,
    })
}

/// Replacements of a list of `n` prefixes: apifence attached in skb mode to the receiver's
/// loopback (the timing needs no traffic), with its own pins.
fn large_list(
    plan: &Plan,
    lab: &Lab,
    apifence_bin: &Path,
    workdir: &Path,
    n: usize,
) -> Result<LargeRow> {
    const REPLACEMENTS: usize = 6;
    let l = lists(plan, &Size::Synthetic(n), workdir)?;
    eprintln!(
        "bench: control: {} list ({n} prefixes), alone",
        l.size.label()
    );
    // Every 100th prefix left out of the other list.
    let fewer: Vec<IpNet> = l
        .with_flip
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 100 != 0)
        .map(|(_, p)| *p)
        .collect();
    let file_fewer = workdir.join(format!("control-{}-fewer.txt", l.size.label()));
    std::fs::write(&file_fewer, prefixes::range_text(&fewer))?;
    let (v4, v6) = family_split(&l.with_flip);
    let mut capacity = (v4.len().max(v6.len()) as u32).next_power_of_two();
    let bpffs = BenchBpffs::new("control-large")?;
    let apifence = Cli {
        bin: apifence_bin.to_path_buf(),
        dir: bpffs.path().join("apifence"),
    };
    let all = l.file_with.display().to_string();
    let some = file_fewer.display().to_string();
    // The compiled table's chunks are sized from the capacity; a list that needs more is
    // refused, and the capacity doubled (as the kernel section does).
    let first_set_ms = loop {
        apifence.run(&[
            "--netns",
            lab.rcv.name(),
            "attach",
            "lo",
            "--xdp-mode",
            "skb",
            "--capacity",
            &capacity.to_string(),
        ])?;
        match apifence.timed(&["ranges", "set", "--file", &all]) {
            Ok(d) => break d.as_secs_f64() * 1e3,
            Err(e) if format!("{e:#}").contains("larger --capacity") && capacity < 1 << 24 => {
                eprintln!(
                    "bench: control: the list needs more than --capacity {capacity} gives; \
                     attaching again with twice the capacity"
                );
                apifence.run(&["detach", "--all"])?;
                capacity *= 2;
            }
            Err(e) => return Err(e),
        }
    };
    let mut replace = Timings::default();
    for i in 0..REPLACEMENTS {
        check_interrupted()?;
        let file = if i % 2 == 0 { &some } else { &all };
        replace.push(apifence.timed(&["ranges", "set", "--file", file])?);
    }
    replace.finish();
    apifence.run(&["detach", "--all"])?;
    Ok(LargeRow {
        size: l.size.label(),
        prefixes: l.with_flip.len(),
        capacity,
        first_set_ms,
        replace,
    })
}

/// The apifence CLI with its bpffs directory.
struct Cli {
    bin: PathBuf,
    dir: PathBuf,
}

impl Cli {
    fn command(&self, args: &[&str]) -> std::process::Command {
        let mut c = std::process::Command::new(&self.bin);
        c.arg("--bpffs").arg(&self.dir).args(args);
        c
    }

    fn run(&self, args: &[&str]) -> Result<String> {
        tools::run(&mut self.command(args))
    }

    fn timed(&self, args: &[&str]) -> Result<Duration> {
        tools::run_timed(&mut self.command(args)).map(|(_, d)| d)
    }
}

impl Drop for Cli {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.run(&["detach", "--all"]);
        }
    }
}

fn lists(plan: &Plan, size: &Size, workdir: &Path) -> Result<Lists> {
    let base: Vec<IpNet> = match size {
        Size::Synthetic(n) => {
            let mut rng = Rng::new(plan.seed ^ 0xc0_417e ^ *n as u64);
            let v6 = n / 4;
            let v4 = n - v6;
            prefixes::synthetic_v4(v4, &mut rng)
                .into_iter()
                .map(IpNet::V4)
                .chain(
                    prefixes::synthetic_v6(v6, &mut rng)
                        .into_iter()
                        .map(IpNet::V6),
                )
                .collect()
        }
        Size::AzureCloud => {
            let path = plan
                .service_tags
                .as_ref()
                .context("AzureCloud without a data file")?;
            let (v4, v6) = prefixes::azure_cloud(path)?;
            prefixes::merged(
                &v4.into_iter()
                    .map(IpNet::V4)
                    .chain(v6.into_iter().map(IpNet::V6))
                    .collect::<Vec<_>>(),
            )
        }
    };
    let host = |a: IpAddr| IpNet::from(a);
    let mut without_flip = base.clone();
    without_flip.extend([host(SOURCES[0]), host(SOURCES[2])]);
    let mut with_flip = without_flip.clone();
    with_flip.extend([host(SOURCES[1]), host(SOURCES[3])]);
    let label = size.label();
    let file_with = workdir.join(format!("control-{label}-a.txt"));
    let file_without = workdir.join(format!("control-{label}-b.txt"));
    std::fs::write(&file_with, prefixes::range_text(&with_flip))?;
    std::fs::write(&file_without, prefixes::range_text(&without_flip))?;
    Ok(Lists {
        size: size.clone(),
        base,
        with_flip,
        without_flip,
        file_with,
        file_without,
    })
}

fn family_split(list: &[IpNet]) -> (Vec<IpNet>, Vec<IpNet>) {
    list.iter().partition(|p| matches!(p, IpNet::V4(_)))
}

fn measure_size(plan: &Plan, lab: &Lab, apifence: &Cli, l: &Lists) -> Result<ControlRow> {
    let with = l.file_with.display().to_string();
    let without = l.file_without.display().to_string();
    apifence.run(&["ranges", "set", "--file", &with])?;

    // Replacements under probe traffic.
    let session = ProbeSession::start(lab, plan.probe_rate_per_source)?;
    std::thread::sleep(DWELL * 2);
    let mut commands = Vec::new();
    let mut apifence_set = Timings::default();
    let mut failure = None;
    for _ in 0..plan.control_replacements {
        for (adds_flip, file) in [(false, &without), (true, &with)] {
            if let Err(e) = check_interrupted() {
                failure = Some(e);
                break;
            }
            let start_ns = session.now_ns();
            let result = apifence.timed(&["ranges", "set", "--file", file]);
            let end_ns = session.now_ns();
            match result {
                Ok(d) => apifence_set.push(d),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
            commands.push(Command {
                adds_flip,
                start_ns,
                end_ns,
            });
            std::thread::sleep(DWELL);
        }
        if failure.is_some() {
            break;
        }
    }
    let probes = session.stop()?;
    if let Some(e) = failure {
        return Err(e);
    }
    apifence_set.finish();
    let (correctness, enforced) = analyse(&probes, &commands, plan.probe_rate_per_source);

    // The same lists with nft and ipset.
    let ns = &lab.rcv_handle;
    let (with4, with6) = family_split(&l.with_flip);
    let (without4, without6) = family_split(&l.without_flip);
    let nft_script = |v4: &[IpNet], v6: &[IpNet]| {
        alt::nft_fill(alt::NFT_CP_TABLE, "cp4", v4) + &alt::nft_fill(alt::NFT_CP_TABLE, "cp6", v6)
    };
    let nft_with = nft_script(&with4, &with6);
    let nft_without = nft_script(&without4, &without6);
    let ipset_script = |v4: &[IpNet], v6: &[IpNet]| {
        alt::ipset_replace("cp4", 4, v4) + &alt::ipset_replace("cp6", 6, v6)
    };
    let ipset_with = ipset_script(&with4, &with6);
    let ipset_without = ipset_script(&without4, &without6);
    let mut nft_replace = Timings::default();
    let mut ipset_replace = Timings::default();
    for _ in 0..plan.control_replacements {
        for (nft, ipset) in [(&nft_without, &ipset_without), (&nft_with, &ipset_with)] {
            check_interrupted()?;
            nft_replace.push(alt::nft(ns, nft)?);
            ipset_replace.push(alt::ipset_restore(ns, ipset)?);
        }
    }
    nft_replace.finish();
    ipset_replace.finish();

    let total = l.with_flip.len();
    let incremental = if total <= plan.control_incremental_max + 4 {
        Some(incremental(plan.control_incremental, apifence, ns)?)
    } else {
        None
    };
    let (v4, v6) = family_split(&l.with_flip);
    let _ = &l.base;
    Ok(ControlRow {
        size: l.size.label(),
        v4: v4.len(),
        v6: v6.len(),
        apifence_set,
        enforced_relative: Summary::of(&enforced),
        enforced_relative_us: enforced,
        correctness,
        nft_replace,
        ipset_replace,
        incremental,
    })
}

/// Adds and removes one /32 `reps` times with each tool.
fn incremental(reps: usize, apifence: &Cli, ns: &tools::NsHandle) -> Result<Incremental> {
    let mut out = Incremental::default();
    for i in 0..reps {
        check_interrupted()?;
        let addr = Ipv4Addr::new(203, 0, 113, (i % 250) as u8 + 1).to_string();
        let cidr = format!("{addr}/32");
        out.apifence_add
            .push(apifence.timed(&["ranges", "add", &cidr])?);
        out.apifence_remove
            .push(apifence.timed(&["ranges", "remove", &cidr])?);
        let element = |verb: &str| {
            let mut c = ns.command("nft");
            c.args([verb, "element", "netdev", alt::NFT_CP_TABLE, "cp4"])
                .arg(format!("{{ {addr} }}"));
            c
        };
        out.nft_add.push(tools::run_timed(&mut element("add"))?.1);
        out.nft_remove
            .push(tools::run_timed(&mut element("delete"))?.1);
        out.ipset_add
            .push(tools::run_timed(ns.command("ipset").args(["add", "cp4", &addr]))?.1);
        out.ipset_remove
            .push(tools::run_timed(ns.command("ipset").args(["del", "cp4", &addr]))?.1);
    }
    for t in [
        &mut out.apifence_add,
        &mut out.apifence_remove,
        &mut out.nft_add,
        &mut out.nft_remove,
        &mut out.ipset_add,
        &mut out.ipset_remove,
    ] {
        t.finish();
    }
    Ok(out)
}

/// What the probes saw: per sequence number, the send time and (if it arrived) the receive
/// time, ns since the epoch.
struct Probes {
    sent: Vec<u64>,
    received: Vec<Option<u64>>,
    capture_losses: u64,
}

/// What the capture thread returns: (sequence, receive time) pairs and the socket's losses.
type Captured = (Vec<(u32, u64)>, u64);

/// A running sender and capture.
struct ProbeSession {
    epoch: Instant,
    stop: Arc<AtomicBool>,
    sender: std::thread::JoinHandle<Result<Vec<u64>>>,
    capture: std::thread::JoinHandle<Result<Captured>>,
}

impl ProbeSession {
    fn start(lab: &Lab, rate_per_source: u32) -> Result<ProbeSession> {
        let tx = lab.sender.run(|| PacketSocket::bind(GEN_IF))??;
        let rx = lab.rcv.run(|| PacketSocket::bind(RCV_IF))??;
        rx.set_receive_buffer(64 << 20)?;
        rx.set_receive_timeout(Duration::from_millis(20))?;
        rx.ignore_outgoing()?;
        let frames: Vec<(Vec<u8>, usize)> = SOURCES
            .iter()
            .map(|src| {
                let frame = match src {
                    IpAddr::V4(a) => Frame::tcp4(*a, lab::RCV_V4, lab::API_PORT),
                    IpAddr::V6(a) => Frame::tcp6(*a, lab::RCV_V6, lab::API_PORT),
                }
                .macs(lab.sender_mac, lab.rcv_mac);
                (frame.bytes(), frame.l4_offset() + 4)
            })
            .collect();
        let epoch = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let interval = Duration::from_secs_f64(1.0 / f64::from(rate_per_source.max(1)));
        let sender = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || send_probes(&tx, frames, epoch, interval, &stop))
        };
        let capture = {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || capture_probes(&rx, epoch, &stop))
        };
        Ok(ProbeSession {
            epoch,
            stop,
            sender,
            capture,
        })
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    fn stop(self) -> Result<Probes> {
        // Let the last probes arrive, then stop the sender before the capture.
        std::thread::sleep(DWELL);
        self.stop.store(true, Ordering::SeqCst);
        let sent = self
            .sender
            .join()
            .map_err(|_| anyhow::anyhow!("the probe sender panicked"))??;
        let (got, capture_losses) = self
            .capture
            .join()
            .map_err(|_| anyhow::anyhow!("the probe capture panicked"))??;
        let mut received = vec![None; sent.len()];
        for (seq, at) in got {
            if let Some(slot) = received.get_mut(seq as usize) {
                *slot = Some(at);
            }
        }
        Ok(Probes {
            sent,
            received,
            capture_losses,
        })
    }
}

fn send_probes(
    tx: &PacketSocket,
    mut frames: Vec<(Vec<u8>, usize)>,
    epoch: Instant,
    interval: Duration,
    stop: &AtomicBool,
) -> Result<Vec<u64>> {
    // SAFETY: prctl with plain integers; a 1 ns timer slack makes short sleeps accurate.
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0) };
    let mut sent = Vec::new();
    let mut next = Instant::now();
    while !stop.load(Ordering::SeqCst) && epoch.elapsed() < PROBE_LIMIT {
        for (frame, seq_at) in &mut frames {
            let seq = sent.len() as u32;
            frame[*seq_at..*seq_at + 4].copy_from_slice(&seq.to_be_bytes());
            sent.push(epoch.elapsed().as_nanos() as u64);
            tx.send(frame).context("sending a probe")?;
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > Duration::from_millis(50) {
            // Fell far behind (the machine was busy): don't burst to catch up.
            next = now;
        }
    }
    Ok(sent)
}

fn capture_probes(rx: &PacketSocket, epoch: Instant, stop: &AtomicBool) -> Result<Captured> {
    let mut got = Vec::new();
    let mut buf = vec![0u8; 2048];
    let mut idle_after_stop = 0;
    loop {
        match rx.recv(&mut buf)? {
            Some(len) => {
                if let Some(seq) = probe_sequence(&buf[..len]) {
                    got.push((seq, epoch.elapsed().as_nanos() as u64));
                }
            }
            None if stop.load(Ordering::SeqCst) => {
                idle_after_stop += 1;
                if idle_after_stop >= 3 {
                    break;
                }
            }
            None => {}
        }
        if epoch.elapsed() > PROBE_LIMIT + Duration::from_secs(5) {
            break;
        }
    }
    Ok((got, u64::from(rx.drops()?)))
}

/// The sequence number of a probe frame (TCP to the API port from a probe source), if `frame`
/// is one. Probes are untagged, IPv4 without options or IPv6 without extension headers.
fn probe_sequence(frame: &[u8]) -> Option<u32> {
    let ethertype = u16::from_be_bytes([*frame.get(12)?, *frame.get(13)?]);
    let (source, l4): (IpAddr, usize) = match ethertype {
        0x0800 if frame.get(23) == Some(&6) => {
            let s: [u8; 4] = frame.get(26..30)?.try_into().ok()?;
            (IpAddr::from(s), 14 + 20)
        }
        0x86dd if frame.get(20) == Some(&6) => {
            let s: [u8; 16] = frame.get(22..38)?.try_into().ok()?;
            (IpAddr::from(s), 14 + 40)
        }
        _ => return None,
    };
    let source_index = SOURCES.iter().position(|s| *s == source)?;
    let port = u16::from_be_bytes([*frame.get(l4 + 2)?, *frame.get(l4 + 3)?]);
    if port != lab::API_PORT {
        return None;
    }
    let seq = u32::from_be_bytes(frame.get(l4 + 4..l4 + 8)?.try_into().ok()?);
    (seq as usize % 4 == source_index).then_some(seq)
}

/// Checks the probes against the commands; returns the counts and, per command, where
/// enforcement happened relative to its return (µs).
fn analyse(probes: &Probes, commands: &[Command], rate_per_source: u32) -> (Correctness, Vec<f64>) {
    let mut c = Correctness {
        capture_losses: probes.capture_losses,
        probe_interval_us: 1e6 / f64::from(rate_per_source.max(1)),
        ..Correctness::default()
    };
    let last_sent = probes.sent.last().copied().unwrap_or(0);
    for (seq, &at) in probes.sent.iter().enumerate() {
        let passed = probes.received[seq].is_some();
        if !is_flip(seq % 4) {
            c.keep_sent += 1;
            c.keep_dropped += u64::from(!passed);
            continue;
        }
        // The command whose return precedes this probe, if the next one had not begun yet.
        let Some(i) = commands.iter().rposition(|cmd| cmd.end_ns < at) else {
            continue;
        };
        let next_start = commands.get(i + 1).map_or(last_sent + 1, |n| n.start_ns);
        if at >= next_start {
            continue;
        }
        if commands[i].adds_flip {
            c.added_sent_after_return += 1;
            c.added_dropped_after_return += u64::from(!passed);
        } else {
            c.removed_sent_after_return += 1;
            c.removed_passed_after_return += u64::from(passed);
        }
    }
    let mut enforced = Vec::new();
    for (i, cmd) in commands.iter().enumerate() {
        let window_end = commands.get(i + 1).map_or(u64::MAX, |n| n.start_ns);
        let flips = probes
            .sent
            .iter()
            .enumerate()
            .filter(|(seq, at)| is_flip(seq % 4) && **at >= cmd.start_ns && **at < window_end);
        let point = if cmd.adds_flip {
            // The first flip probe that passed.
            flips
                .filter(|(seq, _)| probes.received[*seq].is_some())
                .map(|(_, at)| *at)
                .next()
        } else {
            // Just after the last flip probe that passed.
            flips
                .filter(|(seq, _)| probes.received[*seq].is_some())
                .map(|(_, at)| *at)
                .next_back()
        };
        if let Some(point) = point {
            enforced.push((point as f64 - cmd.end_ns as f64) / 1e3);
        }
    }
    (c, enforced)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probes(sent: Vec<u64>, passed: &[bool]) -> Probes {
        Probes {
            received: passed.iter().map(|p| p.then_some(0)).collect(),
            sent,
            capture_losses: 0,
        }
    }

    #[test]
    fn probe_frames_round_trip_their_sequence() {
        let frame = Frame::tcp4(FLIP4, lab::RCV_V4, lab::API_PORT);
        let at = frame.l4_offset() + 4;
        let mut bytes = frame.bytes();
        bytes[at..at + 4].copy_from_slice(&5u32.to_be_bytes());
        assert_eq!(probe_sequence(&bytes), Some(5));
        bytes[at..at + 4].copy_from_slice(&6u32.to_be_bytes());
        assert_eq!(probe_sequence(&bytes), None, "sequence 6 belongs to KEEP6");
        let v6 = Frame::tcp6(KEEP6, lab::RCV_V6, lab::API_PORT);
        let at = v6.l4_offset() + 4;
        let mut bytes = v6.bytes();
        bytes[at..at + 4].copy_from_slice(&2u32.to_be_bytes());
        assert_eq!(probe_sequence(&bytes), Some(2));
    }

    #[test]
    fn a_removed_source_passing_after_return_is_counted() {
        // One removal ending at t=100; flip probes (odd seq) at 50 (during) and 150 (after).
        let commands = [Command {
            adds_flip: false,
            start_ns: 40,
            end_ns: 100,
        }];
        let sent = vec![50, 50, 150, 150];
        let p = probes(sent, &[true, true, true, true]);
        let (c, enforced) = analyse(&p, &commands, 1000);
        assert_eq!(c.removed_sent_after_return, 1);
        assert_eq!(c.removed_passed_after_return, 1);
        assert_eq!(c.keep_dropped, 0);
        assert_eq!(enforced, vec![0.05]);
    }

    #[test]
    fn an_add_enforced_before_return_has_a_negative_time() {
        let commands = [Command {
            adds_flip: true,
            start_ns: 1_000,
            end_ns: 5_000,
        }];
        // seq 1 (flip) at 2000 dropped, seq 3 (flip) at 3000 passed, seq 5 at 6000 passed.
        let sent = vec![2_000, 2_000, 3_000, 3_000, 6_000, 6_000];
        let p = probes(sent, &[true, false, true, true, true, true]);
        let (c, enforced) = analyse(&p, &commands, 1000);
        assert_eq!(c.added_sent_after_return, 1);
        assert_eq!(c.added_dropped_after_return, 0);
        assert_eq!(enforced, vec![-2.0]);
    }

    #[test]
    fn dropped_keep_probes_are_counted() {
        let p = probes(vec![1, 1, 2, 2], &[false, true, true, true]);
        let (c, _) = analyse(&p, &[], 1000);
        assert_eq!((c.keep_sent, c.keep_dropped), (2, 1));
    }

    #[test]
    fn bench_sources_are_outside_synthetic_lists() {
        let mut rng = Rng::new(11);
        let v4 = prefixes::synthetic_v4(5000, &mut rng);
        assert!(!v4.iter().any(|p| p.contains(&KEEP4) || p.contains(&FLIP4)));
        let v6 = prefixes::synthetic_v6(5000, &mut rng);
        assert!(!v6.iter().any(|p| p.contains(&KEEP6) || p.contains(&FLIP6)));
        let _ = PathBuf::new();
    }
}
