//! Fuzzes the PPTP control parser and state machine on message sequences
//! (split at 0xFF bytes; the first byte of each part picks the direction).
#![no_main]

use conntrack::helpers::pptp::{on_message, parse, PptpState};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut st = PptpState::default();
    for part in data.split(|&b| b == 0xff) {
        let [dir, msg @ ..] = part else { continue };
        if let Ok(Some(m)) = parse(msg) {
            let _ = on_message(&mut st, dir & 1 == 0, m);
        }
    }
});
