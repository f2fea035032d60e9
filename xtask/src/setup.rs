//! `cargo xtask setup`: installs what a task needs, and nothing else, each step a fast no-op when
//! its tool is already there. Never installs a toolchain (only a component of the existing
//! nightly), never replaces a user's own tools, and never lets apt remove anything.
//!
//! - Toolchain (every task builds): the nightly's `rust-src`, and bpf-linker built into the
//!   project-local prefix of [`tools_prefix`] (`filter-user/build.rs` puts its `bin/` first on
//!   `PATH`, so plain `cargo build` finds it there).
//! - Debian packages: [`APT_PACKAGES`] says which task needs which package and why. apt runs
//!   with `--no-install-recommends --no-remove`, after a simulation whose plan is printed (what
//!   will be installed, upgraded and why) and refused outright if it removes any package.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{DEFAULT_TIMEOUT, check, describe, output_with_timeout, run_ok};

use crate::process::{is_root, run_live, which};
use crate::tools_dir::tools_prefix;

/// bpf-linker version the eBPF build is known to work with.
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// A project task, for what it needs from the host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Task {
    /// `cargo xtask build`: the build toolchain only.
    Build,
    /// `cargo xtask demo`: the build toolchain and what the namespace lab uses.
    Demo,
    /// `cargo xtask test`: the build toolchain and what the test suite uses.
    Test,
    /// `cargo xtask bench`: the build toolchain and the tools measured against.
    Bench,
    /// `cargo xtask package`: the build toolchain and the Debian packaging tools.
    Package,
}

impl Task {
    /// Every task: what plain `cargo xtask setup` prepares for.
    pub const ALL: [Task; 5] = [
        Task::Build,
        Task::Demo,
        Task::Test,
        Task::Bench,
        Task::Package,
    ];
}

/// A Debian package some tasks need.
#[derive(Clone, Copy, Debug)]
pub struct AptPackage {
    /// Debian package name.
    pub package: &'static str,
    /// A command it provides: the package counts as present when this is found.
    pub command: &'static str,
    /// What the project uses it for (printed before installing).
    pub why: &'static str,
    /// The tasks that need it.
    pub tasks: &'static [Task],
}

/// Every Debian package any task needs: the one table of what setup may install.
pub const APT_PACKAGES: [AptPackage; 13] = [
    AptPackage {
        package: "gcc",
        command: "cc",
        why: "links the host binaries and bpf-linker",
        tasks: &Task::ALL,
    },
    AptPackage {
        package: "iproute2",
        command: "ip",
        why: "network namespaces and veth pairs of the test and demo labs",
        tasks: &[Task::Demo, Task::Test, Task::Bench],
    },
    AptPackage {
        package: "nftables",
        command: "nft",
        why: "the benchmark's nftables netdev-ingress variant",
        tasks: &[Task::Bench],
    },
    AptPackage {
        package: "ipset",
        command: "ipset",
        why: "the benchmark's iptables + ipset variant",
        tasks: &[Task::Bench],
    },
    AptPackage {
        package: "iptables",
        command: "iptables",
        why: "the benchmark's iptables + ipset variant",
        tasks: &[Task::Bench],
    },
    AptPackage {
        package: "xdp-tools",
        command: "xdp-filter",
        why: "the benchmark's xdp-filter variant",
        tasks: &[Task::Bench],
    },
    AptPackage {
        package: "netsniff-ng",
        command: "trafgen",
        why: "the benchmark's end-to-end traffic generator",
        tasks: &[Task::Bench],
    },
    AptPackage {
        package: "bpftool",
        command: "bpftool",
        why: "the kernel matrix's check that detach leaves no program behind, and the \
              benchmark's map memory cross-check",
        tasks: &[Task::Test, Task::Bench],
    },
    AptPackage {
        package: "lintian",
        command: "lintian",
        why: "checks the Debian package (`cargo xtask package`, run by the test suite)",
        tasks: &[Task::Test, Task::Package],
    },
    AptPackage {
        package: "dpkg-dev",
        command: "dpkg-shlibdeps",
        why: "gives cargo-deb the binary's library dependencies",
        tasks: &[Task::Test, Task::Package],
    },
    AptPackage {
        package: "protobuf-compiler",
        command: "protoc",
        why: "the etcd-client crate compiles etcd's protobufs when apifence is built",
        tasks: &Task::ALL,
    },
    AptPackage {
        package: "libprotobuf-dev",
        // No command: the well-known types protoc imports (an absolute path counts when the
        // file exists).
        command: "/usr/include/google/protobuf/descriptor.proto",
        why: "the protobuf well-known types etcd's protobufs import",
        tasks: &Task::ALL,
    },
    AptPackage {
        package: "etcd-server",
        command: "etcd",
        why: "the real etcd cluster of the fleet tests and the fleet benchmark",
        tasks: &[Task::Test, Task::Bench],
    },
];

