//! The kernels of the matrix: Debian kernel packages fetched by name with `apt-get download`
//! through a private apt configuration per suite (the host's sources and package state are never
//! touched, nothing is installed), unpacked with `dpkg -x`, and cached with the modules the guest
//! needs under `~/.cache/apifence/kernels/<label>/`.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{check, output_with_timeout};

use super::bzimage;
use crate::process::run_live;

/// A Debian suite, with the archive lines of its private apt configuration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian 12.
    Bookworm,
    /// Debian 11.
    Bullseye,
}

impl Suite {
    /// The suite's codename.
    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Bullseye => "bullseye",
        }
    }

    /// `sources.list` of the suite: main and security updates (kernels get their point
    /// releases there first).
    fn sources_list(self) -> String {
        let keyring = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
        let name = self.name();
        format!(
            "deb {keyring} http://deb.debian.org/debian {name} main\n\
             deb {keyring} http://deb.debian.org/debian-security {name}-security main\n"
        )
    }
}

/// One kernel of the matrix.
#[derive(Clone, Copy, Debug)]
pub struct Kernel {
    /// Short name used on the command line, in the cache and in the report (`6.1`).
    pub label: &'static str,
    /// The suite its package comes from.
    pub suite: Suite,
    /// The package named (a metapackage that depends on the current image).
    pub package: &'static str,
}

/// The matrix, oldest first.
pub const KERNELS: [Kernel; 3] = [
    Kernel {
        label: "5.10",
        suite: Suite::Bullseye,
        package: "linux-image-amd64",
    },
    Kernel {
        label: "6.1",
        suite: Suite::Bookworm,
        package: "linux-image-amd64",
    },
    Kernel {
        label: "6.12",
        suite: Suite::Bookworm,
        package: "linux-image-6.12-amd64",
    },
];

/// Modules the guest loads (with their dependencies): the lab's veth pairs, and the IPIP
/// tunnel of the L3-device check.
pub const GUEST_MODULES: [&str; 2] = ["veth", "ipip"];

/// Bound on one apt-get call (a kernel package is 60-110 MB).
const APT_TIMEOUT: Duration = Duration::from_secs(10 * 60);
/// Bound on `dpkg -x` and on decompressing one module.
const UNPACK_TIMEOUT: Duration = Duration::from_secs(5 * 60);
/// Deepest module dependency chain followed (a cycle or a broken tree fails instead).
const MAX_MODULE_DEPTH: usize = 8;
/// Bound on waiting for another run's fetch (three downloads at most).
const LOCK_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// A kernel ready to boot, from the cache.
#[derive(Clone, Debug)]
pub struct CachedKernel {
    /// The kernel ELF (`vmlinux`, out of the package's `vmlinuz`), which qemu boots directly.
    pub vmlinux: PathBuf,
    /// Modules to load, in order (dependencies first), decompressed.
    pub modules: Vec<PathBuf>,
    /// `uname -r` of the kernel (`6.1.0-57-amd64`).
    pub release: String,
    /// The image package and its version (`linux-image-6.1.0-57-amd64 6.1.192-3`).
    pub package: String,
}

/// `~/.cache/apifence/kernels`.
pub fn cache_root() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/apifence/kernels"))
}

/// The kernels from the cache, each downloaded and unpacked first when it isn't there or when
/// `refresh` asks for the suite's newest package. Holds the cache's lock meanwhile.
pub fn fetch_all(kernels: &[Kernel], refresh: bool) -> Result<Vec<CachedKernel>> {
    let root = cache_root()?;
    let _lock = CacheLock::acquire(&root)?;
    kernels
        .iter()
        .map(|kernel| {
            let started = Instant::now();
            let cached = fetch(&root, kernel, refresh)?;
            println!(
                "vm: kernel {} ready in {:.1} s",
                kernel.label,
                started.elapsed().as_secs_f64()
            );
            Ok(cached)
        })
        .collect()
}

/// An exclusive `flock` on `<cache>/.lock`: runs from several worktrees share the cache and its
/// apt state, so one fetches at a time. Released when dropped (the file closes).
struct CacheLock {
    _file: File,
}

