//! Fuzzes the configuration parser: any text gives a config or errors with
//! line numbers, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(errs) = control::parse(text) {
            assert!(!errs.is_empty());
        }
    }
});
