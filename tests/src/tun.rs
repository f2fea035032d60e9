//! tun devices (`IFF_TUN`: L3, frames start at the IP header, link type `ARPHRD_NONE`) made by
//! the test itself, and a [`TunWire`]: two tun devices in two namespaces joined by a userspace
//! relay that copies every packet one writes into the other, so real TCP between the
//! namespaces arrives on a tun device the way a VPN daemon's packets do.
//!
//! A tun device lives as long as its descriptor: dropping a [`TunDevice`] (or the wire holding
//! it) deletes the interface.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::{self, JoinHandle};

use anyhow::{Context, Result, bail};

use crate::netns::Netns;

/// `TUNSETIFF` (`_IOW('T', 202, int)`).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
/// `TUNSETLINK` (`_IOW('T', 205, int)`): sets the device's link type (`ARPHRD_*`).
const TUNSETLINK: libc::c_ulong = 0x4004_54cd;
/// `IFF_TUN`: an L3 device.
const IFF_TUN: libc::c_short = 0x0001;
/// `IFF_NO_PI`: no packet-information header before each packet.
const IFF_NO_PI: libc::c_short = 0x1000;
/// How long the relay waits for a packet before looking at its stop flag again.
const POLL_MS: libc::c_int = 50;
/// Largest packet relayed (the tun MTU is 1500; GSO is off without `IFF_VNET_HDR`).
const MAX_PACKET: usize = 65_536;

/// `struct ifreq` as `TUNSETIFF` reads it: the name, then the flags, padded to 40 bytes.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// A tun device (`IFF_TUN | IFF_NO_PI`), open in the namespace it was made in.
#[derive(Debug)]
pub struct TunDevice {
    file: File,
    name: String,
}

impl TunDevice {
    /// Creates the tun device `name` in `ns` (down, no address).
    pub fn create(ns: &Netns, name: &str) -> Result<TunDevice> {
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            bail!("tun device name {name:?} must have 1 to 15 bytes");
        }
        let owned = name.to_owned();
        let file = ns
            .run(move || -> Result<File> {
                let file = OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/net/tun")
                    .context("opening /dev/net/tun")?;
                let mut request = IfReq {
                    name: [0; libc::IFNAMSIZ],
                    flags: IFF_TUN | IFF_NO_PI,
                    _pad: [0; 22],
                };
                request.name[..owned.len()].copy_from_slice(owned.as_bytes());
                // SAFETY: a valid descriptor and an `ifreq` the call reads and writes.
                let rc = unsafe { libc::ioctl(file.as_raw_fd(), TUNSETIFF, &mut request) };
                if rc != 0 {
                    return Err(std::io::Error::last_os_error())
                        .with_context(|| format!("TUNSETIFF {owned}"));
                }
                Ok(file)
            })
            .with_context(|| format!("entering {}", ns.name()))??;
        Ok(TunDevice {
            file,
            name: name.to_owned(),
        })
    }

    /// The interface's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sets the device's link type (`ARPHRD_*`; the device must be down), as `TUNSETLINK` does
    /// for a PPP or GRE daemon.
    pub fn set_link_type(&self, hardware_type: u16) -> Result<()> {
        // SAFETY: a valid descriptor; TUNSETLINK takes its argument by value.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                TUNSETLINK,
                libc::c_ulong::from(hardware_type),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("TUNSETLINK {} {hardware_type}", self.name));
        }
        Ok(())
    }
}

/// Two tun devices joined by a relay thread (see the module docs). Dropping it stops the relay
/// and deletes both devices.
#[derive(Debug)]
pub struct TunWire {
    relay: Option<Relay>,
    /// Where side `a` lives, to make it again in [`TunWire::recreate_a`].
    a_ns: String,
}

/// The running relay: its stop flag and the thread, which hands the devices back.
#[derive(Debug)]
struct Relay {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(TunDevice, TunDevice)>,
}

impl Relay {
    fn start(a: TunDevice, b: TunDevice) -> Result<Relay> {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = thread::Builder::new()
            .name("lab-tun-relay".into())
            .spawn(move || relay(a, b, &flag))
            .context("spawning the tun relay")?;
        Ok(Relay { stop, thread })
    }

    /// Stops the relay (within one poll interval) and returns the devices.
    fn stop(self) -> (TunDevice, TunDevice) {
        self.stop.store(true, Ordering::SeqCst);
        match self.thread.join() {
            Ok(devices) => devices,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Copies packets between `a` and `b` until `stop` is set. A failed read or write loses that
/// packet, as a wire would.
fn relay(mut a: TunDevice, mut b: TunDevice, stop: &AtomicBool) -> (TunDevice, TunDevice) {
    let mut buffer = vec![0u8; MAX_PACKET];
    while !stop.load(Ordering::SeqCst) {
        let mut fds = [
            libc::pollfd {
                fd: a.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: b.file.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two valid pollfd entries.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), 2, POLL_MS) };
        if ready <= 0 {
            continue;
        }
        if fds[0].revents & libc::POLLIN != 0
            && let Ok(n) = a.file.read(&mut buffer)
        {
            let _ = b.file.write(&buffer[..n]);
        }
        if fds[1].revents & libc::POLLIN != 0
            && let Ok(n) = b.file.read(&mut buffer)
        {
            let _ = a.file.write(&buffer[..n]);
        }
    }
    (a, b)
}

impl TunWire {
    /// Creates tun device `a_name` in `a_ns` and `b_name` in `b_ns`, joined; both are brought
    /// up (addresses are the caller's).
    pub fn new(a_ns: &Netns, a_name: &str, b_ns: &Netns, b_name: &str) -> Result<TunWire> {
        let a = TunDevice::create(a_ns, a_name)?;
        let b = TunDevice::create(b_ns, b_name)?;
        a_ns.ip(&["link", "set", a_name, "up"])?;
        b_ns.ip(&["link", "set", b_name, "up"])?;
        Ok(TunWire {
            relay: Some(Relay::start(a, b)?),
            a_ns: a_ns.name().to_owned(),
        })
    }

    /// Deletes side `a` (closing its descriptor) and creates it again under the same name, up,
    /// with a new interface index and no address, as a VPN daemon's restart does.
    pub fn recreate_a(&mut self, a_ns: &Netns) -> Result<()> {
        if a_ns.name() != self.a_ns {
            bail!("side a lives in {}, not {}", self.a_ns, a_ns.name());
        }
        let relay = self.relay.take().context("the relay is not running")?;
        let (a, b) = relay.stop();
        let name = a.name.clone();
        drop(a);
        let a = TunDevice::create(a_ns, &name)?;
        a_ns.ip(&["link", "set", &name, "up"])?;
        self.relay = Some(Relay::start(a, b)?);
        Ok(())
    }
}

impl Drop for TunWire {
    fn drop(&mut self) {
        if let Some(relay) = self.relay.take() {
            drop(relay.stop());
        }
    }
}
