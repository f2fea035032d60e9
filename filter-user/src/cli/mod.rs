//! The `apifence` command line: raw flags (clap) turned into filter operations, and their
//! output (human text or JSON).

use std::{io::Read, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    daemon::{
        self, DaemonOptions,
        desired::{Diff, Resolved, ResolvedEntry},
        protocol::{ChangeFlags, EntryMeta, ModeChange, RangesChange, Reply, Request},
    },
    kernel::operations::{self, AttachOptions, DetachTarget, Filter},
    kernel::paths::{DEFAULT_BPFFS_DIR, DEFAULT_CONFIG_FILE, DEFAULT_SOCKET, PinLayout},
    policy::language::{RangeList, parse_authorized, parse_prefixes},
    policy::{Lookup, XdpModeChoice},
    policy::{Mode, Policy, parse_ports},
};

pub mod remote;

/// The features the `apifence` binary runs (`daemon` and `check-config` both use it): the one
/// place that decides.
fn standard_features() -> Box<dyn daemon::Features> {
    Box::new(crate::features::standard::StandardFeatures::default())
}

/// How the CLI and the daemon share the work, shown in `apifence --help`.
const DAEMON_NOTE: &str = "With an apifence daemon running (apifence daemon --config FILE), \
`ranges set/add/remove/show` and `mode` go through its socket (--socket): the daemon owns the \
desired state, persists it and applies it. When no daemon answers on the socket, these commands \
work directly on the pins under --bpffs.";

/// `apifence daemon --help`.
const DAEMON_HELP: &str = "Example:
  apifence daemon --config /etc/apifence/apifence.toml

The daemon loads the config (see `apifence check-config`), adopts a filter already pinned under
its bpffs directory (never detaching it) or loads and attaches one, applies the desired state,
and listens on its socket (mode 0600, root only). It reloads when the config file (or its
service tags file) changes and on SIGHUP; an invalid config is logged and counted, and the last
good state stays enforced. On SIGTERM or SIGINT it exits and the filter keeps enforcing; only
`apifence detach` removes it. A newer program replaces the pinned one on the existing links.
The config decides bpffs, state_dir and socket (the global --bpffs and --socket are not used).
Logs go to stderr; APIFENCE_LOG=debug shows more.

