//! TFTP request parser (the kernel's `nf_conntrack_tftp.c`).
//!
//! A TFTP client sends a read (RRQ, opcode 1) or write (WRQ, opcode 2)
//! request to the server's port 69; the server answers from a new port
//! (RFC 1350 §4), so the reply is a new UDP flow. On a request the kernel
//! expects "UDP from the server's address, any source port, to the client's
//! address and port" (the reply tuple with a wildcard source port); building
//! that expectation is the caller's job. Other opcodes (DATA, ACK, ERROR,
//! OACK) announce nothing.
//!
//! The kernel looks only at the 2-byte opcode. We are stricter and also
//! require the RFC 1350 body: a non-empty file name ended by NUL, then a
//! non-empty mode ended by NUL (RFC 2347 options may follow; they are not
//! checked). Why: every server parses these two strings before answering and
//! sends an ERROR or nothing when they are missing, so an expectation made
//! for a request without them is never used by legitimate traffic, while the
//! kernel's rule lets any datagram to port 69 that starts with `00 01` open
//! a reply pinhole. Unknown mode names are accepted (reported as
//! [`TftpMode::Other`]): the server refuses them, but they are well-formed.

use super::{HelpCx, HelperKind, ParseErr};
use crate::expect::{ExpectSpec, Mask};
use crate::packet::L4;
use crate::tuple::{ipproto, Tuple};

/// Request opcode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TftpOp {
    /// Read request (opcode 1).
    Rrq,
    /// Write request (opcode 2).
    Wrq,
}

/// Transfer mode named in a request (case-insensitive on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TftpMode {
    /// `netascii`.
    Netascii,
    /// `octet`.
    Octet,
    /// `mail` (obsolete).
    Mail,
    /// Any other name; the server will refuse it.
    Other,
}

/// A TFTP read or write request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TftpReq<'a> {
    /// RRQ or WRQ.
    pub op: TftpOp,
    /// The file name, without its NUL (raw bytes: RFC 1350 says netascii,
    /// servers take anything).
    pub filename: &'a [u8],
    /// The transfer mode.
    pub mode: TftpMode,
}

/// Parses the UDP payload of a packet to the TFTP server.
///
/// `Ok(None)` for any opcode other than RRQ/WRQ (and for payloads shorter
/// than an opcode, which the kernel ignores too); `Err` for an RRQ/WRQ whose
/// file name or mode is missing, empty or not NUL-terminated.
pub fn parse(payload: &[u8]) -> Result<Option<TftpReq<'_>>, ParseErr> {
    let [hi, lo, body @ ..] = payload else {
        return Ok(None);
    };
    let op = match u16::from_be_bytes([*hi, *lo]) {
        1 => TftpOp::Rrq,
        2 => TftpOp::Wrq,
        _ => return Ok(None),
    };
    let (filename, rest) = cstr(body)?;
    let (mode, _options) = cstr(rest)?;
    let mode = if mode.eq_ignore_ascii_case(b"netascii") {
        TftpMode::Netascii
    } else if mode.eq_ignore_ascii_case(b"octet") {
        TftpMode::Octet
    } else if mode.eq_ignore_ascii_case(b"mail") {
        TftpMode::Mail
    } else {
        TftpMode::Other
    };
    Ok(Some(TftpReq { op, filename, mode }))
}

/// Splits a non-empty NUL-terminated string off the front of `s`.
fn cstr(s: &[u8]) -> Result<(&[u8], &[u8]), ParseErr> {
    let nul = s.iter().position(|&b| b == 0).ok_or(ParseErr::Truncated)?;
    if nul == 0 {
        return Err(ParseErr::BadSyntax);
    }
    Ok((&s[..nul], &s[nul + 1..]))
}

