//! `cargo xtask demo`: the filter at work in a namespace lab.
//!
//! Three namespaces: `afdemo-api` (the API server host, TCP servers on 6443 and 8080),
//! `afdemo-ok` (an authorized client) and `afdemo-bad` (an unauthorized one), each client joined
//! to the api namespace by its own veth pair. Addresses come from 198.18.0.0/15 and
//! fd00:afde::/64 and exist only inside these namespaces. The CLI runs inside `afdemo-api`
//! against a bpffs the demo mounts itself (see [`apifence_tests::bpffs`] for why).
//!
//! Everything is torn down by the [`Lab`] guard's `Drop`, and by a SIGINT watcher that runs the
//! same cleanup before exiting.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, describe, output_with_timeout};
use apifence_tests::{
    Bpffs, ConnectError, Endpoint, Netns, TcpServer, VethPair, connect, delete_netns,
};

use crate::build;
use crate::process::is_root;
use crate::setup;

const NS_API: &str = "afdemo-api";
const NS_OK: &str = "afdemo-ok";
const NS_BAD: &str = "afdemo-bad";
const BPFFS: &str = "/run/afdemo/bpffs";
const API_PORT: u16 = 6443;
const OTHER_PORT: u16 = 8080;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

const API_OK4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
const OK4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
const API_BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 1);
const BAD4: Ipv4Addr = Ipv4Addr::new(198, 18, 1, 2);
const API_OK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 0x1);
const OK6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 0x2);
const API_BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 0x101);
const BAD6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0xafde, 0, 0, 0, 0, 0, 0x102);

/// Set by the SIGINT handler; the watcher thread acts on it.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Serializes cleanup between the guard's `Drop` and the SIGINT watcher.
static CLEANUP: Mutex<()> = Mutex::new(());

/// Runs the demo. `lab_only` skips the build and the filter: it builds the lab, probes it and
/// tears it down.
pub fn run(lab_only: bool) -> Result<()> {
    let bin = if lab_only {
        None
    } else {
        setup::run(&[setup::Task::Demo])?;
        Some(build::compile_release()?)
    };
    if !is_root() {
        bail!("the demo needs root (network namespaces, XDP): run it with sudo");
    }
    install_sigint_cleanup();
    cleanup(); // leftovers of an earlier run that was killed
    let lab = Lab::new()?;
    let mut demo = Demo {
        lab: &lab,
        bin,
        surprises: 0,
    };
    demo.script()?;
    if demo.surprises > 0 {
        bail!("{} probe(s) did not behave as expected", demo.surprises);
    }
    println!("\nall probes behaved as expected; cleaning up");
    Ok(())
}

/// Namespaces, links, servers and the bpffs; all removed on drop.
struct Lab {
    api: Netns,
    ok: Netns,
    bad: Netns,
    bpffs: Option<Bpffs>,
    servers: Vec<TcpServer>,
}

impl Lab {
    fn new() -> Result<Lab> {
        println!("building the lab:");
        let mut lab = Lab {
            api: Netns::create(NS_API)?,
            ok: Netns::create(NS_OK)?,
            bad: Netns::create(NS_BAD)?,
            bpffs: None,
            servers: Vec::new(),
        };
        let ok_link = VethPair::create(
            &lab.api,
            v6_on_120(Endpoint::new("to-ok", API_OK4, API_OK6)),
            &lab.ok,
            v6_on_120(Endpoint::new("eth0", OK4, OK6)),
        )?;
        let bad_link = VethPair::create(
            &lab.api,
            v6_on_120(Endpoint::new("to-bad", API_BAD4, API_BAD6)),
            &lab.bad,
            v6_on_120(Endpoint::new("eth0", BAD4, BAD6)),
        )?;
        for (name, pair) in [(NS_OK, &ok_link), (NS_BAD, &bad_link)] {
            println!(
                "  {NS_API} {} {}/{} ⇄ {name} {} {}/{}",
                pair.a.ifname, pair.a.v4, pair.a.v6, pair.b.ifname, pair.b.v4, pair.b.v6
            );
        }
        for port in [API_PORT, OTHER_PORT] {
            lab.servers.push(TcpServer::start(
                &lab.api,
                Ipv6Addr::UNSPECIFIED.into(),
                port,
            )?);
            println!("  {NS_API}: TCP server listening on :{port}");
        }
        lab.bpffs = Some(Bpffs::mount_at(BPFFS)?);
        println!("  bpffs for the CLI's pins at {BPFFS}");
        Ok(lab)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.servers.clear();
        cleanup();
    }
}

