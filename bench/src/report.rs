//! The machine-readable results: one file per section (`bench/results/kernel.json`, ...), each
//! a [`Results`] holding that section and the run that measured it, so a run of some sections
//! replaces only their files; [`collect`] reads them back for the report. Also the checks
//! `--quick` (CI) makes: every variant produced numbers, and the correctness counts of the
//! control-plane section are zero. Never a timing.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::Section;
use crate::process::workspace_root;

use super::control::ControlResults;
use super::e2e::E2eResults;
use super::fleet::FleetResults;
use super::kernel::KernelResults;
use super::machine::Machine;
use super::memory::MemoryResults;
use super::plan::Plan;
use super::tools::ToolInfo;

/// Version of the JSON layout (2: one file per section, with `commit` and `note`).
pub const SCHEMA: u32 = 2;

/// The committed results directory, relative to the workspace root.
pub const RESULTS_DIR: &str = "bench/results";

/// Something the run could not measure, and why.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NotMeasured {
    /// What.
    pub what: String,
    /// Why.
    pub why: String,
}

/// Everything one run produced.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    /// [`SCHEMA`].
    pub schema: u32,
    /// Unix time the run started.
    pub started_unix_s: u64,
    /// Wall time of the run, s.
    pub duration_s: f64,
    /// The machine.
    pub machine: Machine,
    /// Tools and versions.
    pub tools: Vec<ToolInfo>,
    /// Commands that reproduce the run.
    pub commands: Vec<String>,
    /// What was measured how often.
    pub plan: Plan,
    /// Section 1.
    pub kernel: Option<KernelResults>,
    /// Section 2.
    pub e2e: Option<E2eResults>,
    /// Section 3.
    pub control: Option<ControlResults>,
    /// Section 4.
    pub memory: Option<MemoryResults>,
    /// Section 5.
    #[serde(default)]
    pub fleet: Option<FleetResults>,
    /// What could not be measured.
    pub not_measured: Vec<NotMeasured>,
    /// Problems [`Results::check`] found (empty when all is well).
    pub problems: Vec<String>,
    /// The commit measured (`git describe --always --dirty`), when known.
    #[serde(default)]
    pub commit: Option<String>,
    /// What a reader must know about this run that its figures don't say.
    #[serde(default)]
    pub note: Option<String>,
}

impl Results {
    /// Every variant that should have numbers and has none, and every non-zero correctness
    /// count. Sections that were not run are not checked.
    pub fn check(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if let Some(k) = &self.kernel {
            for row in &k.rows {
                let name = format!(
                    "kernel: {} {:?} {} {}",
                    row.program,
                    row.family,
                    row.pattern,
                    row.size.as_deref().unwrap_or("")
                );
                if row.summary.is_none() {
                    problems.push(format!("{name}: no numbers"));
                }
                if row.pattern != "-" && row.net.is_none() {
                    problems.push(format!("{name}: no net numbers"));
                }
            }
            if k.rows.is_empty() {
                problems.push("kernel: no variants measured".into());
            }
        }
        if let Some(e) = &self.e2e {
            for row in &e.rows {
                if row.unavailable.is_none()
                    && (row.receiver.is_none() || row.dropped_share.is_empty())
                {
                    problems.push(format!("e2e: {} at {}: no numbers", row.name, row.size));
                }
            }
        }
        if let Some(c) = &self.control {
            for row in &c.rows {
                let at = format!("control at {}", row.size);
                for (what, t) in [
                    ("apifence ranges set", &row.apifence_set),
                    ("nft -f", &row.nft_replace),
                    ("ipset restore", &row.ipset_replace),
                ] {
                    if t.summary.is_none() {
                        problems.push(format!("{at}: {what}: no numbers"));
                    }
                }
                if row.enforced_relative.is_none() {
                    problems.push(format!("{at}: no enforcement times"));
                }
                let k = &row.correctness;
                if k.keep_sent == 0 || k.removed_sent_after_return == 0 {
                    problems.push(format!("{at}: the probes saw nothing to check"));
                }
                if k.removed_passed_after_return > 0 {
                    problems.push(format!(
                        "{at}: {} probes from a removed source passed after the command returned",
                        k.removed_passed_after_return
                    ));
                }
                if k.keep_dropped > k.capture_losses {
                    problems.push(format!(
                        "{at}: {} probes from a source in both lists were dropped",
                        k.keep_dropped
                    ));
                }
                if k.added_dropped_after_return > k.capture_losses {
                    problems.push(format!(
                        "{at}: {} probes from an added source were dropped after the command \
                         returned",
                        k.added_dropped_after_return
                    ));
                }
                if let Some(inc) = &row.incremental {
                    for (what, t) in [
                        ("apifence ranges add", &inc.apifence_add),
                        ("apifence ranges remove", &inc.apifence_remove),
                        ("nft add element", &inc.nft_add),
                        ("ipset add", &inc.ipset_add),
                    ] {
                        if t.summary.is_none() {
                            problems.push(format!("{at}: {what}: no numbers"));
                        }
                    }
                }
            }
        }
        if let Some(m) = &self.memory {
            for row in &m.rows {
                if row.trie_bytes == 0 {
                    problems.push(format!(
                        "memory: {} {:?}: the trie reports no memory",
                        row.size, row.family
                    ));
                }
            }
        }
        if let Some(f) = &self.fleet {
            for row in &f.sizes {
                if row.all_hosts.is_none() {
                    problems.push(format!("fleet at {}: no numbers", row.size));
                }
                if row.not_converged > 0 {
                    problems.push(format!(
                        "fleet at {}: {} changes were not enforced by every host in time",
                        row.size, row.not_converged
                    ));
                }
            }
        }
        problems
    }

