//! What `apifence denied` asks the daemon ([`DeniedQuery`]) and what it answers
//! ([`DeniedReport`] of [`DeniedSource`] rows): the deny log's types on the socket, owned by the
//! core so the protocol does not depend on the feature that fills them.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// One row of `apifence denied`.
///
/// JSON: `{"source": "192.0.2.7", "count": 3, "first_seen": "2025-11-28T16:46:00.123Z",
/// "last_seen": "…", "port": 6443, "interface": "eth0"}` (times RFC 3339, UTC).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedSource {
    /// Source address.
    pub source: IpAddr,
    /// Packets denied (or would-deny in monitor mode) that were reported.
    pub count: u64,
    /// First reported packet.
    #[serde(with = "time::serde::rfc3339")]
    pub first_seen: OffsetDateTime,
    /// Last reported packet.
    #[serde(with = "time::serde::rfc3339")]
    pub last_seen: OffsetDateTime,
    /// TCP destination port (0: unreadable, such as a later IP fragment).
    pub port: u16,
    /// Interface name, or `ifindex N` when the index has no name in the daemon's namespace.
    pub interface: String,
    /// Interface index (not in JSON: `interface` is the name).
    #[serde(skip)]
    pub ifindex: u32,
    /// Whether the last packet was only counted (monitor mode), not dropped (not in JSON).
    #[serde(skip)]
    pub would_drop: bool,
}

/// What `apifence denied` asks the daemon for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedQuery {
    /// At most this many rows, most packets first; `None`: all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
}

/// The daemon's answer to a [`DeniedQuery`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeniedReport {
    /// The rows asked for, most packets first.
    pub sources: Vec<DeniedSource>,
    /// Distinct (source, port, interface) keys held (may exceed `sources.len()`).
    pub distinct: usize,
    /// Events received since the daemon started.
    pub events: u64,
    /// Keys forgotten to stay within the bound.
    pub evicted: u64,
    /// Events the kernel did not report (rate limit, full ring buffer), if readable.
    #[serde(default)]
    pub suppressed: Option<u64>,
}

impl DeniedReport {
    /// The rows as a table for people, with a footer about what is not shown.
    pub fn table(&self) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        if self.sources.is_empty() {
            out.push_str("no denied packets recorded since the daemon started\n");
        } else {
            let width = self
                .sources
                .iter()
                .map(|r| r.source.to_string().len())
                .max()
                .unwrap_or(0)
                .max(6);
            let _ = writeln!(
                out,
                "{:<width$}  {:>8}  {:>5}  {:<10}  {:<20}  LAST SEEN",
                "SOURCE", "COUNT", "PORT", "INTERFACE", "FIRST SEEN"
            );
            for row in &self.sources {
                let _ = writeln!(
                    out,
                    "{:<width$}  {:>8}  {:>5}  {:<10}  {:<20}  {}",
                    row.source.to_string(),
                    row.count,
                    row.port,
                    row.interface,
                    seconds(row.first_seen),
                    seconds(row.last_seen),
                );
            }
        }
        if self.distinct > self.sources.len() {
            let _ = writeln!(
                out,
                "({} of {} sources shown; --top N shows more)",
                self.sources.len(),
                self.distinct
            );
        }
        if self.evicted > 0 {
            let _ = writeln!(
                out,
                "({} older sources were forgotten to keep the log bounded)",
                self.evicted
            );
        }
        if let Some(suppressed) = self.suppressed.filter(|n| *n > 0) {
            let _ = writeln!(
                out,
                "({suppressed} denied packets were not reported by the kernel's rate limit; \
                 the verdict counters of apifence stats count every packet)"
            );
        }
        out
    }
}

/// `2025-11-28T16:46:00Z`: RFC 3339 to the second, for tables.
fn seconds(at: OffsetDateTime) -> String {
    let whole = at.replace_nanosecond(0).unwrap_or(at);
    crate::policy::timestamp::rfc3339(whole)
}
