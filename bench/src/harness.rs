//! The run itself: preflight, each section in turn (with everything it builds torn down by
//! `Drop`, also on error or Ctrl-C), then one results file per section, the plots and the
//! Markdown report (rendered from every results file in the directory), and finally the checks.
//! Also `--render` (and `--render --check`): the plots and the report from the results files
//! alone.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::lab::{self, Lab};
use super::machine::Machine;
use super::object::BenchObject;
use super::plan::Plan;
use super::report::{self, Collected, NotMeasured, RESULTS_DIR, Results, SCHEMA};
use super::{BenchArgs, Section, control, e2e, fleet, kernel, markdown, memory, plot, tools};
use crate::process::{is_root, workspace_root};

/// A scratch directory for list files, removed on drop.
struct Workdir(PathBuf);

impl Workdir {
    fn new() -> Result<Workdir> {
        let path = std::env::temp_dir().join(format!("apifence-bench-{}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Workdir(path))
    }
}

impl Drop for Workdir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the benchmark as configured by `args`.
pub fn run(args: &BenchArgs) -> Result<()> {
    if let Some(dir) = &args.render {
        let dir = dir
            .clone()
            .unwrap_or_else(|| workspace_root().join(RESULTS_DIR));
        return if args.check {
            check(&dir, args)
        } else {
            render(&dir, args)
        };
    }
    if !is_root() {
        bail!("the benchmark needs root (XDP, network namespaces, nftables)");
    }
    lab::install_signal_handlers();
    lab::sweep_stale();
    let root = workspace_root();
    let plan = Plan::new(args, &root);
    let out_dir = args.out.clone().unwrap_or_else(|| {
        if plan.quick {
            root.join("target").join("bench-quick")
        } else {
            root.join(RESULTS_DIR)
        }
    });
    let markdown_path = args
        .markdown
        .clone()
        .or_else(|| (!plan.quick).then(|| root.join("BENCHMARKS.md")));
    let apifence_bin = std::env::var_os("APIFENCE_BIN")
        .map_or_else(|| root.join("target/release/apifence"), PathBuf::from);
    if !apifence_bin.is_file() {
        bail!(
            "{} does not exist; run `cargo xtask bench` (it builds it) or `cargo build --release \
             -p filter-user`",
            apifence_bin.display()
        );
    }
    let mut needed = vec!["ip"];
    if args.runs(Section::E2e) {
        needed.extend(["nft", "ipset", "iptables", "xdp-filter", "trafgen"]);
    }
    if args.runs(Section::Control) {
        needed.extend(["nft", "ipset"]);
    }
    if args.runs(Section::Fleet) {
        needed.push("etcd");
    }
    for tool in needed {
        tools::require(tool)?;
    }

    let mut machine = Machine::read();
    let load: f64 = machine
        .load_at_start
        .split_whitespace()
        .next()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0.0);
    if load > machine.cpus as f64 {
        eprintln!(
            "bench: warning: load average {load} on {} CPUs; the numbers will be noisy",
            machine.cpus
        );
    }
    let started = Instant::now();
    let started_unix_s = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    eprintln!(
        "bench: {} run on {} ({} CPUs), results to {}",
        if plan.quick { "quick" } else { "full" },
        machine.cpu_model,
        machine.cpus,
        out_dir.display()
    );
    let workdir = Workdir::new()?;

    let mut kernel_results = None;
    let mut memory_results = None;
    if args.runs(Section::Kernel) {
        let lists = kernel::lists(&plan)?;
        let mut setup = kernel::setup(&plan, &lists)?;
        drop(lists);
        kernel_results = Some(kernel::measure(&plan, &mut setup)?);
        if args.runs(Section::Memory) {
            memory_results = Some(memory::measure(&setup)?);
        }
    }

    let mut e2e_results = None;
    let mut control_results = None;
    if args.runs(Section::E2e) || args.runs(Section::Control) {
        let lab = Lab::create()?;
        if args.runs(Section::E2e) {
            let mut object = BenchObject::load(1)?;
            e2e_results = Some(e2e::run(
                &plan,
                &lab,
                &mut object,
                &apifence_bin,
                &workdir.0,
            )?);
        }
        if args.runs(Section::Control) {
            control_results = Some(control::run(&plan, &lab, &apifence_bin, &workdir.0)?);
        }
    }

    let fleet_results = if args.runs(Section::Fleet) {
        Some(fleet::run(&plan, &apifence_bin)?)
    } else {
        None
    };

    machine.finish();
    let mut results = Results {
        schema: SCHEMA,
        started_unix_s,
        duration_s: started.elapsed().as_secs_f64(),
        machine,
        tools: tools::inventory(),
        commands: commands(args, &apifence_bin),
        not_measured: not_measured(&plan, e2e_results.as_ref()),
        plan,
        kernel: kernel_results,
        e2e: e2e_results,
        control: control_results,
        memory: memory_results,
        fleet: fleet_results,
        problems: Vec::new(),
        commit: report::current_commit(),
        note: None,
    };
    results.problems = results.check();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    for path in results.write_sections(&out_dir)? {
        eprintln!(
            "bench: wrote {} ({:.0} s)",
            path.display(),
            results.duration_s
        );
    }
    write_reports(
        &report::collect(&out_dir)?,
        &out_dir,
        markdown_path.as_deref(),
    )?;
    if !results.problems.is_empty() {
        bail!(
            "the benchmark ran but found problems:\n  {}",
            results.problems.join("\n  ")
        );
    }
    Ok(())
}

/// What `collected` renders to: each file's path and text (the plots into `out_dir`, the
/// report to `markdown` when given).
fn rendered(
    collected: &Collected,
    out_dir: &Path,
    markdown: Option<&Path>,
) -> Vec<(PathBuf, String)> {
    let plots = plot::render_all(&collected.merged);
    let mut files = Vec::new();
    if let Some(path) = markdown {
        let text = markdown::render(collected, &relative_to(out_dir, path), &plots);
        files.push((path.to_path_buf(), text));
    }
    files.extend(plots.into_iter().map(|p| (out_dir.join(&p.file), p.svg)));
    files
}

/// Writes the plots into `out_dir` and, when asked, the Markdown report.
fn write_reports(collected: &Collected, out_dir: &Path, markdown: Option<&Path>) -> Result<()> {
    for (path, text) in rendered(collected, out_dir, markdown) {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// Where `--render` puts the plots and the report: `--out` or next to the results, and
/// `--markdown` or BENCHMARKS.md unless every section comes from a quick run.
fn render_targets(
    dir: &Path,
    args: &BenchArgs,
    collected: &Collected,
) -> (PathBuf, Option<PathBuf>) {
    let out_dir = args.out.clone().unwrap_or_else(|| dir.to_path_buf());
    let all_quick = collected.runs.iter().all(|r| r.results.plan.quick);
    let markdown = args
        .markdown
        .clone()
        .or_else(|| (!all_quick).then(|| workspace_root().join("BENCHMARKS.md")));
    (out_dir, markdown)
}

/// `--render [DIR]`: the plots and the report from the results files in `dir`, measuring
/// nothing.
fn render(dir: &Path, args: &BenchArgs) -> Result<()> {
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("finding {}", dir.display()))?;
    let collected = report::collect(dir)?;
    let (out_dir, markdown) = render_targets(dir, args, &collected);
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_reports(&collected, &out_dir, markdown.as_deref())
}

/// `--render [DIR] --check`: fails, naming every file that differs and the command that
/// regenerates them, unless the report and the plots on disk are exactly what the results files
/// in `dir` render to.
fn check(dir: &Path, args: &BenchArgs) -> Result<()> {
    let dir = &dir
        .canonicalize()
        .with_context(|| format!("finding {}", dir.display()))?;
    let collected = report::collect(dir)?;
    let (out_dir, markdown) = render_targets(dir, args, &collected);
    let stale = stale_files(&rendered(&collected, &out_dir, markdown.as_deref()));
    if !stale.is_empty() {
        bail!(
            "{} from what the results files in {} render to:\n  {}\nregenerate them with \
             `cargo xtask bench --render` (and commit them with the results files); `git diff` \
             then shows what changed",
            if stale.len() == 1 {
                "this file"
            } else {
                "these files"
            },
            dir.display(),
            stale.join("\n  ")
        );
    }
    eprintln!(
        "bench: the report and the plots match the results files in {}",
        dir.display()
    );
    Ok(())
}

/// Every file of `expected` whose content on disk differs (or that is missing), with the first
/// differing line.
fn stale_files(expected: &[(PathBuf, String)]) -> Vec<String> {
    let mut stale = Vec::new();
    for (path, text) in expected {
        let shown = path
            .strip_prefix(workspace_root())
            .unwrap_or(path)
            .display()
            .to_string();
        match std::fs::read_to_string(path) {
            Err(e) => stale.push(format!("{shown}: {e}")),
            Ok(found) if found != *text => {
                let line = found
                    .lines()
                    .zip(text.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| found.lines().count().min(text.lines().count()));
                stale.push(format!("{shown}: differs from line {}", line + 1));
            }
            Ok(_) => {}
        }
    }
    stale
}

/// `dir` as seen from the directory holding `file` (for links in the Markdown).
fn relative_to(dir: &Path, file: &Path) -> PathBuf {
    let base = file.parent().unwrap_or(Path::new("."));
    match dir.strip_prefix(base) {
        Ok(rel) if rel.as_os_str().is_empty() => PathBuf::from("."),
        Ok(rel) => rel.to_path_buf(),
        Err(_) => dir.to_path_buf(),
    }
}

/// The commands that reproduce the run, and the command lines of every variant.
fn commands(args: &BenchArgs, apifence_bin: &Path) -> Vec<String> {
    let root = workspace_root();
    let bin = apifence_bin
        .strip_prefix(&root)
        .unwrap_or(apifence_bin)
        .display();
    vec![
        format!("cargo xtask {}", args.to_cli_args().join(" ")),
        "# in-kernel: apifence::kernel::operations::attach (no interface) + Filter::apply_policy, then \
         BPF_PROG_TEST_RUN (repeat as in plan.kernel_repeat) on the pinned program and on the \
         benchmark object's bench_empty / bench_parse / bench_rotate"
            .into(),
        "# e2e traffic: trafgen --dev afbg0 --conf syn.trafgen --num N --cpus 1 --no-sock-mem \
         --notouch-irq --no-cpu-stats (see e2e.trafgen_config)"
            .into(),
        format!("{bin} --bpffs DIR --netns RCV attach afbr0 --xdp-mode native|skb"),
        format!("{bin} --bpffs DIR ranges set --file LIST"),
        format!("{bin} --bpffs DIR ranges add|remove 203.0.113.X/32"),
        "nft -f - <<< 'add chain netdev afb ingress { type filter hook ingress device \"afbr0\" \
         priority -500; policy accept; }; add rule netdev afb ingress meta protocol ip tcp dport \
         { 443, 6443 } ip saddr != @SET counter drop'"
            .into(),
        "nft -f - <<< 'flush set netdev afbcp cp4; add element netdev afbcp cp4 { ... }; (same \
         for cp6)'"
            .into(),
        "ipset restore <<< 'create cp4-t hash:net ...; add cp4-t ...; swap cp4-t cp4; destroy \
         cp4-t' (same for cp6)"
            .into(),
        "iptables -w -t raw -I PREROUTING -p tcp -m multiport --dports 443,6443 -m set ! \
         --match-set SET src -j DROP"
            .into(),
        "LIBXDP_BPFFS=DIR xdp-filter load afbr0 --mode native --policy deny --features ipv4; \
         xdp-filter ip ADDR --mode src (first address; the rest written to its pinned \
         filter_ipv4 map in the same format)"
            .into(),
    ]
}

/// What this machine and this harness cannot measure.
fn not_measured(plan: &Plan, e2e: Option<&e2e::E2eResults>) -> Vec<NotMeasured> {
    let mut out = vec![
        NotMeasured {
            what: "a physical NIC (line rate, XDP_DROP Mpps per core)".into(),
            why: "this machine has no NIC that XDP can drive natively besides veth; end-to-end \
                  numbers are veth numbers (sender and receiver share a CPU)"
                .into(),
        },
        NotMeasured {
            what: "end to end with IPv6 traffic".into(),
            why: "the end-to-end section sends IPv4 only, to keep the run short; IPv6 costs \
                  are in the in-kernel section"
                .into(),
        },
        NotMeasured {
            what: "nftables set memory".into(),
            why: "nft exposes no per-set memory figure (ipset does: `Size in memory`)".into(),
        },
        NotMeasured {
            what: "AKS's own apply time".into(),
            why: "a managed control plane; its published figure (up to two minutes) is quoted, \
                  not measured"
                .into(),
        },
    ];
    if plan.service_tags.is_none() {
        out.push(NotMeasured {
            what: "the AzureCloud service tag".into(),
            why: format!("{} is not present", super::plan::SERVICE_TAGS),
        });
    }
    if let Some(e) = e2e {
        for row in e.rows.iter().filter(|r| r.unavailable.is_some()) {
            out.push(NotMeasured {
                what: format!("{} at {}", row.name, row.size),
                why: row.unavailable.clone().unwrap_or_default(),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// The committed BENCHMARKS.md and plots are exactly what the committed results files render
    /// to (what `cargo xtask bench --render --check` checks).
    #[test]
    fn committed_report_matches_the_results_files() {
        let args = BenchArgs::parse_from(["bench", "--render", "--check"]);
        if let Err(e) = check(&workspace_root().join(RESULTS_DIR), &args) {
            panic!("{e:#}");
        }
    }

    /// A report that differs from its results is named, with the line where it starts to differ.
    #[test]
    fn stale_files_names_the_first_differing_line() {
        let dir = std::env::temp_dir().join(format!("apifence-bench-stale-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("report.md");
        std::fs::write(&path, "a\nb\nc\n").unwrap();
        let same = stale_files(&[(path.clone(), "a\nb\nc\n".into())]);
        let differs = stale_files(&[(path.clone(), "a\nB\nc\n".into())]);
        let longer = stale_files(&[(path.clone(), "a\nb\nc\nd\n".into())]);
        let missing = stale_files(&[(dir.join("missing.md"), "a\n".into())]);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(same.is_empty(), "{same:?}");
        assert_eq!(differs.len(), 1);
        assert!(differs[0].ends_with("differs from line 2"), "{differs:?}");
        assert!(longer[0].ends_with("differs from line 4"), "{longer:?}");
        assert_eq!(missing.len(), 1);
        assert!(missing[0].contains("missing.md"), "{missing:?}");
    }
}
