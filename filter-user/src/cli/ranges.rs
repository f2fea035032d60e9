//! `apifence ranges set|add|remove|show`: the authorized list, through the daemon when one
//! answers, else on the pins.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Context, change::ChangeArgs, list_input::ListInput, output, remote};
use crate::{
    daemon::protocol::{EntryMeta, RangesChange, Reply, Request},
    kernel::{attach, operations::Filter},
    policy::{
        AuthorizedRanges,
        language::{RangeList, parse_authorized, parse_prefixes},
    },
};

/// Shown after `apifence ranges --help`.
pub const HELP: &str = "Examples:\n  apifence ranges set 73.140.245.0/24,193.168.1.0/24\n  \
apifence ranges add 2001:db8::/32\n  apifence ranges show --json";

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
    /// The list, its note and expiry.
    #[command(flatten)]
    input: ListInput,
    /// Dry run and force.
    #[command(flatten)]
    change: ChangeArgs,
}

/// Which change a `ranges` subcommand asks for.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verb {
    Set,
    Add,
    Remove,
}

/// Runs `apifence ranges …`.
pub fn run(context: &Context, command: &RangesCommand) -> Result<()> {
    let (args, verb) = match command {
        RangesCommand::Set(args) => (args, Verb::Set),
        RangesCommand::Add(args) => (args, Verb::Add),
        RangesCommand::Remove(args) => (args, Verb::Remove),
        RangesCommand::Show { json } => {
            return match remote::call(&context.socket, &Request::Show)? {
                Some(Reply::Show(reply)) => remote::print_show(&reply, *json),
                Some(other) => Err(remote::unexpected(&context.socket, &other)),
                None => show(context, *json),
            };
        }
    };
    change(context, args, verb)
}

fn change(context: &Context, args: &ListArgs, verb: Verb) -> Result<()> {
    let text = args.input.text()?;
    let expires = args.input.expiry("ranges", verb == Verb::Remove)?;
    let body = RangesChange {
        list: text.clone(),
        meta: EntryMeta {
            note: args.input.note.clone(),
            expires,
        },
        flags: args.change.flags(),
    };
    let request = match verb {
        Verb::Set => Request::RangesSet(body),
        Verb::Add => Request::RangesAdd(body),
        Verb::Remove => Request::RangesRemove(body),
    };
    match remote::call(&context.socket, &request)? {
        Some(Reply::Change(reply)) => return remote::print_change(&reply),
        Some(other) => return Err(remote::unexpected(&context.socket, &other)),
        None => {}
    }
    if args.input.has_meta() {
        bail!(
            "--note and --expires need the apifence daemon (none answers on {}); the pins alone \
             keep no notes or expiry",
            context.socket.display()
        );
    }
    let mut filter = Filter::open_for_write(&context.layout)?;
    filter.check_direct_change(&context.socket, args.change.force)?;
    let mut policy = filter.record()?.policy;
    let current = policy.ranges.list();
    let next = match verb {
        Verb::Set => parse_authorized(&text)?,
        Verb::Add => current.add(&parse_prefixes(&text)?),
        Verb::Remove => current.remove(&parse_prefixes(&text)?)?,
    };
    let before = policy.clone();
    policy.ranges = AuthorizedRanges::new(next);
    if args.change.dry_run {
        return super::change::print_direct_dry_run(&before, &policy);
    }
    let kind = policy.ranges.clone();
    let report = filter.apply_policy(policy)?;
    output::mark_applied();
    match kind.list() {
        RangeList::Disabled => crate::outln!("filtering disabled: all traffic passes"),
        RangeList::OnlyAlwaysAllowed => crate::outln!("only the always-allow list may connect"),
        RangeList::Ranges(_) => crate::outln!(
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

/// JSON of `ranges show` without a daemon.
#[derive(Debug, Serialize)]
struct ShowJson {
    enabled: bool,
    ranges: Vec<String>,
    always_allow: Vec<String>,
    ports: Vec<u16>,
    mode: &'static str,
    interfaces: BTreeMap<String, &'static str>,
    /// Attached interfaces whose link filters nothing now (the interface was recreated).
    stale_interfaces: Vec<String>,
    capacity: u32,
    lookup: &'static str,
}

/// `ranges show` from the pins.
fn show(context: &Context, json: bool) -> Result<()> {
    let filter = Filter::open(&context.layout)?;
    let record = filter.record()?;
    let list = record.policy.ranges.list();
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
        stale_interfaces: attach::stale_interfaces(&context.layout)
            .into_iter()
            .map(|(name, _)| name)
            .collect(),
        capacity: filter.capacity(),
        lookup: filter.lookup().name(),
    };
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let joined = |items: &[String]| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    let filtering = if out.enabled {
        "enabled"
    } else {
        "disabled (all traffic passes)"
    };
    let ports: Vec<String> = out.ports.iter().map(ToString::to_string).collect();
    let interfaces: Vec<String> = out
        .interfaces
        .iter()
        .map(|(n, m)| {
            if out.stale_interfaces.contains(n) {
                format!("{n} ({m}, STALE: recreated, not filtered; `apifence attach {n}` repairs)")
            } else {
                format!("{n} ({m})")
            }
        })
        .collect();
    crate::outln!("filtering:    {filtering}");
    crate::outln!("mode:         {}", out.mode);
    crate::outln!("lookup:       {}", out.lookup);
    crate::outln!("ports:        {}", ports.join(", "));
    crate::outln!("interfaces:   {}", interfaces.join(", "));
    crate::outln!("always allow: {}", joined(&out.always_allow));
    crate::outln!("ranges ({}):", out.ranges.len());
    for range in &out.ranges {
        crate::outln!("  {range}");
    }
    Ok(())
}
