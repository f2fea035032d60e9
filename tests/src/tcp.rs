//! A counting TCP server living in a namespace, and a TCP connect probe bound to a chosen source
//! address.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use anyhow::{Context, Result};
use socket2::{Domain, Protocol, Socket, Type};

use crate::netns::Netns;
use crate::wait::wait_until;

/// How often the server's threads look at their stop flag.
const POLL: Duration = Duration::from_millis(20);
/// How often a wait for connections or bytes looks at the counters.
const POLL_CHECK: Duration = Duration::from_millis(5);

/// Why [`connect`] failed.
#[derive(Debug)]
pub enum ConnectError {
    /// No answer within the timeout: the SYN (or SYN-ACK) was dropped.
    TimedOut,
    /// Answered with a reset: nothing listens on that port.
    Refused,
    /// Anything else (bind failure, unreachable, namespace trouble).
    Other(io::Error),
}

impl fmt::Display for ConnectError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConnectError::TimedOut => f.write_str("timed out"),
            ConnectError::Refused => f.write_str("connection refused"),
            ConnectError::Other(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ConnectError {}

impl From<io::Error> for ConnectError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => ConnectError::TimedOut,
            io::ErrorKind::ConnectionRefused => ConnectError::Refused,
            _ => ConnectError::Other(e),
        }
    }
}

/// Opens a TCP connection from `src` (any port) inside `ns` to `dst`, giving up after
/// `timeout`. The socket belongs to `ns`; the stream can be used from any thread.
pub fn connect_stream(
    ns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<TcpStream, ConnectError> {
    let attempt = ns
        .run(move || -> io::Result<TcpStream> {
            let sock = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
            sock.bind(&SocketAddr::new(src, 0).into())?;
            sock.connect_timeout(&dst.into(), timeout)?;
            Ok(sock.into())
        })
        .map_err(|e| ConnectError::Other(io::Error::other(format!("{e:#}"))))?;
    Ok(attempt?)
}

/// Like [`connect_stream`], closing the connection at once: `Ok` means the handshake completed.
pub fn connect(
    ns: &Netns,
    src: IpAddr,
    dst: SocketAddr,
    timeout: Duration,
) -> Result<(), ConnectError> {
    connect_stream(ns, src, dst, timeout).map(drop)
}

/// What the server saw from one connection.
#[derive(Debug)]
struct Peer {
    addr: SocketAddr,
    bytes: AtomicU64,
}

/// State shared by the server handle and its threads.
#[derive(Debug, Default)]
struct Shared {
    stop: AtomicBool,
    connections: AtomicU64,
    bytes: AtomicU64,
    peers: Mutex<Vec<Arc<Peer>>>,
}

/// A TCP server listening inside a namespace. It greets every connection with one line
/// (`apifence-lab <port>\n`), then reads and counts whatever the client sends until it closes.
/// Dropping it stops the accept loop and every connection thread (bounded by their poll
/// interval).
#[derive(Debug)]
pub struct TcpServer {
    local: SocketAddr,
    shared: Arc<Shared>,
    acceptor: Option<JoinHandle<()>>,
}

impl TcpServer {
    /// Listens on `addr:port` inside `ns` (`::` also accepts IPv4) and starts the accept loop.
    pub fn start(ns: &Netns, addr: IpAddr, port: u16) -> Result<TcpServer> {
        let listener = ns
            .run(move || TcpListener::bind(SocketAddr::new(addr, port)))?
            .with_context(|| {
                format!(
                    "listening on {} in {}",
                    SocketAddr::new(addr, port),
                    ns.name()
                )
            })?;
        listener.set_nonblocking(true)?;
        let local = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let acceptor = {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("lab-accept-{port}"))
                .spawn(move || accept_loop(listener, shared))?
        };
        Ok(TcpServer {
            local,
            shared,
            acceptor: Some(acceptor),
        })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// Bytes received so far, over all connections.
    pub fn bytes_received(&self) -> u64 {
        self.shared.bytes.load(Ordering::SeqCst)
    }

    /// Remote addresses of the connections accepted so far, in order (IPv4-mapped IPv6 shown as
    /// IPv4).
    pub fn peers(&self) -> Vec<SocketAddr> {
        let peers = self.shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers.iter().map(|p| p.addr).collect()
    }

    /// Bytes received on the connection(s) from `peer` (the client's local address).
    pub fn bytes_from(&self, peer: SocketAddr) -> u64 {
        let peers = self.shared.peers.lock().unwrap_or_else(|p| p.into_inner());
        peers
            .iter()
            .filter(|p| p.addr == peer)
            .map(|p| p.bytes.load(Ordering::SeqCst))
            .sum()
    }

    /// Waits up to `timeout` until at least `n` connections were accepted; returns whether
    /// they were.
    pub fn wait_for_connections(&self, n: u64, timeout: Duration) -> bool {
        wait_until(timeout, POLL_CHECK, || self.connections() >= n)
    }

    /// Waits up to `timeout` until `peer` sent at least `n` bytes; returns the count reached.
    pub fn wait_for_bytes_from(&self, peer: SocketAddr, n: u64, timeout: Duration) -> u64 {
        wait_until(timeout, POLL_CHECK, || self.bytes_from(peer) >= n);
        self.bytes_from(peer)
    }
}

impl Drop for TcpServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

/// Accepts until told to stop, one reader thread per connection; joins them all on the way out.
fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut readers: Vec<JoinHandle<()>> = Vec::new();
    while !shared.stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, addr)) => {
                let peer = Arc::new(Peer {
                    addr: SocketAddr::new(addr.ip().to_canonical(), addr.port()),
                    bytes: AtomicU64::new(0),
                });
                shared
                    .peers
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(peer.clone());
                shared.connections.fetch_add(1, Ordering::SeqCst);
                let shared = shared.clone();
                let port = listener.local_addr().map(|a| a.port()).unwrap_or_default();
                readers.push(thread::spawn(move || serve(stream, port, &peer, &shared)));
                readers.retain(|r| !r.is_finished());
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => thread::sleep(POLL),
            // Transient accept errors (aborted connection, fd pressure): back off and go on.
            Err(_) => thread::sleep(POLL),
        }
    }
    for r in readers {
        let _ = r.join();
    }
}

/// Greets one connection and counts what it sends until EOF, an error or the stop flag.
fn serve(mut stream: TcpStream, port: u16, peer: &Peer, shared: &Shared) {
    if stream.set_nonblocking(false).is_err() || stream.set_read_timeout(Some(POLL)).is_err() {
        return;
    }
    let _ = stream.write_all(format!("apifence-lab {port}\n").as_bytes());
    let mut buf = [0u8; 16 * 1024];
    while !shared.stop.load(Ordering::SeqCst) {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                peer.bytes.fetch_add(n as u64, Ordering::SeqCst);
                shared.bytes.fetch_add(n as u64, Ordering::SeqCst);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => break,
        }
    }
}