/// Gives an endpoint a /120 inside fd00:afde::/64, so each link has its own IPv6 subnet.
fn v6_on_120(mut end: Endpoint) -> Endpoint {
    end.v6_prefix = 120;
    end
}

/// The demo script, counting probes that did not do what the script expected.
struct Demo<'a> {
    lab: &'a Lab,
    bin: Option<PathBuf>,
    surprises: u32,
}

/// What a probe is expected to do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Expect {
    Connect,
    Drop,
}

impl Demo<'_> {
    fn script(&mut self) -> Result<()> {
        println!("\nwithout the filter, every client reaches every port:");
        self.probe_all(Expect::Connect, Expect::Connect)?;
        let Some(bin) = self.bin.clone() else {
            println!("\n(--lab-only: skipping the filter)");
            return Ok(());
        };
        let ok = format!("{OK4}/32,{OK6}/128");
        let bad4 = format!("{BAD4}/32");
        println!("\nattach the filter to the API host's interfaces, protecting :{API_PORT}:");
        self.cli(
            &bin,
            &[
                "attach",
                "to-ok",
                "to-bad",
                "--ports",
                &API_PORT.to_string(),
            ],
        )?;
        self.cli(&bin, &["ranges", "set", &ok])?;
        println!("\nonly {OK4} and {OK6} are authorized:");
        self.probe_all(Expect::Connect, Expect::Drop)?;
        println!("\nauthorize {BAD4} too:");
        self.cli(&bin, &["ranges", "add", &bad4])?;
        self.probe_bad_api(Expect::Connect)?;
        println!("\nwithdraw it again:");
        self.cli(&bin, &["ranges", "remove", &bad4])?;
        self.probe_bad_api(Expect::Drop)?;
        println!("\nwhat the filter counted and enforces:");
        self.cli(&bin, &["stats"])?;
        self.cli(&bin, &["ranges", "show"])?;
        println!("\ndetach:");
        self.cli(&bin, &["detach", "to-ok", "to-bad"])?;
        self.probe_bad_api(Expect::Connect)?;
        Ok(())
    }

    /// Probes the unauthorized client's IPv4 address to :6443.
    fn probe_bad_api(&mut self, expect: Expect) -> Result<()> {
        self.probe(
            &self.lab.bad,
            BAD4.into(),
            API_BAD4.into(),
            API_PORT,
            expect,
        )
    }

    /// Probes both clients on both families to :6443, and the bad client to :8080.
    fn probe_all(&mut self, ok: Expect, bad: Expect) -> Result<()> {
        let lab = self.lab;
        self.probe(&lab.ok, OK4.into(), API_OK4.into(), API_PORT, ok)?;
        self.probe(&lab.ok, OK6.into(), API_OK6.into(), API_PORT, ok)?;
        self.probe(&lab.bad, BAD4.into(), API_BAD4.into(), API_PORT, bad)?;
        self.probe(&lab.bad, BAD6.into(), API_BAD6.into(), API_PORT, bad)?;
        self.probe(
            &lab.bad,
            BAD4.into(),
            API_BAD4.into(),
            OTHER_PORT,
            Expect::Connect,
        )
    }

    /// One bounded connect from `src` in `ns` to `dst:port`, printed as a person reads it.
    fn probe(
        &mut self,
        ns: &Netns,
        src: IpAddr,
        dst: IpAddr,
        port: u16,
        expect: Expect,
    ) -> Result<()> {
        interrupted_check()?;
        let target = SocketAddr::new(dst, port);
        let result = connect(ns, src, target, CONNECT_TIMEOUT);
        let (mark, what, got) = match &result {
            Ok(()) => ("✔", "connected".to_owned(), Some(Expect::Connect)),
            Err(ConnectError::TimedOut) => {
                ("✘", "timed out (dropped)".to_owned(), Some(Expect::Drop))
            }
            Err(ConnectError::Refused) => ("✘", "refused".to_owned(), None),
            Err(ConnectError::Other(e)) => ("✘", format!("failed: {e}"), None),
        };
        let note = if got == Some(expect) {
            ""
        } else {
            self.surprises += 1;
            match expect {
                Expect::Connect => "   ← UNEXPECTED: should have connected",
                Expect::Drop => "   ← UNEXPECTED: should have been dropped",
            }
        };
        println!("  {mark} {src} → {target} {what}{note}");
        Ok(())
    }

    /// Runs `apifence ARGS...` inside the api namespace (bounded), printing its output.
    fn cli(&self, bin: &Path, args: &[&str]) -> Result<()> {
        interrupted_check()?;
        let bpffs = self.lab.bpffs.as_ref().context("no bpffs")?.path();
        let mut cmd = self.lab.api.command(bin);
        cmd.args(args).env("APIFENCE_BPFFS", bpffs);
        println!("  $ ip netns exec {NS_API} apifence {}", args.join(" "));
        let out = output_with_timeout(&mut cmd, DEFAULT_TIMEOUT)?;
        for line in String::from_utf8_lossy(&out.stdout)
            .lines()
            .chain(String::from_utf8_lossy(&out.stderr).lines())
        {
            println!("    {line}");
        }
        if !out.status.success() {
            bail!("`{}` failed ({})", describe(&cmd), out.status);
        }
        Ok(())
    }
}

