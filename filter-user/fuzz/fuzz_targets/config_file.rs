//! The daemon's config file (TOML): no input panics or hangs; an accepted config validates.
#![no_main]

use std::path::Path;

use apifence::daemon::config::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(config) = parse(text, Path::new("/etc/apifence")) {
        // Whatever was accepted must be usable: warnings are computed without panicking.
        let _ = config.warnings();
    }
});
