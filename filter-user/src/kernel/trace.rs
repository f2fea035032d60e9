//! The verdict trace's kernel side: swapping the trace program (`apifence_trace`, the same
//! filter that also reports its verdicts through aya-log) in for the production program on
//! every pinned link and back, reading its records, and restoring the production program
//! when a trace process died without doing so.
//!
//! The swap is `bpf_link_update` with `BPF_F_REPLACE` on the pinned links, so every packet is
//! judged by one of the two programs (same maps, same verdict code): there is no moment
//! without enforcement, and a swap never overwrites a program someone else put on the link.
//! A running trace holds an exclusive `flock` on the pinned links directory; a trace program
//! on a link while nobody holds that lock was left by a trace process that died, and
//! [`restore_abandoned`] puts the production program back.

use std::{
    fs::{File, TryLockError},
    net::IpAddr,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    sync::{Arc, Mutex, PoisonError},
};

use aya::{
    Ebpf,
    programs::{ProgramError, loaded_programs},
};
use aya_log::EbpfLogger;
use filter_common::{
    TRACE_FAMILY_ANY, TRACE_FAMILY_V4, TRACE_FAMILY_V6, TRACE_PROGRAM_NAME, TraceFilter,
};
use ipnet::IpNet;
use serde::Serialize;

use crate::kernel::{
    attach::{self, AttachError, Instance},
    framing::Framing,
    paths::PinLayout,
};

