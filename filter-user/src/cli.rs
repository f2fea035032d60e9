//! The `apifence` command line: raw flags (clap) turned into filter operations, and their
//! output (human text or JSON).

use std::{io::Read, path::PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use serde::Serialize;

use crate::{
    attach::XdpModeChoice,
    filter::{self, AttachOptions, DetachTarget, Filter},
    paths::{DEFAULT_BPFFS_DIR, PinLayout},
    policy::{Mode, parse_ports},
    ranges::language::{RangeList, parse_authorized, parse_prefixes},
};

/// apifence: only authorized source ranges reach the Kubernetes API server, enforced in XDP.
#[derive(Debug, Parser)]
#[command(name = "apifence", version, about, long_about = None)]
pub struct Cli {
    /// bpffs directory holding the pinned program, maps and links.
    #[arg(long, global = true, env = "APIFENCE_BPFFS", default_value = DEFAULT_BPFFS_DIR)]
    pub bpffs: PathBuf,
    /// Act inside the named network namespace (as made by `ip netns add`), keeping the host's
    /// mount namespace so pins persist (unlike `ip netns exec`).
    #[arg(long, global = true, env = "APIFENCE_NETNS")]
    pub netns: Option<String>,
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
    #[command(after_help = "Example:\n  apifence mode monitor")]
    Mode {
        /// enforce or monitor.
        #[arg(value_enum)]
        mode: ModeArg,
    },
    /// Verdict counters and hits per range.
    #[command(after_help = "Example:\n  apifence stats --json")]
    Stats {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
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
}

/// Runs the parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    if let Some(name) = &cli.netns {
        crate::netns::enter(name)?;
    }
    let layout = PinLayout::new(&cli.bpffs);
    match cli.command {
        Command::Attach {
            interfaces,
            ports,
            xdp_mode,
            monitor,
            capacity,
            always_allow,
        } => {
            let options = AttachOptions {
                interfaces,
                ports: ports.as_deref().map(parse_ports).transpose()?,
                xdp_mode,
                monitor,
                capacity,
                always_allow: always_allow.as_deref().map(parse_prefixes).transpose()?,
            };
            let report = filter::attach(&layout, &options)?;
            for (interface, mode) in &report.attached {
                println!("attached to {interface} ({} mode)", mode.as_str());
            }
            for interface in &report.already {
                println!("{interface} was already attached");
            }
        }
        Command::Detach { interfaces, all } => {
            let target = if all {
                DetachTarget::All
            } else {
                DetachTarget::Interfaces(interfaces)
            };
            let report = filter::detach(&layout, &target)?;
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
        Command::Ranges(RangesCommand::Show { json }) => show(&layout, json)?,
        Command::Ranges(change) => change_ranges(&layout, &change)?,
        Command::Mode { mode } => {
            let mut filter = Filter::open_for_write(&layout)?;
            let mut policy = filter.record()?.policy;
            policy.mode = match mode {
                ModeArg::Enforce => Mode::Enforce,
                ModeArg::Monitor => Mode::Monitor,
            };
            filter.apply_policy(policy.clone())?;
            println!("mode: {}", policy.mode.as_str());
        }
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

fn change_ranges(layout: &PinLayout, change: &RangesCommand) -> Result<()> {
    let (args, verb) = match change {
        RangesCommand::Set(args) => (args, "set"),
        RangesCommand::Add(args) => (args, "add"),
        RangesCommand::Remove(args) => (args, "remove"),
        RangesCommand::Show { .. } => return Ok(()),
    };
    let text = args.text()?;
    let mut filter = Filter::open_for_write(layout)?;
    let mut policy = filter.record()?.policy;
    let current = parse_authorized(&policy.ranges)?;
    let next = match verb {
        "set" => parse_authorized(&text)?,
        "add" => current.add(&parse_prefixes(&text)?),
        _ => current.remove(&parse_prefixes(&text)?)?,
    };
    policy.ranges = next.to_text();
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
