//! Tollgate's parsers against etherparse on arbitrary bytes, read both as
//! an Ethernet frame and as an IP packet: they must agree or differ in a
//! documented way (the comparison and its list of differences live in
//! crates/conntrack/tests/oracle, shared with the property test).
#![no_main]

#[path = "../../crates/conntrack/tests/oracle/mod.rs"]
mod oracle;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(e) = oracle::compare_frame(data) {
        panic!("frame: {e}");
    }
    if let Err(e) = oracle::compare_ip(data) {
        panic!("ip: {e}");
    }
});
