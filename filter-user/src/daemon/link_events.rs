//! Link events from the kernel: an rtnetlink socket subscribed to `RTMGRP_LINK` tells the
//! engine as soon as an interface is created, deleted or changed, so an interface deleted and
//! created again (driver reload, bond or VF rebuild) is re-attached at once instead of staying
//! unfiltered behind a stale link. The engine's once-a-second tick checks the same, so a missed
//! event (or a kernel that refuses the subscription, which is logged) costs at most a second.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

use tokio::{
    io::unix::AsyncFd,
    sync::{mpsc, watch},
};
use tracing::warn;

use crate::daemon::engine::Command;

/// `RTMGRP_LINK`: the multicast group of link notifications.
const RTMGRP_LINK: u32 = 1;
/// `RTM_NEWLINK`.
const RTM_NEWLINK: u16 = 16;
/// `RTM_DELLINK`.
const RTM_DELLINK: u16 = 17;

/// Opens a non-blocking `NETLINK_ROUTE` socket bound to the link notification group.
fn open() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket(2) just returned this descriptor.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: `sockaddr_nl` is plain data.
    let mut address: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    address.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    address.nl_groups = RTMGRP_LINK;
    // SAFETY: a valid socket and a `sockaddr_nl` of the size given.
    let rc = unsafe {
        libc::bind(
            socket.as_raw_fd(),
            (&address as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

/// Whether a datagram of netlink messages holds a link creation, change or deletion.
pub fn has_link_change(mut datagram: &[u8]) -> bool {
    // struct nlmsghdr { u32 len; u16 type; u16 flags; u32 seq; u32 pid; }, 4-byte aligned.
    while datagram.len() >= 16 {
        let len = u32::from_ne_bytes([datagram[0], datagram[1], datagram[2], datagram[3]]) as usize;
        let kind = u16::from_ne_bytes([datagram[4], datagram[5]]);
        if kind == RTM_NEWLINK || kind == RTM_DELLINK {
            return true;
        }
        let step = len.div_ceil(4) * 4;
        if len < 16 || step > datagram.len() {
            break;
        }
        datagram = &datagram[step..];
    }
    false
}

/// Sends [`Command::LinksChanged`] to the engine on every link event until `stop`.
pub async fn watch_links(commands: mpsc::Sender<Command>, mut stop: watch::Receiver<bool>) {
    let registered = open().and_then(|socket| {
        // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it (and so keeps the
        // same open descriptor) until it is dropped.
        unsafe { AsyncFd::register(socket) }.map_err(|e| io::Error::other(e.to_string()))
    });
    let socket = match registered {
        Ok(socket) => socket,
        Err(e) => {
            warn!(
                error = %e,
                "cannot subscribe to link events; recreated interfaces are found by the \
                 once-a-second check only"
            );
            return;
        }
    };
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let mut ready = tokio::select! {
            _ = stop.changed() => return,
            ready = socket.readable() => match ready {
                Ok(ready) => ready,
                Err(e) => {
                    warn!(error = %e, "link events stopped; the once-a-second check remains");
                    return;
                }
            },
        };
        let received = ready.try_io(|fd| {
            // SAFETY: a valid socket and a buffer of the length given.
            let n = unsafe {
                libc::recv(
                    fd.get_ref().as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                    0,
                )
            };
            if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(n as usize)
            }
        });
        let changed = match received {
            Err(_would_block) => continue,
            Ok(Ok(n)) => has_link_change(&buffer[..n]),
            // The kernel dropped notifications (a burst): something changed.
            Ok(Err(e)) if e.raw_os_error() == Some(libc::ENOBUFS) => true,
            Ok(Err(e)) => {
                warn!(error = %e, "link events stopped; the once-a-second check remains");
                return;
            }
        };
        // A full queue means the engine is busy and will look anyway.
        if changed
            && let Err(mpsc::error::TrySendError::Closed(_)) =
                commands.try_send(Command::LinksChanged)
        {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(kind: u16, payload: usize) -> Vec<u8> {
        let len = 16 + payload;
        let mut m = Vec::new();
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.resize(len.div_ceil(4) * 4, 0);
        m
    }

    #[test]
    fn finds_link_messages_among_others() {
        assert!(has_link_change(&message(RTM_NEWLINK, 20)));
        assert!(has_link_change(&message(RTM_DELLINK, 3)));
        let mut both = message(20, 5); // RTM_NEWADDR
        both.extend(message(RTM_DELLINK, 0));
        assert!(has_link_change(&both));
        assert!(!has_link_change(&message(20, 8)));
        assert!(!has_link_change(&[0; 7]));
        let mut bad = message(20, 0);
        bad[0] = 3; // a length shorter than the header ends the walk
        bad.extend(message(RTM_NEWLINK, 0));
        assert!(!has_link_change(&bad));
    }
}
