//! Bounded polling.

use std::thread;
use std::time::{Duration, Instant};

/// Polls `done` every `every` for at most `timeout`; returns its last answer.
pub fn wait_until(timeout: Duration, every: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(every);
    }
}
