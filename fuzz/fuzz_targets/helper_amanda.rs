//! Fuzzes the Amanda CONNECT-list parser.
#![no_main]

use conntrack::helpers::amanda;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let r = amanda::parse(data);
    assert!(r.as_slice().len() <= amanda::MAX_PORTS);
    assert!(r.as_slice().iter().all(|&(_, port)| port != 0));
});
