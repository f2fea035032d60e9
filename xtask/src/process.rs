//! Running the tools xtask drives: echoing the command line, forwarding output live, bounding
//! the wait, and locating the workspace. The benchmark harness (`bench/`, a crate one level
//! below the workspace root like xtask) includes this file too.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{describe, wait_with_timeout};

/// Root of the workspace (the directory holding the top-level `Cargo.toml`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask and the bench crate live inside the workspace")
        .to_path_buf()
}

/// A `cargo` command (the rustup proxy, default toolchain) run from the workspace root.
pub fn cargo() -> Command {
    let mut c = Command::new("cargo");
    c.current_dir(workspace_root());
    c
}

/// Runs `cmd` with inherited stdio, echoing it first; fails on a non-zero exit or when it
/// outlives `timeout` (then it is killed).
pub fn run_live(cmd: &mut Command, timeout: Duration) -> Result<()> {
    let shown = describe(cmd);
    println!("$ {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    match wait_with_timeout(&mut child, timeout)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("`{shown}` failed ({status})"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}; killed")
        }
    }
}

/// Like [`run_live`], but stdout goes through this process: each line is printed as it comes
/// and handed to `on_line`.
pub fn run_live_lines(
    cmd: &mut Command,
    timeout: Duration,
    mut on_line: impl FnMut(&str),
) -> Result<()> {
    let shown = describe(cmd);
    println!("$ {shown}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + timeout;
    let mut forward = |line: String| {
        println!("{line}");
        on_line(&line);
    };
    let status = loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(line) => forward(line),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                let left = deadline.saturating_duration_since(Instant::now());
                break wait_with_timeout(&mut child, left)?;
            }
        }
        if let Some(status) = child.try_wait()? {
            // Drain what is still buffered; a leftover grandchild may hold the pipe, so bounded.
            let grace = Instant::now() + Duration::from_secs(5);
            while let Ok(line) = rx.recv_timeout(grace.saturating_duration_since(Instant::now())) {
                forward(line);
            }
            break Some(status);
        }
        if Instant::now() >= deadline {
            break None;
        }
    };
    match status {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!("`{shown}` failed ({status})"),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}; killed")
        }
    }
}

/// Finds `program` on `PATH` or in the sbin directories (which a non-root `PATH` may lack).
pub fn which(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(program))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}
