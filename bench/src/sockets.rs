//! Raw `AF_PACKET` sockets for the probe traffic of the control-plane section: one sends
//! hand-built frames out of an interface, one captures what an interface received after its XDP
//! program let it through. A socket belongs to the network namespace it was created in.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use anyhow::{Context, Result};

/// An `AF_PACKET` raw socket bound to one interface, all protocols.
pub struct PacketSocket {
    fd: OwnedFd,
}

/// `ETH_P_ALL` in network byte order, as `socket(2)` and `sockaddr_ll` want it.
fn eth_p_all() -> u16 {
    (libc::ETH_P_ALL as u16).to_be()
}

impl PacketSocket {
    /// Opens a socket bound to `ifname` of the calling thread's network namespace.
    pub fn bind(ifname: &str) -> Result<PacketSocket> {
        let name = std::ffi::CString::new(ifname)?;
        // SAFETY: valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error())
                .with_context(|| format!("no interface {ifname}"));
        }
        // SAFETY: plain socket call.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                i32::from(eth_p_all()),
            )
        };
        if raw < 0 {
            return Err(io::Error::last_os_error()).context("opening an AF_PACKET socket");
        }
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_ll is plain data.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = eth_p_all();
        addr.sll_ifindex = ifindex as i32;
        // SAFETY: valid socket, address and length.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&raw const addr).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).with_context(|| format!("binding to {ifname}"));
        }
        Ok(PacketSocket { fd })
    }

    fn set_int(&self, level: i32, name: i32, value: i32) -> Result<()> {
        // SAFETY: valid socket and option buffer.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                size_of::<i32>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setsockopt");
        }
        Ok(())
    }

    /// Makes the receive buffer `bytes` large (beyond the sysctl limit, as root).
    pub fn set_receive_buffer(&self, bytes: i32) -> Result<()> {
        self.set_int(libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, bytes)
    }

    /// Makes `recv` give up after `timeout`.
    pub fn set_receive_timeout(&self, timeout: Duration) -> Result<()> {
        let tv = libc::timeval {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_usec: timeout.subsec_micros() as libc::suseconds_t,
        };
        // SAFETY: valid socket and option buffer.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&raw const tv).cast(),
                size_of::<libc::timeval>() as u32,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("setting SO_RCVTIMEO");
        }
        Ok(())
    }

    /// Only captures frames arriving on the interface (not the ones it sends).
    pub fn ignore_outgoing(&self) -> Result<()> {
        const PACKET_IGNORE_OUTGOING: i32 = 23;
        self.set_int(libc::SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
    }

    /// Sends one frame.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: valid socket and buffer.
        let rc = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one frame into `buf`; `None` on timeout.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        // SAFETY: valid socket and buffer.
        let rc = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return match err.kind() {
                io::ErrorKind::WouldBlock
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted => Ok(None),
                _ => Err(err),
            };
        }
        Ok(Some(rc as usize))
    }

    /// Frames the kernel dropped because this socket's buffer was full, since the last call.
    pub fn drops(&self) -> Result<u32> {
        // struct tpacket_stats { unsigned int tp_packets; unsigned int tp_drops; }
        let mut stats = [0u32; 2];
        let mut len = size_of::<[u32; 2]>() as u32;
        // SAFETY: valid socket; the buffer matches struct tpacket_stats.
        let rc = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                stats.as_mut_ptr().cast(),
                &raw mut len,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error()).context("reading PACKET_STATISTICS");
        }
        Ok(stats[1])
    }
}