/// The glue: a request expects the server's answer from any port back to
/// the client's.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let L4::Udp { payload } = cx.pkt.l4 else {
        return;
    };
    if !cx.from_client {
        return;
    }
    cx.parsed();
    let orig = cx.orig;
    match parse(payload) {
        Ok(Some(_)) => cx.asks().push(ExpectSpec {
            tuple: Tuple {
                src: orig.dst,
                dst: orig.src,
                src_port: 0,
                dst_port: orig.src_port,
                proto: ipproto::UDP,
                family: orig.family,
            },
            mask: Mask {
                src_addr: false,
                src_port: true,
                src_prefix: 0,
            },
            helper: HelperKind::Tftp,
            child_helper: None,
            permanent: false,
            timeout: None,
        }),
        Ok(None) => {}
        Err(_) => cx.asks().error(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn req(op: TftpOp, filename: &[u8], mode: TftpMode) -> Result<Option<TftpReq<'_>>, ParseErr> {
        Ok(Some(TftpReq { op, filename, mode }))
    }

    #[test]
    fn requests() {
        assert_eq!(
            parse(b"\0\x01file1\0octet\0"),
            req(TftpOp::Rrq, b"file1", TftpMode::Octet)
        );
        assert_eq!(
            parse(b"\0\x02up.bin\0OCTET\0"),
            req(TftpOp::Wrq, b"up.bin", TftpMode::Octet)
        );
        assert_eq!(
            parse(b"\0\x01a\0NetAscii\0"),
            req(TftpOp::Rrq, b"a", TftpMode::Netascii)
        );
        assert_eq!(
            parse(b"\0\x01a\0mail\0"),
            req(TftpOp::Rrq, b"a", TftpMode::Mail)
        );
        assert_eq!(
            parse(b"\0\x01a\0binary\0"),
            req(TftpOp::Rrq, b"a", TftpMode::Other)
        );
        // RFC 2347 options after the mode.
        assert_eq!(
            parse(b"\0\x01pxelinux.0\0octet\0tsize\x000\0blksize\x001468\0"),
            req(TftpOp::Rrq, b"pxelinux.0", TftpMode::Octet)
        );
        // Raw bytes in the file name are the server's business.
        assert_eq!(
            parse(b"\0\x01\xff/x\0octet\0"),
            req(TftpOp::Rrq, b"\xff/x", TftpMode::Octet)
        );
    }

    #[test]
    fn malformed_requests() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (b"\0\x01", Truncated),
            (b"\0\x01file", Truncated),
            (b"\0\x01file\0", Truncated),
            (b"\0\x01file\0octet", Truncated),
            (b"\0\x01\0octet\0", BadSyntax),
            (b"\0\x01file\0\0", BadSyntax),
            (b"\0\x02file\0\0", BadSyntax),
        ];
        for (p, err) in cases {
            assert_eq!(parse(p), Err(*err), "{}", p.escape_ascii());
        }
    }

    #[test]
    fn other_opcodes() {
        for p in [
            &b""[..],
            b"\0",
            b"\x01",
            b"\0\x03\0\x01data",
            b"\0\x04\0\x01",
            b"\0\x05\0\x01File not found\0",
            b"\0\x06tsize\x00512\0",
            b"\0\x00file\0octet\0",
            b"\x01\x01file\0octet\0",
            b"\xff\xff",
        ] {
            assert_eq!(parse(p), Ok(None), "{}", p.escape_ascii());
        }
    }

    /// The requests of the TFTP captures in /work/shared/corpus/tftp.
    #[test]
    fn corpus_requests() {
        // sv_tftp_rrq: RRQ rfc1350.txt from 192.168.0.253:50618; the server
        // answers from port 3445.
        let p = b"\x00\x01rfc1350.txt\x00octet\x00";
        assert_eq!(parse(p), req(TftpOp::Rrq, b"rfc1350.txt", TftpMode::Octet));
        // tcpdump_tftp_rrq_small: RRQ file1; the server answers from 59557.
        let p = b"\x00\x01file1\x00octet\x00";
        assert_eq!(parse(p), req(TftpOp::Rrq, b"file1", TftpMode::Octet));
        // The DATA and ACK packets of those captures.
        assert_eq!(parse(b"\x00\x03\x00\x01\n\n\n\n"), Ok(None));
        assert_eq!(parse(b"\x00\x04\x00\x01"), Ok(None));
    }

    proptest! {
        #[test]
        fn never_panics(p in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = parse(&p);
        }

        #[test]
        fn round_trip(
            wrq: bool,
            filename in proptest::collection::vec(1u8.., 1..64),
            (mode_text, mode) in prop::sample::select(vec![
                ("octet", TftpMode::Octet),
                ("NETASCII", TftpMode::Netascii),
                ("Mail", TftpMode::Mail),
                ("binary", TftpMode::Other),
            ]),
            options in proptest::collection::vec(any::<u8>(), 0..32),
        ) {
            let op = if wrq { TftpOp::Wrq } else { TftpOp::Rrq };
            let mut p = vec![0, if wrq { 2 } else { 1 }];
            p.extend_from_slice(&filename);
            p.push(0);
            p.extend_from_slice(mode_text.as_bytes());
            p.push(0);
            p.extend_from_slice(&options);
            prop_assert_eq!(parse(&p), Ok(Some(TftpReq { op, filename: &filename, mode })));
        }
    }
}
