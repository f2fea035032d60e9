//! The run itself: preflight, each section in turn (with everything it builds torn down by
//! `Drop`, also on error or Ctrl-C), then results.json, the plots and the Markdown report, and
//! finally the checks.

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

use super::lab::{self, Lab};
use super::machine::Machine;
use super::object::BenchObject;
use super::plan::Plan;
use super::report::{NotMeasured, Results, SCHEMA};
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
    if let Some(path) = &args.render {
        return render(path, args);
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
            root.join("bench")
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
    };
    results.problems = results.check();
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    results.write_json(&out_dir)?;
    write_reports(&results, &out_dir, markdown_path.as_deref())?;
    eprintln!(
        "bench: wrote {} ({:.0} s)",
        out_dir.join("results.json").display(),
        results.duration_s
    );
    if !results.problems.is_empty() {
        bail!(
            "the benchmark ran but found problems:\n  {}",
            results.problems.join("\n  ")
        );
    }
    Ok(())
}

/// Writes the plots into `out_dir` and, when asked, the Markdown report.
fn write_reports(results: &Results, out_dir: &Path, markdown: Option<&Path>) -> Result<()> {
    let plots = plot::write_all(results, out_dir)?;
    if let Some(path) = markdown {
        let text = markdown::render(results, &relative_to(out_dir, path), &plots);
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("bench: wrote {}", path.display());
    }
    Ok(())
}

/// `--render FILE`: the plots and the report from an existing results.json, measuring nothing.
fn render(path: &Path, args: &BenchArgs) -> Result<()> {
    let path = &path
        .canonicalize()
        .with_context(|| format!("finding {}", path.display()))?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let results: Results =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let out_dir = args.out.clone().unwrap_or_else(|| {
        path.parent()
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
    });
    let markdown = args
        .markdown
        .clone()
        .or_else(|| (!results.plan.quick).then(|| workspace_root().join("BENCHMARKS.md")));
    std::fs::create_dir_all(&out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    write_reports(&results, &out_dir, markdown.as_deref())
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
