//! `cargo xtask vm-test`: the kernel matrix. Boots each Debian kernel of [`kernels::KERNELS`] in
//! qemu with an initramfs holding the freshly built `apifence` binary and filter-user's
//! `verdicts` and `program_info` test binaries, runs `guest.sh` there (real XDP in native and skb
//! mode on veth pairs between network namespaces, real TCP, stats, detach leaving nothing; an
//! IPIP tunnel between namespaces, whose L3 device apifence refuses, naming its link type; the
//! `BPF_PROG_TEST_RUN` verdict table, the verifier's figures), reads a PASS/FAIL line per check
//! from the serial console, and writes the per-kernel table to `target/kernel-matrix.md`.

mod bzimage;
mod host;
mod initramfs;
mod kernels;
mod qemu;
mod report;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use apifence_tests::cmd::{check, output_with_timeout};
use clap::{Args, ValueEnum};

use crate::build::{BUILD_TIMEOUT, binary, target_dir};
use crate::process::{cargo, run_live};
use initramfs::Initramfs;
use kernels::{CachedKernel, KERNELS, Kernel};
use qemu::Accel;
use report::{GuestReport, Row};

/// The guest's `/init`.
const GUEST_SCRIPT: &str = include_str!("guest.sh");
/// Bound on one guest under TCG (a run takes 30-60 s).
const TCG_TIMEOUT: Duration = Duration::from_secs(300);
/// Bound on one guest under KVM.
const KVM_TIMEOUT: Duration = Duration::from_secs(120);
/// filter-user's test binaries run in each guest: the `BPF_PROG_TEST_RUN` verdict table and the
/// verifier's figures.
const GUEST_TESTS: [&str; 2] = ["verdicts", "program_info"];

/// Options of `cargo xtask vm-test`.
#[derive(Args, Debug, Default)]
pub struct VmArgs {
    /// Only these kernels (by label: 5.10, 6.1, 6.12); all when not given.
    #[arg(long = "kernel", value_name = "LABEL")]
    kernels: Vec<String>,
    /// Ask apt for each suite's newest kernel package instead of using the cached one.
    #[arg(long)]
    refresh: bool,
    /// CPU acceleration: `auto` tries KVM with a probe guest and falls back to TCG, loudly.
    #[arg(long, value_enum, default_value_t = AccelChoice::Auto)]
    accel: AccelChoice,
}

/// `--accel`.
#[derive(Clone, Copy, Debug, Default, ValueEnum)]
enum AccelChoice {
    /// KVM when a probe guest runs under it, else TCG.
    #[default]
    Auto,
    /// Always KVM.
    Kvm,
    /// Always TCG.
    Tcg,
}

/// Runs the matrix; fails (with the guests' logs) unless every kernel passes every check.
pub fn run(args: &VmArgs) -> Result<()> {
    let started = Instant::now();
    let selected = select(&args.kernels)?;
    let tools = host::install()?;
    let work = target_dir().join("vm");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let common = guest_files(&tools, &work)?;

    let cached = kernels::fetch_all(&selected, args.refresh)?;
    let accel = match args.accel {
        AccelChoice::Kvm => Accel::Kvm,
        AccelChoice::Tcg => {
            println!("vm: TCG emulation (-accel tcg), as asked");
            Accel::Tcg
        }
        AccelChoice::Auto => {
            let probe = cached.first().context("no kernel selected")?;
            qemu::choose_accel(&tools.qemu, &tools.busybox, &probe.vmlinux, &work)?
        }
    };
    let timeout = match accel {
        Accel::Kvm => KVM_TIMEOUT,
        Accel::Tcg => TCG_TIMEOUT,
    };

    let mut rows = Vec::new();
    for (kernel, cached) in selected.iter().zip(&cached) {
        let guest = Guest {
            kernel,
            cached,
            accel,
            timeout,
        };
        rows.push(guest.run(&tools, &common, &work)?);
    }

    let table = report::table(&rows);
    let out = target_dir().join("kernel-matrix.md");
    std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!("\n{table}");
    println!(
        "vm: table written to {}; whole matrix {:.0} s",
        out.display(),
        started.elapsed().as_secs_f64()
    );
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| !r.report.ok())
        .map(|r| r.label.as_str())
        .collect();
    if !failed.is_empty() {
        bail!("kernel matrix failed on {}", failed.join(", "));
    }
    Ok(())
}

