//! A private bpffs mount for the CLI's pins, unmounted on drop.
//!
//! Mount it in the test's own mount namespace and pass its path as `--bpffs`: `ip netns exec`
//! gives its child a fresh `/sys`, so a bpffs the CLI mounted under `/sys/fs/bpf` from inside
//! `ip netns exec` vanishes when the CLI exits, while a mount made here stays visible to it.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};

/// Directory under which [`Bpffs::new`] creates its mount points.
pub const BASE_DIR: &str = "/run/apifence-tests";

/// `statfs` magic of a bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A bpffs mounted at a directory this value owns; unmounted (dropping every pin in it) and the
/// directory removed on drop.
#[derive(Debug)]
pub struct Bpffs {
    path: PathBuf,
}

impl Bpffs {
    /// Mounts a fresh bpffs at `/run/apifence-tests/bpffs-<pid>-<n>`.
    pub fn new() -> Result<Bpffs> {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        Bpffs::mount_at(Path::new(BASE_DIR).join(format!("bpffs-{}-{n}", std::process::id())))
    }

    /// Mounts a fresh bpffs at `path` (created if missing). A bpffs already mounted there (left by
    /// a crashed run) is unmounted first, so the new one starts empty.
    pub fn mount_at(path: impl Into<PathBuf>) -> Result<Bpffs> {
        let path = path.into();
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        if is_bpffs(&path) {
            Bpffs::unmount(&path)?;
            std::fs::create_dir_all(&path)?;
        }
        let target = c_path(&path)?;
        // SAFETY: all pointers are valid NUL-terminated strings or null for the data argument.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                target.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mounting bpffs at {}", path.display()));
        }
        Ok(Bpffs { path })
    }

    /// The mount point, to pass as `--bpffs`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lazily unmounts whatever bpffs is mounted at `path` and removes the empty directory.
    /// Does nothing when `path` doesn't exist.
    pub fn unmount(path: &Path) -> Result<()> {
        if !path.exists() {
            return Ok(());
        }
        // Bounded: each round removes one stacked mount or fails.
        for _ in 0..8 {
            if !is_bpffs(path) {
                break;
            }
            let target = c_path(path)?;
            // SAFETY: `target` is a valid NUL-terminated path.
            if unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) } != 0 {
                return Err(std::io::Error::last_os_error())
                    .with_context(|| format!("unmounting {}", path.display()));
            }
        }
        std::fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        if let Err(e) = Bpffs::unmount(&self.path) {
            eprintln!("warning: {e:#}");
        }
    }
}

/// Moves the calling thread into a private mount namespace with a fresh tmpfs over
/// [`BASE_DIR`]: bpffs mounts the thread makes afterwards (and the programs and maps pinned in
/// them) go away with the process, even when it never drops its [`Bpffs`] values (a fuzz
/// target's per-process state, or a run ended by `abort`). Other threads and processes keep
/// the host's mounts, and nothing is left in the host's `BASE_DIR`.
pub fn private_mounts() -> Result<()> {
    // SAFETY: plain syscalls with valid NUL-terminated strings or null pointers.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNS)");
    }
    // Without this the mounts below would propagate back to the host's namespace.
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error()).context("making / a private mount");
    }
    std::fs::create_dir_all(BASE_DIR).with_context(|| format!("creating {BASE_DIR}"))?;
    let target = c_path(Path::new(BASE_DIR))?;
    // SAFETY: as above.
    let rc = unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            target.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("mounting a private tmpfs at {BASE_DIR}"));
    }
    Ok(())
}

/// Whether `path` lies on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = c_path(path) else { return false };
    // SAFETY: statfs only writes into `buf`, which is sized for it.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut buf) } == 0) && buf.f_type as i64 == BPF_FS_MAGIC
}

fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes()).context("path contains NUL")
}
