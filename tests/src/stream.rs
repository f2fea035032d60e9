//! Streaming numbered chunks over one TCP connection and checking how many arrived: the probe for
//! "no packet lost while the policy changes under an open connection".

use std::io::Write;
use std::net::{IpAddr, Shutdown, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use crate::netns::Netns;
use crate::tcp::{ConnectError, TcpServer, connect_stream};

/// What [`stream_chunks`] sends and how long it may take.
#[derive(Clone, Debug)]
pub struct StreamOptions {
    /// Chunks to send.
    pub chunks: u64,
    /// Bytes per chunk (at least 8: each starts with its big-endian sequence number).
    pub chunk_size: usize,
    /// Pause after each chunk (spreads the stream over time so a policy change lands mid-way).
    pub interval: Duration,
    /// Bound on the sending phase; sending stops early when it runs out.
    pub time_limit: Duration,
    /// Bound on waiting, after sending, for the server to have received everything sent.
    pub drain_timeout: Duration,
    /// Bound on the TCP handshake.
    pub connect_timeout: Duration,
}

impl Default for StreamOptions {
    fn default() -> Self {
        StreamOptions {
            chunks: 1000,
            chunk_size: 1024,
            interval: Duration::from_millis(1),
            time_limit: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(1),
        }
    }
}

/// Outcome of [`stream_chunks`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// Chunks fully handed to the client socket.
    pub sent: u64,
    /// Whole chunks the server counted from this connection.
    pub received: u64,
    /// Time from the first write until the server had everything or the drain bound ran out.
    pub elapsed: Duration,
    /// Why sending stopped early (write error or time limit), if it did.
    pub error: Option<String>,
}

impl StreamReport {
    /// Every chunk asked for was sent and received.
    pub fn complete(&self, opts: &StreamOptions) -> bool {
        self.error.is_none() && self.sent == opts.chunks && self.received == self.sent
    }
}

/// Connects from `src` inside `ns` to `dst` (where `server` listens), sends `opts.chunks`
/// numbered chunks, half-closes, and waits (bounded) for `server` to count them.
pub fn stream_chunks(
    ns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    server: &TcpServer,
    opts: &StreamOptions,
) -> Result<StreamReport, ConnectError> {
    let chunk_size = opts.chunk_size.max(8);
    let mut stream = connect_stream(ns, src, dst, opts.connect_timeout)?;
    let local = stream.local_addr().map_err(ConnectError::Other)?;
    let local = SocketAddr::new(local.ip().to_canonical(), local.port());
    let start = Instant::now();
    let deadline = start + opts.time_limit;
    let mut chunk = vec![0u8; chunk_size];
    let mut sent = 0;
    let mut error = None;
    while sent < opts.chunks {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            error = Some(format!("time limit {:?} reached", opts.time_limit));
            break;
        }
        chunk[..8].copy_from_slice(&sent.to_be_bytes());
        chunk[8..].fill(sent as u8);
        if let Err(e) = stream
            .set_write_timeout(Some(left))
            .and_then(|()| stream.write_all(&chunk))
        {
            error = Some(format!("write of chunk {sent}: {e}"));
            break;
        }
        sent += 1;
        if !opts.interval.is_zero() {
            thread::sleep(opts.interval);
        }
    }
    let _ = stream.shutdown(Shutdown::Write);
    let want = sent * chunk_size as u64;
    let got = server.wait_for_bytes_from(local, want, opts.drain_timeout);
    Ok(StreamReport {
        sent,
        received: got / chunk_size as u64,
        elapsed: start.elapsed(),
        error,
    })
}
