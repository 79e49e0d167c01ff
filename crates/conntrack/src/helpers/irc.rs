//! IRC DCC offer parser (the kernel's `nf_conntrack_irc.c`).
//!
//! A client offers a direct connection to a peer with a CTCP message sent to
//! the server:
//!
//! ```text
//! PRIVMSG <target> :\x01DCC <type> <arg> <ip> <port>[ <more>]\x01
//! ```
//!
//! where `<ip>` is the client's IPv4 address as one decimal `u32`
//! (`167772161` is 10.0.0.1) and the peer will connect to `<ip>:<port>`.
//! Only lines from the client to the server carry offers the kernel acts on;
//! the caller hands over one complete line without its CR/LF.
//!
//! Syntax accepted, as in the kernel:
//! - optional leading blanks, then `PRIVMSG ` (case-insensitive);
//! - the message starts at the first ` :` after it, and must begin right
//!   there with `\x01DCC ` (case-sensitive); if it does not, the line carries
//!   no offer;
//! - `<type>` is one of `SEND`, `CHAT`, `MOVE`, `TSEND`, `SCHAT`
//!   (case-sensitive) followed by a space;
//! - `<arg>` (file name, or `chat`) runs to the next space; it is not checked;
//! - `<ip>` decimal digits, then one or more spaces, then `<port>` decimal
//!   digits; what follows the port is not checked.
//!
//! After a malformed or unknown offer the kernel goes on looking for another
//! ` :\x01DCC ` in the same packet; [`offers`] does the same and yields each
//! candidate in order. The kernel acts on the first one whose address is the
//! sender's (it checks that the address is the connection's source, before
//! or after NAT) and stops there: that address check is the caller's, which
//! is why every syntactically valid offer is returned with its address.
//!
//! Stricter than the kernel (which reads both numbers with `simple_strtoul`
//! and truncates them): an address above `u32::MAX` or equal to 0, a port
//! above 65535, no digits at all, or no space between address and port are
//! errors here; the kernel would truncate `65537` to port 1. The kernel
//! refuses port 0 and so do we. It does not refuse ports below 1024 (older
//! versions did), so neither do we. Dotted-quad or IPv6 text in `<ip>` is not
//! accepted by the kernel (its IRC helper is IPv4-only, and `10.0.0.1` reads
//! as address 10 followed by a bad port), so it is an error here too.
//! The kernel also needs a few bytes of slack at the end of the packet
//! (`\x01\r\n`); we get complete lines, so we do not count them.

use std::net::{IpAddr, Ipv4Addr};

use super::{digits, expected_tcp, find, port, HelpCx, ParseErr};
use crate::tuple::Addr;

/// The kernel looks at no more than this many bytes of a packet; we look at
/// no more than this many bytes of a line, which bounds the work.
pub const MAX_SEARCH_SIZE: usize = 4095;

/// DCC offer types the kernel knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DccKind {
    /// `DCC SEND`: file transfer.
    Send,
    /// `DCC CHAT`: direct chat.
    Chat,
    /// `DCC MOVE`.
    Move,
    /// `DCC TSEND`.
    TSend,
    /// `DCC SCHAT`.
    SChat,
}

impl DccKind {
    /// Every kind, with its keyword (including the space that must follow),
    /// in the kernel's order.
    const TABLE: [(DccKind, &'static [u8]); 5] = [
        (DccKind::Send, b"SEND "),
        (DccKind::Chat, b"CHAT "),
        (DccKind::Move, b"MOVE "),
        (DccKind::TSend, b"TSEND "),
        (DccKind::SChat, b"SCHAT "),
    ];
}

/// A DCC offer: the peer will open a TCP connection to `addr:port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DccOffer {
    /// The DCC type.
    pub kind: DccKind,
    /// The announced address; always IPv4 (DCC encodes it as a `u32`). The
    /// caller must check that it is the sender's address.
    pub addr: IpAddr,
    /// The announced port, never 0.
    pub port: u16,
}

/// Returns the first valid DCC offer of a client→server line (without
/// CR/LF).
///
/// `Ok(None)`: no `PRIVMSG ... :\x01DCC ` in the line. `Err`: there is one
/// but none of the offers in the line is valid (the error of the first).
/// A caller that wants the kernel's exact behaviour when the first valid
/// offer names a foreign address uses [`offers`] instead.
pub fn parse_line(line: &[u8]) -> Result<Option<DccOffer>, ParseErr> {
    let mut first_err = None;
    for r in offers(line) {
        match r {
            Ok(o) => return Ok(Some(o)),
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(None),
    }
}

/// Every DCC offer candidate of a client→server line, in order, as the
/// kernel scans them: `Ok` for a valid offer, `Err` for a malformed one.
/// DCC requests of other types (`RESUME`, `ACCEPT`, ...) are skipped, as
/// the kernel skips them.
pub fn offers(line: &[u8]) -> DccOffers<'_> {
    let line = line.get(..MAX_SEARCH_SIZE).unwrap_or(line);
    let start = line
        .iter()
        .position(|&b| !matches!(b, b' ' | b'\r' | b'\n'))
        .unwrap_or(line.len());
    let body = &line[start..];
    let pos = match body.get(..8) {
        Some(p) if p.eq_ignore_ascii_case(b"PRIVMSG ") => start + 8,
        // Not a PRIVMSG: nothing to scan.
        _ => line.len(),
    };
    DccOffers { line, pos }
}

