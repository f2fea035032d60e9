//! Section 2: end to end on a veth pair. trafgen (netsniff-ng) sends the same SYN flood to the
//! receiver's API port (sources spoofed uniformly from 10.0.0.0/8, outside every list) against
//! each variant: no filter, the cheapest XDP program (drop all), apifence native and skb,
//! nftables netdev ingress with an interval set, iptables raw + ipset `hash:net`, and xdp-filter
//! with a /32-only list. Variants are interleaved in every round.
//!
//! On a veth pair the receive side runs in the NET_RX softirq of the sending CPU, inside the
//! generator's own system calls, so the CPU time of a run is trafgen's (its `rusage`, which
//! includes the softirq work done on its stack) plus whatever ksoftirqd took over. Every run
//! sends through a tc egress program on the generator's interface: it passes the frames in the
//! variant runs, and frees them in the "sender only" run of each round, which is the cost of
//! generating and sending without any receive path. Receiver CPU per packet is a run's CPU per
//! packet minus the median sender-only CPU per packet of the whole benchmark. "Dropped" is the
//! share of offered packets that never reached TCP (`Tcp: InSegs` of the receiver).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::alternatives as alt;
use super::lab::{self, BenchBpffs, GEN_IF, Lab, RCV_IF, check_interrupted};
use super::object::{self, BenchObject};
use super::plan::{Plan, Size};
use super::prefixes::{self, Rng};
use super::stats::Summary;
use super::tools;

/// The variants; round `r` runs them in this order rotated by `r`.
pub const VARIANTS: [Variant; 8] = [
    Variant::SenderOnly,
    Variant::NoFilter,
    Variant::XdpDropAll,
    Variant::ApifenceNative,
    Variant::ApifenceSkb,
    Variant::Nftables,
    Variant::IptablesIpset,
    Variant::XdpFilter,
];

/// One way of filtering (or not) on the receiver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// Frames freed at the sender's tc egress: the sender's own cost (the baseline).
    SenderOnly,
    /// Nothing attached: every SYN reaches TCP.
    NoFilter,
    /// `bench_drop` attached natively: the floor of any XDP filter.
    XdpDropAll,
    /// apifence, native XDP.
    ApifenceNative,
    /// apifence, generic (skb) XDP.
    ApifenceSkb,
    /// nftables, netdev ingress hook, interval set.
    Nftables,
    /// iptables raw PREROUTING with an ipset `hash:net`.
    IptablesIpset,
    /// xdp-filter (deny policy, exact source addresses).
    XdpFilter,
}

impl Variant {
    /// Name in tables and plots.
    pub fn name(self) -> &'static str {
        match self {
            Variant::SenderOnly => "sender only (baseline)",
            Variant::NoFilter => "no filter",
            Variant::XdpDropAll => "XDP drop-all (floor)",
            Variant::ApifenceNative => "apifence native",
            Variant::ApifenceSkb => "apifence skb",
            Variant::Nftables => "nftables netdev ingress",
            Variant::IptablesIpset => "iptables raw + ipset",
            Variant::XdpFilter => "xdp-filter (/32 only)",
        }
    }
}

/// Most addresses xdp-filter's maps hold (`max_entries` of `filter_ipv4`).
pub const XDP_FILTER_MAX: usize = 10_000;

/// One variant at one list size.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2eRow {
    /// The variant.
    pub variant: Variant,
    /// Its display name.
    pub name: String,
    /// List size label.
    pub size: String,
    /// Entries in the variant's list (0 for no filter and drop-all).
    pub entries: usize,
    /// CPU ns per offered packet, sender and receiver (trafgen plus ksoftirqd), per round.
    pub cpu_ns: Vec<f64>,
    /// `cpu_ns` minus the run's median sender-only `cpu_ns`: the receive side, per round.
    pub receiver_ns: Vec<f64>,
    /// Summary of `receiver_ns`.
    pub receiver: Option<Summary>,
    /// Share of offered packets that did not reach TCP, one per round.
    pub dropped_share: Vec<f64>,
    /// Packets per second trafgen achieved (sender and receiver share its CPU), per round.
    pub offered_pps: Vec<f64>,
    /// Why the variant has no numbers at this size, if it has none.
    pub unavailable: Option<String>,
}

