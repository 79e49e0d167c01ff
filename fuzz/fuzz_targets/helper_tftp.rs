//! Fuzzes the TFTP request parser.
#![no_main]

use conntrack::helpers::tftp;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(req)) = tftp::parse(data) {
        assert!(!req.filename.is_empty());
        assert!(!req.filename.contains(&0));
    }
});
