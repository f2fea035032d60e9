//! The range language: no input panics, and what `ranges show` prints parses back to the same
//! list (the round trip an operator relies on when copying a list from one host to another).
#![no_main]

use apifence::policy::language::parse_authorized;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let Ok(list) = parse_authorized(text) else {
        return;
    };
    let shown = list.to_text();
    let again = parse_authorized(&shown)
        .unwrap_or_else(|e| panic!("{shown:?} (shown for {text:?}) does not parse back: {e}"));
    assert_eq!(again, list, "round trip of {text:?} through {shown:?}");
    assert_eq!(again.to_text(), shown, "showing is stable");
});