Socket protocol: one JSON request per line, one JSON response per line, for example
  {\"op\":\"ranges_add\",\"list\":\"203.0.113.7\",\"dry_run\":false,\"force\":false}
  {\"ok\":{\"type\":\"change\",\"applied\":true,...}}   or   {\"error\":{\"kind\":\"...\",\"message\":\"...\"}}
Operations: ranges_set, ranges_add, ranges_remove, mode, show, status, reload, denied.";

/// apifence: only authorized source ranges reach the Kubernetes API server, enforced in XDP.
#[derive(Debug, Parser)]
#[command(name = "apifence", version, about, long_about = None, after_help = DAEMON_NOTE)]
pub struct Cli {
    /// bpffs directory holding the pinned program, maps and links.
    #[arg(long, global = true, env = "APIFENCE_BPFFS", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Act inside the named network namespace (as made by `ip netns add`), keeping the host's
    /// mount namespace so pins persist (unlike `ip netns exec`).
    #[arg(long, global = true, env = "APIFENCE_NETNS")]
    pub netns: Option<String>,
    /// Unix socket of the apifence daemon. When a daemon answers there, `ranges` and `mode`
    /// go through it; when none answers, they work directly on the pins.
    #[arg(long, global = true, env = "APIFENCE_SOCKET", default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Attach the filter to interfaces (loads and pins it on first use).
    #[command(
        after_help = "Example:\n  apifence attach eth0 --ports 443,6443 --always-allow 198.51.100.7\n\n\
        Filtering stays disabled (everything passes, still counted) until `apifence ranges set`."
    )]
    Attach {
        /// Interfaces to attach to.
        #[arg(required = true, value_name = "IFACE")]
        interfaces: Vec<String>,
        /// Protected TCP destination ports (comma separated). Default 443,6443.
        #[arg(long, value_name = "PORTS")]
        ports: Option<String>,
        /// XDP mode: auto tries native and falls back to skb, saying so.
        #[arg(long, value_enum, default_value_t = XdpModeChoice::Auto)]
        xdp_mode: XdpModeChoice,
        /// Count what would be dropped, drop nothing.
        #[arg(long)]
        monitor: bool,
        /// Prefixes per address family the filter can hold (fixed until `detach --all`).
        #[arg(long, value_name = "N")]
        capacity: Option<u32>,
        /// How sources are looked up: the table compiled into array maps (fast at any list
        /// size) or the kernel's LPM trie (the fallback). Fixed until `detach --all`.
        #[arg(long, value_enum, value_name = "LOOKUP")]
        lookup: Option<Lookup>,
        /// Sources that are never blocked (egress/NAT IPs, load-balancer outbound, jump hosts).
        #[arg(long, value_name = "LIST")]
        always_allow: Option<String>,
    },
    /// Detach from interfaces; the last detach removes program, maps and pins.
    #[command(after_help = "Examples:\n  apifence detach eth0\n  apifence detach --all")]
    Detach {
        /// Interfaces to detach.
        #[arg(
            value_name = "IFACE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        interfaces: Vec<String>,
        /// Detach everything and remove all pins.
        #[arg(long)]
        all: bool,
    },
    /// Show or change the authorized ranges.
    #[command(
        subcommand,
        after_help = "Examples:\n  apifence ranges set 73.140.245.0/24,193.168.1.0/24\n  \
        apifence ranges add 2001:db8::/32\n  apifence ranges show --json"
    )]
    Ranges(RangesCommand),
    /// Switch between enforce and monitor without re-attaching.
    #[command(after_help = "Example:\n  apifence mode monitor\n\n\
        Through the daemon the mode persists across restarts until the config's `mode` line \
        changes. Without a daemon it changes the pins directly.")]
    Mode {
        /// enforce or monitor.
        #[arg(value_enum)]
        mode: ModeArg,
        /// Dry run and force.
        #[command(flatten)]
        flags: ChangeArgs,
    },
    /// Verdict counters and hits per range.
    #[command(after_help = "Example:\n  apifence stats --json")]
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon: the one owner of the desired state, with live reload.
    #[command(after_help = DAEMON_HELP)]
    Daemon {
        /// The config file (TOML; see `apifence check-config`).
        #[arg(long, value_name = "PATH", default_value = DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        /// Reload only on SIGHUP or `apifence reload`, not when the file changes.
        #[arg(long)]
        no_watch: bool,
        /// Load the embedded program and swap it in on the attached links even when the pinned
        /// program is the same version (exercises the upgrade path; never detaches).
        #[arg(long)]
        replace_program: bool,
    },
    /// Validate a daemon config file and show what it compiles to; changes nothing.
    #[command(
        after_help = "Examples:\n  apifence check-config /etc/apifence/apifence.toml\n  \
        apifence check-config --json apifence.toml\n\n\
        Prints the entries per address family before and after merging; exits non-zero with \
        the offending key or entry when the file is invalid."
    )]
    CheckConfig {
        /// The config file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show the daemon's status: reloads, last apply, program and links.
    #[command(after_help = "Example:\n  apifence status --json")]
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Ask the daemon to re-read its config file now (as SIGHUP) and report the outcome.
    #[command(after_help = "Example:\n  apifence reload")]
    Reload,
    /// Sources the filter denied recently (from the daemon's deny log), most packets first.
    #[command(
        after_help = "Examples:\n  apifence denied\n  apifence denied --top 5 --json\n\n\
        Shows source, packets, port, interface, first and last seen (in monitor mode: packets \
        that would have been dropped), so you can find the address you really come from. \
        JSON: a list of objects with keys source, count, first_seen, last_seen (RFC 3339), \
        port and interface. Needs the daemon."
    )]
    Denied {
        /// Show at most N sources.
        #[arg(long, value_name = "N", default_value_t = 20)]
        top: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Flags of every change.
#[derive(Debug, Default, Args)]
pub struct ChangeArgs {
    /// Print what would change (added, removed and merged entries) and change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Apply even if a safety check refuses: the daemon's lockout guard, or (with no daemon
    /// answering) a filter that a daemon manages.
    #[arg(long)]
    force: bool,
}

impl ChangeArgs {
    fn flags(&self) -> ChangeFlags {
        ChangeFlags {
            dry_run: self.dry_run,
            force: self.force,
        }
    }
}

/// `apifence mode` values.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum ModeArg {
    /// Drop unauthorized traffic.
    Enforce,
    /// Count unauthorized traffic as would-drop; drop nothing.
    Monitor,
}