/// What the section found.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct E2eResults {
    /// Packets offered per variant and round.
    pub packets: u64,
    /// Interleaved rounds.
    pub rounds: usize,
    /// The trafgen packet description used.
    pub trafgen_config: String,
    /// Every variant at every size.
    pub rows: Vec<E2eRow>,
    /// `Size in memory` of each ipset, by size label.
    pub ipset_memory: Vec<(String, u64)>,
}

/// The lists of one size: prefixes for apifence, nftables and ipset; /32 addresses for
/// xdp-filter.
struct SizeLists {
    size: Size,
    prefixes: Vec<IpNet>,
    hosts: Option<Vec<Ipv4Addr>>,
    file: PathBuf,
}

/// Runs the section in `lab`, using `object` for the drop-all and tc programs.
pub fn run(
    plan: &Plan,
    lab: &Lab,
    object: &mut BenchObject,
    apifence_bin: &Path,
    workdir: &Path,
) -> Result<E2eResults> {
    let meter = CpuMeter::new();
    let bpffs = BenchBpffs::new("e2e")?;
    let xdp_bpffs = BenchBpffs::new("libxdp")?;
    let apifence_dir = bpffs.path().join("apifence");
    let lists = build_lists(plan, workdir)?;
    let ns = &lab.rcv_handle;

    // Alternatives' sets, once per size; apifence loaded on the anchor.
    let mut sets = Vec::new();
    for l in &lists {
        sets.push((4u8, alt::set_name(4, &l.size.label())));
    }
    alt::nft(ns, &alt::nft_tables(alt::NFT_TABLE, &sets))?;
    let mut ipset_memory = Vec::new();
    for l in &lists {
        let name = alt::set_name(4, &l.size.label());
        alt::nft(ns, &alt::nft_fill(alt::NFT_TABLE, &name, &l.prefixes))?;
        alt::ipset_restore(
            ns,
            &(alt::ipset_create(&name, 4, l.prefixes.len())
                + &alt::ipset_replace(&name, 4, &l.prefixes)),
        )?;
        ipset_memory.push((l.size.label(), alt::ipset_memory(ns, &name)?));
    }
    let capacity = lists
        .iter()
        .map(|l| l.prefixes.len())
        .max()
        .unwrap_or(1)
        .max(1024)
        .next_power_of_two();
    let apifence = Apifence::attach_anchor(apifence_bin, &apifence_dir, lab, capacity)?;

    let config = trafgen_config(lab);
    let config_path = workdir.join("syn.trafgen");
    std::fs::write(&config_path, &config).context("writing the trafgen config")?;

    let mut rows: Vec<E2eRow> = Vec::new();
    for l in &lists {
        for v in VARIANTS {
            let entries = match v {
                Variant::SenderOnly | Variant::NoFilter | Variant::XdpDropAll => 0,
                Variant::XdpFilter => l.hosts.as_ref().map_or(0, Vec::len),
                _ => l.prefixes.len(),
            };
            let unavailable =
                (v == Variant::XdpFilter && l.hosts.is_none()).then(|| match l.size {
                    Size::AzureCloud => {
                        "xdp-filter matches exact addresses only, and the AzureCloud \
                                     list is made of prefixes"
                            .to_owned()
                    }
                    Size::Synthetic(n) => format!(
                        "xdp-filter holds at most {XDP_FILTER_MAX} addresses per family; a list of \
                     {n} does not fit"
                    ),
                });
            rows.push(E2eRow {
                variant: v,
                name: v.name().into(),
                size: l.size.label(),
                entries,
                cpu_ns: Vec::new(),
                receiver_ns: Vec::new(),
                receiver: None,
                dropped_share: Vec::new(),
                offered_pps: Vec::new(),
                unavailable,
            });
        }
    }

    let mut tc = TcEgress::attach(object, lab, super::object::TC_PASS)?;
    for round in 0..plan.e2e_rounds {
        for (li, l) in lists.iter().enumerate() {
            eprintln!(
                "bench: e2e: round {}/{}, {} list",
                round + 1,
                plan.e2e_rounds,
                l.size.label()
            );
            apifence.set_ranges(&l.file)?;
            // Every round starts one variant later, so no variant always follows the same one
            // (the no-filter run, for one, leaves the stack with work to finish).
            for k in 0..VARIANTS.len() {
                let vi = (k + round) % VARIANTS.len();
                let v = &VARIANTS[vi];
                check_interrupted()?;
                let row = &mut rows[li * VARIANTS.len() + vi];
                if row.unavailable.is_some() {
                    continue;
                }
                let sample = if *v == Variant::SenderOnly {
                    tc.switch(object, lab, super::object::TC_CONSUME)?;
                    let sample = offer(plan.e2e_packets, false, lab, &meter, &config_path);
                    tc.switch(object, lab, super::object::TC_PASS)?;
                    sample?
                } else {
                    let guard = activate(*v, lab, object, &apifence, l, xdp_bpffs.path())?;
                    let sample = offer(plan.e2e_packets, true, lab, &meter, &config_path);
                    let deactivated = guard.deactivate(lab, object, &apifence, xdp_bpffs.path());
                    let sample = sample?;
                    deactivated?;
                    sample
                };
                row.cpu_ns.push(sample.cpu_ns);
                row.dropped_share.push(sample.dropped_share);
                row.offered_pps.push(sample.offered_pps);
            }
        }
    }
    tc.detach(object, lab)?;
    // The sender's cost does not depend on the list, so every sender-only sample of the run
    // estimates it: their median is a steadier baseline than any one round's.
    let sender: Vec<f64> = rows
        .iter()
        .filter(|r| r.variant == Variant::SenderOnly)
        .flat_map(|r| r.cpu_ns.iter().copied())
        .collect();
    let baseline = Summary::of(&sender).map_or(0.0, |s| s.median);
    for row in &mut rows {
        row.receiver_ns = row.cpu_ns.iter().map(|c| c - baseline).collect();
        row.receiver = Summary::of(&row.receiver_ns);
    }
    apifence.detach_all()?;
    // Leave nothing behind for the control-plane section: nft reads every table of the
    // namespace on each run, so a large set here would slow every nft command there.
    alt::nft(ns, &format!("delete table netdev {}\n", alt::NFT_TABLE))?;
    for l in &lists {
        tools::run(
            ns.command("ipset")
                .args(["destroy", &alt::set_name(4, &l.size.label())]),
        )?;
    }
    Ok(E2eResults {
        packets: plan.e2e_packets,
        rounds: plan.e2e_rounds,
        trafgen_config: config,
        rows,
        ipset_memory,
    })
}

