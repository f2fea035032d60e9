//! `apifence attach IFACE…`: load and pin the filter on first use and link it to interfaces.

use anyhow::{Result, bail};
use clap::Args;

use super::{Context, remote};
use crate::{
    daemon::protocol::{Reply, Request},
    kernel::operations::{self, AttachOptions},
    policy::{Lookup, XdpModeChoice, language::parse_prefixes, parse_ports},
};

/// Shown after `apifence attach --help`.
pub const HELP: &str = "Example:\n  apifence attach eth0 --ports 443,6443 --always-allow 198.51.100.7\n\n\
Filtering stays disabled (everything passes, still counted) until `apifence ranges set`.";

/// Flags of `apifence attach`.
#[derive(Debug, Args)]
pub struct AttachArgs {
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
}

/// Runs `apifence attach`.
pub fn run(context: &Context, args: AttachArgs) -> Result<()> {
    let changes_policy = args.ports.is_some() || args.monitor || args.always_allow.is_some();
    // The daemon owns the policy of its pins: changing it here would go behind its back.
    if changes_policy
        && let Ok(Some(Reply::Status(status))) = remote::call(&context.socket, &Request::Status)
        && status.bpffs == context.layout.root()
    {
        bail!(
            "the apifence daemon (pid {}) on {} owns the policy under {}: set ports, mode and \
             always_allow in its config file {} (it reloads on change) or with apifence mode, or \
             stop it first (systemctl stop apifence)",
            status.pid,
            context.socket.display(),
            status.bpffs.display(),
            status.config.display()
        );
    }
    let options = AttachOptions {
        interfaces: args.interfaces,
        ports: args.ports.as_deref().map(parse_ports).transpose()?,
        xdp_mode: args.xdp_mode,
        monitor: args.monitor,
        capacity: args.capacity,
        lookup: args.lookup,
        always_allow: args
            .always_allow
            .as_deref()
            .map(parse_prefixes)
            .transpose()?,
    };
    let report = operations::attach(&context.layout, &options)?;
    for interface in &report.trace_restored {
        eprintln!(
            "warning: {interface} still ran the trace program of an `apifence trace` that ended \
             without putting the filter back (it kept enforcing); the filter runs there again"
        );
    }
    if !report.attached.is_empty() {
        super::output::mark_applied();
    }
    for (interface, mode) in &report.attached {
        let l3 = if report.ip_framed.contains(interface) {
            ", an L3 device: frames parsed from the IP header"
        } else {
            ""
        };
        if report.repaired.contains(interface) {
            crate::outln!(
                "re-attached to {interface} ({} mode{l3}): its earlier attachment was stale (the \
                 interface had been deleted and created again)",
                mode.as_str()
            );
        } else {
            crate::outln!("attached to {interface} ({} mode{l3})", mode.as_str());
        }
    }
    for interface in &report.already {
        crate::outln!("{interface} was already attached");
    }
    Ok(())
}
