//! The deny log: denied (and would-deny) packets reported by the XDP program through the
//! `DENY_EVENTS` ring buffer, aggregated per (source, port, interface), so `apifence denied`
//! can show an operator the address they are really coming from.
//!
//! - [`DenyLog`] is the aggregate: count, first and last seen per key, bounded to a number of
//!   keys ([`DEFAULT_MAX_ENTRIES`]); when full, the least recently seen key is evicted and
//!   counted. Pure apart from interface names.
//! - [`Clock`] turns the program's `bpf_ktime_get_ns()` (`CLOCK_MONOTONIC`, since boot, not
//!   counting suspend) into wall-clock UTC.
//! - [`DenyReader`] consumes the pinned ring buffer. A ring buffer has one consumer position,
//!   shared by everyone who maps it: exactly one reader (the daemon) may run at a time, or
//!   events are split between readers.
//!
//! The program rate-limits events per CPU (`DENY_EVENTS_PER_SEC_PER_CPU`) and counts what it
//! did not report in the `deny_events_suppressed` counter of [`crate::kernel::operations::Stats`].

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::{Map, MapData, MapError, RingBuf};
use filter_common::{DENY_KIND_WOULD_DROP, DenyEvent, MAP_DENY_EVENTS};
use time::OffsetDateTime;
use tokio::io::{Interest, unix::AsyncFd};

use crate::{daemon::denied::DeniedSource, kernel::paths::PinLayout};

/// Default bound on distinct (source, port, interface) keys kept by a [`DenyLog`].
pub const DEFAULT_MAX_ENTRIES: usize = 10_000;

/// What one key of the aggregate is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DenyKey {
    /// Source address of the denied packets.
    pub source: IpAddr,
    /// TCP destination port (0 when it could not be read, e.g. a later fragment).
    pub port: u16,
    /// Interface index the packets arrived on (in the namespace of the attached interface).
    pub ifindex: u32,
}

/// Converts `bpf_ktime_get_ns()` timestamps to wall-clock time: a pair of readings of the
/// monotonic clock and the wall clock taken together.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Clock {
    wall: OffsetDateTime,
    monotonic_ns: u64,
}

impl Clock {
    /// Reads both clocks now.
    pub fn now() -> Self {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer; CLOCK_MONOTONIC always exists on Linux.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
        let monotonic_ns = (ts.tv_sec as u64)
            .saturating_mul(1_000_000_000)
            .saturating_add(ts.tv_nsec as u64);
        Self {
            wall: OffsetDateTime::now_utc(),
            monotonic_ns,
        }
    }

    /// A clock whose monotonic reading `monotonic_ns` corresponds to `wall` (for tests).
    pub fn at(wall: OffsetDateTime, monotonic_ns: u64) -> Self {
        Self { wall, monotonic_ns }
    }

    /// The wall-clock time of the monotonic timestamp `ktime_ns`.
    pub fn wall_time(&self, ktime_ns: u64) -> OffsetDateTime {
        let delta =
            |ns: u64| time::Duration::new((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as i32);
        if ktime_ns <= self.monotonic_ns {
            self.wall - delta(self.monotonic_ns - ktime_ns)
        } else {
            self.wall + delta(ktime_ns - self.monotonic_ns)
        }
    }
}

/// The aggregate of one key.
#[derive(Clone, Debug)]
struct Aggregate {
    count: u64,
    first_ns: u64,
    last_ns: u64,
    first_seen: OffsetDateTime,
    last_seen: OffsetDateTime,
    interface: String,
    would_drop: bool,
}

/// Finds an interface's name from its index.
pub type InterfaceNamer = fn(u32) -> Option<String>;

/// Denied packets aggregated per (source, port, interface), bounded in size.
#[derive(Debug)]
pub struct DenyLog {
    max_entries: usize,
    entries: HashMap<DenyKey, Aggregate>,
    /// `(last_ns, key)` of every entry: the first is the least recently seen.
    by_recency: BTreeSet<(u64, DenyKey)>,
    names: HashMap<u32, String>,
    namer: InterfaceNamer,
    events: u64,
    evicted: u64,
    undecodable: u64,
}

impl Default for DenyLog {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_ENTRIES)
    }
}

