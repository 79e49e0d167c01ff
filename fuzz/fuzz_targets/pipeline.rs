//! Fuzzes the whole pipeline (parse, conntrack, helpers, policy) on sequences
//! of arbitrary packets (the input format of `seq::packets`), checksums
//! checked.
#![no_main]

use libfuzzer_sys::fuzz_target;

mod seq;

fuzz_target!(|data: &[u8]| {
    let mut p = seq::pipeline(true);
    for (side, pkt, now) in seq::packets(data) {
        let _ = p.process(side, pkt, now);
        assert!(p.conntrack().len() <= 64);
    }
});