impl CacheLock {
    /// Takes the lock, waiting at most [`LOCK_TIMEOUT`] for another run to release it.
    fn acquire(root: &Path) -> Result<CacheLock> {
        std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
        let path = root.join(".lock");
        let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        let deadline = Instant::now() + LOCK_TIMEOUT;
        let mut said = false;
        loop {
            // SAFETY: flock on a file descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(CacheLock { _file: file });
            }
            let error = std::io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} is still locked by another run after {LOCK_TIMEOUT:?}",
                    path.display()
                );
            }
            if !said {
                println!("vm: waiting for another run to release {}", path.display());
                said = true;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `kernel` from the cache under `root`, fetched first when needed.
fn fetch(root: &Path, kernel: &Kernel, refresh: bool) -> Result<CachedKernel> {
    let dir = root.join(kernel.label);
    if !refresh && let Some(cached) = read_cache(&dir)? {
        println!(
            "vm: kernel {} cached ({}, {})",
            kernel.label,
            cached.package,
            dir.display()
        );
        return Ok(cached);
    }
    let apt = PrivateApt::new(&root.join("apt").join(kernel.suite.name()), kernel.suite)?;
    apt.update()?;
    let (image, version) = apt.image_of(kernel.package)?;
    let package = format!("{image} {version}");
    if let Some(cached) = read_cache(&dir)?
        && cached.package == package
    {
        println!("vm: kernel {} up to date ({package})", kernel.label);
        return Ok(cached);
    }
    println!("vm: kernel {}: downloading {package}", kernel.label);
    let work = root.join(format!("{}.download", kernel.label));
    remove_dir_if_exists(&work)?;
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let deb = apt.download(&image, &work)?;
    let unpacked = work.join("unpacked");
    let out = output_with_timeout(
        Command::new("dpkg").arg("-x").arg(&deb).arg(&unpacked),
        UNPACK_TIMEOUT,
    )?;
    check(&format!("dpkg -x {}", deb.display()), &out)?;
    let staged = root.join(format!("{}.new", kernel.label));
    remove_dir_if_exists(&staged)?;
    stage(&unpacked, &staged, &package)?;
    remove_dir_if_exists(&dir)?;
    std::fs::rename(&staged, &dir)
        .with_context(|| format!("renaming {} to {}", staged.display(), dir.display()))?;
    remove_dir_if_exists(&work)?;
    read_cache(&dir)?.with_context(|| format!("{} incomplete after unpacking", dir.display()))
}

/// Copies what the guest needs out of an unpacked image package into `staged`: `vmlinuz` and
/// the `vmlinux` inside it, `release`, the modules (decompressed, named `NN-name.ko` in load
/// order) and, last, the `package` stamp that marks the directory complete.
fn stage(unpacked: &Path, staged: &Path, package: &str) -> Result<()> {
    let boot = unpacked.join("boot");
    let vmlinuz = std::fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))?;
    let release = vmlinuz
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("vmlinuz file name")?
        .to_owned();
    let modules_dir = ["lib/modules", "usr/lib/modules"]
        .iter()
        .map(|d| unpacked.join(d).join(&release))
        .find(|d| d.is_dir())
        .with_context(|| format!("no lib/modules/{release} in {}", unpacked.display()))?;
    let index = ModuleIndex::scan(&modules_dir.join("kernel"))?;
    let order = index.load_order(&GUEST_MODULES)?;
    let modules = staged.join("modules");
    std::fs::create_dir_all(&modules)?;
    for (n, name) in order.iter().enumerate() {
        let bytes = index.read(name)?;
        std::fs::write(modules.join(format!("{n:02}-{name}.ko")), bytes)?;
    }
    std::fs::copy(&vmlinuz, staged.join("vmlinuz"))
        .with_context(|| format!("copying {}", vmlinuz.display()))?;
    bzimage::extract_vmlinux(&vmlinuz, &staged.join("vmlinux"))?;
    std::fs::write(staged.join("release"), &release)?;
    std::fs::write(staged.join("package"), package)?;
    Ok(())
}

