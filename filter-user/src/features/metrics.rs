//! Prometheus metrics: [`render`] writes the text exposition format (version 0.0.4) from the
//! filter's counters ([`Stats`]) and the daemon's own gauges ([`DaemonGauges`]); [`serve`] is a
//! minimal HTTP endpoint answering `GET /metrics` (localhost by default, config `metrics`).
//!
//! Metrics:
//! - `apifence_packets_total{verdict=…}`: packets by verdict (`passed_authorized`,
//!   `passed_unprotected`, `passed_disabled`, `dropped`, `would_drop`);
//! - `apifence_malformed_packets_total`;
//! - `apifence_range_hits_total{range=…}`: packets authorized per compiled prefix;
//! - `apifence_entries{family=…}`: authorized prefixes enforced after merging, per family;
//! - `apifence_deny_events_suppressed_total`: deny-log events the kernel did not report;
//! - `apifence_deny_log_evicted_total`, `apifence_deny_log_sources`;
//! - `apifence_last_apply_timestamp_seconds`, `apifence_last_apply_duration_seconds`;
//! - `apifence_config_reload_failures_total`, `apifence_expired_entries_removed_total`.

use std::{
    fmt::Write as _,
    future::Future,
    io,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
};

use crate::{kernel::operations::Stats, policy::compile::FamilyCounts};

/// Content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

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
    /// Deny-log keys evicted to stay within the bound, since start.
    pub deny_log_evicted: u64,
    /// Distinct (source, port, interface) keys in the deny log now.
    pub deny_log_sources: u64,
}