/// A command on `PATH`, or a file given by its absolute path.
fn present(command: &str) -> Option<PathBuf> {
    let path = Path::new(command);
    if path.is_absolute() {
        return path.exists().then(|| path.to_path_buf());
    }
    which(command)
}

/// The packages of [`APT_PACKAGES`] that any of `tasks` needs.
pub fn packages_for(tasks: &[Task]) -> impl Iterator<Item = &'static AptPackage> + '_ {
    APT_PACKAGES
        .iter()
        .filter(|p| p.tasks.iter().any(|t| tasks.contains(t)))
}

/// Bound on `cargo install bpf-linker` (about 45 s on two cores).
const INSTALL_TIMEOUT: Duration = Duration::from_secs(20 * 60);
/// Bound on one apt-get call.
const APT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// Prepares the host for `tasks`, printing one line per step.
pub fn run(tasks: &[Task]) -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    apt_packages(tasks)
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
    println!("setup: adding rust-src to the nightly toolchain (the eBPF build compiles core)");
    run_live(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]),
        INSTALL_TIMEOUT,
    )?;
    println!("setup: rust-src (nightly) installed");
    Ok(())
}

/// The project-local prefix, or an error saying why there is none.
fn prefix() -> Result<PathBuf> {
    tools_prefix().context("HOME is not set: no place for the project-local tools")
}

/// Installs bpf-linker, built against the nightly's own libLLVM, into the project-local prefix
/// (`cargo install --root`), unless the right version is already there. A bpf-linker elsewhere
/// (`~/.cargo/bin`) is left alone.
fn bpf_linker() -> Result<()> {
    let prefix = prefix()?;
    let linker = prefix.join("bin/bpf-linker");
    if let Some(v) = bpf_linker_version(&linker)
        && v.contains(BPF_LINKER_VERSION)
    {
        println!(
            "setup: bpf-linker {BPF_LINKER_VERSION} present in {}",
            linker.display()
        );
        return Ok(());
    }
    let lib = nightly_libllvm()?;
    let file = lib.file_name().unwrap_or_default().to_string_lossy();
    let major =
        llvm_major(&file).with_context(|| format!("no LLVM major version in file name {file}"))?;
    let llvm = llvm_prefix()?;
    let link = llvm.join("lib/libLLVM.so");
    std::fs::create_dir_all(llvm.join("lib"))?;
    if link.symlink_metadata().is_ok() {
        std::fs::remove_file(&link).with_context(|| format!("replacing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(&lib, &link)
        .with_context(|| format!("linking {} -> {}", link.display(), lib.display()))?;
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against LLVM {major} ({file}) into {} \
         (links the eBPF program; project-local, so no other bpf-linker is replaced)",
        prefix.display()
    );
    run_live(
        Command::new("cargo")
            .env("LLVM_PREFIX", &llvm)
            .args([
                "install",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
                "--locked",
            ])
            .arg("--root")
            .arg(&prefix)
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{major}"),
            ]),
        INSTALL_TIMEOUT,
    )?;
    match bpf_linker_version(&linker) {
        Some(v) if v.contains(BPF_LINKER_VERSION) => {
            println!(
                "setup: bpf-linker {BPF_LINKER_VERSION} installed (the eBPF build finds it \
                 there by itself: no need to add it to PATH)"
            );
            Ok(())
        }
        other => bail!(
            "{} still not runnable under nightly after install: {other:?}",
            linker.display()
        ),
    }
}

