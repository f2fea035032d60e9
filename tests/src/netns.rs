//! Network namespaces as RAII values, and running Rust code inside one.
//!
//! A [`Netns`] made by [`Netns::new`] has a name unique to this process and call
//! (`aft<pid>-<n>`), so tests can run in parallel. Dropping it kills every process inside and
//! deletes it; namespaces left behind by a killed test process are swept by the next
//! [`Netns::new`].

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// Where `ip netns` keeps its namespace handles.
pub const NETNS_DIR: &str = "/run/netns";

/// Prefix of the names [`Netns::new`] generates.
pub const NAME_PREFIX: &str = "aft";

static COUNTER: AtomicU32 = AtomicU32::new(0);
static SWEEP: Once = Once::new();

/// A network namespace created with `ip netns add`; deleted (with everything inside) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates a namespace with a fresh unique name (`aft<pid>-<n>`) and its loopback up.
    pub fn new() -> Result<Netns> {
        SWEEP.call_once(sweep_stale);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Netns::create(&format!("{NAME_PREFIX}{}-{n}", std::process::id()))
    }

    /// Creates a namespace named `name` (which must not exist yet) with its loopback up.
    pub fn create(name: &str) -> Result<Netns> {
        if exists(name) {
            bail!("network namespace {name} already exists");
        }
        cmd::ip(&["netns", "add", name])?;
        let ns = Netns {
            name: name.to_owned(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The namespace's name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace handle file (`/run/netns/<name>`).
    pub fn path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.name)
    }

    /// Runs `ip -n <name> ARGS...` (bounded); fails with stderr on a non-zero exit.
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        let mut full = vec!["-n", &self.name];
        full.extend_from_slice(args);
        cmd::ip(&full)
    }

    /// A `Command` for `ip netns exec <name> PROGRAM`, to add arguments and run as needed.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Runs `PROGRAM ARGS...` inside the namespace to completion (bounded by
    /// [`cmd::DEFAULT_TIMEOUT`]), capturing its output; the exit status is not checked.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Output> {
        cmd::output_with_timeout(self.command(program).args(args), cmd::DEFAULT_TIMEOUT)
    }

    /// Like [`Netns::exec`] but fails on a non-zero exit; returns stdout.
    pub fn exec_ok(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<String> {
        cmd::run_ok(self.command(program).args(args))
    }

    /// Starts `PROGRAM ARGS...` inside the namespace (stdin null, stdout/stderr inherited).
    /// The caller owns the child; dropping the namespace kills it if it is still running.
    pub fn spawn(&self, program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Result<Child> {
        let mut c = self.command(program);
        c.args(args).stdin(Stdio::null());
        c.spawn()
            .with_context(|| format!("starting `{}`", cmd::describe(&c)))
    }

    /// Runs `f` on a new thread that has joined this namespace (`setns(CLONE_NEWNET)`), and
    /// returns its result. Sockets created inside `f` stay in this namespace for their whole
    /// life, whichever thread uses them afterwards. A panic in `f` is resumed here. Inside `f`,
    /// read `/proc/thread-self/net/...`: `/proc/net` follows the process's main thread.
    pub fn run<F, T>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> T + Send,
        T: Send,
    {
        let path = self.path();
        thread::scope(|s| {
            let handle = s.spawn(move || -> Result<T> {
                enter(&path)?;
                Ok(f())
            });
            match handle.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Process ids inside this namespace (`ip netns pids`).
    pub fn pids(&self) -> Vec<i32> {
        pids(&self.name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = delete_netns(&self.name) {
            eprintln!("warning: deleting network namespace {}: {e:#}", self.name);
        }
    }
}

/// Whether a namespace called `name` exists.
pub fn exists(name: &str) -> bool {
    Path::new(NETNS_DIR).join(name).exists()
}

/// Kills every process inside namespace `name` (bounded wait), then deletes it. Does nothing if it
/// doesn't exist, so it is safe to call from several cleanup paths.
pub fn delete_netns(name: &str) -> Result<()> {
    if !exists(name) {
        return Ok(());
    }
    let me = std::process::id() as i32;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let inside: Vec<i32> = pids(name).into_iter().filter(|&p| p != me).collect();
        if inside.is_empty() || Instant::now() >= deadline {
            break;
        }
        for pid in inside {
            // SAFETY: plain syscall; a stale pid only yields ESRCH.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        thread::sleep(Duration::from_millis(20));
    }
    cmd::ip(&["netns", "delete", name]).map(|_| ())
}

/// Process ids inside namespace `name`; empty if it can't be listed.
fn pids(name: &str) -> Vec<i32> {
    cmd::ip(&["netns", "pids", name])
        .map(|out| {
            out.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Joins the calling thread to the network namespace whose handle is `path`.
fn enter(path: &Path) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    // SAFETY: `file` is an open namespace handle for the duration of the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("setns into {}", path.display()));
    }
    Ok(())
}

/// Deletes `aft<pid>-<n>` namespaces whose creating process no longer exists.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir(NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(pid) = owner_pid(&name)
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = delete_netns(&name);
        }
    }
}

/// The pid embedded in a generated name (`aft<pid>-<n>`), if `name` is one.
fn owner_pid(name: &str) -> Option<u32> {
    let (pid, n) = name.strip_prefix(NAME_PREFIX)?.split_once('-')?;
    n.parse::<u32>().ok()?;
    pid.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_generated_names_only() {
        assert_eq!(owner_pid("aft123-4"), Some(123));
        assert_eq!(owner_pid("aft123"), None);
        assert_eq!(owner_pid("afdemo-api"), None);
        assert_eq!(owner_pid("aftx-1"), None);
    }
}