/// Writes the `# HELP` and `# TYPE` lines of metric `name`.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample line: `name{key="value",...} value`.
fn sample(out: &mut String, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (key, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{key}=\"{}\"", escape_label(val));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// Escapes a label value: backslash, double quote and newline.
fn escape_label(value: &str) -> String {
    value
        .replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

/// Seconds as Prometheus writes floats.
fn seconds(d: Duration) -> String {
    format!("{}", d.as_secs_f64())
}

/// The exposition text. `stats` is `None` when the filter's counters could not be read (the
/// packet metrics are then left out rather than reported as zero).
pub fn render(stats: Option<&Stats>, gauges: &DaemonGauges) -> String {
    let mut out = String::new();
    if let Some(stats) = stats {
        let name = "apifence_packets_total";
        header(
            &mut out,
            name,
            "counter",
            "Packets seen by the XDP filter, by verdict.",
        );
        for (verdict, value) in [
            ("passed_authorized", stats.passed_authorized),
            ("passed_unprotected", stats.passed_unprotected),
            ("passed_disabled", stats.passed_disabled),
            ("dropped", stats.dropped),
            ("would_drop", stats.would_drop),
        ] {
            sample(&mut out, name, &[("verdict", verdict)], value);
        }
        let name = "apifence_malformed_packets_total";
        header(
            &mut out,
            name,
            "counter",
            "Packets with a malformed IP header (also counted under their verdict).",
        );
        sample(&mut out, name, &[], stats.malformed);
        let name = "apifence_range_hits_total";
        header(
            &mut out,
            name,
            "counter",
            "Protected packets authorized by each compiled prefix (authorized ranges and always-allow).",
        );
        for range in &stats.ranges {
            sample(&mut out, name, &[("range", &range.range)], range.hits);
        }
        let name = "apifence_deny_events_suppressed_total";
        header(
            &mut out,
            name,
            "counter",
            "Deny-log events not reported by the kernel (rate limit or full ring buffer).",
        );
        sample(&mut out, name, &[], stats.deny_events_suppressed);
    }
    let name = "apifence_entries";
    header(
        &mut out,
        name,
        "gauge",
        "Authorized prefixes enforced after merging, per address family.",
    );
    sample(&mut out, name, &[("family", "ipv4")], gauges.entries.v4);
    sample(&mut out, name, &[("family", "ipv6")], gauges.entries.v6);
    if let Some(at) = gauges.last_apply {
        let since_epoch = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        let name = "apifence_last_apply_timestamp_seconds";
        header(
            &mut out,
            name,
            "gauge",
            "Unix time of the last policy apply.",
        );
        sample(&mut out, name, &[], seconds(since_epoch));
    }
    if let Some(took) = gauges.last_apply_duration {
        let name = "apifence_last_apply_duration_seconds";
        header(
            &mut out,
            name,
            "gauge",
            "Wall time of the last policy apply.",
        );
        sample(&mut out, name, &[], seconds(took));
    }
    for (metric, help, value) in [
        (
            "apifence_config_reload_failures_total",
            "Config reloads rejected (the last good config stayed enforced).",
            gauges.config_reload_failures,
        ),
        (
            "apifence_expired_entries_removed_total",
            "Authorized entries removed because they expired.",
            gauges.expired_entries_removed,
        ),
        (
            "apifence_deny_log_evicted_total",
            "Deny-log sources forgotten to keep the log bounded.",
            gauges.deny_log_evicted,
        ),
    ] {
        header(&mut out, metric, "counter", help);
        sample(&mut out, metric, &[], value);
    }
    let name = "apifence_deny_log_sources";
    header(
        &mut out,
        name,
        "gauge",
        "Distinct (source, port, interface) keys in the deny log.",
    );
    sample(&mut out, name, &[], gauges.deny_log_sources);
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
            expired_entries_removed: 5,
            deny_log_evicted: 6,
            deny_log_sources: 9,
        }
    }

    #[test]
    fn renders_the_exposition_format() {
        let text = render(Some(&stats()), &gauges());
        let expected = "\
# HELP apifence_packets_total Packets seen by the XDP filter, by verdict.
# TYPE apifence_packets_total counter
apifence_packets_total{verdict=\"passed_authorized\"} 42
apifence_packets_total{verdict=\"passed_unprotected\"} 17
apifence_packets_total{verdict=\"passed_disabled\"} 1
apifence_packets_total{verdict=\"dropped\"} 7
apifence_packets_total{verdict=\"would_drop\"} 0
# HELP apifence_malformed_packets_total Packets with a malformed IP header (also counted under their verdict).
# TYPE apifence_malformed_packets_total counter
apifence_malformed_packets_total 2
# HELP apifence_range_hits_total Protected packets authorized by each compiled prefix (authorized ranges and always-allow).
# TYPE apifence_range_hits_total counter
apifence_range_hits_total{range=\"198.51.100.0/24\"} 40
apifence_range_hits_total{range=\"2001:db8::/32\"} 2
# HELP apifence_deny_events_suppressed_total Deny-log events not reported by the kernel (rate limit or full ring buffer).
# TYPE apifence_deny_events_suppressed_total counter
apifence_deny_events_suppressed_total 3
# HELP apifence_entries Authorized prefixes enforced after merging, per address family.
# TYPE apifence_entries gauge
apifence_entries{family=\"ipv4\"} 1
apifence_entries{family=\"ipv6\"} 1
# HELP apifence_last_apply_timestamp_seconds Unix time of the last policy apply.
# TYPE apifence_last_apply_timestamp_seconds gauge
apifence_last_apply_timestamp_seconds 1764331200.25
# HELP apifence_last_apply_duration_seconds Wall time of the last policy apply.
# TYPE apifence_last_apply_duration_seconds gauge
apifence_last_apply_duration_seconds 0.0015
# HELP apifence_config_reload_failures_total Config reloads rejected (the last good config stayed enforced).
# TYPE apifence_config_reload_failures_total counter
apifence_config_reload_failures_total 4
# HELP apifence_expired_entries_removed_total Authorized entries removed because they expired.
# TYPE apifence_expired_entries_removed_total counter
apifence_expired_entries_removed_total 5
# HELP apifence_deny_log_evicted_total Deny-log sources forgotten to keep the log bounded.
# TYPE apifence_deny_log_evicted_total counter
apifence_deny_log_evicted_total 6
# HELP apifence_deny_log_sources Distinct (source, port, interface) keys in the deny log.
# TYPE apifence_deny_log_sources gauge
apifence_deny_log_sources 9
";
        assert_eq!(text, expected);
    }

    #[test]
    fn every_sample_line_is_well_formed() {
        let text = render(Some(&stats()), &gauges());
        let mut declared = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(matches!(kind, "counter" | "gauge"), "{line}");
                assert!(declared.insert(name.to_owned()), "declared twice: {name}");
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').unwrap();
            value
                .parse::<f64>()
                .unwrap_or_else(|_| panic!("value of {line}"));
            let name = series.split('{').next().unwrap();
            assert!(declared.contains(name), "{name} has no # TYPE before it");
            assert!(
                name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
                "{name}"
            );
            if name.ends_with("_total") {
                assert!(text.contains(&format!("# TYPE {name} counter")), "{name}");
            }
        }
    }

    #[test]
    fn without_stats_only_daemon_metrics_and_labels_are_escaped() {
        let text = render(None, &DaemonGauges::default());
        assert!(!text.contains("apifence_packets_total"));
        assert!(text.contains("apifence_entries{family=\"ipv4\"} 0\n"));
        assert!(!text.contains("apifence_last_apply_timestamp_seconds"));
        assert_eq!(escape_label("a\"b\\c\nd"), r#"a\"b\\c\nd"#);
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
        let renderer: Renderer = Arc::new(|| render(Some(&stats()), &gauges()));
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
