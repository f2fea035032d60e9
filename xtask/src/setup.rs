//! `cargo xtask setup`: installs what building and testing need, each step a fast no-op when its
//! tool is already there. Never installs a toolchain (only a component of the existing nightly).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, output_with_timeout, run_ok};

use crate::process::{is_root, run_live, which};

/// bpf-linker version the eBPF build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// Debian packages the tests, demo and benchmarks use, each with a command it provides.
pub const APT_PACKAGES: [(&str, &str); 8] = [
    ("iproute2", "ip"),
    ("nftables", "nft"),
    ("ipset", "ipset"),
    ("iptables", "iptables"),
    ("bpftool", "bpftool"),
    ("xdp-tools", "xdp-loader"),
    ("netsniff-ng", "trafgen"),
    ("iperf3", "iperf3"),
];

/// Bound on `cargo install bpf-linker` (about 45 s on two cores).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Bound on one apt-get call.
const APT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Runs every step, printing one line each.
pub fn run() -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_packages()
}

/// Adds `rust-src` to the nightly toolchain if it is missing.
fn rust_src() -> Result<()> {
    let installed = run_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .context("listing nightly components (is the nightly toolchain installed?)")?;
    if installed.lines().any(|l| l.trim().starts_with("rust-src")) {
        println!("setup: rust-src (nightly) present");
        return Ok(());
    }
    run_live(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        INSTALL_TIMEOUT,
    )?;
    println!("setup: rust-src (nightly) installed");
    Ok(())
}

/// Installs bpf-linker built against the nightly's own libLLVM, unless the right version runs.
fn bpf_linker() -> Result<()> {
    if let Some(v) = bpf_linker_version()
        && v.contains(BPF_LINKER_VERSION)
    {
        println!("setup: bpf-linker {BPF_LINKER_VERSION} present");
        return Ok(());
    }
    let lib = nightly_libllvm()?;
    let file = lib.file_name().unwrap_or_default().to_string_lossy();
    let major =
        llvm_major(&file).with_context(|| format!("no LLVM major version in file name {file}"))?;
    let prefix = llvm_prefix()?;
    let link = prefix.join("lib/libLLVM.so");
    std::fs::create_dir_all(prefix.join("lib"))?;
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), lib.display()))?;
    println!("setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} ({file})");
    run_live(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
        INSTALL_TIMEOUT,
    )?;
    match bpf_linker_version() {
        Some(v) if v.contains(BPF_LINKER_VERSION) => {
            println!("setup: bpf-linker {BPF_LINKER_VERSION} installed");
            Ok(())
        }
        other => bail!("bpf-linker still not runnable under nightly after install: {other:?}"),
    }
}

/// What `rustup run nightly bpf-linker --version` prints, if it runs.
fn bpf_linker_version() -> Option<String> {
    let out = output_with_timeout(
        Command::new("rustup").args(["run", "nightly", "bpf-linker", "--version"]),
        DEFAULT_TIMEOUT,
    )
    .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The nightly sysroot's `lib/libLLVM.so.*`.
fn nightly_libllvm() -> Result<PathBuf> {
    let sysroot = run_ok(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?;
    let dir = Path::new(sysroot.trim()).join("lib");
    std::fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", dir.display()))
}

/// The LLVM major version in a file name like `libLLVM.so.22.1-rust-1.97.0-nightly`.
pub fn llvm_major(file_name: &str) -> Option<u32> {
    let rest = file_name.strip_prefix("libLLVM.so.")?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// `~/.cache/apifence/llvm`: where the libLLVM symlink lives for bpf-linker's build.
fn llvm_prefix() -> Result<PathBuf> {
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    Ok(PathBuf::from(home).join(".cache/apifence/llvm"))
}

/// Installs the Debian packages whose commands are missing (one `apt-get update` first).
fn apt_packages() -> Result<()> {
    apt_install(&APT_PACKAGES)
}

/// Debian packages `cargo xtask package` needs on top of [`APT_PACKAGES`], each with a command
/// it provides: lintian checks the package; dpkg-dev's dpkg-shlibdeps gives cargo-deb the
/// binary's library dependencies.
pub const PACKAGE_APT_PACKAGES: [(&str, &str); 2] =
    [("lintian", "lintian"), ("dpkg-dev", "dpkg-shlibdeps")];

/// Installs those of `packages` (package, a command it provides) whose command is missing,
/// with `--no-install-recommends --no-remove` (one `apt-get update` first).
pub fn apt_install(packages: &[(&str, &str)]) -> Result<()> {
    let missing: Vec<&str> = packages
        .iter()
        .filter_map(|&(package, command)| match which(command) {
            Some(_) => {
                println!("setup: {package} ({command}) present");
                None
            }
            None => Some(package),
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!("missing packages {missing:?}: run `cargo xtask setup` as root to install them");
    }
    run_live(Command::new("apt-get").arg("update"), APT_TIMEOUT)?;
    run_live(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "--no-install-recommends", "--no-remove"])
            .args(&missing),
        APT_TIMEOUT,
    )?;
    for &(package, command) in packages.iter().filter(|(p, _)| missing.contains(p)) {
        if which(command).is_none() {
            bail!("{package} installed but `{command}` is still not found");
        }
        println!("setup: {package} ({command}) installed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.21.1-rust-1.92.0-nightly"), Some(21));
        assert_eq!(llvm_major("libLLVM.so.23"), Some(23));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), None);
        assert_eq!(llvm_major("libLLVM.so."), None);
    }
}
