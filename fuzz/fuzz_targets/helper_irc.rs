//! Fuzzes the IRC DCC offer parser.
#![no_main]

use conntrack::helpers::irc;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let first = irc::parse_line(data);
    let mut n = 0;
    for offer in irc::offers(data) {
        if let Ok(o) = offer {
            assert_ne!(o.port, 0);
        }
        n += 1;
        // Every candidate consumes bytes of the line: the scan is bounded.
        assert!(n <= data.len());
    }
    if let Ok(Some(o)) = first {
        assert!(o.addr.is_ipv4());
    }
});