/// The cached kernel in `dir`, or `None` when it isn't complete (or was made before the cache
/// held `vmlinux`).
fn read_cache(dir: &Path) -> Result<Option<CachedKernel>> {
    let Ok(package) = std::fs::read_to_string(dir.join("package")) else {
        return Ok(None);
    };
    let vmlinux = dir.join("vmlinux");
    if !vmlinux.is_file() {
        return Ok(None);
    }
    let release = std::fs::read_to_string(dir.join("release"))
        .with_context(|| format!("{} has a package stamp but no release", dir.display()))?;
    let mut modules: Vec<PathBuf> = std::fs::read_dir(dir.join("modules"))
        .with_context(|| format!("reading {}/modules", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .collect();
    modules.sort();
    // A cache staged when the guest needed fewer modules is fetched again.
    let staged: Vec<String> = modules
        .iter()
        .filter_map(|p| {
            p.file_name()?
                .to_str()?
                .split_once('-')
                .map(|(_, n)| n.to_owned())
        })
        .filter_map(|n| module_name(&n))
        .collect();
    if let Some(missing) = GUEST_MODULES
        .iter()
        .find(|m| !staged.contains(&normalize(m)))
    {
        println!(
            "vm: {} lacks the module {missing}; fetching the kernel again",
            dir.display()
        );
        return Ok(None);
    }
    Ok(Some(CachedKernel {
        vmlinux,
        modules,
        release: release.trim().to_owned(),
        package: package.trim().to_owned(),
    }))
}

fn remove_dir_if_exists(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// An apt configuration of its own (sources, lists, caches under one directory), for one suite.
/// The host's `/etc/apt/apt.conf.d` still applies (proxies, validity checks); its sources and
/// package state don't.
pub struct PrivateApt {
    options: Vec<String>,
}

impl PrivateApt {
    /// Lays out the configuration under `dir` (idempotent).
    pub fn new(dir: &Path, suite: Suite) -> Result<PrivateApt> {
        for sub in [
            "state/lists/partial",
            "cache/archives/partial",
            "sources.list.d",
        ] {
            std::fs::create_dir_all(dir.join(sub))
                .with_context(|| format!("creating {}", dir.join(sub).display()))?;
        }
        let sources = dir.join("sources.list");
        std::fs::write(&sources, suite.sources_list())?;
        let opt = |key: &str, value: &Path| format!("-o{key}={}", value.display());
        Ok(PrivateApt {
            options: vec![
                opt("Dir::State", &dir.join("state")),
                opt("Dir::State::status", Path::new("/dev/null")),
                opt("Dir::Cache", &dir.join("cache")),
                opt("Dir::Etc::SourceList", &sources),
                opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
                // Only the package lists are needed, not the host's AppStream metadata.
                "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
                // Downloads land in directories only root can write.
                "-oAPT::Sandbox::User=root".to_owned(),
            ],
        })
    }

    /// `apt-get update` of the private lists.
    pub fn update(&self) -> Result<()> {
        run_live(
            Command::new("apt-get").args(&self.options).arg("update"),
            APT_TIMEOUT,
        )
    }

    /// The image package a kernel metapackage depends on, and its version.
    pub fn image_of(&self, metapackage: &str) -> Result<(String, String)> {
        let out = output_with_timeout(
            Command::new("apt-cache").args(&self.options).args([
                "show",
                "--no-all-versions",
                metapackage,
            ]),
            APT_TIMEOUT,
        )?;
        check(&format!("apt-cache show {metapackage}"), &out)?;
        let text = String::from_utf8_lossy(&out.stdout);
        image_dependency(&text).with_context(|| {
            format!("{metapackage} depends on no linux-image-* package with a version:\n{text}")
        })
    }

    /// Downloads `package` into `dir`; returns the `.deb`.
    pub fn download(&self, package: &str, dir: &Path) -> Result<PathBuf> {
        run_live(
            Command::new("apt-get")
                .current_dir(dir)
                .args(&self.options)
                .args(["download", package]),
            APT_TIMEOUT,
        )?;
        std::fs::read_dir(dir)?
            .flatten()
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|e| e == "deb"))
            .with_context(|| {
                format!(
                    "apt-get download {package} left no .deb in {}",
                    dir.display()
                )
            })
    }
}

/// From `apt-cache show` output, the `linux-image-*` package in `Depends:` and its `(= version)`.
fn image_dependency(show: &str) -> Option<(String, String)> {
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))?
        .split(',');
    for dep in depends {
        let dep = dep.trim();
        if !dep.starts_with("linux-image-") {
            continue;
        }
        let (name, version) = dep.split_once(' ')?;
        let version = version.trim().strip_prefix("(=")?.strip_suffix(')')?.trim();
        return Some((name.to_owned(), version.to_owned()));
    }
    None
}

/// The `.ko` files of an unpacked module tree, by module name.
struct ModuleIndex {
    files: Vec<(String, PathBuf)>,
}

