//! Prometheus metrics: [`render`] writes the OpenMetrics text format (with `prometheus-client`) from the
//! filter's counters ([`Stats`]) and the daemon's own gauges ([`DaemonGauges`]); [`serve`] is a
//! minimal HTTP endpoint answering `GET /metrics` (localhost by default, config `metrics`).
//! Hand-written rather than hyper or axum: it answers one path of one method with bounded reads
//! and timeouts, which is less code than wiring a server framework, and keeps the root daemon's
//! dependency tree small.
//!
//! Metrics:
//! - `apifence_packets_total{verdict=…}`: packets by verdict (`passed_authorized`,
//!   `passed_unprotected`, `passed_disabled`, `dropped`, `would_drop`);
//! - `apifence_malformed_packets_total`;
//! - `apifence_range_hits_total{range=…}`: packets authorized per compiled prefix, for the
//!   `metrics_ranges` prefixes with the most hits, the rest summed as `range="other"`;
//! - `apifence_entries{family=…}`: authorized prefixes enforced after merging, per family;
//! - `apifence_deny_events_suppressed_total`: deny-log events the kernel did not report;
//! - `apifence_deny_log_evicted_total`, `apifence_deny_log_sources`;
//! - `apifence_last_apply_timestamp_seconds`, `apifence_last_apply_duration_seconds`;
//! - `apifence_config_reload_failures_total`, `apifence_expired_entries_removed_total`;
//! - `apifence_interface_reattachments_total`: stale attachments repaired (interfaces deleted
//!   and created again under the daemon);
//! - `apifence_interface_attached{interface=…}`: 1 while the interface's attachment filters the
//!   interface of that name now, 0 while it is stale;
//! - `apifence_unfiltered_interfaces`: up interfaces that could deliver traffic to the
//!   protected ports without passing the filter (`apifence check` names them; left out when
//!   the interfaces cannot be read);
//! - with `ranges_from = "etcd"`: `apifence_source_applied_revision`, `apifence_source_healthy`
//!   (0 while etcd is unreachable or the last document was rejected) and
//!   `apifence_source_seconds_since_event` (since etcd last answered: a read, a watch event or
//!   a keep-alive of the host's report, every 2 s while connected).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    sync::{Arc, atomic::AtomicU64},
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::{
    kernel::operations::{RangeHits, Stats},
    policy::compile::FamilyCounts,
};

/// Content type of the OpenMetrics text format that [`render`] writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The daemon's own numbers, next to the kernel's counters.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DaemonGauges {
    /// Authorized prefixes enforced after merging, per family.
    pub entries: FamilyCounts,
    /// When the last policy was applied.
    pub last_apply: Option<SystemTime>,
    /// How long the last apply took.
    pub last_apply_duration: Option<Duration>,
    /// Config reloads rejected since start.
    pub config_reload_failures: u64,
    /// Entries removed because they expired, since start.
    pub expired_entries_removed: u64,
    /// Stale attachments re-attached since start.
    pub interface_reattachments: u64,
    /// Per attached interface: whether its link filters the interface of that name now.
    pub interfaces_live: Vec<(String, bool)>,
    /// Up interfaces that could deliver traffic to the protected ports unfiltered (the bypass
    /// report); `None` when the interfaces could not be read.
    pub unfiltered_interfaces: Option<u64>,
    /// Deny-log keys evicted to stay within the bound, since start.
    pub deny_log_evicted: u64,
    /// Distinct (source, port, interface) keys in the deny log now.
    pub deny_log_sources: u64,
    /// The external source (`ranges_from = "etcd"`), when there is one.
    pub source: Option<SourceGauges>,
}

/// The external source's numbers.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SourceGauges {
    /// Revision of the document enforced.
    pub applied_revision: Option<u64>,
    /// Connected, and the last document was applied.
    pub healthy: bool,
    /// Seconds since the last successful read or watch event.
    pub since_event: Option<f64>,
}

