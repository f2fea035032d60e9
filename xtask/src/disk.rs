//! Free disk space before a long run: `cargo xtask test` from a clean clone builds the
//! workspace in debug and release, the fuzz targets with sanitizers and caches kernel images;
//! running out of space half-way fails late with a compiler I/O error, so it is checked first.

use std::{ffi::CString, io, os::unix::ffi::OsStrExt, path::Path};

use anyhow::{Context as _, Result, bail};

/// Space a run from a clean clone needs: its build directories reached about 12 GiB here, with
/// room to spare.
pub const TEST_RUN_BYTES: u64 = 16 << 30;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes free for an unprivileged writer on the file system holding `dir`.
fn free_bytes(dir: &Path) -> Result<u64> {
    let path = CString::new(dir.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", dir.display()))?;
    // SAFETY: an all-zero statvfs is a valid value of the plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `stat` is a valid, writable statvfs.
    if unsafe { libc::statvfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error())
            .with_context(|| format!("reading the free space of {}", dir.display()));
    }
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// Bytes of the files under `dir` (0 when it doesn't exist); symbolic links are not followed.
fn size_of_tree(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => size_of_tree(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Fails, naming the figures and what to do, when the file system of `root` has less room
/// than `needed` bytes minus what its build directories (`build_dirs`, relative to `root`)
/// already hold.
pub fn ensure_room(root: &Path, build_dirs: &[&str], needed: u64) -> Result<()> {
    let built: u64 = build_dirs.iter().map(|d| size_of_tree(&root.join(d))).sum();
    let missing = needed.saturating_sub(built);
    let free = free_bytes(root)?;
    if free < missing {
        bail!(
            "only {:.1} GiB free on the file system of {}; this run needs about {:.1} GiB more \
             (builds, fuzz targets, kernel images). Free some space (for example `cargo clean` \
             in other checkouts) and run it again",
            free as f64 / GIB,
            root.display(),
            missing as f64 / GIB,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_space_is_read_and_an_impossible_need_is_refused_with_the_figures() {
        let root = std::env::temp_dir();
        assert!(free_bytes(&root).unwrap() > 0);
        ensure_room(&root, &[], 1).unwrap();
        let error = ensure_room(&root, &[], u64::MAX).unwrap_err().to_string();
        assert!(error.contains("GiB free on the file system of"), "{error}");
        assert!(error.contains("cargo clean"), "{error}");
    }

    #[test]
    fn what_the_build_directories_hold_counts_towards_the_need() {
        let dir = std::env::temp_dir().join(format!("xtask-disk-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("target/deep")).unwrap();
        std::fs::write(dir.join("target/deep/file"), vec![0u8; 4096]).unwrap();
        assert_eq!(size_of_tree(&dir.join("target")), 4096);
        // Needing exactly what is already built leaves nothing to find.
        let result = ensure_room(&dir, &["target"], 4096);
        std::fs::remove_dir_all(&dir).unwrap();
        result.unwrap();
    }
}
