//! Waiting until no XDP program can still be reading the slot that was just deactivated: an
//! RCU grace period, obtained through a kernel guarantee rather than a timer.
//!
//! XDP programs (and `BPF_PROG_TEST_RUN`) run inside RCU read-side critical sections, so once
//! an RCU grace period has passed after the active-slot flip, every program run that read the
//! old slot index has finished. The `bpf(2)` syscall provides one unconditionally: updating an
//! element of a `BPF_MAP_TYPE_ARRAY_OF_MAPS` (or `HASH_OF_MAPS`) makes the kernel call
//! `synchronize_rcu()` before the syscall returns (`maybe_wait_bpf_programs()` in
//! `kernel/bpf/syscall.c`: present in 5.0 and every later kernel, so in 5.10, 6.1, 6.12 and
//! 6.18, with the same meaning: "wait for any running BPF programs to complete so that
//! userspace, when we return to it, knows that all programs that could be running use the new
//! map value"). The kernel's own BPF selftests synchronize the same way (`kern_sync_rcu`).
//!
//! [`GracePeriod`] owns a one-element array-of-maps and a one-element inner array map, both
//! private to this process (not pinned; they go away with it). [`GracePeriod::wait`] stores the
//! inner map into the outer map's only slot: one syscall, one grace period. There is no
//! fallback: if the kernel refuses, the error says so and the caller fails the change.

use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

/// `BPF_MAP_CREATE` (`enum bpf_cmd`).
const BPF_MAP_CREATE: libc::c_long = 0;
/// `BPF_MAP_UPDATE_ELEM` (`enum bpf_cmd`).
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
/// `BPF_MAP_TYPE_ARRAY` (`enum bpf_map_type`).
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `BPF_MAP_TYPE_ARRAY_OF_MAPS` (`enum bpf_map_type`).
const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
/// `BPF_ANY`: create or replace the element.
const BPF_ANY: u64 = 0;

/// The leading fields of `union bpf_attr` for `BPF_MAP_CREATE` (the kernel zero-fills the
/// fields after the size it is given).
#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

/// `union bpf_attr` for `BPF_MAP_*_ELEM`: map fd, pointers to key and value, flags.
#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The kernel refused to provide a grace period.
#[derive(Debug, thiserror::Error)]
pub enum GracePeriodError {
    /// Creating one of the two maps failed.
    #[error(
        "creating the {which} map that provides RCU grace periods failed; without it a policy \
         change can't be made atomic, so nothing was changed (needs root or CAP_BPF, and before \
         Linux 5.11 a RLIMIT_MEMLOCK it may raise: LimitMEMLOCK=infinity in the unit)"
    )]
    Create {
        /// `"inner"` or `"outer (array of maps)"`.
        which: &'static str,
        /// The syscall's error.
        #[source]
        source: io::Error,
    },
    /// The map-in-map update (the wait itself) failed.
    #[error(
        "waiting for an RCU grace period (array-of-maps update) failed: {0}; packets may \
         still be judged against the previous slot"
    )]
    Wait(#[source] io::Error),
}

/// A source of RCU grace periods: see the module documentation.
#[derive(Debug)]
pub struct GracePeriod {
    outer: OwnedFd,
    inner: OwnedFd,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a live, properly laid out `bpf_attr` prefix of `size_of::<T>()` bytes;
    // the kernel reads at most that many bytes and writes nothing back for these commands.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Raises `RLIMIT_MEMLOCK` to unlimited. Kernels before 5.11 charge BPF maps against it, per
/// user and across processes, so once the filter's own maps exist even a one-element map
/// fails with `EPERM` under the default limit (as aya does for its maps).
fn raise_memlock() -> io::Result<()> {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `unlimited` is a valid rlimit for the duration of the call.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn create_map(attr: &mut MapCreateAttr, which: &'static str) -> Result<OwnedFd, GracePeriodError> {
    let created = match bpf(BPF_MAP_CREATE, attr) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) && raise_memlock().is_ok() => {
            bpf(BPF_MAP_CREATE, attr)
        }
        other => other,
    };
    let fd = created.map_err(|source| GracePeriodError::Create { which, source })?;
    // SAFETY: BPF_MAP_CREATE returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn name(text: &str) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..text.len()].copy_from_slice(text.as_bytes());
    bytes
}

impl GracePeriod {
    /// Creates the two maps.
    pub fn new() -> Result<Self, GracePeriodError> {
        let mut inner_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            map_name: name("apifence_gp_in"),
            ..MapCreateAttr::default()
        };
        let inner = create_map(&mut inner_attr, "inner")?;
        let mut outer_attr = MapCreateAttr {
            map_type: BPF_MAP_TYPE_ARRAY_OF_MAPS,
            key_size: 4,
            value_size: 4,
            max_entries: 1,
            inner_map_fd: inner.as_raw_fd() as u32,
            map_name: name("apifence_gp"),
            ..MapCreateAttr::default()
        };
        let outer = create_map(&mut outer_attr, "outer (array of maps)")?;
        Ok(Self { outer, inner })
    }

    /// Blocks until every BPF program run that started before this call has finished.
    pub fn wait(&self) -> Result<(), GracePeriodError> {
        let key: u32 = 0;
        let value: u32 = self.inner.as_raw_fd() as u32;
        let mut attr = MapElemAttr {
            map_fd: self.outer.as_raw_fd() as u32,
            _pad: 0,
            key: &key as *const u32 as u64,
            value: &value as *const u32 as u64,
            flags: BPF_ANY,
        };
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr)
            .map(drop)
            .map_err(GracePeriodError::Wait)
    }

    /// The outer map's file descriptor (tests read its `map_type` from `/proc/self/fdinfo`).
    pub fn outer_fd(&self) -> i32 {
        self.outer.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // bpf_attr for BPF_MAP_CREATE: 7 u32 fields, then map_name[16] at offset 28.
        assert_eq!(std::mem::offset_of!(MapCreateAttr, map_name), 28);
        // BPF_MAP_*_ELEM: key at 8 (aligned u64), value at 16, flags at 24.
        assert_eq!(std::mem::offset_of!(MapElemAttr, key), 8);
        assert_eq!(std::mem::offset_of!(MapElemAttr, value), 16);
        assert_eq!(std::mem::offset_of!(MapElemAttr, flags), 24);
        assert_eq!(name("apifence_gp_in")[..14], *b"apifence_gp_in");
    }
}