/// Label set of one series: `(name, value)` pairs.
type Labels = Vec<(&'static str, String)>;

/// Registers a counter family `name` (the encoder appends `_total`) with `samples`.
fn counters(registry: &mut Registry, name: &str, help: &str, samples: &[(Labels, u64)]) {
    let family = Family::<Labels, Counter>::default();
    for (labels, value) in samples {
        family.get_or_create(labels).inc_by(*value);
    }
    registry.register(name, help, family);
}

/// Registers a gauge family `name` with `samples`.
fn gauges(registry: &mut Registry, name: &str, help: &str, samples: &[(Labels, f64)]) {
    let family = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for (labels, value) in samples {
        family.get_or_create(labels).set(*value);
    }
    registry.register(name, help, family);
}

/// The per-range hit series: the `limit` ranges with the most hits (ties in list order), and
/// the rest summed as `range="other"` (only when something was left out).
fn range_series(ranges: &[RangeHits], limit: usize) -> Vec<(Labels, u64)> {
    if limit == 0 {
        return Vec::new();
    }
    let mut by_hits: Vec<&RangeHits> = ranges.iter().collect();
    by_hits.sort_by_key(|r| std::cmp::Reverse(r.hits));
    let (shown, rest) = by_hits.split_at(limit.min(by_hits.len()));
    let mut series: Vec<(Labels, u64)> = shown
        .iter()
        .map(|r| (vec![("range", r.range.clone())], r.hits))
        .collect();
    if !rest.is_empty() {
        let other = rest.iter().map(|r| r.hits).sum();
        series.push((vec![("range", "other".to_owned())], other));
    }
    series
}

/// The exposition text (OpenMetrics). `stats` is `None` when the filter's counters could not be
/// read (the packet metrics are then left out rather than reported as zero); at most
/// `range_limit` ranges get their own hit series (see [`range_series`]).
pub fn render(stats: Option<&Stats>, daemon: &DaemonGauges, range_limit: usize) -> String {
    let mut registry = Registry::default();
    if let Some(stats) = stats {
        let verdicts: Vec<(Labels, u64)> = [
            ("passed_authorized", stats.passed_authorized),
            ("passed_unprotected", stats.passed_unprotected),
            ("passed_disabled", stats.passed_disabled),
            ("dropped", stats.dropped),
            ("would_drop", stats.would_drop),
        ]
        .into_iter()
        .map(|(verdict, value)| (vec![("verdict", verdict.to_owned())], value))
        .collect();
        counters(
            &mut registry,
            "apifence_packets",
            "Packets seen by the XDP filter, by verdict",
            &verdicts,
        );
        counters(
            &mut registry,
            "apifence_malformed_packets",
            "Packets with a malformed IP header (also counted under their verdict)",
            &[(Vec::new(), stats.malformed)],
        );
        let ranges = range_series(&stats.ranges, range_limit);
        if !ranges.is_empty() {
            counters(
                &mut registry,
                "apifence_range_hits",
                "Protected packets authorized per compiled prefix (the ranges with the most hits; the rest summed as other)",
                &ranges,
            );
        }
        counters(
            &mut registry,
            "apifence_deny_events_suppressed",
            "Deny-log events not reported by the kernel (rate limit or full ring buffer)",
            &[(Vec::new(), stats.deny_events_suppressed)],
        );
    }
    gauges(
        &mut registry,
        "apifence_entries",
        "Authorized prefixes enforced after merging, per address family",
        &[
            (
                vec![("family", "ipv4".to_owned())],
                daemon.entries.v4 as f64,
            ),
            (
                vec![("family", "ipv6".to_owned())],
                daemon.entries.v6 as f64,
            ),
        ],
    );
    if !daemon.interfaces_live.is_empty() {
        let samples: Vec<(Labels, f64)> = daemon
            .interfaces_live
            .iter()
            .map(|(name, live)| {
                (
                    vec![("interface", name.clone())],
                    f64::from(u8::from(*live)),
                )
            })
            .collect();
        gauges(
            &mut registry,
            "apifence_interface_attached",
            "1 while the interface's attachment filters it, 0 while it is stale (recreated)",
            &samples,
        );
    }
    if let Some(count) = daemon.unfiltered_interfaces {
        gauges(
            &mut registry,
            "apifence_unfiltered_interfaces",
            "Up interfaces that could deliver traffic to the protected ports without passing the \
             filter (apifence check lists them)",
            &[(Vec::new(), count as f64)],
        );
    }
    if let Some(at) = daemon.last_apply {
        let since_epoch = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        gauges(
            &mut registry,
            "apifence_last_apply_timestamp_seconds",
            "Unix time of the last policy apply",
            &[(Vec::new(), since_epoch.as_secs_f64())],
        );
    }
    if let Some(took) = daemon.last_apply_duration {
        gauges(
            &mut registry,
            "apifence_last_apply_duration_seconds",
            "Wall time of the last policy apply",
            &[(Vec::new(), took.as_secs_f64())],
        );
    }
    if let Some(source) = &daemon.source {
        let mut samples = vec![(
            "apifence_source_healthy",
            "1 while the external source (etcd) answers and its last document was applied; 0 \
             means the last good state stays enforced",
            if source.healthy { 1.0 } else { 0.0 },
        )];
        if let Some(revision) = source.applied_revision {
            samples.push((
                "apifence_source_applied_revision",
                "Revision of the external source's document enforced",
                revision as f64,
            ));
        }
        if let Some(seconds) = source.since_event {
            samples.push((
                "apifence_source_seconds_since_event",
                "Seconds since the external source last answered (read, watch event or keep-alive)",
                seconds,
            ));
        }
        for (name, help, value) in samples {
            gauges(&mut registry, name, help, &[(Vec::new(), value)]);
        }
    }
    for (name, help, value) in [
        (
            "apifence_config_reload_failures",
            "Config reloads rejected (the last good config stayed enforced)",
            daemon.config_reload_failures,
        ),
        (
            "apifence_expired_entries_removed",
            "Authorized entries removed because they expired",
            daemon.expired_entries_removed,
        ),
        (
            "apifence_deny_log_evicted",
            "Deny-log sources forgotten to keep the log bounded",
            daemon.deny_log_evicted,
        ),
        (
            "apifence_interface_reattachments",
            "Stale attachments re-attached (interfaces deleted and created again)",
            daemon.interface_reattachments,
        ),
    ] {
        counters(&mut registry, name, help, &[(Vec::new(), value)]);
    }
    gauges(
        &mut registry,
        "apifence_deny_log_sources",
        "Distinct (source, port, interface) keys in the deny log",
        &[(Vec::new(), daemon.deny_log_sources as f64)],
    );
    let mut out = String::new();
    // Writing into a String can't fail; an encoder error would be a bug in a label value.
    if let Err(e) = encode(&mut out, &registry) {
        tracing::error!(error = %e, "encoding the metrics failed");
    }
    out
}

/// Limits of the HTTP endpoint.
#[derive(Clone, Copy, Debug)]
pub struct ServerOptions {
    /// Longest request head read (request line and headers).
    pub max_request_bytes: usize,
    /// How long a client may take to send its request.
    pub read_timeout: Duration,
    /// How long writing the answer may take.
    pub write_timeout: Duration,
    /// Connections served at once; more wait in the kernel's backlog.
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            max_request_bytes: 8 * 1024,
            read_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(10),
            max_connections: 16,
        }
    }
}

