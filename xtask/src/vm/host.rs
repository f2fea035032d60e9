//! The host tools the matrix needs: qemu and a static busybox installed through setup's apt
//! helper, the rest (iproute2, bpftool) from setup's table, and the base tools it only checks.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

use crate::process::which;
use crate::setup;

/// Packages installed for the matrix (from the host release's backports, see [`install`]).
pub const PACKAGES: [setup::AptPackage; 2] = [
    setup::AptPackage {
        package: "qemu-system-x86",
        command: "qemu-system-x86_64",
        why: "boots the kernels of the kernel matrix",
        tasks: &[setup::Task::Test],
    },
    setup::AptPackage {
        package: "busybox-static",
        command: "busybox",
        why: "the shell and tools of the kernel matrix's guests",
        tasks: &[setup::Task::Test],
    },
];

/// Tools every Debian host with a Rust toolchain has (dpkg, binutils, xz-utils, libc-bin).
const BASE_TOOLS: [&str; 4] = ["dpkg", "strip", "xz", "ldd"];

/// Paths of the host programs that go into the guest or drive it.
#[derive(Debug, Clone)]
pub struct Tools {
    /// `qemu-system-x86_64`.
    pub qemu: PathBuf,
    /// A busybox (static or not: its libraries are copied too).
    pub busybox: PathBuf,
    /// iproute2's `ip` (busybox `ip` has no `netns`).
    pub ip: PathBuf,
    /// `bpftool`, to see that no XDP program is left loaded after detach.
    pub bpftool: PathBuf,
}

/// Installs what is missing and returns the tools.
///
/// qemu comes from the host release's backports: this machine class ships `qemu-utils` from
/// backports, which breaks the release's own `qemu-system-common`, and `--no-remove` rightly
/// refuses to replace it. The extra suite is named through a private source list and private
/// package lists under `~/.cache/apifence/apt-host`; the host's apt sources are left alone.
pub fn install() -> Result<Tools> {
    setup::run(&[setup::Task::Test])?;
    for tool in BASE_TOOLS {
        if which(tool).is_none() {
            bail!(
                "`{tool}` is not installed (the matrix needs dpkg, binutils, xz-utils, libc-bin)"
            );
        }
    }
    let missing: Vec<&setup::AptPackage> = PACKAGES
        .iter()
        .filter(|p| which(p.command).is_none())
        .collect();
    if !missing.is_empty() {
        setup::apt_install(&missing, &backports_apt_args()?)?;
    }
    let find = |command: &str| {
        which(command).with_context(|| format!("`{command}` not found after setup"))
    };
    Ok(Tools {
        qemu: find("qemu-system-x86_64")?,
        busybox: find("busybox")?,
        ip: find("ip")?,
        bpftool: find("bpftool")?,
    })
}

/// apt options adding the host release's backports (plus the release itself and its security
/// updates, so dependencies resolve) from a private source list, preferring backports.
fn backports_apt_args() -> Result<Vec<String>> {
    let os_release =
        std::fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let codename = codename(&os_release)
        .context("no VERSION_CODENAME in /etc/os-release (the matrix needs Debian)")?;
    let home = std::env::var_os("HOME").context("HOME is not set")?;
    let dir = PathBuf::from(home).join(".cache/apifence/apt-host");
    for sub in ["lists/partial", "archives/partial", "sources.list.d"] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    let sources = dir.join("sources.list");
    let keyring = "[signed-by=/usr/share/keyrings/debian-archive-keyring.gpg]";
    std::fs::write(
        &sources,
        format!(
            "deb {keyring} http://deb.debian.org/debian {codename} main\n\
             deb {keyring} http://deb.debian.org/debian-security {codename}-security main\n\
             deb {keyring} http://deb.debian.org/debian {codename}-backports main\n"
        ),
    )?;
    let opt = |key: &str, value: &Path| format!("-o{key}={}", value.display());
    Ok(vec![
        opt("Dir::Etc::SourceList", &sources),
        opt("Dir::Etc::SourceParts", &dir.join("sources.list.d")),
        opt("Dir::State::Lists", &dir.join("lists")),
        opt("Dir::Cache::Archives", &dir.join("archives")),
        "-oAcquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".to_owned(),
        // Downloads land in a directory only root can write.
        "-oAPT::Sandbox::User=root".to_owned(),
        // Another engineer's apt may hold dpkg's lock for a while: wait for it, bounded.
        "-oDPkg::Lock::Timeout=300".to_owned(),
        "-t".to_owned(),
        format!("{codename}-backports"),
    ])
}

/// `VERSION_CODENAME` from `/etc/os-release`.
fn codename(os_release: &str) -> Option<&str> {
    os_release
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim().trim_matches('"'))
        .filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codename_from_os_release() {
        let text = "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nVERSION_CODENAME=bookworm\nID=debian\n";
        assert_eq!(codename(text), Some("bookworm"));
        assert_eq!(codename("VERSION_CODENAME=\"trixie\"\n"), Some("trixie"));
        assert_eq!(codename("VERSION_CODENAME=\n"), None);
        assert_eq!(codename("ID=debian\n"), None);
    }
}