/// Fails fast once Ctrl-C was pressed (the watcher is already cleaning up).
fn interrupted_check() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted");
    }
    Ok(())
}

/// Deletes the demo's namespaces (killing what runs inside) and unmounts its bpffs. Idempotent;
/// shared by the guard's `Drop`, the SIGINT watcher and the start of a run.
fn cleanup() {
    let _guard = CLEANUP.lock().unwrap_or_else(|p| p.into_inner());
    cleanup_locked();
}

/// [`cleanup`]'s work; the caller holds [`CLEANUP`].
fn cleanup_locked() {
    for name in [NS_API, NS_OK, NS_BAD] {
        if let Err(e) = delete_netns(name) {
            eprintln!("warning: {e:#}");
        }
    }
    let bpffs = Path::new(BPFFS);
    if let Err(e) = Bpffs::unmount(bpffs) {
        eprintln!("warning: {e:#}");
    }
    if let Some(parent) = bpffs.parent() {
        let _ = std::fs::remove_dir(parent);
    }
}

extern "C" fn on_sigint(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs a SIGINT handler that only raises a flag, and a watcher thread that, once it is
/// raised, runs the cleanup and exits with status 130.
fn install_sigint_cleanup() {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(
            libc::SIGINT,
            on_sigint as extern "C" fn(libc::c_int) as libc::sighandler_t,
        );
    }
    thread::spawn(|| {
        // Lives as long as the process; checks the flag every 50 ms.
        loop {
            if INTERRUPTED.load(Ordering::SeqCst) {
                // Held until exit, so the main thread can't finish first and exit 0.
                let _guard = CLEANUP.lock().unwrap_or_else(|p| p.into_inner());
                eprintln!("\ninterrupted: cleaning up the demo lab");
                cleanup_locked();
                std::process::exit(130);
            }
            thread::sleep(Duration::from_millis(50));
        }
    });
}
