//! The daemon's socket protocol: any request or response line decodes or is refused without
//! panicking, and what decodes encodes back to an equal value.
#![no_main]

use apifence::daemon::protocol::{Request, Response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|line: &[u8]| {
    if let Ok(request) = serde_json::from_slice::<Request>(line) {
        let text = serde_json::to_string(&request).expect("a decoded request encodes");
        let back: Request = serde_json::from_str(&text).expect("an encoded request decodes");
        assert_eq!(back, request);
    }
    if let Ok(response) = serde_json::from_slice::<Response>(line) {
        serde_json::to_string(&response).expect("a decoded response encodes");
    }
});