/// A trace could not start, read or end.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// Loading the trace program or swapping it on a link.
    #[error(transparent)]
    Attach(#[from] AttachError),
    /// Nothing is attached under this directory.
    #[error(
        "apifence is not attached (no pins under {0}); run `apifence attach IFACE` first, or \
         pass the --bpffs directory it was attached with"
    )]
    NotAttached(String),
    /// Attached, but to no interface.
    #[error("no interface is attached under {0}; nothing to trace")]
    NoInterfaces(String),
    /// Another `apifence trace` is running on these pins.
    #[error(
        "another `apifence trace` is running on the filter under {0}; wait for it to end (or \
         stop it with Ctrl-C)"
    )]
    Busy(String),
    /// Taking or testing the trace lock.
    #[error("locking {path}: {source}")]
    Lock {
        /// The locked directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating the trace program's descriptor.
    #[error("duplicating the trace program's descriptor: {0}")]
    Descriptor(#[source] std::io::Error),
    /// The trace program's log ring buffer.
    #[error("reading the trace program's records: {0}")]
    Logger(#[from] aya_log::Error),
    /// Reading the program on a link.
    #[error("reading the program attached to {interface}: {source}")]
    Program {
        /// The interface.
        interface: String,
        /// The aya error.
        #[source]
        source: ProgramError,
    },
    /// A record the trace program does not write.
    #[error("unreadable trace record {record:?}: {reason}")]
    BadRecord {
        /// The record as received.
        record: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// The trace program's source filter for `--source` (every source when `None`).
pub fn trace_filter(source: Option<IpNet>) -> TraceFilter {
    let Some(net) = source else {
        return TraceFilter {
            family: TRACE_FAMILY_ANY,
            ..TraceFilter::default()
        };
    };
    let (family, net_bytes, mask_bytes) = match net.trunc() {
        IpNet::V4(v4) => {
            let mut net = [0u8; 16];
            let mut mask = [0u8; 16];
            net[..4].copy_from_slice(&v4.network().octets());
            mask[..4].copy_from_slice(&v4.netmask().octets());
            (TRACE_FAMILY_V4, net, mask)
        }
        IpNet::V6(v6) => (
            TRACE_FAMILY_V6,
            v6.network().octets(),
            v6.netmask().octets(),
        ),
    };
    let words = |bytes: [u8; 16]| -> [u32; 4] {
        std::array::from_fn(|i| {
            u32::from_ne_bytes([
                bytes[4 * i],
                bytes[4 * i + 1],
                bytes[4 * i + 2],
                bytes[4 * i + 3],
            ])
        })
    };
    TraceFilter {
        family,
        net: words(net_bytes),
        mask: words(mask_bytes),
    }
}

/// One packet as the trace program reported it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct TraceRecord {
    /// `pass`, `drop` or `would-drop`.
    pub verdict: String,
    /// Why: `authorized`, `port-not-protected`, `filter-disabled`, `no-rule-matched` or
    /// `no-rule-matched-monitor`.
    pub reason: String,
    /// The packet's source address.
    pub source: IpAddr,
    /// TCP destination port; `None` when it could not be read (a later fragment, a truncated
    /// header, an IPv6 extension chain longer than the parser walks): such packets are judged
    /// as if the port were protected.
    pub port: Option<u16>,
    /// VLAN tags walked.
    pub vlan_tags: u8,
    /// IPv6 extension headers walked.
    pub ipv6_extensions: u8,
    /// The IPv4 header had options.
    pub ipv4_options: bool,
    /// A non-first fragment (it carries no TCP header).
    pub later_fragment: bool,
    /// The policy slot the packet was judged against.
    pub slot: u32,
    /// The interface it arrived on.
    pub ifindex: u32,
    /// The source lookup: `hit`, `miss` or `skipped` (port not protected, filter disabled).
    pub lookup: String,
    /// The rule id that authorized it (on a hit).
    pub rule: Option<u32>,
}

impl TraceRecord {
    /// Parses one record of the trace program (`filter-ebpf/src/trace.rs` writes the format).
    pub fn parse(record: &str) -> Result<Self, TraceError> {
        let bad = |reason: String| TraceError::BadRecord {
            record: record.to_string(),
            reason,
        };
        let fields: Vec<(&str, &str)> = record
            .split_whitespace()
            .map(|field| {
                field
                    .split_once('=')
                    .ok_or_else(|| bad(format!("{field:?} is not key=value")))
            })
            .collect::<Result<_, _>>()?;
        let get = |key: &str| {
            fields
                .iter()
                .find(|(k, _)| *k == key)
                .map(|(_, v)| *v)
                .ok_or_else(|| bad(format!("no {key}")))
        };
        fn number<T: std::str::FromStr>(
            value: &str,
            key: &str,
            bad: &dyn Fn(String) -> TraceError,
        ) -> Result<T, TraceError> {
            value
                .parse()
                .map_err(|_| bad(format!("{key}={value} is not a number")))
        }
        let port: u16 = number(get("port")?, "port", &bad)?;
        let port_read: u8 = number(get("port_read")?, "port_read", &bad)?;
        let rule: u32 = number(get("rule")?, "rule", &bad)?;
        let source = get("source")?;
        Ok(Self {
            verdict: get("verdict")?.to_string(),
            reason: get("reason")?.to_string(),
            // IPv4 sources come IPv4-mapped.
            source: source
                .parse::<IpAddr>()
                .map_err(|_| bad(format!("source={source} is not an address")))?
                .to_canonical(),
            port: (port_read != 0).then_some(port),
            vlan_tags: number(get("vlan")?, "vlan", &bad)?,
            ipv6_extensions: number(get("ipv6_ext")?, "ipv6_ext", &bad)?,
            ipv4_options: number::<u8>(get("ipv4_options")?, "ipv4_options", &bad)? != 0,
            later_fragment: number::<u8>(get("later_fragment")?, "later_fragment", &bad)? != 0,
            slot: number(get("slot")?, "slot", &bad)?,
            ifindex: number(get("ifindex")?, "ifindex", &bad)?,
            lookup: get("lookup")?.to_string(),
            rule: (rule != u32::MAX).then_some(rule),
        })
    }

    /// The way the parser took, e.g. `eth/vlan/ipv6/ext/ext/tcp`.
    pub fn path(&self) -> String {
        let mut path = String::from("eth");
        for _ in 0..self.vlan_tags {
            path.push_str("/vlan");
        }
        match self.source {
            IpAddr::V4(_) if self.ipv4_options => path.push_str("/ipv4+options"),
            IpAddr::V4(_) => path.push_str("/ipv4"),
            IpAddr::V6(_) => path.push_str("/ipv6"),
        }
        for _ in 0..self.ipv6_extensions {
            path.push_str("/ext");
        }
        if self.later_fragment {
            path.push_str("/later-fragment");
        } else if self.port.is_none() {
            path.push_str("/tcp(port unreadable)");
        } else {
            path.push_str("/tcp");
        }
        path
    }
}

/// Collects the trace program's records (aya-log hands them to a `log::Log`).
struct Collector(Arc<Mutex<Vec<String>>>);

impl log::Log for Collector {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(record.args().to_string());
    }

    fn flush(&self) {}
}

/// The exclusive lock a running trace holds on the pinned links directory; `None` when another
/// process holds it (a trace is running).
fn try_lock_traces(layout: &PinLayout) -> Result<Option<File>, TraceError> {
    let dir = layout.links_dir();
    let error = |source| TraceError::Lock {
        path: dir.display().to_string(),
        source,
    };
    let file = File::open(&dir).map_err(error)?;
    match file.try_lock() {
        Ok(()) => Ok(Some(file)),
        Err(TryLockError::WouldBlock) => Ok(None),
        Err(TryLockError::Error(source)) => Err(error(source)),
    }
}

/// What [`restore_abandoned`] found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Abandoned {
    /// A trace is running now (its links are left alone).
    pub trace_running: bool,
    /// Interfaces that ran a trace program nobody reads any more and run the production
    /// program again now.
    pub restored: Vec<String>,
}

/// Puts the production program back on every link that still runs a trace program of a trace
/// process that is gone. Such a link kept enforcing (same maps, same verdicts); this only
/// stops the tracing. Links of a running trace are left alone.
pub fn restore_abandoned(layout: &PinLayout) -> Result<Abandoned, TraceError> {
    if !attach::is_loaded(layout) || !layout.links_dir().exists() {
        return Ok(Abandoned::default());
    }
    let Some(_lock) = try_lock_traces(layout)? else {
        return Ok(Abandoned {
            trace_running: true,
            restored: Vec::new(),
        });
    };
    Ok(Abandoned {
        trace_running: false,
        restored: restore_locked(layout)?,
    })
}

/// [`restore_abandoned`] with the trace lock held.
fn restore_locked(layout: &PinLayout) -> Result<Vec<String>, TraceError> {
    let production = attach::pinned_program_fd(layout)?;
    let production_id = attach::program_id(layout);
    let mut restored = Vec::new();
    for interface in attach::attached_interfaces(layout) {
        let Some((_, program_id)) = attach::link_ids(layout, &interface) else {
            continue;
        };
        if Some(program_id) == production_id {
            continue;
        }
        let Some(info) = loaded_programs()
            .filter_map(Result::ok)
            .find(|info| info.id() == program_id)
        else {
            continue;
        };
        if info.name_as_str() != Some(TRACE_PROGRAM_NAME) {
            continue;
        }
        let trace = info.fd().map_err(|source| TraceError::Program {
            interface: interface.clone(),
            source,
        })?;
        attach::swap_program(layout, &interface, production.as_fd(), trace.as_fd())?;
        restored.push(interface);
    }
    Ok(restored)
}

/// How a trace ended on each interface.
#[derive(Clone, Debug, Default)]
pub struct TraceEnd {
    /// Interfaces that run the production program again.
    pub restored: Vec<String>,
    /// Interfaces whose program someone else replaced or removed during the trace (an upgrade,
    /// a detach), with why: left as they are.
    pub changed_meanwhile: Vec<(String, String)>,
}

/// A running trace: the trace program runs on every pinned link until [`TraceSession::finish`]
/// (or drop) puts the production program back.
pub struct TraceSession {
    layout: PinLayout,
    ebpf: Ebpf,
    logger: EbpfLogger<Collector>,
    records: Arc<Mutex<Vec<String>>>,
    swapped: Vec<String>,
    restored_first: Vec<String>,
    untraced: Vec<String>,
    _lock: File,
}

impl TraceSession {
    /// Loads the trace program for the sources `filter` selects next to the pinned one and
    /// swaps it in on every pinned link. On error, every link runs the production program.
    pub fn start(layout: &PinLayout, filter: TraceFilter) -> Result<Self, TraceError> {
        let dir = layout.root().display().to_string();
        if !attach::is_loaded(layout) || !layout.links_dir().exists() {
            return Err(TraceError::NotAttached(dir));
        }
        let lock = try_lock_traces(layout)?.ok_or_else(|| TraceError::Busy(dir.clone()))?;
        let restored_first = restore_locked(layout)?;
        // The trace program parses Ethernet frames: links of L3 devices (IP-first instance)
        // keep their program and are named as not traced.
        let production_id = attach::program_id(layout);
        let (interfaces, untraced): (Vec<String>, Vec<String>) =
            attach::attached_interfaces(layout)
                .into_iter()
                .partition(|interface| {
                    attach::link_ids(layout, interface).map(|(_, program)| program) == production_id
                });
        if interfaces.is_empty() {
            return Err(TraceError::NoInterfaces(dir));
        }
        let mut ebpf =
            attach::load_next_to_pins(layout, Framing::Ethernet, Instance::Trace(filter))?;
        let records = Arc::new(Mutex::new(Vec::new()));
        let logger = EbpfLogger::init_with_logger(&mut ebpf, Collector(records.clone()))?;
        let mut session = Self {
            layout: layout.clone(),
            ebpf,
            logger,
            records,
            swapped: Vec::new(),
            restored_first,
            untraced,
            _lock: lock,
        };
        let production = attach::pinned_program_fd(layout)?;
        for interface in interfaces {
            let trace = session.trace_fd()?;
            // On error, drop swaps the links already done back.
            attach::swap_program(layout, &interface, trace.as_fd(), production.as_fd())?;
            session.swapped.push(interface);
        }
        Ok(session)
    }

    /// A descriptor of the trace program.
    fn trace_fd(&mut self) -> Result<OwnedFd, TraceError> {
        let program = attach::embedded_program(&mut self.ebpf, TRACE_PROGRAM_NAME)?;
        let fd = program.fd().map_err(|source| TraceError::Program {
            interface: String::new(),
            source,
        })?;
        fd.as_fd()
            .try_clone_to_owned()
            .map_err(TraceError::Descriptor)
    }

    /// Interfaces that now run the trace program.
    pub fn interfaces(&self) -> &[String] {
        &self.swapped
    }

    /// Interfaces an earlier trace process left with its trace program, restored before this
    /// one started.
    pub fn restored_first(&self) -> &[String] {
        &self.restored_first
    }

    /// Attached interfaces the trace doesn't cover: L3 devices, whose IP-first program it
    /// doesn't replace.
    pub fn untraced(&self) -> &[String] {
        &self.untraced
    }

    /// Readable (for `poll`) when records are waiting.
    pub fn records_fd(&self) -> BorrowedFd<'_> {
        self.logger.as_fd()
    }

    /// The records received since the last call, oldest first (unparsed).
    pub fn take_records(&mut self) -> Vec<String> {
        self.logger.flush();
        std::mem::take(&mut *self.records.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts the production program back on every link the trace took.
    pub fn finish(mut self) -> Result<TraceEnd, TraceError> {
        self.restore()
    }

    fn restore(&mut self) -> Result<TraceEnd, TraceError> {
        let mut end = TraceEnd::default();
        if !attach::is_loaded(&self.layout) {
            end.changed_meanwhile = std::mem::take(&mut self.swapped)
                .into_iter()
                .map(|interface| (interface, "the filter was detached".to_string()))
                .collect();
            return Ok(end);
        }
        let production = attach::pinned_program_fd(&self.layout)?;
        let trace = self.trace_fd()?;
        let mut first_error = None;
        for interface in std::mem::take(&mut self.swapped) {
            match attach::swap_program(&self.layout, &interface, production.as_fd(), trace.as_fd())
            {
                Ok(()) => end.restored.push(interface),
                Err(AttachError::Pin { source, .. })
                    if matches!(
                        source.raw_os_error(),
                        Some(libc::EPERM | libc::ENOLINK | libc::ENOENT)
                    ) =>
                {
                    end.changed_meanwhile.push((interface, source.to_string()));
                }
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        match first_error {
            Some(e) => Err(e.into()),
            None => Ok(end),
        }
    }
}

impl Drop for TraceSession {
    fn drop(&mut self) {
        if !self.swapped.is_empty() {
            // Best effort (an early return or a panic): what fails here is restored by the next
            // `attach`, `status` or daemon tick, and enforced meanwhile.
            let _ = self.restore();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_mask_the_address_in_network_byte_order() {
        let any = trace_filter(None);
        assert_eq!(any.family, TRACE_FAMILY_ANY);
        let v4 = trace_filter(Some("198.18.0.7/24".parse().unwrap()));
        assert_eq!(v4.family, TRACE_FAMILY_V4);
        assert_eq!(v4.net[0].to_ne_bytes(), [198, 18, 0, 0]);
        assert_eq!(v4.mask[0].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(&v4.net[1..], &[0, 0, 0]);
        let v6 = trace_filter(Some("fd00:afe0::1/120".parse().unwrap()));
        assert_eq!(v6.family, TRACE_FAMILY_V6);
        assert_eq!(v6.net[0].to_ne_bytes(), [0xfd, 0, 0xaf, 0xe0]);
        assert_eq!(v6.mask[3].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(v6.net[3].to_ne_bytes(), [0, 0, 0, 0]);
    }

    const DROP: &str = "verdict=drop reason=no-rule-matched source=::ffff:198.18.0.3 port=6443 \
        port_read=1 vlan=0 ipv6_ext=0 ipv4_options=0 later_fragment=0 slot=1 ifindex=2 \
        lookup=miss rule=4294967295";

    #[test]
    fn records_parse_into_their_fields() {
        let record = TraceRecord::parse(DROP).unwrap();
        assert_eq!(record.verdict, "drop");
        assert_eq!(record.source, "198.18.0.3".parse::<IpAddr>().unwrap());
        assert_eq!(record.port, Some(6443));
        assert_eq!(record.rule, None);
        assert_eq!(record.lookup, "miss");
        assert_eq!(record.path(), "eth/ipv4/tcp");

        let hit = TraceRecord::parse(
            "verdict=pass reason=authorized source=fd00::2 port=0 port_read=0 vlan=2 \
             ipv6_ext=2 ipv4_options=0 later_fragment=1 slot=0 ifindex=3 lookup=hit rule=7",
        )
        .unwrap();
        assert_eq!(hit.rule, Some(7));
        assert_eq!(hit.port, None);
        assert_eq!(hit.path(), "eth/vlan/vlan/ipv6/ext/ext/later-fragment");
    }

    #[test]
    fn bad_records_name_the_problem() {
        let missing = TraceRecord::parse("verdict=drop").unwrap_err().to_string();
        assert!(missing.contains("no port"), "{missing}");
        let garbled = TraceRecord::parse(&DROP.replace("port=6443", "port=x"))
            .unwrap_err()
            .to_string();
        assert!(garbled.contains("port=x is not a number"), "{garbled}");
        let loose = TraceRecord::parse("verdict").unwrap_err().to_string();
        assert!(loose.contains("not key=value"), "{loose}");
    }
}
