//! The machine a run measured: CPU, cores, memory, kernel, load, toolchains. Recorded with the
//! results so numbers are never read without their context.

use std::process::Command;

use serde::{Deserialize, Serialize};

/// Facts about this machine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Machine {
    /// `uname -srvm`.
    pub kernel: String,
    /// CPU model name.
    pub cpu_model: String,
    /// Online CPUs.
    pub cpus: usize,
    /// Total memory, MiB.
    pub memory_mib: u64,
    /// `/proc/loadavg` when the run started.
    pub load_at_start: String,
    /// `/proc/loadavg` when the run ended.
    pub load_at_end: String,
    /// Distribution (`PRETTY_NAME` of os-release).
    pub os: String,
    /// `rustc --version` (stable) and `rustc +nightly --version`.
    pub rustc: Vec<String>,
    /// Whether the JIT is always on (`net.core.bpf_jit_enable`).
    pub bpf_jit_enable: String,
    /// Hypervisor flag present in /proc/cpuinfo.
    pub virtualized: bool,
}

impl Machine {
    /// Reads the facts now (the end load is filled by [`Machine::finish`]).
    pub fn read() -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".into(), |(_, v)| v.trim().to_owned());
        let virtualized = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let memory_mib = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map_or_else(|| "unknown".into(), |v| v.trim_matches('"').to_owned());
        Machine {
            kernel: output("uname", &["-srvm"]),
            cpu_model,
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            memory_mib,
            load_at_start: read("/proc/loadavg").trim().to_owned(),
            load_at_end: String::new(),
            os,
            rustc: vec![
                output("rustc", &["--version"]),
                output("rustc", &["+nightly", "--version"]),
            ],
            bpf_jit_enable: read("/proc/sys/net/core/bpf_jit_enable").trim().to_owned(),
            virtualized,
        }
    }

    /// Records the load at the end of the run.
    pub fn finish(&mut self) {
        self.load_at_end = read("/proc/loadavg").trim().to_owned();
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn output(program: &str, args: &[&str]) -> String {
    apifence_tests::cmd::output_with_timeout(
        Command::new(program).args(args),
        std::time::Duration::from_secs(10),
    )
    .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    .unwrap_or_default()
}
