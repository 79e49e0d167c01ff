//! Fuzzes the pcap/pcapng reader and the Ethernet parser.
#![no_main]

use capture::{ether, Capture};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(c) = Capture::new(data) {
        for rec in c.take(10_000) {
            let Ok(rec) = rec else { break };
            if let Ok(f) = ether::parse(rec.data) {
                assert!(f.l3_offset <= rec.data.len());
            }
        }
    }
});