/// The endpoint can't start.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// Binding the address failed.
    #[error(
        "metrics endpoint {addr}: {source}; choose another address:port in the config \
         (metrics = \"127.0.0.1:9641\"), or turn the endpoint off with metrics = \"\""
    )]
    Bind {
        /// The configured address.
        addr: SocketAddr,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
}

/// Binds the endpoint's listener on `addr`.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Binds the endpoint's listener on `addr` without awaiting (inside a tokio runtime).
pub fn bind_std(addr: SocketAddr) -> Result<TcpListener, MetricsError> {
    let error = |source| MetricsError::Bind { addr, source };
    let listener = std::net::TcpListener::bind(addr).map_err(error)?;
    listener.set_nonblocking(true).map_err(error)?;
    TcpListener::from_std(listener).map_err(error)
}

/// Produces the exposition text for one scrape (called on a blocking thread: it may read maps).
pub type Renderer = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `shutdown` completes: 200 with [`render`]'s text
/// from `renderer`, 404 for other paths, 405 for other methods, 400/431 for bad or oversized
/// requests. One request per connection.
pub async fn serve(
    listener: TcpListener,
    renderer: Renderer,
    options: ServerOptions,
    shutdown: impl Future<Output = ()>,
) {
    let slots = Arc::new(Semaphore::new(options.max_connections.max(1)));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            () = &mut shutdown => return,
            permit = Arc::clone(&slots).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => return,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, _peer)) = accepted else {
            // Transient (fd pressure, aborted handshake): back off briefly and go on.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let renderer = Arc::clone(&renderer);
        tokio::spawn(async move {
            let _permit = permit;
            let _ = handle(stream, &renderer, options).await;
        });
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    Metrics { head_only: bool },
    NotFound,
    MethodNotAllowed,
    Bad,
}

