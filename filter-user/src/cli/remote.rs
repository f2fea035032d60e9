//! The CLI's side of the daemon: send a request over the socket, and print the reply. When no
//! daemon answers, [`call`] says so and the CLI works on the pins directly.

use std::{fmt::Write as _, path::Path};

use anyhow::{Result, bail};

use crate::daemon::{
    desired::Diff,
    protocol::{
        self, ChangeReply, ClientError, ErrorKind, Reply, Request, Response, ShowReply, StatusReply,
    },
};

/// Sends `request` to the daemon on `socket`. `Ok(None)`: no daemon answers there. A refusal
/// or failure reported by the daemon is an error with its message (and details).
pub fn call(socket: &Path, request: &Request) -> Result<Option<Reply>> {
    match protocol::call(socket, request, protocol::CLIENT_TIMEOUT) {
        Ok(Response::Ok(reply)) => Ok(Some(reply)),
        Ok(Response::Error(error)) => {
            let mut message = error.message;
            if let Some(detail) = error.detail {
                let _ = write!(message, "\n{}", render_impact(&detail));
            }
            if error.kind == ErrorKind::Refused {
                message.push_str("\n(--dry-run shows the change; --force applies it anyway)");
            }
            bail!(message)
        }
        Err(ClientError::NoDaemon(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The error for a reply of the wrong kind (a daemon of another version).
pub fn unexpected(socket: &Path, reply: &Reply) -> anyhow::Error {
    let kind = serde_json::to_value(reply)
        .ok()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_owned))
        .unwrap_or_default();
    anyhow::anyhow!(
        "the apifence daemon on {} answered with a {kind:?} reply to another request; is it the \
         same version as this CLI (apifence status shows its version)?",
        socket.display()
    )
}

/// Human text of a diff, one line per item, indented by two spaces.
pub fn render_diff(diff: &Diff) -> String {
    let mut out = String::new();
    for entry in &diff.added {
        let _ = writeln!(out, "  add     {entry}");
    }
    for entry in &diff.removed {
        let _ = writeln!(out, "  remove  {entry}");
    }
    if !diff.merged_added.is_empty() || !diff.merged_removed.is_empty() {
        let _ = writeln!(
            out,
            "  after merging: {} prefixes start matching, {} stop",
            diff.merged_added.len(),
            diff.merged_removed.len()
        );
        for prefix in &diff.merged_added {
            let _ = writeln!(out, "    + {prefix}");
        }
        for prefix in &diff.merged_removed {
            let _ = writeln!(out, "    - {prefix}");
        }
    }
    if diff.filtering_before != diff.filtering_after {
        let _ = writeln!(
            out,
            "  filtering: {} -> {}",
            diff.filtering_before, diff.filtering_after
        );
    }
    if diff.mode_before != diff.mode_after {
        let _ = writeln!(
            out,
            "  mode: {} -> {}",
            diff.mode_before.as_str(),
            diff.mode_after.as_str()
        );
    }
    if out.is_empty() {
        out.push_str("  no change\n");
    }
    out
}

/// Human text of a change's impact: its `summary` lines when the daemon sent them (see
/// `impact::Impact::describe`), else the JSON as sent.
pub fn render_impact(impact: &serde_json::Value) -> String {
    match impact.get("summary").and_then(serde_json::Value::as_array) {
        Some(lines) => lines
            .iter()
            .filter_map(serde_json::Value::as_str)
            .map(|line| format!("  {line}"))
            .collect::<Vec<_>>()
            .join("\n"),
        None => serde_json::to_string_pretty(impact).unwrap_or_default(),
    }
}

/// Prints the outcome of a change (the same lines as the direct CLI when applied).
pub fn print_change(reply: &ChangeReply) -> Result<()> {
    if reply.dry_run {
        crate::outln!("dry run: nothing was changed; the change would do this:");
        crate::out!("{}", render_diff(&reply.diff));
        if let Some(impact) = &reply.impact {
            crate::outln!("impact:\n{}", render_impact(impact));
        }
        return Ok(());
    }
    if reply.diff.is_empty() {
        crate::outln!("no change");
        return Ok(());
    }
    super::output::mark_applied();
    if reply.diff.mode_before != reply.diff.mode_after {
        crate::outln!("mode: {}", reply.diff.mode_after.as_str());
    }
    match reply.diff.filtering_after.as_str() {
        "disabled" => crate::outln!("filtering disabled: all traffic passes"),
        "only_always_allowed" => crate::outln!("only the always-allow list may connect"),
        _ => crate::outln!(
            "enforced {} IPv4 and {} IPv6 prefixes (from {} and {} given) in {:.1} ms",
            reply.compiled.v4,
            reply.compiled.v6,
            reply.given.v4,
            reply.given.v6,
            reply.apply_ms
        ),
    }
    Ok(())
}

/// Prints `ranges show` from the daemon.
pub fn print_show(show: &ShowReply, json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(show)?);
        return Ok(());
    }
    let join = |items: Vec<String>| {
        if items.is_empty() {
            "-".to_string()
        } else {
            items.join(", ")
        }
    };
    crate::outln!(
        "filtering:    {}",
        if show.enabled {
            "enabled"
        } else {
            "disabled (all traffic passes)"
        }
    );
    crate::outln!("mode:         {}", show.mode.as_str());
    crate::outln!("lookup:       {}", show.lookup.name());
    crate::outln!(
        "ports:        {}",
        join(show.ports.iter().map(ToString::to_string).collect())
    );
    crate::outln!(
        "interfaces:   {}",
        join(
            show.interfaces
                .iter()
                .map(|(name, mode)| if show.stale_interfaces.contains(name) {
                    format!("{name} ({mode}, STALE: recreated, not filtered)")
                } else {
                    format!("{name} ({mode})")
                })
                .collect()
        )
    );
    crate::outln!("always allow: {}", join(show.always_allow.clone()));
    crate::outln!(
        "source:       {} ({})",
        show.source.as_str(),
        show.config.display()
    );
    crate::outln!(
        "ranges ({}; IPv4 {} -> {} and IPv6 {} -> {} after merging):",
        show.ranges.len(),
        show.given.v4,
        show.compiled.v4,
        show.given.v6,
        show.compiled.v6
    );
    for entry in &show.entries {
        let mut line = format!("  {}", entry.range);
        if entry.kind == "name" {
            let _ = write!(
                line,
                "  ({} prefixes, {} after merging)",
                entry.expanded, entry.merged
            );
        }
        if let Some(note) = &entry.meta.note {
            let _ = write!(line, "  # {note}");
        }
        if let Some(expires) = entry.meta.expires {
            let _ = write!(
                line,
                "  [expires {}]",
                crate::policy::timestamp::rfc3339(expires)
            );
        }
        crate::outln!("{line}");
    }
    if show.entries.is_empty() && show.enabled {
        crate::outln!("  0.0.0.0/32 (only the always-allow list)");
    }
    Ok(())
}

