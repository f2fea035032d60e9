//! The deny log's intake: any ring-buffer record, split into records of any length, is decoded
//! and aggregated (or counted as undecodable) without panicking, and the log stays bounded.
#![no_main]

use apifence::features::deny_log::{Clock, DenyLog};
use libfuzzer_sys::fuzz_target;

/// Bytes of one deny event as the kernel writes it.
const RECORD: usize = size_of::<filter_common::DenyEvent>();

fn no_names(_: u32) -> Option<String> {
    None
}

fuzz_target!(|bytes: &[u8]| {
    let clock = Clock::now();
    let mut log = DenyLog::new(4).with_namer(no_names);
    for record in bytes.chunks(RECORD) {
        log.record_bytes(record, &clock);
    }
    assert!(log.len() <= 4, "bounded: {}", log.len());
    assert_eq!(log.events(), bytes.chunks(RECORD).count() as u64);
    assert!(log.undecodable() <= log.events());
    let _ = log.top(2);
});