/// Reads the request line of `head` (`GET /metrics HTTP/1.1`).
fn parse_request(head: &[u8]) -> Request {
    let Ok(head) = std::str::from_utf8(head) else {
        return Request::Bad;
    };
    let mut parts = head.lines().next().unwrap_or("").split(' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Request::Bad;
    };
    if !version.starts_with("HTTP/1.") {
        return Request::Bad;
    }
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => Request::Metrics { head_only: false },
        ("HEAD", "/metrics") => Request::Metrics { head_only: true },
        (_, "/metrics") => Request::MethodNotAllowed,
        _ => Request::NotFound,
    }
}

/// Reads the request head (bounded in size and time) and answers it.
async fn handle(
    mut stream: TcpStream,
    renderer: &Renderer,
    options: ServerOptions,
) -> io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(options.read_timeout, async {
        loop {
            if head.windows(4).any(|w| w == b"\r\n\r\n") || head.windows(2).any(|w| w == b"\n\n") {
                return Ok(true);
            }
            if head.len() > options.max_request_bytes {
                return Ok(false);
            }
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            head.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let (status, body, head_only) = match complete {
        Err(_elapsed) => (
            "408 Request Timeout",
            "request timed out\n".to_owned(),
            false,
        ),
        Ok(Err(e)) => return Err(e),
        Ok(Ok(false)) => (
            "431 Request Header Fields Too Large",
            "request too large\n".to_owned(),
            false,
        ),
        Ok(Ok(true)) => match parse_request(&head) {
            Request::Metrics { head_only } => {
                let renderer = Arc::clone(renderer);
                let text = tokio::task::spawn_blocking(move || renderer())
                    .await
                    .map_err(io::Error::other)?;
                ("200 OK", text, head_only)
            }
            Request::NotFound => (
                "404 Not Found",
                "not found; try /metrics\n".to_owned(),
                false,
            ),
            Request::MethodNotAllowed => (
                "405 Method Not Allowed",
                "only GET /metrics\n".to_owned(),
                false,
            ),
            Request::Bad => ("400 Bad Request", "bad request\n".to_owned(), false),
        },
    };
    let content_type = if status.starts_with("200") {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n",
        body.len()
    );
    if status.starts_with("405") {
        response.push_str("Allow: GET, HEAD\r\n");
    }
    response.push_str("\r\n");
    if !head_only {
        response.push_str(&body);
    }
    tokio::time::timeout(options.write_timeout, async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await
    })
    .await
    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::operations::RangeHits;

    fn stats() -> Stats {
        Stats {
            passed: 60,
            passed_authorized: 42,
            passed_unprotected: 17,
            passed_disabled: 1,
            dropped: 7,
            would_drop: 0,
            malformed: 2,
            deny_events_suppressed: 3,
            ranges: vec![
                RangeHits {
                    range: "198.51.100.0/24".into(),
                    hits: 40,
                    always_allow: false,
                },
                RangeHits {
                    range: "2001:db8::/32".into(),
                    hits: 2,
                    always_allow: true,
                },
            ],
        }
    }

    fn gauges() -> DaemonGauges {
        DaemonGauges {
            entries: FamilyCounts { v4: 1, v6: 1 },
            last_apply: Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_331_200_250)),
            last_apply_duration: Some(Duration::from_micros(1_500)),
            config_reload_failures: 4,
            interface_reattachments: 2,
            interfaces_live: vec![("eth0".into(), true), ("eth1".into(), false)],
            unfiltered_interfaces: Some(3),
            expired_entries_removed: 5,
            deny_log_evicted: 6,
            deny_log_sources: 9,
            source: Some(SourceGauges {
                applied_revision: Some(42),
                healthy: false,
                since_event: Some(2.5),
            }),
        }
    }

    #[test]
    fn renders_openmetrics_with_every_metric() {
        let text = render(Some(&stats()), &gauges(), 10);
        for line in [
            "# TYPE apifence_packets counter",
            "apifence_packets_total{verdict=\"passed_authorized\"} 42",
            "apifence_packets_total{verdict=\"dropped\"} 7",
            "apifence_packets_total{verdict=\"would_drop\"} 0",
            "apifence_malformed_packets_total 2",
            "apifence_range_hits_total{range=\"198.51.100.0/24\"} 40",
            "apifence_range_hits_total{range=\"2001:db8::/32\"} 2",
            "apifence_deny_events_suppressed_total 3",
            "# TYPE apifence_entries gauge",
            "apifence_entries{family=\"ipv4\"} 1.0",
            "apifence_last_apply_timestamp_seconds 1764331200.25",
            "apifence_last_apply_duration_seconds 0.0015",
            "apifence_config_reload_failures_total 4",
            "apifence_interface_reattachments_total 2",
            "# TYPE apifence_unfiltered_interfaces gauge",
            "apifence_unfiltered_interfaces 3.0",
            "apifence_interface_attached{interface=\"eth0\"} 1.0",
            "apifence_interface_attached{interface=\"eth1\"} 0.0",
            "apifence_source_healthy 0.0",
            "apifence_source_applied_revision 42.0",
            "apifence_source_seconds_since_event 2.5",
            "apifence_expired_entries_removed_total 5",
            "apifence_deny_log_evicted_total 6",
            "apifence_deny_log_sources 9.0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in:\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(!text.contains("range=\"other\""), "{text}");
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let text = render(Some(&stats()), &gauges(), 10);
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(declared.insert(name.to_owned()), "declared twice: {name}");
                continue;
            }
            if line.starts_with("# HELP ") || line == "# EOF" {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(declared.contains(family), "{name} has no # TYPE before it");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
        }
    }

    #[test]
    fn per_range_series_are_bounded_with_the_rest_as_other() {
        let mut many = stats();
        many.ranges = (0..65_536u32)
            .map(|i| RangeHits {
                range: format!("10.{}.{}.0/24", i >> 8, i & 255),
                hits: u64::from(i % 1000),
                always_allow: false,
            })
            .collect();
        let total: u64 = many.ranges.iter().map(|r| r.hits).sum();
        let text = render(Some(&many), &gauges(), 10);
        let series: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("apifence_range_hits_total{"))
            .collect();
        assert_eq!(series.len(), 11, "{series:?}");
        let value = |line: &str| line.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap();
        let shown: Vec<u64> = series
            .iter()
            .filter(|l| !l.contains("range=\"other\""))
            .map(|l| value(l))
            .collect();
        assert_eq!(shown, vec![999; 10], "the ten ranges with the most hits");
        let summed: u64 = series.iter().map(|l| value(l)).sum();
        assert_eq!(summed, total);
        assert!(
            series
                .iter()
                .any(|l| l.starts_with("apifence_range_hits_total{range=\"other\"}")),
            "{series:?}"
        );
        let off = render(Some(&many), &gauges(), 0);
        assert!(!off.contains("apifence_range_hits"), "{off}");
    }

    #[test]
    fn without_stats_only_daemon_metrics() {
        let text = render(None, &DaemonGauges::default(), 10);
        assert!(!text.contains("apifence_packets_total"));
        assert!(
            text.contains("apifence_entries{family=\"ipv4\"} 0.0\n"),
            "{text}"
        );
        assert!(!text.contains("apifence_last_apply_timestamp_seconds"));
    }

    #[test]
    fn parses_request_lines() {
        assert_eq!(
            parse_request(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            parse_request(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Request::Metrics { head_only: false }
        );
        assert_eq!(
            parse_request(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            Request::Metrics { head_only: true }
        );
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\n\r\n"), Request::NotFound);
        assert_eq!(
            parse_request(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Request::MethodNotAllowed
        );
        assert_eq!(parse_request(b"hello\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(b"GET /metrics SPDY\r\n\r\n"), Request::Bad);
        assert_eq!(parse_request(&[0xff, 0xfe]), Request::Bad);
    }

    /// A minimal HTTP/1.1 client: sends `request`, returns the status line and the body.
    async fn fetch(addr: SocketAddr, request: &[u8]) -> (String, String, String) {
        let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .expect("connect in time")
            .expect("connect");
        stream.write_all(request).await.expect("send");
        let mut response = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
            .await
            .expect("answer in time")
            .expect("read");
        let response = String::from_utf8(response).expect("utf-8");
        let (head, body) = response.split_once("\r\n\r\n").expect("head and body");
        let status = head.lines().next().unwrap().to_owned();
        (status, head.to_owned(), body.to_owned())
    }

    #[tokio::test]
    async fn serves_metrics_over_loopback() {
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let renderer: Renderer = Arc::new(|| render(Some(&stats()), &gauges(), 10));
        let options = ServerOptions {
            read_timeout: Duration::from_millis(300),
            max_request_bytes: 512,
            ..ServerOptions::default()
        };
        let server = tokio::spawn(serve(listener, renderer, options, async {
            let _ = stopped.await;
        }));

        let (status, head, body) = fetch(
            addr,
            b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nUser-Agent: test\r\n\r\n",
        )
        .await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(
            head.contains(&format!("Content-Type: {CONTENT_TYPE}")),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        assert!(
            body.contains("apifence_packets_total{verdict=\"dropped\"} 7\n"),
            "{body}"
        );
        assert!(body.contains("apifence_range_hits_total{range=\"198.51.100.0/24\"} 40\n"));

        let (status, head, body) = fetch(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n").await;
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.is_empty() && head.contains("Content-Length: "));
        assert_eq!(
            fetch(addr, b"GET / HTTP/1.1\r\n\r\n").await.0,
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            fetch(addr, b"DELETE /metrics HTTP/1.1\r\n\r\n").await.0,
            "HTTP/1.1 405 Method Not Allowed"
        );
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX-Big: {}\r\n\r\n",
            "a".repeat(2000)
        );
        assert_eq!(
            fetch(addr, huge.as_bytes()).await.0,
            "HTTP/1.1 431 Request Header Fields Too Large"
        );
        // A client that never finishes its request is answered and closed after the timeout.
        let started = std::time::Instant::now();
        assert_eq!(
            fetch(addr, b"GET /metr").await.0,
            "HTTP/1.1 408 Request Timeout"
        );
        assert!(started.elapsed() < Duration::from_secs(3));

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server stops")
            .unwrap();
    }

    #[tokio::test]
    async fn binding_a_taken_port_says_what_to_do() {
        let taken = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = taken.local_addr().unwrap();
        let error = bind(addr).await.unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("metrics endpoint {addr}: ")),
            "{error}"
        );
        assert!(
            error.ends_with("or turn the endpoint off with metrics = \"\""),
            "{error}"
        );
    }
}
