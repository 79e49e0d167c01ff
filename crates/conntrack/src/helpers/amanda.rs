//! Amanda backup-client reply parser (the kernel's `nf_conntrack_amanda.c`).
//!
//! The Amanda server sends a UDP request to the client's `amandad` on port
//! 10080; the client's reply (the reply direction of that UDP connection,
//! sent from port 10080) names the TCP ports on which the client will accept
//! the backup streams:
//!
//! ```text
//! Amanda 2.6 REP HANDLE 000-00000000 SEQ 1\n
//! CONNECT DATA 50001 MESG 50002 INDEX 50003\n
//! ```
//!
//! The server then connects to each port (the kernel expects TCP from the
//! original source address to the original destination address and port).
//!
//! As in the kernel: the first `CONNECT ` anywhere in the payload starts the
//! list, which ends at the next `\n` (no `\n` → nothing). Within it the
//! first occurrence of each of `DATA `, `MESG `, `INDEX `, `STATE ` (in that
//! order, not in the order of the text) is followed by a decimal port. A
//! keyword that is absent is skipped; a keyword followed by a bad port stops
//! the list (the kernel `break`s), keeping the ports found before it. So
//! there are at most 4 ports, the kernel's `max_expected` for Amanda.
//!
//! Stricter than the kernel, which copies at most 5 bytes and reads them
//! with `simple_strtoul` into a 16-bit port: a number of more than 5 digits
//! (the kernel reads its first 5) or above 65535 (the kernel wraps it) is an
//! error here. Port 0 or no digits is an error in both.

use super::{digits, expected_tcp, find, HelpCx, ParseErr};
use crate::packet::L4;
use crate::timeouts::SEC;

/// The kernel's `max_expected` for Amanda: one port per stream keyword.
pub const MAX_PORTS: usize = 4;

/// Which stream a port is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AmandaStream {
    /// `DATA`: the backup data.
    Data,
    /// `MESG`: messages.
    Mesg,
    /// `INDEX`: the file index.
    Index,
    /// `STATE`: state (newer Amanda versions).
    State,
}

/// The keywords in the kernel's search order.
const KEYWORDS: [(AmandaStream, &[u8]); MAX_PORTS] = [
    (AmandaStream::Data, b"DATA "),
    (AmandaStream::Mesg, b"MESG "),
    (AmandaStream::Index, b"INDEX "),
    (AmandaStream::State, b"STATE "),
];

/// The ports announced by one reply: a fixed array, no allocation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AmandaPorts {
    entries: [(AmandaStream, u16); MAX_PORTS],
    len: usize,
    error: Option<ParseErr>,
}

impl AmandaPorts {
    const EMPTY: AmandaPorts = AmandaPorts {
        entries: [(AmandaStream::Data, 0); MAX_PORTS],
        len: 0,
        error: None,
    };

    /// The announced streams and ports (each port non-zero), in the kernel's
    /// keyword order. Empty when the payload has no `CONNECT ` list.
    pub fn as_slice(&self) -> &[(AmandaStream, u16)] {
        self.entries.get(..self.len).unwrap_or_default()
    }

    /// The error that ended the list early, if any (the ports before it are
    /// still valid, as in the kernel); the caller counts a parse error.
    pub fn error(&self) -> Option<ParseErr> {
        self.error
    }

    /// True when no port was announced.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn push(&mut self, s: AmandaStream, port: u16) {
        if let Some(slot) = self.entries.get_mut(self.len) {
            *slot = (s, port);
            self.len += 1;
        }
    }
}

/// Parses the UDP payload of a client reply (sent from port 10080).
pub fn parse(payload: &[u8]) -> AmandaPorts {
    let mut out = AmandaPorts::EMPTY;
    let Some(c) = find(payload, b"CONNECT ") else {
        return out;
    };
    let after = payload.get(c + 8..).unwrap_or_default();
    let Some(nl) = after.iter().position(|&b| b == b'\n') else {
        return out;
    };
    let list = &after[..nl];
    for (stream, kw) in KEYWORDS {
        let Some(at) = find(list, kw) else {
            continue;
        };
        let num = list.get(at + kw.len()..).unwrap_or_default();
        match port5(num) {
            Ok(p) => out.push(stream, p),
            Err(e) => {
                out.error = Some(e);
                break;
            }
        }
    }
    out
}

/// A port of 1 to 5 digits, 1..=65535.
fn port5(s: &[u8]) -> Result<u16, ParseErr> {
    let d = digits(s);
    if d.len == 0 || d.len > 5 {
        return Err(ParseErr::BadNumber);
    }
    match u16::try_from(d.value) {
        Ok(0) => Err(ParseErr::ZeroPort),
        Ok(p) => Ok(p),
        Err(_) => Err(ParseErr::BadNumber),
    }
}

