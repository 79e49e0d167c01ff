//! Fuzzes the control socket's request parser: any bytes give a request or
//! an error, never a panic; a request's filter compiles and matches.
#![no_main]

use control::proto::{parse_request, Request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    match parse_request(data) {
        Ok(
            Request::CtList { filter } | Request::CtFlush { filter } | Request::CtEvents { filter },
        ) => {
            // parse_request validated it: it must compile.
            assert!(filter.compile().is_ok());
        }
        Ok(Request::ExpectAdd(spec)) => assert!(spec.compile().is_ok()),
        Ok(_) | Err(_) => {}
    }
});
