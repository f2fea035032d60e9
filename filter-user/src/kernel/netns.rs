//! Entering a named network namespace (`--netns`) without leaving the host mount namespace.

use std::{fs::File, os::fd::AsRawFd};

use anyhow::{Context, Result};

use crate::kernel::{names::check_netns, paths::netns_path};

/// Moves this process into the network namespace `name` (from `ip netns add`).
pub fn enter(name: &str) -> Result<()> {
    check_netns(name)?;
    let path = netns_path(name);
    let file = File::open(&path).with_context(|| {
        format!(
            "network namespace {name:?} not found at {}; `ip netns list` lists them",
            path.display()
        )
    })?;
    // SAFETY: a valid namespace file descriptor.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("entering network namespace {name:?}"));
    }
    Ok(())
}