    /// The sections this run measured.
    pub fn sections(&self) -> Vec<Section> {
        Section::ALL
            .into_iter()
            .filter(|&s| match s {
                Section::Kernel => self.kernel.is_some(),
                Section::E2e => self.e2e.is_some(),
                Section::Control => self.control.is_some(),
                Section::Memory => self.memory.is_some(),
                Section::Fleet => self.fleet.is_some(),
            })
            .collect()
    }

    /// This run with only `section` (and that section's problems).
    pub fn only(&self, section: Section) -> Results {
        let mut one = self.clone();
        let keep = |s: Section| s == section;
        if !keep(Section::Kernel) {
            one.kernel = None;
        }
        if !keep(Section::E2e) {
            one.e2e = None;
        }
        if !keep(Section::Control) {
            one.control = None;
        }
        if !keep(Section::Memory) {
            one.memory = None;
        }
        if !keep(Section::Fleet) {
            one.fleet = None;
        }
        one.problems = one.check();
        one
    }

    /// Writes `<section>.json` into `dir` for every section this run measured (other sections'
    /// files stay); returns the paths written.
    pub fn write_sections(&self, dir: &Path) -> Result<Vec<PathBuf>> {
        let mut written = Vec::new();
        for section in self.sections() {
            let path = section_file(dir, section);
            let text = serde_json::to_string_pretty(&self.only(section))?;
            std::fs::write(&path, text + "\n")
                .with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
        Ok(written)
    }
}

/// `dir/<section>.json`.
pub fn section_file(dir: &Path, section: Section) -> PathBuf {
    dir.join(format!("{}.json", section.name()))
}

/// One run, as far as the report is concerned: the sections of it that are in the results
/// directory, and its metadata (machine, tools, commands, plan, commit, note).
#[derive(Clone, Debug)]
pub struct Run {
    /// Its sections in the results directory.
    pub sections: Vec<Section>,
    /// Its results file (of its first section; the metadata are the same in all of them).
    pub results: Results,
}

/// Every results file of a directory, read back for the report.
#[derive(Clone, Debug)]
pub struct Collected {
    /// Every section found, each from its own file. Its run metadata are the newest run's: read
    /// [`Collected::runs`] for those.
    pub merged: Results,
    /// The runs that measured them, oldest first.
    pub runs: Vec<Run>,
}

impl Collected {
    /// The run that measured `section`, if its file was there.
    pub fn run_of(&self, section: Section) -> Option<(usize, &Run)> {
        self.runs
            .iter()
            .enumerate()
            .find(|(_, r)| r.sections.contains(&section))
    }
}

/// Reads `dir/<section>.json` for every section present; fails if there is none, or one can't
/// be read.
pub fn collect(dir: &Path) -> Result<Collected> {
    let mut merged: Option<Results> = None;
    let mut runs: Vec<Run> = Vec::new();
    for section in Section::ALL {
        let path = section_file(dir, section);
        if !path.exists() {
            continue;
        }
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: Results =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if !file.sections().contains(&section) {
            bail!(
                "{} holds no {} results (it has: {:?})",
                path.display(),
                section.name(),
                file.sections()
            );
        }
        let one = file.only(section);
        let merged = merged.get_or_insert_with(|| Results {
            kernel: None,
            e2e: None,
            control: None,
            memory: None,
            fleet: None,
            not_measured: Vec::new(),
            problems: Vec::new(),
            ..one.clone()
        });
        match section {
            Section::Kernel => merged.kernel = one.kernel.clone(),
            Section::E2e => merged.e2e = one.e2e.clone(),
            Section::Control => merged.control = one.control.clone(),
            Section::Memory => merged.memory = one.memory.clone(),
            Section::Fleet => merged.fleet = one.fleet.clone(),
        }
        for n in &one.not_measured {
            if !merged.not_measured.iter().any(|m| m.what == n.what) {
                merged.not_measured.push(n.clone());
            }
        }
        merged.problems.extend(one.problems.iter().cloned());
        match runs
            .iter_mut()
            .find(|r| r.results.started_unix_s == one.started_unix_s)
        {
            Some(run) => run.sections.push(section),
            None => runs.push(Run {
                sections: vec![section],
                results: one,
            }),
        }
    }
    let Some(mut merged) = merged else {
        bail!(
            "{} holds no results file ({}.json, ...); measure with `cargo xtask bench`",
            dir.display(),
            Section::Kernel.name()
        );
    };
    runs.sort_by_key(|r| r.results.started_unix_s);
    if let Some(newest) = runs.last() {
        let r = &newest.results;
        merged.started_unix_s = r.started_unix_s;
        merged.duration_s = r.duration_s;
        merged.machine = r.machine.clone();
        merged.tools = r.tools.clone();
        merged.commands = r.commands.clone();
        merged.plan = r.plan.clone();
        merged.commit = r.commit.clone();
        merged.note = None;
    }
    Ok(Collected { merged, runs })
}

/// The commit of the workspace being measured (`git describe --always --dirty`), if git can
/// tell.
pub fn current_commit() -> Option<String> {
    let out = apifence_tests::cmd::output_with_timeout(
        Command::new("git")
            .args(["describe", "--always", "--dirty"])
            .current_dir(workspace_root()),
        Duration::from_secs(10),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    (out.status.success() && !text.is_empty()).then_some(text)
}
