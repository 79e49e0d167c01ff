//! Fuzzes the SANE state machine: the input is split into payloads, the
//! first byte of each chunk choosing the direction and its length.
#![no_main]

use conntrack::helpers::sane;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut state = sane::SaneState::default();
    let mut rest = data;
    while let [head, tail @ ..] = rest {
        let from_client = head & 0x80 != 0;
        let len = usize::from(head & 0x0f).min(tail.len());
        let (payload, next) = tail.split_at(len);
        if let Some(port) = sane::on_payload(&mut state, from_client, payload) {
            assert_ne!(port, 0);
            assert!(!from_client);
        }
        rest = next;
    }
});
