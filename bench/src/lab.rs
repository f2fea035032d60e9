//! What the benchmark builds on the host and must take down again: a private bpffs, the
//! namespace lab (a traffic namespace and a receiver namespace joined by a veth pair), the
//! Ctrl-C flag that lets every loop stop early, and the sweep of leftovers of killed runs.
//!
//! Names: namespaces are `afb<pid><role>` and interfaces `afb…`, so a leftover is recognised
//! by the dead pid in its name. Everything is released by `Drop` (namespaces take their veth
//! pairs, nftables tables, ipsets, iptables rules and XDP links with them).

use std::net::{Ipv4Addr, Ipv6Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use apifence_tests::{Bpffs, Endpoint, Netns, VethPair, delete_netns};

use super::tools::NsHandle;

/// Prefix of every namespace the benchmark makes.
pub const NS_PREFIX: &str = "afb";
/// Directory of the benchmark's private bpffs mounts: `<BASE_DIR>/<pid>/<name>`.
pub const BASE_DIR: &str = "/run/apifence-bench";

/// The traffic side's interface.
pub const GEN_IF: &str = "afbg0";
/// The receiver's interface (the one every filter is attached to).
pub const RCV_IF: &str = "afbr0";
/// An interface in the receiver namespace that keeps apifence loaded while [`RCV_IF`] is
/// attached and detached between runs (peer [`ANCHOR_PEER`]).
pub const ANCHOR_IF: &str = "afba0";
/// The anchor's peer, also in the receiver namespace.
pub const ANCHOR_PEER: &str = "afba1";
/// The traffic side's IPv4 address.
pub const GEN_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 1);
/// The receiver's IPv4 address (the "API server").
pub const RCV_V4: Ipv4Addr = Ipv4Addr::new(192, 168, 250, 2);
/// The traffic side's IPv6 address.
pub const GEN_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 1);
/// The receiver's IPv6 address.
pub const RCV_V6: Ipv6Addr = Ipv6Addr::new(0x2001, 0xdb8, 0x250, 0, 0, 0, 0, 2);
/// The protected port the traffic goes to.
pub const API_PORT: u16 = 6443;

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Makes SIGINT and SIGTERM set a flag instead of killing the process, so that cleanup runs.
pub fn install_signal_handlers() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(
                signal,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Fails if SIGINT or SIGTERM arrived; called between steps of every loop.
pub fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; cleaning up");
    }
    Ok(())
}

/// Removes namespaces and bpffs mounts left by benchmark runs whose process is gone.
pub fn sweep_stale() {
    if let Ok(entries) = std::fs::read_dir(apifence_tests::netns::NETNS_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = owner_pid(&name)
                && !Path::new(&format!("/proc/{pid}")).exists()
            {
                eprintln!("bench: removing namespace {name} left by an earlier run");
                let _ = delete_netns(&name);
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(BASE_DIR) {
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.parse::<u32>().is_ok() && !Path::new(&format!("/proc/{name}")).exists() {
                eprintln!("bench: removing bpffs mounts of an earlier run under {BASE_DIR}/{name}");
                if let Ok(mounts) = std::fs::read_dir(entry.path()) {
                    for mount in mounts.flatten() {
                        let _ = Bpffs::unmount(&mount.path());
                    }
                }
                let _ = std::fs::remove_dir(entry.path());
            }
        }
    }
}

/// The pid in a benchmark namespace name (`afb<pid><role>`), if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(NS_PREFIX)?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    if digits.is_empty() || digits.len() == rest.len() {
        return None;
    }
    digits.parse().ok()
}

/// A private bpffs at `/run/apifence-bench/<pid>/<name>`, unmounted (with every pin in it) on
/// drop.
pub struct BenchBpffs {
    mount: Option<Bpffs>,
    path: PathBuf,
}

