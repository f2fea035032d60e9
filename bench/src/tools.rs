//! The external tools the benchmark drives (`nft`, `ipset`, `iptables`, `xdp-filter`, `trafgen`,
//! the `apifence` CLI): finding them, recording their versions, and running them, bounded,
//! inside a network namespace without `ip netns exec`'s own cost.

use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{check, describe, output_with_timeout};
use serde::{Deserialize, Serialize};

use crate::process::which;

/// The tools the benchmark drives: command, and the Debian package it comes from (recorded with
/// the results). `cargo xtask bench` installs them first (`cargo xtask setup --for bench`, whose
/// table `APT_PACKAGES` in `xtask/src/setup.rs` says why each is needed).
const TOOLS: [(&str, &str); 8] = [
    ("ip", "iproute2"),
    ("nft", "nftables"),
    ("ipset", "ipset"),
    ("iptables", "iptables"),
    ("xdp-filter", "xdp-tools"),
    ("trafgen", "netsniff-ng"),
    ("bpftool", "bpftool"),
    ("etcd", "etcd-server"),
];

/// Bound on one tool invocation (loading 100k nft interval elements takes seconds).
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// A tool found (or not) and its version line.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ToolInfo {
    /// Command name.
    pub name: String,
    /// Debian package.
    pub package: String,
    /// Absolute path, when found.
    pub path: Option<PathBuf>,
    /// First line of its version output.
    pub version: Option<String>,
}

/// Looks every tool of [`TOOLS`] up and asks its version.
pub fn inventory() -> Vec<ToolInfo> {
    TOOLS
        .iter()
        .map(|&(command, package)| {
            let path = which(command);
            let version = path.as_ref().and_then(|p| version_of(command, p));
            ToolInfo {
                name: command.into(),
                package: package.into(),
                path,
                version,
            }
        })
        .collect()
}

fn version_of(name: &str, path: &Path) -> Option<String> {
    let args: &[&str] = match name {
        "ip" => &["-V"],
        "ipset" => &["version"],
        "xdp-filter" => &["load", "--version"],
        "bpftool" => &["version"],
        _ => &["--version"],
    };
    let out = output_with_timeout(Command::new(path).args(args), Duration::from_secs(10)).ok()?;
    let text = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&text)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_owned)
}

/// The absolute path of `name`, or an error naming the Debian package to install.
pub fn require(name: &str) -> Result<PathBuf> {
    which(name).with_context(|| {
        let package = TOOLS
            .iter()
            .find(|(command, _)| *command == name)
            .map_or(name, |(_, package)| package);
        format!(
            "{name} is not installed (`cargo xtask setup --for bench`, or apt-get install \
             --no-install-recommends --no-remove {package})"
        )
    })
}

/// A network namespace handle to run commands in (opened once, reused for every command).
#[derive(Debug)]
pub struct NsHandle {
    file: File,
}

impl NsHandle {
    /// Opens `/run/netns/<name>`.
    pub fn open(name: &str) -> Result<NsHandle> {
        let path = Path::new(apifence_tests::netns::NETNS_DIR).join(name);
        let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
        Ok(NsHandle { file })
    }

    /// A command that starts inside this namespace (via `setns` before `exec`).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        let fd: RawFd = self.file.as_raw_fd();
        // SAFETY: the closure only calls setns, which is async-signal-safe, on a descriptor
        // that stays open in the child until exec (it is not close-on-exec-sensitive here).
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }
}

impl NsHandle {
    /// Like [`NsHandle::command`], and the command also gets a private mount namespace in which
    /// the bpffs at `bpffs` is bind-mounted on `/sys/fs/bpf`. For tools (xdp-filter) that pin
    /// under `/sys/fs/bpf` or else under whichever bpffs comes first in the mount table: this
    /// way their pins land on the benchmark's own bpffs, and the host's mounts stay untouched.
    pub fn command_with_bpffs(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        bpffs: &Path,
    ) -> Result<Command> {
        use std::os::unix::ffi::OsStrExt;
        let mut cmd = self.command(program);
        let source = std::ffi::CString::new(bpffs.as_os_str().as_bytes())?;
        // SAFETY: the closure only makes system calls (unshare, mount) on strings allocated
        // before the fork; all of them are async-signal-safe.
        unsafe {
            cmd.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        c"none".as_ptr(),
                        c"/".as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        source.as_ptr(),
                        c"/sys/fs/bpf".as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}

/// Runs `cmd` to completion (bounded by [`TOOL_TIMEOUT`]); fails on a non-zero exit with the
/// command line and its stderr. Returns stdout.
pub fn run(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let out = output_with_timeout(cmd, TOOL_TIMEOUT)?;
    check(&shown, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` like [`run`] and also returns its wall time.
pub fn run_timed(cmd: &mut Command) -> Result<(String, Duration)> {
    let started = Instant::now();
    let out = run(cmd)?;
    Ok((out, started.elapsed()))
}

/// Runs `cmd` with `input` on stdin (bounded); fails on a non-zero exit. Returns the wall time.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Result<Duration> {
    use std::io::Write;
    let shown = describe(cmd);
    let started = Instant::now();
    let mut child: Child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let mut stderr_pipe = child.stderr.take().context("no stderr pipe")?;
    let errors = std::thread::spawn(move || {
        use std::io::Read;
        let mut text = String::new();
        let _ = stderr_pipe.read_to_string(&mut text);
        text
    });
    // A tool that fails early closes its stdin: its error message matters more than ours.
    let write = stdin.write_all(input);
    drop(stdin);
    let status = apifence_tests::cmd::wait_with_timeout(&mut child, TOOL_TIMEOUT)?;
    let elapsed = started.elapsed();
    let Some(status) = status else {
        let _ = child.kill();
        let _ = child.wait();
        bail!("`{shown}` did not finish within {TOOL_TIMEOUT:?}");
    };
    let stderr = errors.join().unwrap_or_default();
    if !status.success() {
        bail!("`{shown}` failed ({status}): {}", stderr.trim());
    }
    write.with_context(|| format!("writing to `{shown}`"))?;
    Ok(elapsed)
}

/// Output of a command that may fail, for best-effort cleanup and diagnostics.
pub fn try_output(cmd: &mut Command) -> Option<Output> {
    output_with_timeout(cmd, Duration::from_secs(30)).ok()
}
