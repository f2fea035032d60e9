//! The machine-readable results of a run (`results.json`), and the checks `--quick` (CI) makes:
//! every variant produced numbers, and the correctness counts of the control-plane section are
//! zero. Never a timing.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::control::ControlResults;
use super::e2e::E2eResults;
use super::fleet::FleetResults;
use super::kernel::KernelResults;
use super::machine::Machine;
use super::memory::MemoryResults;
use super::plan::Plan;
use super::tools::ToolInfo;

/// Version of the JSON layout.
pub const SCHEMA: u32 = 1;

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

    /// Writes `results.json` into `dir`.
    pub fn write_json(&self, dir: &Path) -> Result<()> {
        let path = dir.join("results.json");
        let text = serde_json::to_string_pretty(self)?;
        std::fs::write(&path, text + "\n").with_context(|| format!("writing {}", path.display()))
    }
}
