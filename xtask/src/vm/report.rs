//! Reading a guest's console (the `APIFENCE-VM` lines `guest.sh` prints) into a verdict per
//! check, and the matrix table written for the README.

use std::fmt::Write as _;
use std::time::Duration;

/// Prefix of every line the host reads.
const MARKER: &str = "APIFENCE-VM ";

/// The checks every guest must pass, in the order `guest.sh` runs them.
pub fn expected_checks() -> Vec<String> {
    let mut checks = vec!["modules".to_owned(), "lab".to_owned()];
    let probes = |checks: &mut Vec<String>, tag: &str| {
        for fam in ["v4", "v6"] {
            for who in ["good", "bad"] {
                for kind in ["protected", "unprotected"] {
                    checks.push(format!("tcp-{tag}-{fam}-{who}-{kind}"));
                }
            }
        }
    };
    probes(&mut checks, "baseline");
    for mode in ["native", "skb"] {
        checks.push(format!("attach-{mode}"));
        checks.push(format!("ranges-{mode}"));
        probes(&mut checks, mode);
        checks.push(format!("stats-{mode}"));
        checks.push(format!("detach-{mode}"));
        checks.push(format!("clean-{mode}"));
    }
    for ipip in ["lab", "refused", "clean"] {
        checks.push(format!("ipip-{ipip}"));
    }
    checks.push("verdicts".to_owned());
    checks.push("prog-info".to_owned());
    checks
}

/// What the program looked like to the kernel (`bpf_prog_info`, as the `program_info` test
/// binary prints it).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ProgFigures {
    /// Instructions the verifier processed (`verified_insns`, kernels 5.16+), the figure its
    /// complexity limit (1,000,000) applies to.
    pub verified_insns: Option<u64>,
    /// Instructions after the verifier's rewrites (`xlated_prog_len` / 8).
    pub xlated_insns: Option<u64>,
    /// Size of the JIT-compiled program.
    pub jited_bytes: Option<u64>,
}

/// One guest's outcome.
#[derive(Debug, Default)]
pub struct GuestReport {
    /// `uname -r` as the guest printed it.
    pub release: Option<String>,
    /// Checks that passed.
    pub passed: Vec<String>,
    /// Checks that failed, with the guest's reason.
    pub failed: Vec<(String, String)>,
    /// Expected checks the guest never reported.
    pub missing: Vec<String>,
    /// The guest reached its end (`DONE`), and its uptime then in seconds.
    pub done_uptime: Option<String>,
    /// Figures of the XDP program.
    pub prog: Option<ProgFigures>,
}

impl GuestReport {
    /// Reads the console output of one guest.
    pub fn parse(console: &str) -> GuestReport {
        let mut report = GuestReport::default();
        for line in console.lines() {
            let line = line.trim_end_matches('\r');
            let Some(at) = line.find(MARKER) else {
                continue;
            };
            let rest = &line[at + MARKER.len()..];
            let (kind, body) = rest.split_once(' ').unwrap_or((rest, ""));
            match kind {
                "PASS" => report.passed.push(body.trim().to_owned()),
                "FAIL" => {
                    let (name, why) = body.split_once(':').unwrap_or((body, ""));
                    report
                        .failed
                        .push((name.trim().to_owned(), why.trim().to_owned()));
                }
                "KERNEL" => report.release = Some(body.trim().to_owned()),
                "PROG" => report.prog = Some(prog_figures(body)),
                "DONE" => report.done_uptime = Some(body.trim().to_owned()),
                _ => {}
            }
        }
        report.missing = expected_checks()
            .into_iter()
            .filter(|c| !report.passed.contains(c) && !report.failed.iter().any(|(f, _)| f == c))
            .collect();
        report
    }

    /// Every expected check passed, none failed, and the guest reached its end.
    pub fn ok(&self) -> bool {
        self.failed.is_empty() && self.missing.is_empty() && self.done_uptime.is_some()
    }

    /// One line: `ok` or what went wrong.
    pub fn summary(&self) -> String {
        if self.ok() {
            return format!("ok ({} checks)", self.passed.len());
        }
        let mut parts = Vec::new();
        if !self.failed.is_empty() {
            let names: Vec<&str> = self.failed.iter().map(|(n, _)| n.as_str()).collect();
            parts.push(format!("failed: {}", names.join(", ")));
        }
        if !self.missing.is_empty() {
            parts.push(format!("never reported: {}", self.missing.join(", ")));
        }
        if self.done_uptime.is_none() {
            parts.push("the guest did not reach its end".to_owned());
        }
        parts.join("; ")
    }
}

/// Figures from `processed_insns=N xlated_insns=N jited_bytes=N` (`n/a` where the kernel
/// doesn't report one).
fn prog_figures(line: &str) -> ProgFigures {
    let value = |key: &str| {
        line.split_whitespace()
            .find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
            .and_then(|v| v.parse().ok())
    };
    ProgFigures {
        verified_insns: value("processed_insns"),
        xlated_insns: value("xlated_insns"),
        jited_bytes: value("jited_bytes"),
    }
}

