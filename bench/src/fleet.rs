//! Section 5: many hosts, one list. A real 3-member etcd cluster (its own namespace) and 3
//! hosts, each an API server namespace with its own `apifence daemon` (`ranges_from = "etcd"`,
//! release build, native XDP on its veth) and a client namespace. For each list size the
//! cluster's list is replaced again and again with `apifence fleet set --file` (two lists that
//! differ in which client address is authorized, padded to the size), and on each host the
//! newly authorized source probes the API port with fresh TCP handshakes (5 ms each) until one
//! completes. Measured: the time from `fleet set` returning until each host, and all three,
//! let the new source in; and the command's own wall time. Probes only go to namespaces made
//! here.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::{
    ApiAndClient, Bpffs, ConnectError, Endpoint, VethPair, cmd::output_with_timeout, connect,
    etcd::EtcdCluster, wait::wait_until,
};
use serde::{Deserialize, Serialize};

use super::lab::{BASE_DIR, check_interrupted};
use super::plan::{Plan, short_count};
use super::stats::Summary;

/// Hosts in the fleet.
pub const HOSTS: usize = 3;
const API4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const GOOD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 3);
const API6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 1);
const GOOD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 2);
const BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafe1, 0, 0, 0, 0, 0, 3);
const API_PORT: u16 = 6443;
/// One handshake attempt of a probe.
const PROBE: Duration = Duration::from_millis(5);
/// Bound on one host enforcing a change.
const CONVERGE_LIMIT: Duration = Duration::from_secs(20);
/// Bound on one `apifence` command.
const COMMAND_LIMIT: Duration = Duration::from_secs(120);

/// Results at one list size.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetSize {
    /// List size (prefixes).
    pub size: String,
    /// Changes made.
    pub changes: usize,
    /// From `fleet set` returning to all hosts enforcing, ms, per change.
    pub all_hosts_ms: Vec<f64>,
    /// Their summary.
    pub all_hosts: Option<Summary>,
    /// From `fleet set` returning to one host enforcing, ms (every host, every change).
    pub per_host: Option<Summary>,
    /// Wall time of `fleet set` itself, ms.
    pub command: Option<Summary>,
    /// Changes some host did not enforce within the bound (must be 0).
    pub not_converged: usize,
}

/// Section 5's results.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct FleetResults {
    /// Hosts.
    pub hosts: usize,
    /// etcd members.
    pub members: usize,
    /// etcd version.
    pub etcd_version: String,
    /// Probe resolution, ms.
    pub probe_ms: f64,
    /// One row per size.
    pub sizes: Vec<FleetSize>,
    /// Fan-out: lightweight watchers (etcd watch, document read and checked, the kernel step
    /// stood in for by a userspace merge).
    #[serde(default)]
    pub fanout_watchers: usize,
    /// Fan-out: ms from `fleet set` starting until every watcher merged the change (200
    /// prefixes), per change.
    #[serde(default)]
    pub fanout_ms: Vec<f64>,
    /// Their summary.
    #[serde(default)]
    pub fanout: Option<Summary>,
}

/// One host: its namespaces, daemon and directory.
struct Host {
    net: ApiAndClient,
    dir: PathBuf,
    daemon: Option<Child>,
    bin: PathBuf,
}

impl Host {
    fn new(i: usize, etcd: &EtcdCluster, root: &Path, bin: &Path) -> Result<Host> {
        let net = ApiAndClient::new(
            Endpoint::new("api0", API4, API6),
            Endpoint::new("cli0", GOOD4, GOOD6),
            &[(IpAddr::V4(BAD4), 24), (IpAddr::V6(BAD6), 64)],
            &[API_PORT],
        )?;
        let octet = u8::try_from(i).context("host index")?;
        VethPair::create(
            &net.api,
            Endpoint::new(
                "mgmt0",
                Ipv4Addr::new(10, 77, octet, 2),
                Ipv6Addr::new(0xfd00, 0x77, 0, u16::from(octet), 0, 0, 0, 2),
            ),
            etcd.ns(),
            Endpoint::new(
                &format!("etcd{i}"),
                Ipv4Addr::new(10, 77, octet, 1),
                Ipv6Addr::new(0xfd00, 0x77, 0, u16::from(octet), 0, 0, 0, 1),
            ),
        )?;
        let dir = root.join(format!("host{i}"));
        std::fs::create_dir_all(&dir)?;
        let endpoints: Vec<String> = etcd
            .endpoints_at(&format!("10.77.{i}.1"))
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        let config = format!(
            "interfaces = [\"api0\"]\nxdp_mode = \"native\"\nports = [{API_PORT}]\n\
             bpffs = \"{0}/bpffs\"\nstate_dir = \"{0}/state\"\nsocket = \"{0}/sock\"\n\
             metrics = \"\"\ncapacity = 65536\nranges_from = \"etcd\"\n[etcd]\n\
             endpoints = [{1}]\nhost = \"host{i}\"\n",
            dir.display(),
            endpoints.join(", ")
        );
        std::fs::write(dir.join("apifence.toml"), config)?;
        let mut host = Host {
            net,
            dir,
            daemon: None,
            bin: bin.to_path_buf(),
        };
        host.start()?;
        Ok(host)
    }