impl ModuleIndex {
    /// Walks `dir` (the tree's `kernel/` directory) for `*.ko`, `*.ko.xz`, `*.ko.zst`, `*.ko.gz`.
    fn scan(dir: &Path) -> Result<ModuleIndex> {
        let mut files = Vec::new();
        let mut pending = vec![dir.to_path_buf()];
        while let Some(d) = pending.pop() {
            for entry in
                std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))?
            {
                let path = entry?.path();
                if path.is_dir() {
                    pending.push(path);
                } else if let Some(name) = path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(module_name)
                {
                    files.push((name, path));
                }
            }
        }
        Ok(ModuleIndex { files })
    }

    fn path(&self, name: &str) -> Result<&Path> {
        let wanted = normalize(name);
        self.files
            .iter()
            .find(|(n, _)| *n == wanted)
            .map(|(_, p)| p.as_path())
            .with_context(|| format!("module {name} not in the kernel package"))
    }

    /// The module's ELF bytes, decompressed.
    fn read(&self, name: &str) -> Result<Vec<u8>> {
        let path = self.path(name)?;
        let file = path.to_string_lossy();
        let tool = if file.ends_with(".xz") {
            "xz"
        } else if file.ends_with(".zst") {
            "zstd"
        } else if file.ends_with(".gz") {
            "gzip"
        } else {
            return std::fs::read(path).with_context(|| format!("reading {file}"));
        };
        let out = output_with_timeout(Command::new(tool).arg("-dc").arg(path), UNPACK_TIMEOUT)?;
        check(&format!("{tool} -dc {file}"), &out)?;
        Ok(out.stdout)
    }

    /// `wanted` and everything they depend on, dependencies before their users, each once.
    fn load_order(&self, wanted: &[&str]) -> Result<Vec<String>> {
        let mut order = Vec::new();
        for name in wanted {
            self.visit(&normalize(name), 0, &mut order)?;
        }
        Ok(order)
    }

    fn visit(&self, name: &str, depth: usize, order: &mut Vec<String>) -> Result<()> {
        if order.iter().any(|n| n == name) {
            return Ok(());
        }
        if depth > MAX_MODULE_DEPTH {
            bail!("module dependencies deeper than {MAX_MODULE_DEPTH} at {name} (a cycle?)");
        }
        let bytes = self.read(name)?;
        for dep in modinfo_depends(&bytes) {
            self.visit(&dep, depth + 1, order)?;
        }
        order.push(name.to_owned());
        Ok(())
    }
}

/// `veth` for `veth.ko`, `veth.ko.xz`, ...; `None` for other files.
fn module_name(file: &str) -> Option<String> {
    let stem = [".ko", ".ko.xz", ".ko.zst", ".ko.gz"]
        .iter()
        .find_map(|ext| file.strip_suffix(ext))?;
    Some(normalize(stem))
}

/// Module names treat `-` and `_` alike; the kernel uses `_`.
fn normalize(name: &str) -> String {
    name.replace('-', "_")
}

/// The names in the `depends=` entry of a module's `.modinfo` section (NUL-separated strings).
fn modinfo_depends(elf: &[u8]) -> Vec<String> {
    elf.split(|&b| b == 0)
        .find_map(|s| s.strip_prefix(b"depends="))
        .map(|list| {
            String::from_utf8_lossy(list)
                .split(',')
                .filter(|s| !s.is_empty())
                .map(normalize)
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_dependency_from_apt_cache_show() {
        let show = "Package: linux-image-amd64\nVersion: 5.10.262-1\n\
                    Depends: linux-image-5.10.0-46-amd64 (= 5.10.262-1)\nSection: kernel\n";
        assert_eq!(
            image_dependency(show),
            Some(("linux-image-5.10.0-46-amd64".into(), "5.10.262-1".into()))
        );
        let other =
            "Depends: initramfs-tools, linux-image-6.12.117+deb12-amd64 (= 6.12.117-1~deb12u1)\n";
        assert_eq!(
            image_dependency(other),
            Some((
                "linux-image-6.12.117+deb12-amd64".into(),
                "6.12.117-1~deb12u1".into()
            ))
        );
        assert_eq!(image_dependency("Depends: linux-image-foo\n"), None);
        assert_eq!(image_dependency("Package: x\n"), None);
    }

    #[test]
    fn module_names() {
        assert_eq!(module_name("veth.ko").as_deref(), Some("veth"));
        assert_eq!(
            module_name("nf-conntrack.ko.xz").as_deref(),
            Some("nf_conntrack")
        );
        assert_eq!(module_name("x.ko.zst").as_deref(), Some("x"));
        assert_eq!(module_name("modules.dep"), None);
        assert_eq!(module_name("veth.kox"), None);
    }

    #[test]
    fn depends_from_modinfo() {
        let elf = b"\x7fELF...\0license=GPL\0depends=udp_tunnel,ip6-udp-tunnel\0vermagic=6.1\0";
        assert_eq!(modinfo_depends(elf), vec!["udp_tunnel", "ip6_udp_tunnel"]);
        assert!(modinfo_depends(b"\0depends=\0vermagic=6.1\0").is_empty());
        assert!(modinfo_depends(b"\0license=GPL\0").is_empty());
    }

    #[test]
    fn suites_name_their_security_archive() {
        let list = Suite::Bullseye.sources_list();
        assert!(list.contains("/debian bullseye main"));
        assert!(list.contains("/debian-security bullseye-security main"));
    }
}