/// What `rustup run nightly LINKER --version` prints, if it runs (rustup puts the nightly's
/// libLLVM on the library path).
fn bpf_linker_version(linker: &Path) -> Option<String> {
    if !linker.is_file() {
        return None;
    }
    let out = output_with_timeout(
        Command::new("rustup")
            .args(["run", "nightly"])
            .arg(linker)
            .arg("--version"),
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

/// Installs the packages `tasks` need whose commands are missing (see [`apt_install`]).
fn apt_packages(tasks: &[Task]) -> Result<()> {
    let missing: Vec<&AptPackage> = packages_for(tasks)
        .filter(|p| match present(p.command) {
            Some(_) => {
                println!("setup: {} ({}) present", p.package, p.command);
                false
            }
            None => true,
        })
        .collect();
    apt_install(&missing, &[])
}

/// Installs `missing`: `apt-get update`, a simulation whose plan is printed and refused if it
/// removes anything, then the install itself with `--no-install-recommends --no-remove`.
/// `apt_args` (e.g. a private source list) go to every apt-get call.
pub fn apt_install(missing: &[&AptPackage], apt_args: &[String]) -> Result<()> {
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|p| p.package).collect();
    if !is_root() {
        let list: Vec<String> = missing
            .iter()
            .map(|p| format!("{} ({})", p.package, p.why))
            .collect();
        bail!(
            "missing packages: {}; run `cargo xtask setup` as root to install them, or \
             `apt-get install --no-install-recommends --no-remove {}`",
            list.join(", "),
            names.join(" ")
        );
    }
    run_live(
        Command::new("apt-get").args(apt_args).arg("update"),
        APT_TIMEOUT,
    )?;
    let plan = simulate_install(&names, apt_args)?;
    if !plan.remove.is_empty() {
        bail!(
            "installing {} would remove {}: refusing to change the host that way; install \
             them by hand if that is acceptable",
            names.join(" "),
            plan.remove.join(" ")
        );
    }
    println!("setup: apt will install (no recommends, removing nothing):");
    for change in &plan.install {
        let why = missing
            .iter()
            .find(|p| p.package == change.package)
            .map_or("a dependency of the packages above", |p| p.why);
        match &change.upgrade_from {
            Some(old) => println!("  {} (upgrade from {old}): {why}", change.package),
            None => println!("  {}: {why}", change.package),
        }
    }
    run_live(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(apt_args)
            .args(INSTALL_ARGS)
            .arg("-y")
            .args(&names),
        APT_TIMEOUT,
    )?;
    for p in missing {
        if present(p.command).is_none() {
            bail!(
                "{} installed but `{}` is still not found",
                p.package,
                p.command
            );
        }
        println!("setup: {} ({}) installed", p.package, p.command);
    }
    Ok(())
}

/// Where apt keeps its package lists.
const APT_LISTS: &str = "/var/lib/apt/lists";

/// Whether apt has package lists (`apt-get update` has run): without them it can't plan an
/// install of a package that is not installed yet.
pub fn have_package_lists() -> bool {
    std::fs::read_dir(APT_LISTS).is_ok_and(|dir| {
        dir.flatten()
            .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
    })
}

/// Makes sure apt has package lists, running `apt-get update` (which changes no package) when
/// there are none, so that the no-removal check of setup's plan can run. Needs root then.
pub fn ensure_package_lists() -> Result<()> {
    if have_package_lists() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "apt has no package lists under {APT_LISTS}, so setup's plan can't be checked; run \
             `apt-get update` as root"
        );
    }
    println!("setup: apt has no package lists; running apt-get update (no package changes)");
    run_live(Command::new("apt-get").arg("update"), APT_TIMEOUT)
}

/// `apt-get` arguments of every install: no recommends, and refuse any plan that removes a
/// package.
pub const INSTALL_ARGS: [&str; 3] = ["install", "--no-install-recommends", "--no-remove"];

/// One package apt plans to install or upgrade.
#[derive(Debug, PartialEq, Eq)]
pub struct AptChange {
    /// Package name.
    pub package: String,
    /// The installed version it replaces, for an upgrade.
    pub upgrade_from: Option<String>,
}

/// What `apt-get -s install` would do.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct AptPlan {
    /// Packages installed or upgraded (`Inst` lines).
    pub install: Vec<AptChange>,
    /// Packages removed (`Remv` lines).
    pub remove: Vec<String>,
}