/// The glue: only the answer (reply direction) names ports, each one on the
/// connection's original destination that its original source will connect
/// to. The answer may come late, so the master lives 300 s (the kernel's
/// `master_timeout`).
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let L4::Udp { payload } = cx.pkt.l4 else {
        return;
    };
    if cx.from_client {
        return;
    }
    cx.parsed();
    cx.set_deadline(cx.now + 300 * SEC);
    let ports = parse(payload);
    let orig = cx.orig;
    let asks = cx.asks();
    if ports.error().is_some() {
        asks.error();
    }
    for &(_, port) in ports.as_slice() {
        asks.push(expected_tcp(orig.src, orig.dst, port, orig.family, false));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use AmandaStream::*;

    #[test]
    fn replies() {
        let r = parse(b"Amanda 2.6 REP HANDLE 000-00000000 SEQ 1\n\nCONNECT DATA 50001 MESG 50002 INDEX 50003\nOPTIONS features=ffff;\n");
        assert_eq!(
            r.as_slice(),
            &[(Data, 50001), (Mesg, 50002), (Index, 50003)]
        );
        assert_eq!(r.error(), None);
        // Keyword order, not text order; STATE included.
        let r = parse(b"CONNECT STATE 4 INDEX 3 MESG 2 DATA 1\n");
        assert_eq!(
            r.as_slice(),
            &[(Data, 1), (Mesg, 2), (Index, 3), (State, 4)]
        );
        // Leading zeros, at most 5 digits.
        let r = parse(b"CONNECT DATA 00080 MESG 065535\n");
        assert_eq!(r.as_slice(), &[(Data, 80)]);
        assert_eq!(r.error(), Some(ParseErr::BadNumber));
        // Only DATA.
        let r = parse(b"CONNECT DATA 10000\n");
        assert_eq!(r.as_slice(), &[(Data, 10000)]);
        // The first occurrence of each keyword counts.
        let r = parse(b"CONNECT DATA 1 DATA 2\n");
        assert_eq!(r.as_slice(), &[(Data, 1)]);
        // CONNECT need not start a line; text after the port is not checked.
        let r = parse(b"xCONNECT DATA 7x\r\n");
        assert_eq!(r.as_slice(), &[(Data, 7)]);
    }

    #[test]
    fn errors_stop_the_list() {
        type Case<'a> = (&'a [u8], &'a [(AmandaStream, u16)], ParseErr);
        let cases: &[Case] = &[
            (
                b"CONNECT DATA 1 MESG 0 INDEX 3\n",
                &[(Data, 1)],
                ParseErr::ZeroPort,
            ),
            (b"CONNECT DATA x MESG 2\n", &[], ParseErr::BadNumber),
            (b"CONNECT DATA 65536\n", &[], ParseErr::BadNumber),
            (b"CONNECT DATA 99999\n", &[], ParseErr::BadNumber),
            (b"CONNECT DATA 123456\n", &[], ParseErr::BadNumber),
            (b"CONNECT DATA  1\n", &[], ParseErr::BadNumber),
            (
                b"CONNECT DATA 1 MESG 2 INDEX -3 STATE 4\n",
                &[(Data, 1), (Mesg, 2)],
                ParseErr::BadNumber,
            ),
            (b"CONNECT DATA \n", &[], ParseErr::BadNumber),
        ];
        for (p, ports, err) in cases {
            let r = parse(p);
            assert_eq!(r.as_slice(), *ports, "{}", p.escape_ascii());
            assert_eq!(r.error(), Some(*err), "{}", p.escape_ascii());
        }
    }

    #[test]
    fn no_list() {
        for p in [
            &b""[..],
            b"Amanda 2.6 REP HANDLE 000-00000000 SEQ 1\n",
            // No newline after CONNECT: the kernel gives up.
            b"CONNECT DATA 1 MESG 2",
            b"CONNECT\nDATA 1\n",
            b"connect DATA 1\n",
            // Keywords after the newline do not count.
            b"CONNECT \nDATA 1\n",
            b"CONNECT OPTIONS\nDATA 1 MESG 2\n",
            b"CONNECT data 1\n",
        ] {
            let r = parse(p);
            assert!(r.is_empty(), "{}", p.escape_ascii());
            assert_eq!(r.error(), None, "{}", p.escape_ascii());
        }
    }

    proptest! {
        #[test]
        fn never_panics(p in proptest::collection::vec(any::<u8>(), 0..200)) {
            let r = parse(&p);
            prop_assert!(r.as_slice().len() <= MAX_PORTS);
            prop_assert!(r.as_slice().iter().all(|&(_, port)| port != 0));
        }

        #[test]
        fn never_panics_near_valid(tail in proptest::collection::vec(prop::sample::select(b"0123456789 \nDATMESGINXST".to_vec()), 0..80)) {
            let mut p = b"CONNECT ".to_vec();
            p.extend(tail);
            let _ = parse(&p);
        }

        #[test]
        fn round_trip(ports: [Option<std::num::NonZeroU16>; MAX_PORTS], prefix in "[a-z0-9 ]{0,40}") {
            let mut text = format!("Amanda 2.6 REP HANDLE {prefix} SEQ 1\nCONNECT");
            let mut want = Vec::new();
            for ((stream, kw), p) in KEYWORDS.iter().zip(ports) {
                if let Some(p) = p {
                    text.push(' ');
                    text.push_str(std::str::from_utf8(kw).unwrap());
                    text.push_str(&p.to_string());
                    want.push((*stream, p.get()));
                }
            }
            text.push_str("\nOPTIONS features=1;\n");
            let r = parse(text.as_bytes());
            prop_assert_eq!(r.as_slice(), &want[..]);
            prop_assert_eq!(r.error(), None);
        }
    }
}