    fn start(&mut self) -> Result<()> {
        let log = std::fs::File::create(self.dir.join("daemon.log"))?;
        let child = Command::new(&self.bin)
            .args(["--netns", self.net.api.name(), "daemon", "--config"])
            .arg(self.dir.join("apifence.toml"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting apifence daemon")?;
        self.daemon = Some(child);
        let socket = self.dir.join("sock");
        let bin = self.bin.clone();
        let ready = wait_until(Duration::from_secs(60), Duration::from_millis(100), || {
            let mut status = Command::new(&bin);
            status.arg("--socket").arg(&socket).arg("status");
            output_with_timeout(&mut status, Duration::from_secs(10))
                .is_ok_and(|o| o.status.success())
        });
        if !ready {
            bail!(
                "the daemon of {} did not answer within 60s:\n{}",
                self.dir.display(),
                std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default()
            );
        }
        Ok(())
    }

    /// Handshakes from `src` every [`PROBE`] until one completes; the time it completed.
    fn wait_enforced(&self, src: IpAddr, deadline: Instant) -> Option<Instant> {
        let dst = match src {
            IpAddr::V4(_) => SocketAddr::new(IpAddr::V4(API4), API_PORT),
            IpAddr::V6(_) => SocketAddr::new(IpAddr::V6(API6), API_PORT),
        };
        while Instant::now() < deadline {
            match connect(&self.net.client, src, dst, PROBE) {
                Ok(()) => return Some(Instant::now()),
                Err(ConnectError::TimedOut) => {}
                Err(_) => std::thread::sleep(PROBE),
            }
        }
        None
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let bpffs = self.dir.join("bpffs");
        let mut detach = Command::new(&self.bin);
        detach
            .args(["--netns", self.net.api.name(), "--bpffs"])
            .arg(&bpffs)
            .args(["detach", "--all"]);
        let _ = output_with_timeout(&mut detach, Duration::from_secs(30));
        let _ = Bpffs::unmount(&bpffs);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A list of `size` prefixes authorizing the GOOD (or BAD) client addresses of both families,
/// padded with /24s in 10.0.0.0/8 that no probe uses.
fn list(size: usize, good: bool) -> String {
    let (v4, v6) = if good { (GOOD4, GOOD6) } else { (BAD4, BAD6) };
    let mut text = format!("{v4}\n{v6}\n");
    for i in 0..size.saturating_sub(2) {
        text.push_str(&format!("10.{}.{}.0/24\n", (i >> 8) & 0xff, i & 0xff));
    }
    text
}

fn etcd_version() -> String {
    let mut command = Command::new("etcd");
    command.arg("--version");
    output_with_timeout(&mut command, Duration::from_secs(10))
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim_start_matches("etcd Version: ").to_string())
        })
        .unwrap_or_default()
}

/// Runs section 5.
pub fn run(plan: &Plan, bin: &Path) -> Result<FleetResults> {
    let root = Path::new(BASE_DIR).join(format!("fleet-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root)?;
    let result = measure(plan, bin, &root);
    let _ = std::fs::remove_dir_all(&root);
    result
}

fn measure(plan: &Plan, bin: &Path, root: &Path) -> Result<FleetResults> {
    eprintln!("bench: fleet: etcd (3 members) and {HOSTS} hosts");
    let etcd = EtcdCluster::start(&root.join("etcd"), 3, None)?;
    let hosts = (0..HOSTS)
        .map(|i| Host::new(i, &etcd, root, bin))
        .collect::<Result<Vec<_>>>()?;
    let endpoints = etcd.local_endpoints().join(",");
    let fleet_set = |file: &Path| -> Result<Duration> {
        let mut command = Command::new(bin);
        command
            .args([
                "--netns",
                etcd.ns().name(),
                "fleet",
                "--endpoints",
                &endpoints,
            ])
            .args(["set", "--file"])
            .arg(file);
        let start = Instant::now();
        let out = output_with_timeout(&mut command, COMMAND_LIMIT)?;
        if !out.status.success() {
            bail!(
                "apifence fleet set failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(start.elapsed())
    };
    let mut results = FleetResults {
        hosts: HOSTS,
        members: 3,
        etcd_version: etcd_version(),
        probe_ms: PROBE.as_secs_f64() * 1e3,
        sizes: Vec::new(),
        fanout_watchers: plan.fleet_fanout_watchers,
        fanout_ms: Vec::new(),
        fanout: None,
    };
    for &size in &plan.fleet_sizes {
        let files = [true, false].map(|good| {
            let path = root.join(format!("list-{size}-{good}.txt"));
            std::fs::write(&path, list(size, good)).map(|()| path)
        });
        let [good_file, bad_file] = files;
        let (good_file, bad_file) = (good_file?, bad_file?);
        // Start from the BAD list, enforced everywhere.
        fleet_set(&bad_file)?;
        let deadline = Instant::now() + CONVERGE_LIMIT;
        for host in &hosts {
            if host.wait_enforced(IpAddr::V4(BAD4), deadline).is_none() {
                bail!("fleet: the first list of {size} prefixes was not enforced in time");
            }
        }
        let mut row = FleetSize {
            size: short_count(size),
            changes: plan.fleet_changes,
            ..FleetSize::default()
        };
        let (mut per_host, mut command_ms) = (Vec::new(), Vec::new());
        for change in 0..plan.fleet_changes {
            check_interrupted()?;
            let good = change % 2 == 0;
            let (file, src) = if good {
                (&good_file, [IpAddr::V4(GOOD4), IpAddr::V6(GOOD6)])
            } else {
                (&bad_file, [IpAddr::V4(BAD4), IpAddr::V6(BAD6)])
            };
            let took = fleet_set(file)?;
            let returned = Instant::now();
            command_ms.push(took.as_secs_f64() * 1e3);
            let deadline = returned + CONVERGE_LIMIT;
            // Alternate the probing family between changes; one thread per host.
            let probe = src[change / 2 % 2];
            let times: Vec<Option<Instant>> = std::thread::scope(|scope| {
                let handles: Vec<_> = hosts
                    .iter()
                    .map(|host| scope.spawn(move || host.wait_enforced(probe, deadline)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().unwrap_or(None))
                    .collect()
            });
            if times.iter().any(Option::is_none) {
                row.not_converged += 1;
                continue;
            }
            let ms: Vec<f64> = times
                .iter()
                .flatten()
                .map(|t| t.duration_since(returned).as_secs_f64() * 1e3)
                .collect();
            per_host.extend(&ms);
            row.all_hosts_ms
                .push(ms.iter().copied().fold(0.0, f64::max));
        }
        row.all_hosts = Summary::of(&row.all_hosts_ms);
        row.per_host = Summary::of(&per_host);
        row.command = Summary::of(&command_ms);
        eprintln!(
            "bench: fleet {}: all {HOSTS} hosts enforce after p50 {:.1} ms, p99 {:.1} ms \
             ({} changes, {} not converged)",
            row.size,
            row.all_hosts.as_ref().map_or(f64::NAN, |s| s.median),
            row.all_hosts.as_ref().map_or(f64::NAN, |s| s.p99),
            row.changes,
            row.not_converged
        );
        results.sizes.push(row);
    }
    drop(hosts);
    if plan.fleet_fanout_watchers > 0 {
        let [good, bad] = [true, false].map(|good| root.join(format!("list-200-{good}.txt")));
        for (path, good) in [(&good, true), (&bad, false)] {
            std::fs::write(path, list(200, good))?;
        }
        eprintln!(
            "bench: fleet fan-out: {} watchers, {} changes",
            plan.fleet_fanout_watchers, plan.fleet_fanout_changes
        );
        results.fanout_ms = super::fleet_fanout::run(
            &etcd,
            bin,
            [&good, &bad],
            plan.fleet_fanout_watchers,
            plan.fleet_fanout_changes,
        )?;
        results.fanout = Summary::of(&results.fanout_ms);
        if let Some(s) = &results.fanout {
            eprintln!(
                "bench: fleet fan-out: all {} watchers after p50 {:.1} ms, p99 {:.1} ms",
                plan.fleet_fanout_watchers, s.median, s.p99
            );
        }
    }
    drop(etcd);
    Ok(results)
}
