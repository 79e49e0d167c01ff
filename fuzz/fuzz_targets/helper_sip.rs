//! Fuzzes the SIP/SDP parser, as one message and as a TCP stream of messages.
#![no_main]

use conntrack::helpers::sip;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut rest = data;
    while let Ok((msg, used)) = sip::parse(rest) {
        for m in msg.media() {
            assert_ne!(m.port, 0);
        }
        if used == 0 || used >= rest.len() {
            break;
        }
        rest = &rest[used..];
    }
});