fn build_lists(plan: &Plan, workdir: &Path) -> Result<Vec<SizeLists>> {
    let mut out = Vec::new();
    for size in &plan.e2e_sizes {
        let mut rng = Rng::new(plan.seed ^ 0xe2e0 ^ size_seed(size));
        let (prefixes, hosts): (Vec<IpNet>, Option<Vec<Ipv4Addr>>) = match size {
            Size::Synthetic(n) => {
                let nets = prefixes::synthetic_v4(*n, &mut rng);
                let hosts = (*n <= XDP_FILTER_MAX).then(|| host_list(*n, &mut rng));
                (nets.into_iter().map(IpNet::V4).collect(), hosts)
            }
            Size::AzureCloud => {
                let path = plan
                    .service_tags
                    .as_ref()
                    .context("AzureCloud without a data file")?;
                let (v4, _) = prefixes::azure_cloud(path)?;
                let merged = prefixes::merged(&v4.into_iter().map(IpNet::V4).collect::<Vec<_>>());
                (merged, None)
            }
        };
        let file = workdir.join(format!("e2e-{}.txt", size.label()));
        std::fs::write(&file, prefixes::range_text(&prefixes))
            .with_context(|| format!("writing {}", file.display()))?;
        out.push(SizeLists {
            size: size.clone(),
            prefixes,
            hosts,
            file,
        });
    }
    Ok(out)
}