/// Prints `status`.
pub fn print_status(status: &StatusReply, json: bool) -> Result<()> {
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(status)?);
        return Ok(());
    }
    crate::outln!(
        "daemon:          pid {} (apifence {}), up since {}",
        status.pid,
        status.version,
        status.started_at
    );
    crate::outln!("config:          {}", status.config.display());
    crate::outln!(
        "ranges from:     {} (state file {})",
        status.ranges_from.as_str(),
        status.state_file.display()
    );
    crate::outln!(
        "filtering:       {} ({})",
        status.filtering,
        status.mode.as_str()
    );
    crate::outln!(
        "reloads:         {} ok, {} rejected",
        status.reloads,
        status.reload_failures
    );
    if let Some(error) = &status.last_reload_error {
        crate::outln!("last reload:     rejected: {error}");
    }
    if let Some(apply) = &status.last_apply {
        crate::outln!(
            "last apply:      {} ({:.1} ms; IPv4 {}, IPv6 {} prefixes)",
            apply.at,
            apply.duration_ms,
            apply.compiled.v4,
            apply.compiled.v6
        );
    }
    if let Some(source) = &status.source {
        let revision = source
            .applied_revision
            .map_or("none".to_string(), |r| format!("revision {r}"));
        match &source.error {
            None => crate::outln!("source:          {} ok, enforcing {revision}", source.name),
            Some(error) => crate::outln!("source:          {} FAILING: {error}", source.name),
        }
    }
    match status.program_id {
        Some(id) => crate::outln!("program:         id {id} ({})", status.bpffs.display()),
        None => crate::outln!(
            "program:         none pinned under {}",
            status.bpffs.display()
        ),
    }
    for (name, link) in &status.links {
        crate::outln!(
            "  {name}: link {} runs program {}{}",
            link.link_id,
            link.program_id,
            if link.live {
                ""
            } else {
                " (STALE: the interface was recreated)"
            }
        );
    }
    if status.reattachments > 0 {
        crate::outln!(
            "re-attached:     {} time(s) to recreated interfaces",
            status.reattachments
        );
    }
    if !status.missing_interfaces.is_empty() {
        crate::outln!(
            "not attached:    {} (retried every few seconds)",
            status.missing_interfaces.join(", ")
        );
    }
    Ok(())
}