/// Iterator over the DCC offer candidates of one line; see [`offers`].
#[derive(Clone, Debug)]
pub struct DccOffers<'a> {
    line: &'a [u8],
    /// Where the search for the next ` :` starts; `line.len()` when done.
    pos: usize,
}

impl Iterator for DccOffers<'_> {
    type Item = Result<DccOffer, ParseErr>;

    fn next(&mut self) -> Option<Self::Item> {
        // Every round moves `pos` forward or ends the scan, so the whole
        // iteration is linear in the line length.
        loop {
            let rest = self.line.get(self.pos..)?;
            let colon = find(rest, b" :")?;
            let msg = &rest[colon + 2..];
            let Some(after) = msg.strip_prefix(b"\x01DCC ") else {
                // The kernel only looks at the first ` :` for a DCC; a
                // message that does not start with one ends the search.
                self.pos = self.line.len();
                return None;
            };
            let base = self.pos + colon + 2 + 5;
            let found = DccKind::TABLE.iter().find(|(_, kw)| after.starts_with(kw));
            let Some(&(kind, kw)) = found else {
                // Another DCC request (RESUME, ACCEPT, ...): legitimate, not
                // an offer and not an error; keep scanning after `\x01DCC `
                // as the kernel does.
                self.pos = base;
                continue;
            };
            let args = &after[kw.len()..];
            let args_at = base + kw.len();
            return match parse_args(args) {
                Ok((addr, port, used)) => {
                    self.pos = args_at + used;
                    Some(Ok(DccOffer {
                        kind,
                        addr: IpAddr::V4(addr),
                        port,
                    }))
                }
                Err(e) => {
                    self.pos = args_at;
                    Some(Err(e))
                }
            };
        }
    }
}

/// `<arg> <ip> <port>` → address, port and bytes consumed (up to the end of
/// the port).
fn parse_args(args: &[u8]) -> Result<(Ipv4Addr, u16, usize), ParseErr> {
    let sp = args
        .iter()
        .position(|&b| b == b' ')
        .ok_or(ParseErr::Truncated)?;
    let mut pos = sp + 1;
    let ip = digits(args.get(pos..).unwrap_or_default());
    if ip.len == 0 {
        return Err(if pos >= args.len() {
            ParseErr::Truncated
        } else {
            ParseErr::BadNumber
        });
    }
    let ip_value = u32::try_from(ip.value).map_err(|_| ParseErr::BadNumber)?;
    if ip_value == 0 {
        return Err(ParseErr::BadAddress);
    }
    pos += ip.len;
    let blanks = args
        .get(pos..)
        .unwrap_or_default()
        .iter()
        .take_while(|&&b| b == b' ')
        .count();
    if pos + blanks >= args.len() {
        return Err(ParseErr::Truncated);
    }
    if blanks == 0 {
        // `10.0.0.1 ...` lands here: the kernel reads address 10 and then
        // port 0 from `.0.0.1`, and refuses the offer.
        return Err(ParseErr::BadSyntax);
    }
    pos += blanks;
    let (port, n) = port(args.get(pos..).unwrap_or_default())?;
    Ok((Ipv4Addr::from(ip_value), port, pos + n))
}

