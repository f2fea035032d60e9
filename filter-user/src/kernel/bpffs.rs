//! The bpffs directory: making sure one is mounted, and the lock that keeps one writer at a
//! time.

use std::{
    ffi::CString,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use crate::kernel::paths::SYSTEM_BPFFS_MOUNT;

/// `f_type` of a bpffs superblock.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// How long a command waits for another writer to finish.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Why the bpffs directory can't be used.
#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    /// An I/O step failed.
    #[error("{action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path involved.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Mounting here would only last as long as this process.
    #[error(
        "{0} is not on a bpffs mount, and this process runs in a private mount namespace \
         (for example under `ip netns exec`), so pins made here would vanish when it exits; \
         mount bpffs in the host namespace first (mount -t bpf bpf {0}), \
         or use `apifence --netns NAME` instead of `ip netns exec`"
    )]
    PrivateMountNamespace(PathBuf),
    /// Another apifence command holds the lock.
    #[error("another apifence command is changing {0} (waited {1:?}); retry when it is done")]
    Busy(PathBuf, Duration),
}

/// Whether `path` is on a bpffs.
pub fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `statfs` is plain data; the kernel fills it.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid NUL-terminated path and a valid out pointer.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

/// Whether this process shares its mount namespace with PID 1.
fn in_host_mount_namespace() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(mine), Ok(init)) => mine == init,
        // Can't tell (no /proc/1 access): don't block the user.
        _ => true,
    }
}

fn mount_bpffs(target: &Path) -> Result<(), BpffsError> {
    let io_err = |source| BpffsError::Io {
        action: "mounting bpffs on",
        path: target.to_path_buf(),
        source,
    };
    let c_target = CString::new(target.as_os_str().as_bytes())
        .map_err(|e| io_err(io::Error::new(io::ErrorKind::InvalidInput, e)))?;
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c_target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(io_err(io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes `dir` an existing directory on a bpffs. Returns whether it mounted a bpffs on `dir`
/// itself (which a full detach undoes). The default location mounts the system bpffs at
/// `/sys/fs/bpf` when nothing is mounted there (that mount is left in place on detach).
pub fn ensure_bpffs_dir(dir: &Path) -> Result<bool, BpffsError> {
    if dir.is_dir() && is_bpffs(dir) {
        return Ok(false);
    }
    let create = |path: &Path| {
        std::fs::create_dir_all(path).map_err(|source| BpffsError::Io {
            action: "creating",
            path: path.to_path_buf(),
            source,
        })
    };
    let system = Path::new(SYSTEM_BPFFS_MOUNT);
    if let Some(parent) = dir.parent()
        && parent.is_dir()
        && is_bpffs(parent)
    {
        create(dir)?;
        return Ok(false);
    }
    if !in_host_mount_namespace() {
        return Err(BpffsError::PrivateMountNamespace(dir.to_path_buf()));
    }
    if dir.parent() == Some(system) {
        mount_bpffs(system)?;
        create(dir)?;
        return Ok(false);
    }
    create(dir)?;
    mount_bpffs(dir)?;
    Ok(true)
}

/// Unmounts the bpffs apifence mounted on `dir` and removes the directory if empty.
pub fn unmount_bpffs(dir: &Path) -> Result<(), BpffsError> {
    let c_dir = CString::new(dir.as_os_str().as_bytes()).map_err(|e| BpffsError::Io {
        action: "unmounting",
        path: dir.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, e),
    })?;
    // SAFETY: valid NUL-terminated path.
    if unsafe { libc::umount2(c_dir.as_ptr(), libc::MNT_DETACH) } != 0 {
        return Err(BpffsError::Io {
            action: "unmounting",
            path: dir.to_path_buf(),
            source: io::Error::last_os_error(),
        });
    }
    let _ = std::fs::remove_dir(dir);
    Ok(())
}

/// An exclusive `flock` on the bpffs directory: one writer at a time. Released on drop.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// Waits (bounded) for the exclusive lock on `dir`.
    pub fn acquire(dir: &Path) -> Result<Self, BpffsError> {
        let file = File::open(dir).map_err(|source| BpffsError::Io {
            action: "opening",
            path: dir.to_path_buf(),
            source,
        })?;
        let started = Instant::now();
        loop {
            // SAFETY: valid open descriptor.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Self { _dir: file });
            }
            let err = io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(BpffsError::Io {
                    action: "locking",
                    path: dir.to_path_buf(),
                    source: err,
                });
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(BpffsError::Busy(dir.to_path_buf(), LOCK_WAIT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
