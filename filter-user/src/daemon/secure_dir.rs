//! The directories and files the daemon trusts: `state_dir` and the socket's directory must be
//! owned by root (or the daemon's own user) and writable by nobody else, or anyone who can
//! write there could swap the state file, the lock or the socket. Missing directories are
//! created with mode 0700. Files the daemon creates in them are opened without following
//! symlinks ([`open_new`], [`open_lock`]).

use std::{
    fs::{File, OpenOptions},
    io,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
};

/// A directory or file the daemon won't trust.
#[derive(Debug, thiserror::Error)]
pub enum SecureDirError {
    /// Owned by someone other than root or the daemon's user.
    #[error(
        "{key} {path} is owned by uid {owner}, not root, so that user could replace the \
         daemon's files there; fix: chown root:root {path} (or set {key} to a directory root owns)"
    )]
    NotOwned {
        /// The config key (`state_dir` or `socket directory`).
        key: &'static str,
        /// The directory.
        path: PathBuf,
        /// Its owner.
        owner: u32,
    },
    /// Writable by group or others.
    #[error(
        "{key} {path} is writable by {who} (mode {mode:04o}), who could replace the daemon's \
         files there; fix: {fix}"
    )]
    Writable {
        /// The config key.
        key: &'static str,
        /// The directory.
        path: PathBuf,
        /// `group`, `others` or `group and others`.
        who: &'static str,
        /// Its permission bits.
        mode: u32,
        /// What to do about it.
        fix: String,
    },
    /// Not a directory (or a symlink).
    #[error(
        "{key} {path} is not a directory (a symlink or a file is not followed); set {key} to a \
         directory"
    )]
    NotADirectory {
        /// The config key.
        key: &'static str,
        /// The path.
        path: PathBuf,
    },
    /// An I/O step failed.
    #[error("{action} {key} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The config key.
        key: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// Checks `dir` (the value of config key `key`) without changing anything: fine when it is
/// missing, or a directory (not a symlink) owned by root or this user and writable by neither
/// group nor others.
pub fn check(key: &'static str, dir: &Path) -> Result<(), SecureDirError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(SecureDirError::Io {
                action: "inspecting",
                key,
                path: dir.to_path_buf(),
                source,
            });
        }
        Ok(meta) => meta,
    };
    if !meta.is_dir() {
        return Err(SecureDirError::NotADirectory {
            key,
            path: dir.to_path_buf(),
        });
    }
    if meta.uid() != 0 && meta.uid() != euid() {
        return Err(SecureDirError::NotOwned {
            key,
            path: dir.to_path_buf(),
            owner: meta.uid(),
        });
    }
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (true, true) => Some("group and others"),
        (true, false) => Some("group"),
        (false, true) => Some("others"),
        (false, false) => None,
    };
    let Some(who) = who else {
        return Ok(());
    };
    // A shared directory such as /tmp (sticky bit) is meant to stay writable: move away from it.
    let fix = if mode & 0o1000 != 0 {
        format!(
            "set {key} to a directory of its own that only root can write (such as \
             /run/apifence for the socket, /var/lib/apifence for state_dir)"
        )
    } else {
        format!(
            "chmod go-w {} (or set {key} to a directory only root can write)",
            dir.display()
        )
    };
    Err(SecureDirError::Writable {
        key,
        path: dir.to_path_buf(),
        who,
        mode,
        fix,
    })
}

/// Makes sure `dir` exists (created with mode 0700 when missing) and passes [`check`].
pub fn ensure(key: &'static str, dir: &Path) -> Result<(), SecureDirError> {
    check(key, dir)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| SecureDirError::Io {
            action: "creating",
            key,
            path: dir.to_path_buf(),
            source,
        })?;
    check(key, dir)
}

/// Creates `path` for writing (mode 0600) with `O_EXCL | O_NOFOLLOW`: never an existing file,
/// never through a symlink. A leftover of an interrupted write is removed first (unlinking
/// removes a symlink itself, not its target).
pub fn open_new(path: &Path) -> io::Result<File> {
    let open = || {
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(path)
    };
    match open() {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            std::fs::remove_file(path)?;
            open()
        }
        other => other,
    }
}

/// Opens the lock file `path` for reading and writing without following a symlink: created
/// exclusively (mode 0600) when missing, otherwise it must be a regular file.
pub fn open_lock(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options
        .read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC);
    let file = match options.clone().create_new(true).open(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => options.open(path)?,
        other => other?,
    };
    if !file.metadata()?.is_file() {
        return Err(io::Error::other(format!(
            "{} is not a regular file; move it away",
            path.display()
        )));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("apifence-secure-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn writable_directories_are_refused_with_the_fix() {
        let dir = temp("writable");
        ensure("state_dir", &dir).expect("created");
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777)).unwrap();
        let error = ensure("state_dir", &dir).unwrap_err().to_string();
        assert!(error.contains("writable by group and others"), "{error}");
        assert!(
            error.contains(&format!("chmod go-w {}", dir.display())),
            "{error}"
        );
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o720)).unwrap();
        let error = check("state_dir", &dir).unwrap_err().to_string();
        assert!(error.contains("writable by group (mode 0720)"), "{error}");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        check("state_dir", &dir).expect("0755 is fine");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let error = check("socket directory", &dir).unwrap_err().to_string();
        assert!(
            error.contains("set socket directory to a directory of its own"),
            "{error}"
        );
        assert!(
            !error.contains("chmod"),
            "no chmod advice for a shared directory: {error}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn symlinks_are_not_followed() {
        let dir = temp("links");
        ensure("state_dir", &dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "precious").unwrap();
        let link = dir.join("state.json.tmp");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        // The leftover symlink is removed, not written through.
        drop(open_new(&link).expect("created afresh"));
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");
        assert!(std::fs::symlink_metadata(&link).unwrap().is_file());

        let lock = dir.join("daemon.lock");
        std::os::unix::fs::symlink(&target, &lock).unwrap();
        let error = open_lock(&lock).unwrap_err();
        assert_eq!(error.raw_os_error(), Some(libc::ELOOP), "{error}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious");

        let linked_dir = dir.join("linked");
        std::os::unix::fs::symlink(&dir, &linked_dir).unwrap();
        let error = check("state_dir", &linked_dir).unwrap_err().to_string();
        assert!(error.contains("not a directory"), "{error}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