/// The glue: DCC offers (client to server) name the client's own address;
/// the peer that will connect is unknown: any source address and port. The
/// kernel acts on the first offer naming the sender.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let Some(seg) = cx.tcp_payload() else {
        return;
    };
    let from_client = cx.from_client;
    let sender = cx.pkt.tuple;
    let (lines, asks) = cx.lines();
    lines.feed(seg.seq, seg.payload, |line| {
        if !from_client {
            return;
        }
        let mut saw_err = false;
        for offer in offers(line) {
            match offer {
                Err(_) => saw_err = true,
                Ok(o) => {
                    let (fam, addr) = Addr::from_ip(o.addr);
                    if fam != sender.family || addr != sender.src {
                        asks.refuse();
                        continue;
                    }
                    asks.push(expected_tcp(Addr(0), addr, o.port, fam, true));
                    return;
                }
            }
        }
        if saw_err {
            asks.error();
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn offer(kind: DccKind, a: [u8; 4], port: u16) -> DccOffer {
        DccOffer {
            kind,
            addr: IpAddr::from(a),
            port,
        }
    }

    #[test]
    fn variants() {
        let send = Ok(Some(offer(DccKind::Send, [10, 0, 0, 1], 5555)));
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 5555 12\x01"),
            send
        );
        assert_eq!(
            parse_line(b"privmsg bob :\x01DCC SEND hello.txt 167772161 5555 12\x01"),
            send
        );
        assert_eq!(
            parse_line(b"  PRIVMSG bob :\x01DCC SEND hello.txt 167772161 5555\x01"),
            send
        );
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND hello.txt 0167772161   05555\x01"),
            send
        );
        // Empty argument: the kernel skips to the first space.
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND  167772161 5555\x01"),
            send
        );
        // Nothing is checked after the port.
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND f 167772161 5555"),
            send
        );
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND f 167772161 5555x"),
            send
        );
        for (kind, word) in [
            (DccKind::Chat, "CHAT"),
            (DccKind::Move, "MOVE"),
            (DccKind::TSend, "TSEND"),
            (DccKind::SChat, "SCHAT"),
        ] {
            let line = format!("PRIVMSG #c :\x01DCC {word} chat 3232235876 1024\x01");
            assert_eq!(
                parse_line(line.as_bytes()),
                Ok(Some(offer(kind, [192, 168, 1, 100], 1024)))
            );
        }
        // Ports below 1024 are accepted, as in current kernels.
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC CHAT chat 4294967295 1\x01"),
            Ok(Some(offer(DccKind::Chat, [255, 255, 255, 255], 1)))
        );
    }

    #[test]
    fn errors() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 0\x01",
                ZeroPort,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 65536\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 65537\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 abc 1024\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 4294967296 5555\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 0 5555\x01",
                BadAddress,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 10.0.0.1 5555\x01",
                BadSyntax,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt ::1 5555\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt \x01\x02\x03 5000 1024\x01",
                BadNumber,
            ),
            (
                b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161\x01",
                BadSyntax,
            ),
            (b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161", Truncated),
            (b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 ", Truncated),
            (b"PRIVMSG bob :\x01DCC SEND hello.txt", Truncated),
            (b"PRIVMSG bob :\x01DCC SEND hello.txt ", Truncated),
            (b"PRIVMSG bob :\x01DCC SEND ", Truncated),
        ];
        for (line, err) in cases {
            assert_eq!(parse_line(line), Err(*err), "{}", line.escape_ascii());
        }
    }

    #[test]
    fn not_offers() {
        let none: &[&[u8]] = &[
            b"",
            b"PRIVMSG",
            b"NICK bob",
            b"NOTICE bob :\x01DCC SEND f 167772161 5555\x01",
            b":alice PRIVMSG bob :\x01DCC SEND f 167772161 5555\x01",
            b"PRIVMSGbob :\x01DCC SEND f 167772161 5555\x01",
            // No \x01, or \x01 not right after the first " :".
            b"PRIVMSG bob :DCC SEND f 167772161 5555",
            b"PRIVMSG bob :hi \x01DCC SEND f 167772161 5555\x01",
            b"PRIVMSG bob :hi :\x01DCC SEND f 167772161 5555\x01",
            b"PRIVMSG bob :\x01dcc SEND f 167772161 5555\x01",
            b"PRIVMSG bob :\x01DCCSEND f 167772161 5555\x01",
            b"PRIVMSG bob \x01DCC SEND f 167772161 5555\x01",
            // DCC requests that are not offers the kernel tracks.
            b"PRIVMSG bob :\x01DCC RESUME f 5555 0\x01",
            b"PRIVMSG bob :\x01DCC ACCEPT f 5555 0\x01",
            b"PRIVMSG bob :\x01DCC send f 167772161 5555\x01",
            b"PRIVMSG bob :\x01DCC SENDX f 167772161 5555\x01",
        ];
        for line in none {
            assert_eq!(parse_line(line), Ok(None), "{}", line.escape_ascii());
        }
    }

    #[test]
    fn scanning_continues_after_a_bad_offer() {
        let line = b"PRIVMSG bob :\x01DCC SEND f 1 0\x01 :\x01DCC CHAT chat 167772161 4000\x01 :\x01DCC SEND g 167772162 4001\x01";
        let all: Vec<_> = offers(line).collect();
        assert_eq!(
            all,
            vec![
                Err(ParseErr::ZeroPort),
                Ok(offer(DccKind::Chat, [10, 0, 0, 1], 4000)),
                Ok(offer(DccKind::Send, [10, 0, 0, 2], 4001)),
            ]
        );
        assert_eq!(
            parse_line(line),
            Ok(Some(offer(DccKind::Chat, [10, 0, 0, 1], 4000)))
        );
        // A following " :" without a DCC ends the scan.
        let line = b"PRIVMSG bob :\x01DCC FOO x\x01 :hello :\x01DCC SEND f 167772161 5555\x01";
        assert_eq!(offers(line).count(), 0);
        // An unknown DCC type is skipped, the scan goes on.
        let line = b"PRIVMSG bob :\x01DCC RESUME f 1 2\x01 :\x01DCC SEND f 167772161 5555\x01";
        assert_eq!(
            offers(line).collect::<Vec<_>>(),
            vec![Ok(offer(DccKind::Send, [10, 0, 0, 1], 5555))]
        );
    }

    #[test]
    fn search_is_bounded() {
        let mut line = b"PRIVMSG bob".to_vec();
        line.resize(MAX_SEARCH_SIZE - 1, b'a');
        line.extend_from_slice(b" :\x01DCC SEND f 167772161 5555\x01");
        assert_eq!(parse_line(&line), Ok(None));
        let mut line = b"PRIVMSG bob".to_vec();
        line.resize(MAX_SEARCH_SIZE - 40, b'a');
        line.extend_from_slice(b" :\x01DCC SEND f 167772161 5555\x01");
        assert_eq!(
            parse_line(&line),
            Ok(Some(offer(DccKind::Send, [10, 0, 0, 1], 5555)))
        );
    }

    /// Lines from the IRC captures in /work/shared/corpus/irc.
    #[test]
    fn corpus_lines() {
        // zeek_irc_dcc_send_first_command: the data connection that follows
        // goes to 10.0.0.1:5555.
        assert_eq!(
            parse_line(b"PRIVMSG bob :\x01DCC SEND hello.txt 167772161 5555 12\x01"),
            Ok(Some(offer(DccKind::Send, [10, 0, 0, 1], 5555)))
        );
        // zeek_irc_dcc_malformed_{host,port}: no \x01, so no CTCP for the
        // kernel; with the \x01 they are malformed.
        let host = b"PRIVMSG victim :DCC SEND file.txt \x01\x02\x03\x04\x05 5000 1024";
        let port = b"PRIVMSG victim :DCC SEND file.txt 3232235876 abc 1024";
        assert_eq!(parse_line(host), Ok(None));
        assert_eq!(parse_line(port), Ok(None));
        assert_eq!(
            parse_line(b"PRIVMSG victim :\x01DCC SEND file.txt \x01\x02\x03\x04\x05 5000 1024\x01"),
            Err(ParseErr::BadNumber)
        );
        assert_eq!(
            parse_line(b"PRIVMSG victim :\x01DCC SEND file.txt 3232235876 abc 1024\x01"),
            Err(ParseErr::BadNumber)
        );
        // sv_irc_plain_no_dcc
        for line in [
            &b"PRIVMSG #s01 :[DOWNLOAD]: Downloading URL: http://www.wanees.net/bbnz.exe to: bbnz.exe."[..],
            b"PRIVMSG #s03 :[DOWNLOAD]: Downloaded 28.6 KB to ysbinstall_1000489_3.exe @ 28.6 KB/sec.",
        ] {
            assert_eq!(parse_line(line), Ok(None));
        }
    }

    fn kind_word() -> impl Strategy<Value = (DccKind, &'static str)> {
        prop::sample::select(vec![
            (DccKind::Send, "SEND"),
            (DccKind::Chat, "CHAT"),
            (DccKind::Move, "MOVE"),
            (DccKind::TSend, "TSEND"),
            (DccKind::SChat, "SCHAT"),
        ])
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_line(&line);
            let n = offers(&line).count();
            prop_assert!(n <= line.len());
        }

        #[test]
        fn never_panics_near_valid(tail in proptest::collection::vec(prop::sample::select(b"0123456789 :\x01DCSENHAT".to_vec()), 0..80)) {
            let mut line = b"PRIVMSG x :\x01DCC SEND ".to_vec();
            line.extend(tail);
            let _ = parse_line(&line);
        }

        #[test]
        fn round_trip(
            (kind, word) in kind_word(),
            ip in 1u32..,
            port in 1u16..,
            arg in "[a-zA-Z0-9._-]{0,20}",
            size in proptest::option::of(any::<u32>()),
        ) {
            let size = size.map(|s| format!(" {s}")).unwrap_or_default();
            let line = format!("PRIVMSG nick :\x01DCC {word} {arg} {ip} {port}{size}\x01");
            prop_assert_eq!(
                parse_line(line.as_bytes()),
                Ok(Some(DccOffer { kind, addr: IpAddr::V4(Ipv4Addr::from(ip)), port }))
            );
        }
    }
}
