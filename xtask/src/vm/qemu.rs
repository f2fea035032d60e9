//! Booting a guest: qemu with the kernel, the initramfs and the serial console in a log file,
//! bounded in time (killed on overrun), with KVM when it really works and TCG otherwise.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{describe, wait_with_timeout};

use super::initramfs::Initramfs;

/// Guest memory in MiB (the initramfs holds ~60 MB of binaries and libraries).
const MEMORY_MIB: &str = "1024";
/// Kernel command line: console on the first serial port, no kernel chatter in the check output,
/// any panic ends qemu (with `-no-reboot`). `no_timer_check`: under TCG on a loaded host the
/// kernel's boot-time check of the IO-APIC timer IRQ can time out and panic ("IO-APIC + timer
/// doesn't work!", seen on 6.1 and 6.12 guests at load average 18); the check is for broken
/// hardware, not something these guests test.
const CMDLINE: &str = "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic no_timer_check";
/// Bound on the KVM probe guest (it boots in about a second when KVM works).
const KVM_PROBE_TIMEOUT: Duration = Duration::from_secs(20);
/// What the KVM probe guest prints when it ran.
const KVM_PROBE_MARKER: &str = "APIFENCE-VM KVM-OK";

/// How qemu runs the guest's CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Qemu's emulator (about ten times slower, works everywhere).
    Tcg,
}

impl Accel {
    /// The `-accel` value.
    pub fn name(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
}

/// A finished guest run.
#[derive(Debug)]
pub struct Boot {
    /// Everything the guest wrote on its serial console.
    pub console: String,
    /// Wall time from starting qemu to its exit (or its kill).
    pub elapsed: Duration,
    /// Whether qemu outlived its bound and was killed.
    pub timed_out: bool,
    /// Where the console was written.
    pub log: PathBuf,
}

/// Boots the kernel ELF `vmlinux` (through its PVH entry) with `initrd`; the serial console goes
/// to `log`. Qemu is killed after `timeout`.
pub fn boot(
    qemu: &Path,
    accel: Accel,
    vmlinux: &Path,
    initrd: &Path,
    log: &Path,
    timeout: Duration,
) -> Result<Boot> {
    // A console left by an earlier run must not stand in for this one.
    match std::fs::remove_file(log) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", log.display()));
        }
        _ => {}
    }
    // qemu's own messages (not the guest's), kept beside the console log.
    let qemu_out = log.with_extension("qemu.txt");
    let qemu_file =
        File::create(&qemu_out).with_context(|| format!("creating {}", qemu_out.display()))?;
    let mut cmd = Command::new(qemu);
    cmd.args(["-accel", accel.name()])
        .args(["-cpu", if accel == Accel::Kvm { "host" } else { "max" }])
        .args(["-m", MEMORY_MIB, "-smp", "1"])
        .args(["-nodefaults", "-no-reboot", "-display", "none"])
        .arg("-serial")
        .arg(format!("file:{}", log.display()))
        .arg("-kernel")
        .arg(vmlinux)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", CMDLINE])
        .stdin(Stdio::null())
        .stdout(qemu_file.try_clone()?)
        .stderr(qemu_file);
    let shown = describe(&cmd);
    println!("$ {shown}");
    let start = Instant::now();
    let mut child = cmd.spawn().with_context(|| format!("starting `{shown}`"))?;
    let status = wait_with_timeout(&mut child, timeout)?;
    let timed_out = status.is_none();
    if timed_out {
        let _ = child.kill();
        let _ = child.wait();
    }
    let elapsed = start.elapsed();
    let mut console = std::fs::read_to_string(log).unwrap_or_default();
    let qemu_text = std::fs::read_to_string(&qemu_out).unwrap_or_default();
    if !qemu_text.trim().is_empty() {
        console.push_str(&format!("\n[qemu: {}]\n{qemu_text}", qemu_out.display()));
    }
    Ok(Boot {
        console,
        elapsed,
        timed_out,
        log: log.to_path_buf(),
    })
}

/// KVM if `/dev/kvm` is usable and a probe guest really runs under it; otherwise TCG, saying
/// why loudly (on this machine class `/dev/kvm` exists but KVM guests die).
pub fn choose_accel(qemu: &Path, busybox: &Path, vmlinux: &Path, work: &Path) -> Result<Accel> {
    let why_not = match kvm_usable(qemu, busybox, vmlinux, work) {
        Ok(()) => {
            println!("vm: KVM works: guests run with -accel kvm");
            return Ok(Accel::Kvm);
        }
        Err(e) => e,
    };
    eprintln!();
    eprintln!("vm: *** KVM IS NOT USABLE HERE: {why_not:#}");
    eprintln!("vm: *** falling back to TCG emulation (-accel tcg): each guest takes ~10x longer");
    eprintln!();
    Ok(Accel::Tcg)
}

/// Fails with the reason when KVM can't run a guest: no `/dev/kvm`, no access to it, or a
/// trivial guest that doesn't print its marker under `-accel kvm`.
fn kvm_usable(qemu: &Path, busybox: &Path, vmlinux: &Path, work: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .context("opening /dev/kvm")?;
    let mut probe = Initramfs::new();
    probe.binary("bin/busybox", busybox)?;
    probe.char_device("dev/console", 5, 1);
    probe.bytes(
        "init",
        format!("#!/bin/busybox sh\necho {KVM_PROBE_MARKER}\n/bin/busybox poweroff -f\n"),
        0o755,
    );
    let initrd = work.join("kvm-probe.cpio");
    probe.write(&initrd)?;
    let boot = boot(
        qemu,
        Accel::Kvm,
        vmlinux,
        &initrd,
        &work.join("kvm-probe.log"),
        KVM_PROBE_TIMEOUT,
    )?;
    if boot.console.contains(KVM_PROBE_MARKER) {
        return Ok(());
    }
    let tail: Vec<&str> = boot.console.lines().rev().take(5).collect();
    let said = if tail.is_empty() {
        "nothing on its console".to_owned()
    } else {
        format!(
            "its last lines: {}",
            tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
        )
    };
    bail!(
        "a probe guest under -accel kvm {} after {:.1?} without printing its marker ({said})",
        if boot.timed_out { "hung" } else { "died" },
        boot.elapsed,
    )
}
