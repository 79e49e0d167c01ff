//! Fuzzes the IP packet parser, with checksum verification on and off.
#![no_main]

use conntrack::packet::{parse, ParseOptions};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for checksum in [true, false] {
        if let Ok(p) = parse(data, ParseOptions { checksum }) {
            assert!(p.ip_len as usize <= data.len());
        }
    }
});
