//! `apifence trace`: why was this client dropped? Swaps the trace program in on every attached
//! interface, prints one line per TCP packet from the traced sources, and swaps the production
//! program back after `--count` packets, `--seconds` seconds or Ctrl-C.

use std::{
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::Args;
use ipnet::IpNet;
use serde::Serialize;

use super::Context;
use crate::{
    kernel::{
        operations::Filter,
        trace::{TraceRecord, TraceSession, trace_filter},
    },
    policy::language::parse_prefixes,
};

/// Shown after `apifence trace --help`.
pub const HELP: &str = "Examples:\n  apifence trace --source 203.0.113.7\n  \
apifence trace --source 2001:db8::/64 --count 5 --json\n\n\
Each line is one TCP packet from the traced sources: source, port, interface, the way the parser \
took (path), the policy slot, the lookup (hit with the rule and its range, miss, or skipped when \
the port is not protected or filtering is disabled), the verdict and why. The trace program \
replaces the filter on every attached interface for the duration (bpf_link_update: no packet \
goes unfiltered, same maps, same verdicts) and the filter is put back at the end. If this \
command is killed, the next `apifence attach`, `apifence status` or the daemon puts it back.";

/// Flags of `apifence trace`.
#[derive(Debug, Args)]
pub struct TraceArgs {
    /// Trace only sources in this prefix (an address or CIDR); default: every source.
    #[arg(long, value_name = "CIDR")]
    source: Option<String>,
    /// Stop after N packets.
    #[arg(long, value_name = "N", default_value_t = 100)]
    count: u64,
    /// Stop after S seconds.
    #[arg(long, value_name = "S", default_value_t = 60)]
    seconds: u64,
    /// One JSON object per line.
    #[arg(long)]
    json: bool,
}

/// One printed line.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    record: &'a TraceRecord,
    interface: String,
    path: String,
    range: Option<String>,
}

impl std::fmt::Display for Line<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let r = self.record;
        let port = r.port.map_or("unreadable".to_string(), |p| p.to_string());
        write!(
            f,
            "source={} port={port} interface={} path={} slot={} lookup={}",
            r.source, self.interface, self.path, r.slot, r.lookup
        )?;
        if let Some(rule) = r.rule {
            write!(f, " rule={rule}")?;
        }
        if let Some(range) = &self.range {
            write!(f, " range={range}")?;
        }
        write!(f, " verdict={} reason={}", r.verdict, r.reason)
    }
}

/// Parses `--source`: one address or prefix.
fn parse_source(text: &str) -> Result<IpNet> {
    let prefixes = parse_prefixes(text).with_context(|| format!("--source {text:?}"))?;
    match prefixes.as_slice() {
        [one] => Ok(*one),
        _ => bail!(
            "--source {text:?} must be one address or prefix (e.g. 203.0.113.7 or \
             2001:db8::/64), not {}",
            prefixes.len()
        ),
    }
}

/// SIGINT and SIGTERM, blocked and readable from a descriptor, so that Ctrl-C ends the trace
/// through the same `poll` that waits for records.
fn signal_fd() -> Result<OwnedFd> {
    // SAFETY: plain libc calls on a local, initialized signal set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            bail!(
                "blocking SIGINT and SIGTERM: {}",
                std::io::Error::last_os_error()
            );
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            bail!("signalfd: {}", std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Waits up to `timeout` until records or a signal arrive; returns whether a signal did.
fn wait(records: &impl AsFd, signals: &impl AsFd, timeout: Duration) -> Result<bool> {
    let mut fds = [
        libc::pollfd {
            fd: records.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
        libc::pollfd {
            fd: signals.as_fd().as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        },
    ];
    let millis = timeout.as_millis().min(1000) as libc::c_int;
    // SAFETY: `fds` is a live array of two initialized pollfd.
    let rc = unsafe { libc::poll(fds.as_mut_ptr(), 2, millis) };
    if rc < 0 {
        let error = std::io::Error::last_os_error();
        if error.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        bail!("waiting for trace records: {error}");
    }
    Ok(fds[1].revents & libc::POLLIN != 0)
}

/// The name of interface `ifindex` (its number when it has none any more).
fn interface_name(ifindex: u32) -> String {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has room for IF_NAMESIZE bytes, as if_indextoname requires.
    let found = unsafe { libc::if_indextoname(ifindex, name.as_mut_ptr()) };
    if found.is_null() {
        return format!("ifindex {ifindex}");
    }
    // SAFETY: if_indextoname wrote a NUL-terminated name.
    unsafe { std::ffi::CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// The range rule `rule` of `slot` stands for, read from the pinned policy.
fn range_of(filter: &Filter, slot: u32, rule: u32) -> Option<String> {
    let rules = filter.rules(slot).ok()?;
    rules
        .into_iter()
        .find(|(_, id)| *id == rule)
        .map(|(prefix, _)| prefix.to_string())
}

/// Runs `apifence trace`.
pub fn run(context: &Context, args: &TraceArgs) -> Result<()> {
    let source = args.source.as_deref().map(parse_source).transpose()?;
    if args.count == 0 || args.seconds == 0 {
        bail!("--count and --seconds must be at least 1");
    }
    let signals = signal_fd()?;
    let filter = Filter::open(&context.layout)?;
    let session = TraceSession::start(&context.layout, trace_filter(source))?;
    for interface in session.restored_first() {
        eprintln!(
            "warning: {interface} still ran the trace program of an earlier `apifence trace` \
             that ended without putting the filter back; restored it first"
        );
    }
    for interface in session.untraced() {
        eprintln!(
            "note: {interface} is not traced: it is an L3 device, whose frames start at the IP \
             header, and the trace program parses Ethernet frames (it stays filtered)"
        );
    }
    eprintln!(
        "tracing {} on {} (the filter keeps enforcing); stops after {} packets, {} s or Ctrl-C",
        source.map_or("every source".to_string(), |s| s.to_string()),
        session.interfaces().join(", "),
        args.count,
        args.seconds
    );
    trace_loop(&filter, session, &signals, args)
}

/// Prints records until the count, the time limit or a signal, then restores the filter.
fn trace_loop(
    filter: &Filter,
    mut session: TraceSession,
    signals: &OwnedFd,
    args: &TraceArgs,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let mut printed = 0;
    let mut printing = || -> Result<()> {
        while printed < args.count {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let interrupted = wait(&session.records_fd(), signals, deadline - now)?;
            for text in session.take_records() {
                if printed >= args.count {
                    break;
                }
                let record = TraceRecord::parse(&text)?;
                let line = Line {
                    record: &record,
                    interface: interface_name(record.ifindex),
                    path: record.path(),
                    range: record
                        .rule
                        .and_then(|rule| range_of(filter, record.slot, rule)),
                };
                if args.json {
                    crate::outln!("{}", serde_json::to_string(&line)?);
                } else {
                    crate::outln!("{line}");
                }
                printed += 1;
            }
            if interrupted {
                break;
            }
        }
        Ok(())
    };
    let printed_result = printing();
    let end = session.finish()?;
    eprintln!(
        "trace ended after {printed} packets; the filter runs again on {}",
        if end.restored.is_empty() {
            "no interface".to_string()
        } else {
            end.restored.join(", ")
        }
    );
    for (interface, why) in &end.changed_meanwhile {
        eprintln!(
            "warning: the program on {interface} was changed by someone else during the trace \
             ({why}); left as it is"
        );
    }
    printed_result
}
