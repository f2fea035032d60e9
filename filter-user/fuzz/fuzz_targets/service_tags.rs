//! Azure service-tags files: no input panics; every name an accepted file lists resolves.
#![no_main]

use std::path::Path;

use apifence::features::service_tags::ServiceTags;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let Ok(tags) = ServiceTags::from_slice(bytes, Path::new("fuzz.json")) else {
        return;
    };
    for name in tags.names() {
        assert!(tags.expand(name).is_ok(), "{name} is listed but does not resolve");
    }
});