impl DenyLog {
    /// An empty log keeping at most `max_entries` keys (at least 1).
    pub fn new(max_entries: usize) -> Self {
        Self {
            max_entries: max_entries.max(1),
            entries: HashMap::new(),
            by_recency: BTreeSet::new(),
            names: HashMap::new(),
            namer: interface_name,
            events: 0,
            evicted: 0,
            undecodable: 0,
        }
    }

    /// The same log, naming interfaces with `namer` instead of `if_indextoname`.
    #[must_use]
    pub fn with_namer(mut self, namer: InterfaceNamer) -> Self {
        self.namer = namer;
        self
    }

    /// Adds one event; `clock` converts its timestamp.
    pub fn record(&mut self, event: &DenyEvent, clock: &Clock) {
        self.events += 1;
        let Some(source) = source_of(event) else {
            self.undecodable += 1;
            return;
        };
        let key = DenyKey {
            source,
            port: event.port,
            ifindex: event.ifindex,
        };
        let ns = event.timestamp_ns;
        let at = clock.wall_time(ns);
        let would_drop = event.kind == DENY_KIND_WOULD_DROP;
        if let Some(entry) = self.entries.get_mut(&key) {
            entry.count += 1;
            entry.would_drop = would_drop;
            // Events of different CPUs may arrive slightly out of order.
            if ns < entry.first_ns {
                entry.first_ns = ns;
                entry.first_seen = at;
            }
            if ns > entry.last_ns {
                self.by_recency.remove(&(entry.last_ns, key));
                entry.last_ns = ns;
                entry.last_seen = at;
                self.by_recency.insert((ns, key));
            }
            return;
        }
        while self.entries.len() >= self.max_entries {
            let Some(oldest) = self.by_recency.pop_first() else {
                break;
            };
            self.entries.remove(&oldest.1);
            self.evicted += 1;
        }
        let interface = self.interface(event.ifindex);
        self.entries.insert(
            key,
            Aggregate {
                count: 1,
                first_ns: ns,
                last_ns: ns,
                first_seen: at,
                last_seen: at,
                interface,
                would_drop,
            },
        );
        self.by_recency.insert((ns, key));
    }

    /// Adds one ring-buffer record; counts it as undecodable if it is not a `DenyEvent`.
    pub fn record_bytes(&mut self, bytes: &[u8], clock: &Clock) {
        match decode(bytes) {
            Some(event) => self.record(&event, clock),
            None => {
                self.events += 1;
                self.undecodable += 1;
            }
        }
    }

    fn interface(&mut self, ifindex: u32) -> String {
        if let Some(name) = self.names.get(&ifindex) {
            return name.clone();
        }
        let name = (self.namer)(ifindex).unwrap_or_else(|| format!("ifindex {ifindex}"));
        self.names.insert(ifindex, name.clone());
        name
    }

    /// The `n` keys with the most packets (ties: most recently seen first).
    pub fn top(&self, n: usize) -> Vec<DeniedSource> {
        let mut rows: Vec<(&DenyKey, &Aggregate)> = self.entries.iter().collect();
        rows.sort_by(|(ka, a), (kb, b)| {
            b.count
                .cmp(&a.count)
                .then(b.last_ns.cmp(&a.last_ns))
                .then(ka.cmp(kb))
        });
        rows.into_iter()
            .take(n)
            .map(|(key, entry)| DeniedSource {
                source: key.source,
                count: entry.count,
                first_seen: entry.first_seen,
                last_seen: entry.last_seen,
                port: key.port,
                interface: entry.interface.clone(),
                ifindex: key.ifindex,
                would_drop: entry.would_drop,
            })
            .collect()
    }

    /// Every key, most packets first.
    pub fn all(&self) -> Vec<DeniedSource> {
        self.top(usize::MAX)
    }

    /// Distinct keys held.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing was recorded (or everything was forgotten).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Events received so far.
    pub fn events(&self) -> u64 {
        self.events
    }

    /// Keys dropped to stay within the bound.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Records that were not a valid event.
    pub fn undecodable(&self) -> u64 {
        self.undecodable
    }

    /// Forgets every key (counters of events and evictions stay).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.by_recency.clear();
    }
}

/// The source address of `event`, or `None` for an unknown family.
fn source_of(event: &DenyEvent) -> Option<IpAddr> {
    match event.family {
        4 => {
            let [a, b, c, d, ..] = event.source;
            Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
        }
        6 => Some(IpAddr::V6(Ipv6Addr::from(event.source))),
        _ => None,
    }
}