/// `apifence ranges …`.
#[derive(Debug, Subcommand)]
pub enum RangesCommand {
    /// Replace the list ("" disables filtering; 0.0.0.0/32 allows only the always-allow list).
    #[command(
        after_help = "Examples:\n  apifence ranges set 73.140.245.0/24,2001:db8::/32\n  \
        apifence ranges set --file /etc/apifence/ranges.txt\n  apifence ranges set \"\"   # disable"
    )]
    Set(ListArgs),
    /// Add ranges to the list.
    #[command(after_help = "Example:\n  apifence ranges add 203.0.113.7")]
    Add(ListArgs),
    /// Remove ranges from the list (exactly as shown by `ranges show`).
    #[command(after_help = "Example:\n  apifence ranges remove 203.0.113.7/32")]
    Remove(ListArgs),
    /// Show the enforced list as given.
    #[command(after_help = "Example:\n  apifence ranges show --json")]
    Show {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// A range list given inline or from a file.
#[derive(Debug, Args)]
pub struct ListArgs {
    /// Comma and/or whitespace separated CIDRs or addresses.
    #[arg(
        value_name = "LIST",
        required_unless_present = "file",
        conflicts_with = "file"
    )]
    list: Option<String>,
    /// Read the list from a file ("-" = stdin); `#` starts a comment.
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Note kept with each entry given (set and add, through the daemon).
    #[arg(long, value_name = "TEXT")]
    note: Option<String>,
    /// When the entries given expire, RFC 3339 such as 2026-12-01T00:00:00Z (set and add,
    /// through the daemon).
    #[arg(long, value_name = "TIME")]
    expires: Option<String>,
    /// Dry run and force.
    #[command(flatten)]
    change: ChangeArgs,
}

impl ListArgs {
    fn text(&self) -> Result<String> {
        match (&self.list, &self.file) {
            (Some(list), _) => Ok(list.clone()),
            (None, Some(path)) => {
                let mut text = String::new();
                if path.as_os_str() == "-" {
                    std::io::stdin()
                        .read_to_string(&mut text)
                        .context("reading the list from stdin")?;
                } else {
                    text = std::fs::read_to_string(path)
                        .with_context(|| format!("reading the list from {}", path.display()))?;
                }
                Ok(strip_comments(&text))
            }
            (None, None) => bail!("give a LIST or --file PATH"),
        }
    }
}

