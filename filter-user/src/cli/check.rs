//! `apifence check`: the bypass report. Lists every up, non-loopback interface of the
//! namespace with its kind and whether apifence filters it, and fails when any unfiltered one
//! could deliver traffic to the protected ports (the rule is in [`crate::policy::bypass`]).
//! Reads the kernel and the pins only, so it works without a daemon.

use anyhow::{Result, bail};
use clap::Args;

use super::Context;
use crate::{
    kernel::{attach, interfaces},
    policy::bypass::{self, Assessment},
};

/// Shown after `apifence check --help`.
pub const HELP: &str = "Exits non-zero when an interface could deliver traffic to the \
protected ports without passing the filter, so it can run from monitoring.\n\nExamples:\n  \
apifence check\n  apifence --netns api check --json";

/// Flags of `apifence check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print JSON: `{"interfaces": [...], "unfiltered": N}`.
    #[arg(long)]
    json: bool,
}

/// Runs `apifence check`.
pub fn run(context: &Context, args: &CheckArgs) -> Result<()> {
    let assessed = bypass::assess(&interfaces::list(|name| {
        attach::filters(&context.layout, name)
    })?);
    let open: Vec<&Assessment> = bypass::bypasses(&assessed);
    if args.json {
        let report = serde_json::json!({ "interfaces": assessed, "unfiltered": open.len() });
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::outln!("{:<16} {:<10} {:<9} why", "interface", "kind", "verdict");
        for a in &assessed {
            let verdict = if a.bypass {
                "BYPASS"
            } else if a.covered {
                "filtered"
            } else {
                "ok"
            };
            crate::outln!(
                "{:<16} {:<10} {:<9} {}",
                a.name,
                a.kind.name(),
                verdict,
                a.reason
            );
        }
    }
    if !open.is_empty() {
        let names: Vec<String> = open
            .iter()
            .map(|a| format!("{} ({})", a.name, a.kind.name()))
            .collect();
        let attach: Vec<&str> = open
            .iter()
            .filter(|a| a.attachable)
            .map(|a| a.name.as_str())
            .collect();
        let fix = if attach.is_empty() {
            "restrict what reaches them or take them down (see each one's reason)".to_owned()
        } else {
            format!(
                "attach to them (`apifence attach {}`), or take down those nothing should arrive \
                 on",
                attach.join(" ")
            )
        };
        bail!(
            "{} unfiltered interface(s) could deliver traffic to the protected ports: {}; {fix}{}",
            open.len(),
            names.join(", "),
            l3_note(&open)
        );
    }
    Ok(())
}

/// A note for L3 devices (frames start at the IP header): which of them apifence attaches to,
/// and in which mode; and for the tunnels it can't filter.
fn l3_note(open: &[&Assessment]) -> &'static str {
    use crate::policy::bypass::LinkKind;
    let l3 = open
        .iter()
        .any(|a| matches!(a.kind, LinkKind::Tun | LinkKind::Wireguard | LinkKind::Ipip));
    let gre = open.iter().any(|a| a.kind == LinkKind::Gre);
    match (l3, gre) {
        (true, false) => {
            " (tun and wireguard devices have no Ethernet header: apifence attaches its IP-header \
             parser to them, in skb mode, which --xdp-mode auto picks; ipip, sit and ip6tnl \
             devices are refused, see the README's \"Where to attach\")"
        }
        (_, true) => {
            " (gretap and ip6gretap devices carry Ethernet and are attached like any other; on \
             gre and ip6gre devices XDP's frames start at the outer header, so apifence refuses \
             them: restrict GRE, IP protocol 47, to known peers or take them down; tun and \
             wireguard devices are attached in skb mode; see the README's \"Where to attach\")"
        }
        (false, false) => "",
    }
}