/// One kernel's run.
struct Guest<'a> {
    kernel: &'a Kernel,
    cached: &'a CachedKernel,
    accel: Accel,
    timeout: Duration,
}

impl Guest<'_> {
    /// Writes the kernel's initramfs (`common` plus its modules), boots it and reads its console;
    /// prints the console when a check failed.
    fn run(&self, tools: &host::Tools, common: &Initramfs, work: &Path) -> Result<Row> {
        let Guest {
            kernel,
            cached,
            accel,
            timeout,
        } = *self;
        let mut files = common.clone();
        for module in &cached.modules {
            let name = module.file_name().context("module file name")?;
            files.file(
                &format!("lib/modules/{}", name.to_string_lossy()),
                module,
                0o644,
            );
        }
        let initrd = work.join(format!("initramfs-{}.cpio", kernel.label));
        files.write(&initrd)?;
        println!(
            "vm: booting {} ({}) under {}",
            kernel.label,
            cached.package,
            accel.name()
        );
        let boot = qemu::boot(
            &tools.qemu,
            accel,
            &cached.vmlinux,
            &initrd,
            &work.join(format!("guest-{}.log", kernel.label)),
            timeout,
        )?;
        let mut report = GuestReport::parse(&boot.console);
        if report.release.as_deref() != Some(cached.release.as_str()) {
            report.failed.push((
                "kernel".to_owned(),
                format!(
                    "booted {:?}, expected {}",
                    report.release.as_deref().unwrap_or("nothing"),
                    cached.release
                ),
            ));
        }
        if boot.timed_out {
            report.failed.push((
                "guest".to_owned(),
                format!("killed after {timeout:?} without finishing"),
            ));
        }
        println!(
            "vm: {} {} in {:.1} s (guest uptime at the end: {} s; log {})",
            kernel.label,
            report.summary(),
            boot.elapsed.as_secs_f64(),
            report.done_uptime.as_deref().unwrap_or("?"),
            boot.log.display()
        );
        if !report.ok() {
            eprintln!(
                "vm: ---- console of the {} guest ----\n{}\nvm: ---- end of the {} console ----",
                kernel.label, boot.console, kernel.label
            );
        }
        Ok(Row {
            label: kernel.label.to_owned(),
            package: cached.package.clone(),
            report,
            elapsed: boot.elapsed,
            accel: accel.name(),
        })
    }
}

/// The kernels named by `labels` (all when empty).
fn select(labels: &[String]) -> Result<Vec<Kernel>> {
    if labels.is_empty() {
        return Ok(KERNELS.to_vec());
    }
    labels
        .iter()
        .map(|label| {
            KERNELS
                .iter()
                .find(|k| k.label == label)
                .copied()
                .with_context(|| {
                    let known: Vec<&str> = KERNELS.iter().map(|k| k.label).collect();
                    format!("unknown kernel {label:?}: choose from {}", known.join(", "))
                })
        })
        .collect()
}

