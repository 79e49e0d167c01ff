//! Fuzzes the control socket's reply parser (what the CLI reads from a
//! daemon): any bytes give a reply or an error, never a panic; a reply that
//! parses survives a round trip through its wire form, and its text lines
//! are made without a panic.
#![no_main]

use control::proto::{parse_reply, Reply};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(r) = parse_reply(data) else { return };
    let line = r.to_line();
    assert!(!line.contains('\n'));
    assert_eq!(parse_reply(line.as_bytes()).as_ref(), Ok(&r));
    match &r {
        Reply::Conn(c) | Reply::Event { conn: c, .. } => {
            let _ = c.line();
        }
        Reply::Stats(s) => {
            let _ = s.line();
        }
        Reply::Expect(e) => {
            let _ = e.line();
        }
        Reply::Done(_) | Reply::Error(_) => {}
    }
});