/// Reads one ring-buffer record as a [`DenyEvent`] (`None` when the length is wrong).
pub fn decode(bytes: &[u8]) -> Option<DenyEvent> {
    if bytes.len() != std::mem::size_of::<DenyEvent>() {
        return None;
    }
    // SAFETY: the length matches and `DenyEvent` is plain old data valid for any bytes.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<DenyEvent>()) })
}

/// The name of interface `ifindex` in the calling thread's network namespace.
pub fn interface_name(ifindex: u32) -> Option<String> {
    let mut buf = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `buf` has IF_NAMESIZE bytes as the call requires.
    let name = unsafe { libc::if_indextoname(ifindex, buf.as_mut_ptr()) };
    if name.is_null() {
        return None;
    }
    // SAFETY: on success the buffer holds a NUL-terminated name.
    let name = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
    Some(name.to_string_lossy().into_owned())
}

/// The ring buffer can't be opened or polled.
#[derive(Debug, thiserror::Error)]
pub enum DenyLogError {
    /// The pinned map is missing or not a ring buffer.
    #[error(
        "opening the deny-event ring buffer {}: {source}; is apifence attached with this bpffs \
         directory? If it was attached by an older apifence without a deny log, run \
         `apifence detach --all` and attach again",
        path.display()
    )]
    Open {
        /// Pin path.
        path: PathBuf,
        /// The aya error.
        #[source]
        source: MapError,
    },
    /// Waiting for events failed.
    #[error("waiting for deny events: {0}")]
    Poll(#[source] io::Error),
}

/// How often the reader task checks that the pinned ring buffer is still the one it reads
/// (the daemon loads the filter again when its pins were removed).
const REOPEN_CHECK: Duration = Duration::from_secs(2);

/// The consumer of the pinned `DENY_EVENTS` ring buffer.
pub struct DenyReader {
    ring: RingBuf<MapData>,
    path: PathBuf,
    /// Kernel id of the map read, to notice when the pin names another one.
    id: Option<u32>,
}

/// Kernel id of the map pinned at `path`, if one is.
fn pinned_id(path: &Path) -> Option<u32> {
    MapData::from_pin(path)
        .ok()?
        .info()
        .ok()
        .map(|info| info.id())
}

impl DenyReader {
    /// Opens the ring buffer pinned under `layout`.
    pub fn open(layout: &PinLayout) -> Result<Self, DenyLogError> {
        Self::open_path(layout.map(MAP_DENY_EVENTS))
    }

    fn open_path(path: PathBuf) -> Result<Self, DenyLogError> {
        let opened = MapData::from_pin(&path).and_then(|data| {
            let id = data.info().ok().map(|info| info.id());
            Ok((id, RingBuf::try_from(Map::from_map_data(data)?)?))
        });
        let (id, ring) = opened.map_err(|source| DenyLogError::Open {
            path: path.clone(),
            source,
        })?;
        Ok(Self { ring, path, id })
    }

    /// Moves every event available now into `log`; returns how many there were.
    pub fn drain(&mut self, log: &mut DenyLog) -> usize {
        drain_ring(&mut self.ring, log)
    }

    /// Waits at most `timeout` for events; returns whether some are available.
    pub fn wait(&self, timeout: Duration) -> Result<bool, DenyLogError> {
        let mut fds = libc::pollfd {
            fd: self.ring.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let millis = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        loop {
            // SAFETY: one valid pollfd for the duration of the call.
            let ready = unsafe { libc::poll(&raw mut fds, 1, millis) };
            if ready >= 0 {
                return Ok(ready > 0);
            }
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                return Err(DenyLogError::Poll(error));
            }
        }
    }