fn size_seed(size: &Size) -> u64 {
    match size {
        Size::Synthetic(n) => *n as u64,
        Size::AzureCloud => 0xa2,
    }
}

/// `n` distinct unicast addresses outside the reserved blocks (xdp-filter's exact list).
fn host_list(n: usize, rng: &mut Rng) -> Vec<Ipv4Addr> {
    prefixes::synthetic_v4_hosts(n, rng)
}

/// The packet trafgen sends: a 64-byte TCP SYN from 10.x.y.z (random per packet) and a random
/// source port to the receiver's API port, with valid checksums.
fn trafgen_config(lab: &Lab) -> String {
    let mac = |m: [u8; 6]| {
        m.iter()
            .map(|b| format!("0x{b:02x}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let dst = lab::RCV_V4.octets();
    format!(
        "{{\n  {rcv},\n  {sender},\n  c16(0x0800),\n  \
         0x45, 0x00, c16(50), drnd(2), c16(0x4000), 64, 6, csumip(14, 33),\n  \
         10, drnd(3),\n  {d0}, {d1}, {d2}, {d3},\n  \
         drnd(2), c16({port}), drnd(4), c32(0), 0x50, 0x02, c16(64240), csumtcp(14, 34), c16(0),\n  \
         fill(0x00, 10)\n}}\n",
        rcv = mac(lab.rcv_mac),
        sender = mac(lab.sender_mac),
        d0 = dst[0],
        d1 = dst[1],
        d2 = dst[2],
        d3 = dst[3],
        port = lab::API_PORT,
    )
}

/// apifence driven through its CLI, loaded on the anchor interface so that attaching to and
/// detaching from the measured interface keeps the list.
struct Apifence {
    bin: PathBuf,
    dir: PathBuf,
    netns: String,
}

impl Apifence {
    fn attach_anchor(bin: &Path, dir: &Path, lab: &Lab, capacity: usize) -> Result<Apifence> {
        let a = Apifence {
            bin: bin.to_path_buf(),
            dir: dir.to_path_buf(),
            netns: lab.rcv.name().to_owned(),
        };
        a.cli(&[
            "attach",
            lab::ANCHOR_IF,
            "--xdp-mode",
            "skb",
            "--capacity",
            &capacity.to_string(),
        ])?;
        Ok(a)
    }

    fn cli(&self, args: &[&str]) -> Result<String> {
        tools::run(
            std::process::Command::new(&self.bin)
                .arg("--bpffs")
                .arg(&self.dir)
                .args(["--netns", &self.netns])
                .args(args),
        )
    }

    fn set_ranges(&self, file: &Path) -> Result<()> {
        let file = file.display().to_string();
        self.cli(&["ranges", "set", "--file", &file]).map(|_| ())
    }

    fn detach_all(&self) -> Result<()> {
        self.cli(&["detach", "--all"]).map(|_| ())
    }
}

impl Drop for Apifence {
    fn drop(&mut self) {
        if self.dir.exists() {
            let _ = self.cli(&["detach", "--all"]);
        }
    }
}

/// What a variant left attached, to take down after the run.
enum Active {
    Nothing,
    Xdp(aya::programs::xdp::XdpLinkId),
    Apifence,
    Nftables,
    Iptables(String),
    XdpFilter,
}

fn activate(
    variant: Variant,
    lab: &Lab,
    object: &mut BenchObject,
    apifence: &Apifence,
    list: &SizeLists,
    xdp_bpffs: &Path,
) -> Result<Active> {
    let ns = &lab.rcv_handle;
    let set = alt::set_name(4, &list.size.label());
    Ok(match variant {
        Variant::SenderOnly | Variant::NoFilter => Active::Nothing,
        Variant::XdpDropAll => {
            let program = object.xdp_mut(object::DROP)?;
            Active::Xdp(object::attach_native(program, &lab.rcv, RCV_IF)?)
        }
        Variant::ApifenceNative | Variant::ApifenceSkb => {
            let mode = if variant == Variant::ApifenceNative {
                "native"
            } else {
                "skb"
            };
            apifence.cli(&["attach", RCV_IF, "--xdp-mode", mode])?;
            Active::Apifence
        }
        Variant::Nftables => {
            alt::nft(ns, &alt::nft_hook(&set, None))?;
            Active::Nftables
        }
        Variant::IptablesIpset => {
            alt::iptables(ns, "-I", &set)?;
            Active::Iptables(set)
        }
        Variant::XdpFilter => {
            let hosts = list.hosts.as_ref().context("no /32 list for xdp-filter")?;
            let (first, rest) = hosts.split_first().context("empty /32 list")?;
            alt::xdp_filter_load(ns, xdp_bpffs)?;
            // The first address through the tool itself, the rest straight into its map in
            // the same format; then check the tool's own entry looks like ours.
            alt::xdp_filter_add(ns, xdp_bpffs, *first)?;
            if !alt::xdp_filter_has(xdp_bpffs, *first)? {
                bail!("xdp-filter's map format is not what the benchmark writes");
            }
            alt::xdp_filter_fill(xdp_bpffs, rest)?;
            Active::XdpFilter
        }
    })
}

impl Active {
    fn deactivate(
        self,
        lab: &Lab,
        object: &mut BenchObject,
        apifence: &Apifence,
        xdp_bpffs: &Path,
    ) -> Result<()> {
        let ns = &lab.rcv_handle;
        match self {
            Active::Nothing => Ok(()),
            Active::Xdp(id) => object::detach(object.xdp_mut(object::DROP)?, id),
            Active::Apifence => apifence.cli(&["detach", RCV_IF]).map(|_| ()),
            Active::Nftables => alt::nft(ns, &alt::nft_unhook()).map(|_| ()),
            Active::Iptables(set) => alt::iptables(ns, "-D", &set),
            Active::XdpFilter => alt::xdp_filter_unload(ns, xdp_bpffs),
        }
    }
}

/// One run of traffic.
struct Sample {
    cpu_ns: f64,
    dropped_share: f64,
    offered_pps: f64,
}

/// Bound on one trafgen run.
const TRAFGEN_TIMEOUT: Duration = Duration::from_secs(120);

/// Offers `packets` SYNs and measures the CPU time it took and what got through. `on_wire`:
/// the frames should reach the veth pair (not in the sender-only run); checked on its counters.
fn offer(
    packets: u64,
    on_wire: bool,
    lab: &Lab,
    meter: &CpuMeter,
    config: &Path,
) -> Result<Sample> {
    let trafgen = tools::require("trafgen")?;
    let before_segs = lab.tcp_in_segs()?;
    let before_tx = Lab::link_stats(&lab.sender, GEN_IF)?;
    let before_ksoftirqd = meter.ksoftirqd_ns();
    let started = Instant::now();
    let child = lab
        .sender_handle
        .command(&trafgen)
        .args(["--dev", GEN_IF, "--conf"])
        .arg(config)
        .args(["--num", &packets.to_string(), "--cpus", "1", "--qdisc-path"])
        .args(["--no-sock-mem", "--notouch-irq", "--no-cpu-stats"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .context("starting trafgen")?;
    let (status, trafgen_cpu) = wait_with_rusage(child, TRAFGEN_TIMEOUT)?;
    let elapsed = started.elapsed();
    if !status.success() {
        bail!("trafgen failed ({status})");
    }
    let ksoftirqd = meter.ksoftirqd_ns().saturating_sub(before_ksoftirqd);
    let segs = lab.tcp_in_segs()?.saturating_sub(before_segs);
    let tx = Lab::link_stats(&lab.sender, GEN_IF)?;
    let sent = tx.tx_packets.saturating_sub(before_tx.tx_packets);
    let offered = packets as f64;
    if on_wire && (sent as f64) < offered * 0.99 {
        bail!("trafgen reported success but {GEN_IF} sent only {sent} of {packets} packets");
    }
    Ok(Sample {
        cpu_ns: (trafgen_cpu.as_nanos() as f64 + ksoftirqd as f64) / offered,
        dropped_share: (1.0 - segs as f64 / offered).clamp(0.0, 1.0),
        offered_pps: offered / elapsed.as_secs_f64(),
    })
}

/// Waits (bounded) for `child` and returns its exit status and CPU time (user + system, its
/// waited-for children included), from `wait4`.
fn wait_with_rusage(
    mut child: std::process::Child,
    timeout: Duration,
) -> Result<(std::process::ExitStatus, Duration)> {
    use std::os::unix::process::ExitStatusExt;
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + timeout;
    loop {
        let mut status = 0;
        // SAFETY: rusage is plain data the kernel fills.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: valid pointers; `pid` is our own child.
        let rc = unsafe { libc::wait4(pid, &raw mut status, libc::WNOHANG, &raw mut usage) };
        if rc == pid {
            let tv = |t: libc::timeval| {
                Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
            };
            return Ok((
                std::process::ExitStatus::from_raw(status),
                tv(usage.ru_utime) + tv(usage.ru_stime),
            ));
        }
        if rc < 0 {
            return Err(std::io::Error::last_os_error()).context("waiting for trafgen");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("trafgen did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// CPU time of the ksoftirqd threads (receive work the kernel deferred off trafgen's stack).
struct CpuMeter {
    ksoftirqd: Vec<u32>,
}

impl CpuMeter {
    fn new() -> CpuMeter {
        let ksoftirqd = std::fs::read_dir("/proc")
            .map(|dir| {
                dir.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                    .filter(|pid| {
                        std::fs::read_to_string(format!("/proc/{pid}/comm"))
                            .is_ok_and(|c| c.starts_with("ksoftirqd/"))
                    })
                    .collect()
            })
            .unwrap_or_default();
        CpuMeter { ksoftirqd }
    }

    /// Their summed run time, ns (`/proc/PID/schedstat`).
    fn ksoftirqd_ns(&self) -> u64 {
        self.ksoftirqd
            .iter()
            .filter_map(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/schedstat"))
                    .ok()?
                    .split_whitespace()
                    .next()?
                    .parse::<u64>()
                    .ok()
            })
            .sum()
    }
}

/// The tc egress program every run's frames pass through on the generator's interface.
struct TcEgress {
    name: &'static str,
    id: Option<aya::programs::tc::SchedClassifierLinkId>,
}

impl TcEgress {
    fn attach(object: &mut BenchObject, lab: &Lab, name: &'static str) -> Result<TcEgress> {
        let id = object.attach_tc_egress(name, &lab.sender, GEN_IF)?;
        Ok(TcEgress { name, id: Some(id) })
    }

    /// Replaces the attached program by `name`.
    fn switch(&mut self, object: &mut BenchObject, lab: &Lab, name: &'static str) -> Result<()> {
        self.detach(object, lab)?;
        self.id = Some(object.attach_tc_egress(name, &lab.sender, GEN_IF)?);
        self.name = name;
        Ok(())
    }

    fn detach(&mut self, object: &mut BenchObject, lab: &Lab) -> Result<()> {
        match self.id.take() {
            Some(id) => object.detach_tc(self.name, &lab.sender, id),
            None => Ok(()),
        }
    }
}
