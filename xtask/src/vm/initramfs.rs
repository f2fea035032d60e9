//! The guest's initramfs: files gathered from the host (binaries with the shared libraries `ldd`
//! names, kernel modules, the init script) and written as an uncompressed `newc` cpio archive,
//! which every kernel unpacks without help.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, output_with_timeout};

/// What one archive path holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Entry {
    Dir,
    /// File content from the host (symlinks followed) and its mode bits.
    File {
        source: PathBuf,
        mode: u32,
    },
    /// File content given inline.
    Bytes {
        data: Vec<u8>,
        mode: u32,
    },
    /// A character device node (`/dev/console`, which the kernel opens for init before any
    /// filesystem is mounted).
    CharDev {
        major: u32,
        minor: u32,
    },
}

/// The archive being assembled, by path inside the guest (no leading `/`).
#[derive(Debug, Default, Clone)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// An empty archive.
    pub fn new() -> Initramfs {
        Initramfs::default()
    }

    /// Adds a directory (and its parents).
    pub fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        let mut at = String::new();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            if !at.is_empty() {
                at.push('/');
            }
            at.push_str(part);
            self.entries.insert(at.clone(), Entry::Dir);
        }
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/').to_owned();
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.entries.insert(path, entry);
    }

    /// Adds the host file `source` (its content, symlinks followed) at `path`.
    pub fn file(&mut self, path: &str, source: &Path, mode: u32) {
        self.insert(
            path,
            Entry::File {
                source: source.to_path_buf(),
                mode,
            },
        );
    }

    /// Adds `data` at `path`.
    pub fn bytes(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) {
        self.insert(
            path,
            Entry::Bytes {
                data: data.into(),
                mode,
            },
        );
    }

    /// Adds a character device node at `path`.
    pub fn char_device(&mut self, path: &str, major: u32, minor: u32) {
        self.insert(path, Entry::CharDev { major, minor });
    }

    /// Adds the executable `source` at `path` and the shared libraries it loads, each at the path
    /// `ldd` resolves it to on the host (the guest's loader searches the same directories).
    pub fn binary(&mut self, path: &str, source: &Path) -> Result<()> {
        self.file(path, source, 0o755);
        for lib in shared_libraries(source)? {
            let at = lib.to_string_lossy().into_owned();
            self.file(&at, &lib, 0o755);
        }
        Ok(())
    }

    /// Writes the archive to `out`.
    pub fn write(&self, out: &Path) -> Result<()> {
        let file =
            std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::new(file);
        for (ino, (path, entry)) in (1u32..).zip(&self.entries) {
            let mut rdev = (0, 0);
            let (mode, data) = match entry {
                Entry::Dir => (0o040_755, Vec::new()),
                Entry::CharDev { major, minor } => {
                    rdev = (*major, *minor);
                    (0o020_600, Vec::new())
                }
                Entry::File { source, mode } => (
                    0o100_000 | mode,
                    std::fs::read(source)
                        .with_context(|| format!("reading {}", source.display()))?,
                ),
                Entry::Bytes { data, mode } => (0o100_000 | mode, data.clone()),
            };
            let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
            write_entry(&mut w, ino, mode, nlink, rdev, path, &data)?;
        }
        write_entry(&mut w, 0, 0, 1, (0, 0), "TRAILER!!!", &[])?;
        w.flush()?;
        Ok(())
    }
}

/// One `newc` record: the 110-byte ASCII header, the NUL-terminated name and the data, each
/// padded to a multiple of four bytes.
fn write_entry(
    w: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    (rdev_major, rdev_minor): (u32, u32),
    name: &str,
    data: &[u8],
) -> Result<()> {
    let size = u32::try_from(data.len()).context("file larger than 4 GiB in the initramfs")?;
    let name_size = u32::try_from(name.len() + 1).context("name too long")?;
    // ino, mode, uid, gid, nlink, mtime, filesize, devmajor, devminor, rdevmajor, rdevminor,
    // namesize, check
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev_major, rdev_minor, name_size, 0,
    ];
    let mut header = String::from("070701");
    for f in fields {
        header.push_str(&format!("{f:08x}"));
    }
    w.write_all(header.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    w.write_all(&[0; 3][..padding(header.len() + name.len() + 1)])?;
    w.write_all(data)?;
    w.write_all(&[0; 3][..padding(data.len())])?;
    Ok(())
}

/// Bytes to add after `len` bytes to reach a multiple of four.
fn padding(len: usize) -> usize {
    (4 - len % 4) % 4
}

/// The shared libraries (and the loader) `ldd` lists for `binary`; none for a static one.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let out = output_with_timeout(Command::new("ldd").arg(binary), DEFAULT_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // A static executable: `ldd` says so and exits 1.
        if stderr.contains("not a dynamic executable") || text.contains("not a dynamic") {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", binary.display(), stderr.trim());
    }
    let libs = parse_ldd(&text);
    for lib in &libs {
        if !lib.is_file() {
            bail!(
                "ldd {} names {} which is not a file",
                binary.display(),
                lib.display()
            );
        }
    }
    Ok(libs)
}

/// The absolute paths in `ldd` output (`libc.so.6 => /lib/.../libc.so.6 (0x...)`,
/// `/lib64/ld-linux-x86-64.so.2 (0x...)`); the vDSO has none.
fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.trim(),
                None => line,
            };
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tstatically linked\n").is_empty());
    }

    #[test]
    fn newc_records_are_padded() {
        let mut out = Vec::new();
        write_entry(&mut out, 1, 0o100_644, 1, (0, 0), "init", b"hello").unwrap();
        // 110-byte header + "init\0" = 115, padded to 116; 5 data bytes padded to 8.
        assert_eq!(out.len(), 116 + 8);
        assert!(out.starts_with(b"070701"));
        let header = std::str::from_utf8(&out[..110]).unwrap();
        // filesize (7th field) and namesize (12th field)
        assert_eq!(&header[6 + 6 * 8..6 + 7 * 8], "00000005");
        assert_eq!(&header[6 + 11 * 8..6 + 12 * 8], "00000005");
        assert_eq!(&out[110..116], b"init\0\0");
        assert_eq!(&out[116..], b"hello\0\0\0");
    }

    #[test]
    fn parents_come_first() {
        let mut fs = Initramfs::new();
        fs.bytes("usr/sbin/ip", b"x".to_vec(), 0o755);
        fs.bytes("bin/sh", b"y".to_vec(), 0o755);
        let paths: Vec<&str> = fs.entries.keys().map(String::as_str).collect();
        assert_eq!(paths, ["bin", "bin/sh", "usr", "usr/sbin", "usr/sbin/ip"]);
    }
}