    /// Feeds `log` until `shutdown` completes: the daemon's deny-log task. The lock on `log`
    /// is held only while a batch is moved in. When the pin comes to name another ring buffer
    /// (the filter was removed and loaded again), the task switches to it within a few
    /// seconds; while no ring buffer is pinned it waits for one.
    pub async fn run(
        self,
        log: Arc<Mutex<DenyLog>>,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), DenyLogError> {
        tokio::pin!(shutdown);
        let path = self.path.clone();
        let mut current = Some(self);
        loop {
            let Some(reader) = current.take() else {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    () = tokio::time::sleep(REOPEN_CHECK) => {}
                }
                current = Self::open_path(path.clone()).ok();
                if current.is_some() {
                    tracing::info!(map = %path.display(), "deny log: reading the new ring buffer");
                }
                continue;
            };
            let id = reader.id;
            // SAFETY: the ring buffer owns its map descriptor and keeps it open, unchanged,
            // for as long as it lives, which is as long as the `AsyncFd` holding it.
            let mut fd =
                unsafe { AsyncFd::register_with_interest(reader.ring, Interest::READABLE) }
                    .map_err(|e| DenyLogError::Poll(e.into_parts().1))?;
            // Events that arrived before the first wake-up.
            drain_locked(fd.get_mut(), &log);
            let mut check = tokio::time::interval(REOPEN_CHECK);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = &mut shutdown => return Ok(()),
                    ready = fd.readable_mut() => {
                        let mut guard = ready.map_err(DenyLogError::Poll)?;
                        drain_locked(guard.get_inner_mut(), &log);
                        guard.clear_ready();
                    }
                    _ = check.tick() => {
                        if pinned_id(&path) != id {
                            // Whatever is left in the old buffer still counts.
                            drain_locked(fd.get_mut(), &log);
                            break;
                        }
                    }
                }
            }
            drop(fd);
            current = Self::open_path(path.clone()).ok();
        }
    }
}

fn drain_locked(ring: &mut RingBuf<MapData>, log: &Mutex<DenyLog>) {
    let mut log = log
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    drain_ring(ring, &mut log);
}