impl BenchBpffs {
    /// Mounts a fresh bpffs for this run.
    pub fn new(name: &str) -> Result<BenchBpffs> {
        let path = Path::new(BASE_DIR)
            .join(std::process::id().to_string())
            .join(name);
        let mount = Bpffs::mount_at(&path)?;
        Ok(BenchBpffs {
            mount: Some(mount),
            path,
        })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for BenchBpffs {
    fn drop(&mut self) {
        drop(self.mount.take());
        if let Some(parent) = self.path.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// The two namespaces of the end-to-end and control-plane sections.
///
/// `sender` sends (trafgen, the probe sender); `rcv` is the API server host: [`RCV_IF`] carries the
/// filter under test, a TCP listener waits on [`API_PORT`], reverse-path filtering is off (so
/// spoofed sources reach the stack when nothing filters them), and the anchor pair keeps
/// apifence loaded between runs.
pub struct Lab {
    /// Held so the listener's socket closes before the namespace goes.
    _listener: TcpListener,
    /// The receiver (API server) namespace.
    pub rcv: Netns,
    /// The traffic namespace.
    pub sender: Netns,
    /// Handle to start commands in `rcv`.
    pub rcv_handle: NsHandle,
    /// Handle to start commands in `sender`.
    pub sender_handle: NsHandle,
    /// MAC address of [`GEN_IF`].
    pub sender_mac: [u8; 6],
    /// MAC address of [`RCV_IF`].
    pub rcv_mac: [u8; 6],
}

impl Lab {
    /// Builds the lab.
    pub fn create() -> Result<Lab> {
        let pid = std::process::id();
        let sender = Netns::create(&format!("{NS_PREFIX}{pid}g"))?;
        let rcv = Netns::create(&format!("{NS_PREFIX}{pid}r"))?;
        VethPair::create(
            &sender,
            Endpoint::new(GEN_IF, GEN_V4, GEN_V6),
            &rcv,
            Endpoint::new(RCV_IF, RCV_V4, RCV_V6),
        )?;
        rcv.ip(&[
            "link",
            "add",
            ANCHOR_IF,
            "type",
            "veth",
            "peer",
            "name",
            ANCHOR_PEER,
        ])?;
        rcv.ip(&["link", "set", ANCHOR_IF, "up"])?;
        rcv.ip(&["link", "set", ANCHOR_PEER, "up"])?;
        rcv.run(|| -> Result<()> {
            for path in [
                "/proc/sys/net/ipv4/conf/all/rp_filter",
                "/proc/sys/net/ipv4/conf/default/rp_filter",
            ] {
                std::fs::write(path, "0").with_context(|| format!("writing {path}"))?;
            }
            std::fs::write(format!("/proc/sys/net/ipv4/conf/{RCV_IF}/rp_filter"), "0")
                .context("turning off rp_filter")?;
            Ok(())
        })??;
        let listener = rcv
            .run(|| TcpListener::bind(("0.0.0.0", API_PORT)))?
            .context("listening on the API port in the receiver namespace")?;
        let sender_mac = mac_of(&sender, GEN_IF)?;
        let rcv_mac = mac_of(&rcv, RCV_IF)?;
        let sender_handle = NsHandle::open(sender.name())?;
        let rcv_handle = NsHandle::open(rcv.name())?;
        Ok(Lab {
            _listener: listener,
            rcv,
            sender,
            rcv_handle,
            sender_handle,
            sender_mac,
            rcv_mac,
        })
    }

    /// The receiver's TCP segments received so far (`Tcp: InSegs`): packets that got through
    /// every filter to TCP.
    pub fn tcp_in_segs(&self) -> Result<u64> {
        let text = self
            .rcv
            .run(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))?
            .context("reading the receiver's /proc/net/snmp")?;
        snmp_value(&text, "Tcp", "InSegs").context("no Tcp InSegs in /proc/net/snmp")
    }

    /// Counters of `ifname` in `ns` (`ip -s link`).
    pub fn link_stats(ns: &Netns, ifname: &str) -> Result<LinkStats> {
        let out = ns.ip(&["-s", "-j", "link", "show", "dev", ifname])?;
        let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -s -j link")?;
        let s = &v[0]["stats64"];
        let get = |dir: &str, key: &str| s[dir][key].as_u64().unwrap_or(0);
        Ok(LinkStats {
            tx_packets: get("tx", "packets"),
        })
    }
}

/// Interface counters.
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Sent packets.
    pub tx_packets: u64,
}

/// The MAC address of `ifname` in `ns`.
fn mac_of(ns: &Netns, ifname: &str) -> Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", ifname])?;
    let v: serde_json::Value = serde_json::from_str(&out).context("parsing ip -j link")?;
    let text = v[0]["address"]
        .as_str()
        .with_context(|| format!("no MAC address for {ifname}"))?;
    parse_mac(text).with_context(|| format!("bad MAC address {text:?}"))
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        *byte = u8::from_str_radix(parts.next()?, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// The value of `field` in the `group` lines of a `/proc/net/snmp` text.
pub fn snmp_value(text: &str, group: &str, field: &str) -> Option<u64> {
    let prefix = format!("{group}:");
    let mut lines = text.lines().filter(|l| l.starts_with(&prefix));
    let names = lines.next()?;
    let values = lines.next()?;
    let index = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(index)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_only_matches_generated_names() {
        assert_eq!(owner_pid("afb123g"), Some(123));
        assert_eq!(owner_pid("afb123"), None);
        assert_eq!(owner_pid("afbx1g"), None);
        assert_eq!(owner_pid("aft123-1"), None);
    }

    #[test]
    fn parses_macs() {
        assert_eq!(
            parse_mac("02:37:d0:fb:f1:09"),
            Some([0x02, 0x37, 0xd0, 0xfb, 0xf1, 0x09])
        );
        assert_eq!(parse_mac("02:37:d0"), None);
    }

    #[test]
    fn reads_snmp_fields() {
        let text =
            "Ip: Forwarding InReceives\nIp: 1 5\nTcp: RtoAlgorithm InSegs OutSegs\nTcp: 1 42 7\n";
        assert_eq!(snmp_value(text, "Tcp", "InSegs"), Some(42));
        assert_eq!(snmp_value(text, "Ip", "InReceives"), Some(5));
        assert_eq!(snmp_value(text, "Udp", "InDatagrams"), None);
    }
}