/// Simulates installing `packages` the way setup installs them, except that removals are
/// listed instead of refused (`--no-remove` would only make apt fail without naming them).
/// Needs no root; needs apt's package lists (`apt-get update`) for packages not installed yet.
pub fn simulate_install(packages: &[&str], apt_args: &[String]) -> Result<AptPlan> {
    let mut cmd = Command::new("apt-get");
    cmd.env("DEBIAN_FRONTEND", "noninteractive")
        .args(apt_args)
        .args(["-s", "install", "--no-install-recommends"])
        .args(packages);
    let shown = describe(&cmd);
    let out = output_with_timeout(&mut cmd, APT_TIMEOUT)?;
    check(&shown, &out).with_context(|| {
        if have_package_lists() {
            "apt-get could not plan the install".to_owned()
        } else {
            format!(
                "apt-get could not plan the install: apt has no package lists under \
                 {APT_LISTS}; run `apt-get update` as root first"
            )
        }
    })?;
    Ok(parse_plan(&String::from_utf8_lossy(&out.stdout)))
}

/// Reads the `Inst` and `Remv` lines of `apt-get -s` output.
pub fn parse_plan(output: &str) -> AptPlan {
    let mut plan = AptPlan::default();
    for line in output.lines() {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("Inst"), Some(package)) => {
                let upgrade_from = words
                    .next()
                    .and_then(|w| w.strip_prefix('['))
                    .and_then(|w| w.strip_suffix(']'))
                    .map(str::to_owned);
                plan.install.push(AptChange {
                    package: package.to_owned(),
                    upgrade_from,
                });
            }
            (Some("Remv"), Some(package)) => plan.remove.push(package.to_owned()),
            _ => {}
        }
    }
    plan
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

    /// What `apt-get -s install --no-install-recommends systemd-timesyncd` printed on a Debian 12
    /// machine that had ntpsec (trimmed): the same conflict as issue 9, the other way round.
    const REMOVING: &str = "\
The following packages will be REMOVED:
  ntpsec
The following NEW packages will be installed:
  systemd-timesyncd
7 upgraded, 1 newly installed, 1 to remove and 129 not upgraded.
Remv ntpsec [1.2.2+dfsg1-1+deb12u1]
Inst libnss-systemd [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12.15/oldstable [amd64]) []
Inst libsystemd0 [252.38-1~deb12u1] (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
Conf libsystemd0 (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
Inst systemd-timesyncd (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
Conf systemd-timesyncd (252.39-1~deb12u2 Debian:12.15/oldstable [amd64])
";

    #[test]
    fn plan_lists_installs_upgrades_and_removals() {
        let plan = parse_plan(REMOVING);
        assert_eq!(plan.remove, ["ntpsec"]);
        let names: Vec<&str> = plan.install.iter().map(|c| c.package.as_str()).collect();
        assert_eq!(
            names,
            ["libnss-systemd", "libsystemd0", "systemd-timesyncd"]
        );
        assert_eq!(
            plan.install[0].upgrade_from.as_deref(),
            Some("252.38-1~deb12u1")
        );
        assert_eq!(plan.install[2].upgrade_from, None);
        assert_eq!(
            parse_plan("0 upgraded, 0 newly installed\n"),
            AptPlan::default()
        );
    }

    #[test]
    fn every_package_belongs_to_a_task_and_build_needs_no_lab_tools() {
        for p in &APT_PACKAGES {
            assert!(!p.tasks.is_empty(), "{} is needed by no task", p.package);
        }
        let build: Vec<&str> = packages_for(&[Task::Build]).map(|p| p.package).collect();
        // The etcd-client crate needs protoc and the well-known types to build.
        assert_eq!(build, ["gcc", "protobuf-compiler", "libprotobuf-dev"]);
        let test: Vec<&str> = packages_for(&[Task::Test]).map(|p| p.package).collect();
        assert_eq!(
            test,
            [
                "gcc",
                "iproute2",
                "bpftool",
                "lintian",
                "dpkg-dev",
                "protobuf-compiler",
                "libprotobuf-dev",
                "etcd-server"
            ]
        );
        assert_eq!(packages_for(&Task::ALL).count(), APT_PACKAGES.len());
    }

    #[test]
    fn install_never_takes_recommends_nor_removes() {
        assert!(INSTALL_ARGS.contains(&"--no-install-recommends"));
        assert!(INSTALL_ARGS.contains(&"--no-remove"));
    }

    /// The real check of issue 9: on this machine, apt's plan for everything setup may install
    /// (every task, as setup installs it) removes no package.
    #[test]
    fn setup_plan_on_this_machine_removes_nothing() {
        let names: Vec<&str> = packages_for(&Task::ALL).map(|p| p.package).collect();
        let plan = simulate_install(&names, &[]).expect("apt-get -s install");
        assert!(
            plan.remove.is_empty(),
            "setup's apt plan would remove {:?}",
            plan.remove
        );
    }
}