fn drain_ring(ring: &mut RingBuf<MapData>, log: &mut DenyLog) -> usize {
    let clock = Clock::now();
    let mut n = 0;
    while let Some(item) = ring.next() {
        log.record_bytes(&item, &clock);
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::denied::{DeniedQuery, DeniedReport};
    use filter_common::DENY_KIND_DROPPED;
    use time::format_description::well_known::Rfc3339;

    const SECOND: u64 = 1_000_000_000;

    fn clock() -> Clock {
        Clock::at(
            OffsetDateTime::parse("2025-11-28T12:00:00Z", &Rfc3339).unwrap(),
            1_000 * SECOND,
        )
    }

    fn names(ifindex: u32) -> Option<String> {
        (ifindex == 2).then(|| "eth0".to_owned())
    }

    fn event(source: &str, port: u16, ifindex: u32, at_ns: u64) -> DenyEvent {
        let mut event = DenyEvent {
            timestamp_ns: at_ns,
            port,
            ifindex,
            kind: DENY_KIND_DROPPED,
            ..DenyEvent::default()
        };
        match source.parse::<IpAddr>().unwrap() {
            IpAddr::V4(v4) => {
                event.family = 4;
                event.source[..4].copy_from_slice(&v4.octets());
            }
            IpAddr::V6(v6) => {
                event.family = 6;
                event.source = v6.octets();
            }
        }
        event
    }

    fn bytes(event: &DenyEvent) -> Vec<u8> {
        // SAFETY: reading the bytes of a plain `repr(C)` value without padding.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(event).cast::<u8>(),
                std::mem::size_of::<DenyEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn converts_monotonic_time_to_wall_clock() {
        let clock = clock();
        let rfc = |ns| clock.wall_time(ns).format(&Rfc3339).unwrap();
        assert_eq!(rfc(1_000 * SECOND), "2025-11-28T12:00:00Z");
        assert_eq!(rfc(999 * SECOND + SECOND / 2), "2025-11-28T11:59:59.5Z");
        assert_eq!(rfc(1_001 * SECOND), "2025-11-28T12:00:01Z");
        let now = Clock::now();
        let drift = now.wall_time(now.monotonic_ns) - OffsetDateTime::now_utc();
        assert!(drift.abs() < time::Duration::seconds(1));
    }

    #[test]
    fn aggregates_per_source_port_and_interface() {
        let clock = clock();
        let mut log = DenyLog::new(100).with_namer(names);
        log.record(&event("192.0.2.7", 6443, 2, 990 * SECOND), &clock);
        log.record(&event("192.0.2.7", 6443, 2, 995 * SECOND), &clock);
        // Out of order: an earlier event from another CPU arrives late.
        log.record(&event("192.0.2.7", 6443, 2, 980 * SECOND), &clock);
        log.record(&event("192.0.2.7", 443, 2, 991 * SECOND), &clock);
        log.record(&event("2001:db8::5", 6443, 9, 992 * SECOND), &clock);
        log.record_bytes(&bytes(&event("2001:db8::5", 6443, 9, 993 * SECOND)), &clock);
        log.record_bytes(&[0u8; 7], &clock);
        assert_eq!(log.events(), 7);
        assert_eq!(log.undecodable(), 1);
        assert_eq!(log.len(), 3);

        let top = log.top(10);
        let rows: Vec<(String, u64, u16, &str)> = top
            .iter()
            .map(|r| (r.source.to_string(), r.count, r.port, r.interface.as_str()))
            .collect();
        assert_eq!(
            rows,
            [
                ("192.0.2.7".into(), 3, 6443, "eth0"),
                ("2001:db8::5".into(), 2, 6443, "ifindex 9"),
                ("192.0.2.7".into(), 1, 443, "eth0"),
            ]
        );
        assert_eq!(log.top(1).len(), 1);
        let json = serde_json::to_value(&top[0]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "source": "192.0.2.7", "count": 3,
                "first_seen": "2025-11-28T11:59:40Z", "last_seen": "2025-11-28T11:59:55Z",
                "port": 6443, "interface": "eth0"
            })
        );
        let back: DeniedSource = serde_json::from_value(json).unwrap();
        assert_eq!(back.first_seen, top[0].first_seen);
    }

    #[test]
    fn stays_bounded_evicting_the_least_recent() {
        let clock = clock();
        let mut log = DenyLog::new(3).with_namer(names);
        for (i, source) in ["192.0.2.1", "192.0.2.2", "192.0.2.3"].iter().enumerate() {
            log.record(&event(source, 6443, 2, (900 + i as u64) * SECOND), &clock);
        }
        // .1 is seen again, so .2 is now the least recent.
        log.record(&event("192.0.2.1", 6443, 2, 950 * SECOND), &clock);
        log.record(&event("192.0.2.4", 6443, 2, 951 * SECOND), &clock);
        assert_eq!(log.len(), 3);
        assert_eq!(log.evicted(), 1);
        let mut sources: Vec<String> = log.all().iter().map(|r| r.source.to_string()).collect();
        sources.sort();
        assert_eq!(sources, ["192.0.2.1", "192.0.2.3", "192.0.2.4"]);

        let mut big = DenyLog::new(DEFAULT_MAX_ENTRIES).with_namer(names);
        for i in 0..(DEFAULT_MAX_ENTRIES as u32 + 500) {
            let source = Ipv4Addr::from(0x0a00_0000 + i).to_string();
            big.record(&event(&source, 6443, 2, u64::from(i)), &clock);
        }
        assert_eq!(big.len(), DEFAULT_MAX_ENTRIES);
        assert_eq!(big.evicted(), 500);
        assert!(
            big.all()
                .iter()
                .all(|r| r.source != IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)))
        );
        big.clear();
        assert!(big.is_empty());
    }

    #[test]
    fn report_table_for_people() {
        let clock = clock();
        let mut log = DenyLog::new(100).with_namer(names);
        log.record(&event("192.0.2.7", 6443, 2, 990 * SECOND + 123), &clock);
        log.record(&event("2001:db8::5", 443, 2, 995 * SECOND), &clock);
        let report = DeniedReport {
            sources: log.top(1),
            distinct: log.len(),
            events: log.events(),
            evicted: 3,
            suppressed: Some(500),
        };
        let table = report.table();
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(
            lines[0],
            "SOURCE          COUNT   PORT  INTERFACE   FIRST SEEN            LAST SEEN"
        );
        assert_eq!(
            lines[1],
            "2001:db8::5         1    443  eth0        2025-11-28T11:59:55Z  2025-11-28T11:59:55Z"
        );
        assert_eq!(lines[2], "(1 of 2 sources shown; --top N shows more)");
        assert!(lines[3].starts_with("(3 older sources"), "{table}");
        assert!(
            lines[4].starts_with("(500 denied packets were not reported"),
            "{table}"
        );
        let empty = DeniedReport::default().table();
        assert_eq!(
            empty,
            "no denied packets recorded since the daemon started\n"
        );
        let query: DeniedQuery = serde_json::from_str("{}").unwrap();
        assert_eq!(query.top, None);
    }

    #[test]
    fn interface_names_come_from_the_kernel() {
        assert_eq!(interface_name(1).as_deref(), Some("lo"));
        assert_eq!(interface_name(0), None);
    }
}