/// Builds the binaries and gathers everything every guest gets (all but the kernel modules).
fn guest_files(tools: &host::Tools, work: &Path) -> Result<Initramfs> {
    run_live(
        cargo().args(["build", "-p", "filter-user", "--bins"]),
        BUILD_TIMEOUT,
    )?;
    let apifence = strip(&binary("debug")?, &work.join("apifence"))?;

    let mut fs = Initramfs::new();
    for dir in ["proc", "sys", "dev", "run", "tmp", "var", "lib/modules"] {
        fs.dir(dir);
    }
    fs.char_device("dev/console", 5, 1);
    fs.bytes("init", GUEST_SCRIPT, 0o755);
    fs.binary("bin/busybox", &tools.busybox)?;
    fs.binary("usr/sbin/ip", &tools.ip)?;
    fs.binary("usr/sbin/bpftool", &tools.bpftool)?;
    fs.binary("usr/sbin/apifence", &apifence)?;
    for test in GUEST_TESTS {
        let stripped = strip(&test_binary(test)?, &work.join(test))?;
        fs.binary(&format!("bin/{test}"), &stripped)?;
    }
    Ok(fs)
}

/// Builds the integration test `name` of filter-user and returns its executable. Built with the
/// workspace's features, as `cargo xtask test` builds the suite, so that run reuses its build.
fn test_binary(name: &str) -> Result<PathBuf> {
    let args = [
        "test",
        "--workspace",
        "--exclude",
        "filter-ebpf",
        "--test",
        name,
        "--no-run",
    ];
    run_live(cargo().args(args), BUILD_TIMEOUT)?;
    // Built now: asking again for the machine-readable form is quick and names the file.
    let out = output_with_timeout(
        cargo().args(args).arg("--message-format=json"),
        BUILD_TIMEOUT,
    )?;
    check(&format!("cargo test --test {name} --no-run"), &out)?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| test_executable(line, name))
        .with_context(|| format!("cargo named no executable for the test {name}"))
}

/// The `"executable"` of a cargo `compiler-artifact` message for the test target `name`.
fn test_executable(line: &str, name: &str) -> Option<PathBuf> {
    if !line.contains("\"reason\":\"compiler-artifact\"")
        || !line.contains("\"kind\":[\"test\"]")
        || !line.contains(&format!("\"name\":\"{name}\""))
    {
        return None;
    }
    let key = "\"executable\":\"";
    let start = line.find(key)? + key.len();
    let end = start + line[start..].find('"')?;
    Some(PathBuf::from(&line[start..end]))
}

/// Copies `binary` to `out` without its debug information (the guest needs no DWARF, and the
/// initramfs shrinks from ~200 MB to ~50 MB).
fn strip(binary: &Path, out: &Path) -> Result<PathBuf> {
    let result = output_with_timeout(
        Command::new("strip")
            .arg("--strip-debug")
            .arg("-o")
            .arg(out)
            .arg(binary),
        BUILD_TIMEOUT,
    )?;
    check(&format!("strip {}", binary.display()), &result)?;
    Ok(out.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn executable_of_the_test_target() {
        let line = r#"{"reason":"compiler-artifact","package_id":"x","target":{"kind":["test"],"crate_types":["bin"],"name":"verdicts","src_path":"/w/filter-user/tests/verdicts.rs"},"profile":{},"features":[],"filenames":["/w/target/debug/deps/verdicts-0123"],"executable":"/w/target/debug/deps/verdicts-0123","fresh":true}"#;
        assert_eq!(
            test_executable(line, "verdicts"),
            Some(PathBuf::from("/w/target/debug/deps/verdicts-0123"))
        );
        assert_eq!(test_executable(line, "slots"), None);
        let lib = line.replace(r#""kind":["test"]"#, r#""kind":["lib"]"#);
        assert_eq!(test_executable(&lib, "verdicts"), None);
    }

    #[test]
    fn kernels_selected_by_label() {
        let all = select(&[]).unwrap();
        assert_eq!(all.len(), KERNELS.len());
        let one = select(&["6.12".to_owned()]).unwrap();
        assert_eq!(one[0].package, "linux-image-6.12-amd64");
        let err = select(&["5.15".to_owned()]).unwrap_err().to_string();
        assert!(err.contains("5.10, 6.1, 6.12"), "{err}");
    }
}
