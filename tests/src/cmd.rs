//! Running external commands (mostly `ip`) with a time bound, and turning failures into errors
//! that show the command line and its stderr.

use std::io::Read;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Default bound for one helper command (`ip ...`, `apifence ...`).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `cmd` to completion with stdout/stderr captured, killing it after `timeout`.
///
/// Returns the output whatever the exit status; fails only when the command can't be started or
/// overran `timeout`.
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let shown = describe(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting `{shown}`"))?;
    let stdout = drain(child.stdout.take());
    let stderr = drain(child.stderr.take());
    let status = match wait_with_timeout(&mut child, timeout)? {
        Some(status) => status,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{shown}` did not finish within {timeout:?}");
        }
    };
    // A grandchild may still hold the pipes open: give them a short, bounded time to close.
    let grace = Instant::now() + Duration::from_secs(2);
    Ok(Output {
        status,
        stdout: collect(&stdout, grace),
        stderr: collect(&stderr, grace),
    })
}

/// Like [`output_with_timeout`] with [`DEFAULT_TIMEOUT`], but fails on a non-zero exit and
/// returns stdout as a string.
pub fn run_ok(cmd: &mut Command) -> Result<String> {
    let shown = describe(cmd);
    let out = output_with_timeout(cmd, DEFAULT_TIMEOUT)?;
    check(&shown, &out)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `ip ARGS...` (bounded) and fails with its stderr on a non-zero exit.
pub fn ip(args: &[&str]) -> Result<String> {
    run_ok(Command::new("ip").args(args))
}

/// Fails with the command line, status and stderr when `out` is not a success.
pub fn check(shown: &str, out: &Output) -> Result<()> {
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// Waits up to `timeout` for `child` to exit; `None` if it is still running.
pub fn wait_with_timeout(
    child: &mut Child,
    timeout: Duration,
) -> Result<Option<std::process::ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().context("waiting for child")? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(Duration::from_millis(10));
    }
}

/// The command line of `cmd`, for messages.
pub fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Reads a pipe to its end on a detached thread; the bytes arrive on the returned channel.
fn drain<R: Read + Send + 'static>(pipe: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// What [`drain`] read, or nothing if the pipe is still open at `deadline`.
fn collect(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captures_output_and_status() {
        let out = output_with_timeout(
            Command::new("sh").args(["-c", "echo hi; echo err >&2; exit 3"]),
            Duration::from_secs(5),
        )
        .unwrap();
        assert_eq!(out.stdout, b"hi\n");
        assert_eq!(out.stderr, b"err\n");
        assert_eq!(out.status.code(), Some(3));
    }

    #[test]
    fn kills_on_timeout() {
        let start = Instant::now();
        let err = output_with_timeout(Command::new("sleep").arg("10"), Duration::from_millis(200))
            .unwrap_err();
        assert!(err.to_string().contains("did not finish"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn run_ok_reports_stderr() {
        let err = run_ok(Command::new("sh").args(["-c", "echo boom >&2; exit 1"])).unwrap_err();
        assert!(err.to_string().contains("boom"), "{err}");
    }
}