/// Drops `#` comments (to the end of the line) from a list file.
fn strip_comments(text: &str) -> String {
    text.lines()
        .map(|line| line.split('#').next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

/// JSON of `ranges show`.
#[derive(Debug, Serialize)]
struct ShowJson {
    enabled: bool,
    ranges: Vec<String>,
    always_allow: Vec<String>,
    ports: Vec<u16>,
    mode: &'static str,
    interfaces: std::collections::BTreeMap<String, &'static str>,
    capacity: u32,
    lookup: &'static str,
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(name) = &cli.netns {
        crate::kernel::netns::enter(name)?;
    }
    let layout = PinLayout::new(&cli.bpffs);
    match cli.command {
        Command::Attach {
            interfaces,
            ports,
            xdp_mode,
            monitor,
            capacity,
            lookup,
            always_allow,
        } => {
            // The daemon owns the policy of its pins: changing it here would go behind its back.
            if (ports.is_some() || monitor || always_allow.is_some())
                && let Ok(Some(Reply::Status(status))) = remote::call(&cli.socket, &Request::Status)
                && status.bpffs == layout.root()
            {
                bail!(
                    "the apifence daemon (pid {}) on {} owns the policy under {}: set ports, mode \
                     and always_allow in its config file {} (it reloads on change) or with \
                     apifence mode, or stop it first (systemctl stop apifence)",
                    status.pid,
                    cli.socket.display(),
                    status.bpffs.display(),
                    status.config.display()
                );
            }
            let options = AttachOptions {
                interfaces,
                ports: ports.as_deref().map(parse_ports).transpose()?,
                xdp_mode,
                monitor,
                capacity,
                lookup,
                always_allow: always_allow.as_deref().map(parse_prefixes).transpose()?,
            };
            let report = operations::attach(&layout, &options)?;
            for (interface, mode) in &report.attached {
                println!("attached to {interface} ({} mode)", mode.as_str());
            }
            for interface in &report.already {
                println!("{interface} was already attached");
            }
        }
        Command::Detach { interfaces, all } => {
            if daemon::answers(&cli.socket) {
                eprintln!(
                    "note: an apifence daemon answers on {}; it attaches the filter again on its \
                     next change or reload; stop it first (systemctl stop apifence) to keep the \
                     filter off",
                    cli.socket.display()
                );
            }
            let target = if all {
                DetachTarget::All
            } else {
                DetachTarget::Interfaces(interfaces)
            };
            let report = operations::detach(&layout, &target)?;
            for interface in &report.detached {
                println!("detached from {interface}");
            }
            if report.removed_everything {
                println!(
                    "removed program, maps and pins under {}",
                    layout.root().display()
                );
            } else if report.detached.is_empty() {
                println!("nothing attached under {}", layout.root().display());
            }
        }
        Command::Ranges(RangesCommand::Show { json }) => {
            match remote::call(&cli.socket, &Request::Show)? {
                Some(Reply::Show(reply)) => remote::print_show(&reply, json)?,
                Some(other) => return Err(remote::unexpected(&cli.socket, &other)),
                None => show(&layout, json)?,
            }
        }
        Command::Ranges(change) => change_ranges(&layout, &cli.socket, &change)?,
        Command::Mode { mode, flags } => {
            let mode = match mode {
                ModeArg::Enforce => Mode::Enforce,
                ModeArg::Monitor => Mode::Monitor,
            };
            let request = Request::Mode(ModeChange {
                mode,
                flags: flags.flags(),
            });
            match remote::call(&cli.socket, &request)? {
                Some(Reply::Change(reply)) if reply.dry_run => remote::print_change(&reply),
                Some(Reply::Change(_)) => println!("mode: {}", mode.as_str()),
                Some(other) => return Err(remote::unexpected(&cli.socket, &other)),
                None => {
                    let mut filter = Filter::open_for_write(&layout)?;
                    filter.check_direct_change(&cli.socket, flags.force)?;
                    let current = filter.record()?.policy;
                    let mut policy = current.clone();
                    policy.mode = mode;
                    if flags.dry_run {
                        print_direct_dry_run(&current, &policy)?;
                    } else {
                        filter.apply_policy(policy.clone())?;
                        println!("mode: {}", policy.mode.as_str());
                    }
                }
            }
        }
        Command::Daemon {
            config,
            no_watch,
            replace_program,
        } => {
            daemon::init_logging();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("apifence-daemon")
                .enable_all()
                .build()
                .context("starting the async runtime")?;
            let options = DaemonOptions {
                config,
                replace_program,
                watch: !no_watch,
            };
            let result = runtime.block_on(async {
                let shutdown = daemon::shutdown_signal();
                daemon::run(options, standard_features(), shutdown).await
            });
            // Don't wait on work stuck past the daemon's own shutdown bounds.
            runtime.shutdown_timeout(std::time::Duration::from_secs(1));
            result?;
        }
        Command::CheckConfig { file, json } => {
            let mut features = standard_features();
            let report = daemon::check::check(&file, features.as_mut())?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render());
            }
        }
        Command::Status { json } => match remote::call(&cli.socket, &Request::Status)? {
            Some(Reply::Status(status)) => remote::print_status(&status, json)?,
            Some(other) => return Err(remote::unexpected(&cli.socket, &other)),
            None => bail!(
                "no apifence daemon answers on {}; start it (systemctl start apifence) or pass \
                 the socket it uses with --socket",
                cli.socket.display()
            ),
        },
        Command::Denied { top, json } => {
            let query = Request::Denied(crate::daemon::denied::DeniedQuery { top: Some(top) });
            match remote::call(&cli.socket, &query)? {
                Some(Reply::Denied(report)) if json => {
                    println!("{}", serde_json::to_string_pretty(&report.sources)?);
                }
                Some(Reply::Denied(report)) => print!("{}", report.table()),
                Some(other) => return Err(remote::unexpected(&cli.socket, &other)),
                None => bail!(
                    "no apifence daemon answers on {}; the deny log is kept by the daemon \
                     (apifence daemon --config FILE), or pass the socket it uses with --socket",
                    cli.socket.display()
                ),
            }
        }
        Command::Reload => match remote::call(&cli.socket, &Request::Reload)? {
            Some(Reply::Reload(reload)) => {
                for warning in &reload.warnings {
                    eprintln!("warning: {warning}");
                }
                if reload.changed {
                    println!("reloaded; changes:");
                    print!("{}", remote::render_diff(&reload.diff));
                } else {
                    println!("reloaded; nothing enforced changed");
                }
            }
            Some(other) => return Err(remote::unexpected(&cli.socket, &other)),
            None => bail!(
                "no apifence daemon answers on {}; start it (systemctl start apifence) or pass \
                 the socket it uses with --socket",
                cli.socket.display()
            ),
        },
        Command::Stats { json } => {
            let stats = Filter::open(&layout)?.stats()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&stats)?);
            } else {
                println!(
                    "passed      {:>12}  (authorized {}, unprotected {}, filter disabled {})",
                    stats.passed,
                    stats.passed_authorized,
                    stats.passed_unprotected,
                    stats.passed_disabled
                );
                println!("dropped     {:>12}", stats.dropped);
                println!("would drop  {:>12}", stats.would_drop);
                println!("malformed   {:>12}", stats.malformed);
                for range in &stats.ranges {
                    let tag = if range.always_allow {
                        "  (always allow)"
                    } else {
                        ""
                    };
                    println!("  {:<43} {:>12}{tag}", range.range, range.hits);
                }
            }
        }
    }
    Ok(())
}

