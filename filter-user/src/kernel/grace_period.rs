//! Waiting until no XDP program can still be reading the slot that was just deactivated.
//!
//! XDP programs run inside RCU read-side critical sections, so once an RCU grace period has
//! passed after the active-slot flip, every packet that read the old slot index is done.
//! `membarrier(MEMBARRIER_CMD_GLOBAL)` is a system call that waits for exactly such a grace
//! period (it calls `synchronize_rcu()` in the kernel).

use std::time::Duration;

/// `MEMBARRIER_CMD_GLOBAL` from `linux/membarrier.h`.
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;
/// Used only where the kernel refuses the membarrier (nohz_full kernels): far longer than one
/// packet's processing.
const FALLBACK_WAIT: Duration = Duration::from_millis(50);

/// Blocks until every program run that started before this call has finished.
pub fn wait_for_readers() {
    // SAFETY: membarrier takes plain integers and touches no memory of ours.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(FALLBACK_WAIT);
    }
}