/// One row of the matrix.
#[derive(Debug)]
pub struct Row {
    /// The kernel's label (`6.1`).
    pub label: String,
    /// The Debian package booted.
    pub package: String,
    /// The guest's outcome.
    pub report: GuestReport,
    /// Wall time of the guest run.
    pub elapsed: Duration,
    /// `kvm` or `tcg`.
    pub accel: &'static str,
}

/// The matrix as a Markdown table, with a line saying how it was made.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| kernel | Debian package | result | verifier: processed insns | xlated insns | JIT bytes | guest time |\n\
         |---|---|---|---|---|---|---|\n",
    );
    let figure = |v: Option<u64>| v.map_or_else(|| "n/a".to_owned(), |v| v.to_string());
    for row in rows {
        let prog = row.report.prog.clone().unwrap_or_default();
        let processed = match (prog.verified_insns, &row.report.prog) {
            (Some(v), _) => v.to_string(),
            (None, Some(_)) => "n/a (kernel < 5.16)".to_owned(),
            (None, None) => "n/a".to_owned(),
        };
        let _ = writeln!(
            out,
            "| {} ({}) | {} | {} | {} | {} | {} | {:.0} s ({}) |",
            row.label,
            row.report.release.as_deref().unwrap_or("?"),
            row.package,
            if row.report.ok() { "pass" } else { "FAIL" },
            processed,
            figure(prog.xlated_insns),
            figure(prog.jited_bytes),
            row.elapsed.as_secs_f64(),
            row.accel,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_passed() -> String {
        let mut console = String::from("boot noise\r\nAPIFENCE-VM KERNEL 6.1.0-57-amd64\r\n");
        for check in expected_checks() {
            console.push_str(&format!("APIFENCE-VM PASS {check}\r\n"));
        }
        console.push_str("APIFENCE-VM DONE 41.20\r\n");
        console
    }

    #[test]
    fn a_complete_run_is_ok() {
        let report = GuestReport::parse(&all_passed());
        assert!(report.ok(), "{}", report.summary());
        assert_eq!(report.release.as_deref(), Some("6.1.0-57-amd64"));
        assert_eq!(report.done_uptime.as_deref(), Some("41.20"));
    }

    #[test]
    fn a_failure_a_missing_check_or_no_end_is_not_ok() {
        let failed = all_passed().replace(
            "APIFENCE-VM PASS stats-skb",
            "APIFENCE-VM FAIL stats-skb: exit 1 from: stats_after_traffic",
        );
        let report = GuestReport::parse(&failed);
        assert!(!report.ok());
        assert_eq!(
            report.failed,
            vec![(
                "stats-skb".to_owned(),
                "exit 1 from: stats_after_traffic".to_owned()
            )]
        );
        assert!(report.summary().contains("failed: stats-skb"));

        let missing = all_passed().replace("APIFENCE-VM PASS verdicts\r\n", "");
        let report = GuestReport::parse(&missing);
        assert!(!report.ok());
        assert_eq!(report.missing, vec!["verdicts".to_owned()]);

        let cut = all_passed().replace("APIFENCE-VM DONE 41.20", "Kernel panic");
        let report = GuestReport::parse(&cut);
        assert!(!report.ok());
        assert!(report.summary().contains("did not reach its end"));
    }

    #[test]
    fn marker_found_after_kernel_noise_on_the_same_line() {
        let report = GuestReport::parse("[  3.1] veth: blahAPIFENCE-VM PASS modules\n");
        assert_eq!(report.passed, vec!["modules".to_owned()]);
    }

    #[test]
    fn program_figures_from_the_test_line() {
        assert_eq!(
            prog_figures("processed_insns=17876 xlated_insns=1128 jited_bytes=5250"),
            ProgFigures {
                verified_insns: Some(17876),
                xlated_insns: Some(1128),
                jited_bytes: Some(5250),
            }
        );
        let old = prog_figures("processed_insns=n/a xlated_insns=1080 jited_bytes=5055");
        assert_eq!(old.verified_insns, None);
        assert_eq!(old.xlated_insns, Some(1080));
        assert_eq!(prog_figures(""), ProgFigures::default());
    }

    #[test]
    fn expected_checks_cover_both_modes() {
        let checks = expected_checks();
        assert_eq!(checks.len(), 2 + 8 + 2 * (2 + 8 + 3) + 3 + 1 + 1);
        assert!(checks.contains(&"tcp-skb-v6-bad-protected".to_owned()));
        assert!(checks.contains(&"clean-native".to_owned()));
        assert!(checks.contains(&"ipip-refused".to_owned()));
    }
}