fn change_ranges(
    layout: &PinLayout,
    socket: &std::path::Path,
    change: &RangesCommand,
) -> Result<()> {
    let (args, verb) = match change {
        RangesCommand::Set(args) => (args, "set"),
        RangesCommand::Add(args) => (args, "add"),
        RangesCommand::Remove(args) => (args, "remove"),
        RangesCommand::Show { .. } => return Ok(()),
    };
    let text = args.text()?;
    if verb == "remove" && (args.note.is_some() || args.expires.is_some()) {
        bail!("--note and --expires go with ranges set and ranges add, not remove");
    }
    let expires = args
        .expires
        .as_deref()
        .map(|t| {
            time::OffsetDateTime::parse(t.trim(), &time::format_description::well_known::Rfc3339)
                .with_context(|| {
                    format!(
                        "--expires {t:?} is not an RFC 3339 date-time with a UTC offset; \
                         write it like 2026-12-01T00:00:00Z"
                    )
                })
        })
        .transpose()?;
    let body = RangesChange {
        list: text.clone(),
        meta: EntryMeta {
            note: args.note.clone(),
            expires,
        },
        flags: args.change.flags(),
    };
    let request = match verb {
        "set" => Request::RangesSet(body),
        "add" => Request::RangesAdd(body),
        _ => Request::RangesRemove(body),
    };
    match remote::call(socket, &request)? {
        Some(Reply::Change(reply)) => {
            remote::print_change(&reply);
            return Ok(());
        }
        Some(other) => return Err(remote::unexpected(socket, &other)),
        None => {}
    }
    if args.note.is_some() || args.expires.is_some() {
        bail!(
            "--note and --expires need the apifence daemon (none answers on {}); the pins alone \
             keep no notes or expiry",
            socket.display()
        );
    }
    let mut filter = Filter::open_for_write(layout)?;
    filter.check_direct_change(socket, args.change.force)?;
    let mut policy = filter.record()?.policy;
    let current = parse_authorized(&policy.ranges)?;
    let next = match verb {
        "set" => parse_authorized(&text)?,
        "add" => current.add(&parse_prefixes(&text)?),
        _ => current.remove(&parse_prefixes(&text)?)?,
    };
    let before = policy.clone();
    policy.ranges = next.to_text();
    if args.change.dry_run {
        return print_direct_dry_run(&before, &policy);
    }
    let report = filter.apply_policy(policy)?;
    match next {
        RangeList::Disabled => println!("filtering disabled: all traffic passes"),
        RangeList::OnlyAlwaysAllowed => println!("only the always-allow list may connect"),
        RangeList::Ranges(_) => println!(
            "enforced {} IPv4 and {} IPv6 prefixes (from {} and {} given) in {:.1} ms",
            report.compiled.v4,
            report.compiled.v6,
            report.given.v4,
            report.given.v6,
            report.duration.as_secs_f64() * 1000.0
        ),
    }
    Ok(())
}

