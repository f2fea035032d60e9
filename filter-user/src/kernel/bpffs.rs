//! The bpffs directory: making sure one is mounted, and the lock that keeps one writer at a
//! time.
//!
//! apifence mounts a bpffs only on a directory it created itself: one that did not exist, or an
//! empty one it marked when it created it (the `trusted.apifence_bpffs` extended attribute, so
//! a directory left after a reboot is recognized). Anything else (`/etc`, a directory with
//! files, one someone else made) is refused before anything is created or mounted.

use std::{
    ffi::CString,
    fs::{File, TryLockError},
    io,
    os::unix::ffi::OsStrExt,
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
    /// The directory is not one apifence may mount a bpffs on.
    #[error(
        "bpffs directory {} is not on a bpffs and {reason}; apifence mounts a bpffs only on \
         a directory it creates itself: choose a path that does not exist yet (for example \
         /run/apifence/bpffs) or one under /sys/fs/bpf{}",
        dir.display(),
        if *empty_dir {
            format!(", or mount a bpffs there yourself (mount -t bpf bpf {})", dir.display())
        } else {
            String::new()
        }
    )]
    NotOurs {
        /// The directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: &'static str,
        /// It is an empty directory (mounting there yourself is a reasonable fix).
        empty_dir: bool,
    },
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

/// Extended attribute apifence sets on a directory it created to mount a bpffs on.
const CREATED_MARK: &std::ffi::CStr = c"trusted.apifence_bpffs";

fn c_path(path: &Path) -> Option<CString> {
    CString::new(path.as_os_str().as_bytes()).ok()
}

/// Marks `dir` as created by apifence. Best effort: on a filesystem without extended
/// attributes the mark is missing, and a later mount on the leftover directory is refused with
/// [`BpffsError::NotOurs`] (whose message says what to do).
fn mark_created(dir: &Path) {
    if let Some(path) = c_path(dir) {
        // SAFETY: valid NUL-terminated strings and a 1-byte value buffer.
        unsafe {
            libc::setxattr(
                path.as_ptr(),
                CREATED_MARK.as_ptr(),
                b"1".as_ptr().cast(),
                1,
                0,
            )
        };
    }
}

fn created_by_apifence(dir: &Path) -> bool {
    let Some(path) = c_path(dir) else {
        return false;
    };
    // SAFETY: valid NUL-terminated strings; a null buffer of size 0 only asks for the length.
    unsafe {
        libc::lgetxattr(
            path.as_ptr(),
            CREATED_MARK.as_ptr(),
            std::ptr::null_mut(),
            0,
        ) >= 0
    }
}

/// Whether [`ensure_bpffs_dir`] may use `dir`, changing nothing: it is on a bpffs, inside one,
/// the system mount point's child, missing (apifence creates it), or an empty directory
/// apifence created earlier. Used by `check-config` and at daemon start, too.
pub fn check_mount_target(dir: &Path) -> Result<(), BpffsError> {
    if dir.is_dir() && is_bpffs(dir) {
        return Ok(());
    }
    if let Some(parent) = dir.parent()
        && (parent == Path::new(SYSTEM_BPFFS_MOUNT) || (parent.is_dir() && is_bpffs(parent)))
    {
        return Ok(());
    }
    let refuse = |reason, empty_dir| {
        Err(BpffsError::NotOurs {
            dir: dir.to_path_buf(),
            reason,
            empty_dir,
        })
    };
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(BpffsError::Io {
                action: "inspecting",
                path: dir.to_path_buf(),
                source,
            });
        }
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        return refuse("is not a directory", false);
    }
    let mut entries = std::fs::read_dir(dir).map_err(|source| BpffsError::Io {
        action: "listing",
        path: dir.to_path_buf(),
        source,
    })?;
    if entries.next().is_some() {
        return refuse("is not empty (mounting there would hide its files)", false);
    }
    if !created_by_apifence(dir) {
        return refuse("was not created by apifence", true);
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
    check_mount_target(dir)?;
    if !dir.exists() {
        create(dir)?;
        mark_created(dir);
    }
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

/// An exclusive lock (`File::try_lock`, an `flock`) on the bpffs directory: one writer at a time. Released on drop.
#[derive(Debug)]
pub struct DirLock {
    _dir: File,
}

impl DirLock {
    /// The exclusive lock on `dir` if it is free now; `None` when another writer holds it.
    pub fn try_acquire(dir: &Path) -> Result<Option<Self>, BpffsError> {
        let file = File::open(dir).map_err(|source| BpffsError::Io {
            action: "opening",
            path: dir.to_path_buf(),
            source,
        })?;
        match file.try_lock() {
            Ok(()) => Ok(Some(Self { _dir: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(source)) => Err(BpffsError::Io {
                action: "locking",
                path: dir.to_path_buf(),
                source,
            }),
        }
    }

    /// Waits (bounded) for the exclusive lock on `dir`.
    pub fn acquire(dir: &Path) -> Result<Self, BpffsError> {
        let started = Instant::now();
        loop {
            if let Some(lock) = Self::try_acquire(dir)? {
                return Ok(lock);
            }
            if started.elapsed() > LOCK_WAIT {
                return Err(BpffsError::Busy(dir.to_path_buf(), LOCK_WAIT));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_missing_or_apifence_made_empty_directories_are_mount_targets() {
        let base = std::env::temp_dir().join(format!("apifence-bpffs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base).unwrap();
        let missing = base.join("missing");
        assert!(check_mount_target(&missing).is_ok());

        let full = base.join("full");
        std::fs::create_dir(&full).unwrap();
        std::fs::write(full.join("keep"), "x").unwrap();
        let error = check_mount_target(&full).unwrap_err().to_string();
        assert!(error.contains("is not empty"), "{error}");

        let foreign = base.join("foreign");
        std::fs::create_dir(&foreign).unwrap();
        let error = check_mount_target(&foreign).unwrap_err().to_string();
        assert!(error.contains("was not created by apifence"), "{error}");
        assert!(
            error.contains(&format!("mount -t bpf bpf {}", foreign.display())),
            "{error}"
        );

        let file = base.join("file");
        std::fs::write(&file, "x").unwrap();
        let error = check_mount_target(&file).unwrap_err().to_string();
        assert!(error.contains("is not a directory"), "{error}");

        let error = check_mount_target(Path::new("/etc"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("/etc") && error.contains("not empty"),
            "{error}"
        );
        assert!(
            !error.contains("mount -t bpf"),
            "never advise mounting over files: {error}"
        );
        std::fs::remove_dir_all(&base).unwrap();
    }
}