fn show(layout: &PinLayout, json: bool) -> Result<()> {
    let filter = Filter::open(layout)?;
    let record = filter.record()?;
    let list = parse_authorized(&record.policy.ranges)?;
    let out = ShowJson {
        enabled: !matches!(list, RangeList::Disabled),
        ranges: list
            .entries()
            .iter()
            .map(ToString::to_string)
            .chain(matches!(list, RangeList::OnlyAlwaysAllowed).then(|| "0.0.0.0/32".to_string()))
            .collect(),
        always_allow: record
            .policy
            .always_allow
            .iter()
            .map(ToString::to_string)
            .collect(),
        ports: record.policy.ports.clone(),
        mode: record.policy.mode.as_str(),
        interfaces: record
            .attachment
            .interfaces
            .iter()
            .map(|(name, mode)| (name.clone(), mode.as_str()))
            .collect(),
        capacity: filter.capacity(),
        lookup: filter.lookup().name(),
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "filtering:    {}",
        if out.enabled {
            "enabled"
        } else {
            "disabled (all traffic passes)"
        }
    );
    println!("mode:         {}", out.mode);
    println!("lookup:       {}", out.lookup);
    println!(
        "ports:        {}",
        out.ports
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "interfaces:   {}",
        out.interfaces
            .iter()
            .map(|(n, m)| format!("{n} ({m})"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "always allow: {}",
        if out.always_allow.is_empty() {
            "-".into()
        } else {
            out.always_allow.join(", ")
        }
    );
    println!("ranges ({}):", out.ranges.len());
    for range in &out.ranges {
        println!("  {range}");
    }
    Ok(())
}

/// A policy as the daemon's [`Resolved`], so the direct CLI can print the same diff.
fn as_resolved(policy: &Policy) -> Result<Resolved> {
    let list = parse_authorized(&policy.ranges)?;
    Ok(Resolved {
        policy: policy.clone(),
        entries: list
            .entries()
            .iter()
            .map(|net| ResolvedEntry {
                entry: daemon::desired::RangeEntry::plain(crate::policy::language::Entry::Prefix(
                    *net,
                )),
                prefixes: vec![*net],
            })
            .collect(),
    })
}

/// `--dry-run` without a daemon: print what would change, change nothing.
fn print_direct_dry_run(before: &Policy, after: &Policy) -> Result<()> {
    let diff = Diff::between(&as_resolved(before)?, &as_resolved(after)?);
    println!("dry run: nothing was changed; the change would do this:");
    print!("{}", remote::render_diff(&diff));
    Ok(())
}

/// `--xdp-mode` values come from the policy layer's names, so the flag and the config key agree.
impl clap::ValueEnum for XdpModeChoice {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.as_str()).help(self.help()))
    }
}

/// `--lookup` values come from the policy layer's names, so the flag and the config key agree.
impl clap::ValueEnum for Lookup {
    fn value_variants<'a>() -> &'a [Self] {
        &Self::ALL
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        Some(clap::builder::PossibleValue::new(self.name()).help(self.help()))
    }
}
