//! FTP control-line parser (the kernel's `nf_conntrack_ftp.c`).
//!
//! The caller reassembles the control stream into lines and hands over one
//! complete line at a time, without its CR/LF. Four messages announce a data
//! connection:
//!
//! | direction | message | example | announces |
//! |---|---|---|---|
//! | client | `PORT` | `PORT 192,168,1,2,4,1` | client address and port (active) |
//! | client | `EPRT` | `EPRT \|1\|192.168.1.2\|1025\|`, `EPRT \|2\|::1\|1025\|` | client address and port (active, RFC 2428) |
//! | server | `227` | `227 Entering Passive Mode (10,0,0,1,4,1).` | server address and port (passive) |
//! | server | `229` | `229 Entering Extended Passive Mode (\|\|\|1025\|)` | server port only (passive, RFC 2428) |
//!
//! Accepted syntax follows the kernel:
//! - `PORT`/`EPRT` are matched case-insensitively at the start of the line;
//!   the argument starts after the first space following the 4 letters
//!   (so, like the kernel, `PORTX a 1,2,3,4,5,6` is read as a `PORT`).
//! - `PORT`: six decimal numbers separated by `,`, then the end of the line
//!   (the kernel requires `\r` right after the last number: no trailing
//!   blanks).
//! - `227 `: the numbers start at the first digit after `227 ` (RFC 1123:
//!   with or without parentheses, with any text before them); anything but a
//!   digit or `,` ends them.
//! - `EPRT`: `<d><1|2><d><address><d><port><d>` where `<d>` is any printable
//!   ASCII character except a digit; text after the last delimiter is ignored.
//! - `229 `: the argument starts after the first `(`: `<d><d><d><port><d>`;
//!   text after the last delimiter is ignored.
//! - Numbers may have leading zeros (`010` is ten, as in the kernel).
//!
//! Where the kernel is looser than it should be we are stricter, and return
//! `Err`: it does not range-check `PORT`/`227` numbers (an octet of 300 or a
//! port byte of 256 silently overflows into the neighbour), its EPRT/EPSV port
//! wraps past 65535, it accepts empty fields (`1,,3,4,5,6`) as 0, and it
//! accepts port 0 in `PORT`/`227` (it refuses it in EPRT/EPSV). We refuse all
//! of these. The kernel also refuses an EPRT whose family number does not
//! match the control connection's family; we parse both families and return
//! the address, so that the caller refuses the mismatch (it knows the
//! connection's family, we do not).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{expected_tcp, number, port, HelpCx, ParseErr};
use crate::tuple::Addr;

/// Which FTP message announced the data connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FtpKind {
    /// Client `PORT h1,h2,h3,h4,p1,p2` (active mode; the server connects).
    Port,
    /// Client `EPRT |af|addr|port|` (active mode; the server connects).
    Eprt,
    /// Server `227` reply to `PASV` (passive mode; the client connects).
    Pasv227,
    /// Server `229` reply to `EPSV` (passive mode; the client connects to the
    /// server's address, which the reply does not repeat).
    Epsv229,
}

/// A data connection announced on the FTP control connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FtpCmd {
    /// The message it came from.
    pub kind: FtpKind,
    /// The announced address; `None` for `229`, which carries only a port
    /// (the data connection goes to the control connection's server address).
    /// For `EPRT` this is the family the message names, which may differ from
    /// the control connection's: the caller must refuse a mismatch as the
    /// kernel does.
    pub addr: Option<IpAddr>,
    /// The announced port, never 0.
    pub port: u16,
}

/// Longest IPv6 text we accept in `EPRT` (`ffff:...:ffff:255.255.255.255`
/// is 45 bytes); it bounds the work on hostile input.
const MAX_IPV6_TEXT: usize = 45;

/// Parses one FTP control line (without CR/LF).
///
/// `from_client` is true for lines sent by the client (the original
/// direction of the control connection), which may be `PORT`/`EPRT`;
/// otherwise the line is a server reply, which may be `227`/`229`.
///
/// Returns `Ok(None)` for every other line, `Err` for a line that starts like
/// one of the four messages but is malformed (the kernel drops such packets
/// as a "partial match").
pub fn parse_line(line: &[u8], from_client: bool) -> Result<Option<FtpCmd>, ParseErr> {
    if from_client {
        let Some(cmd) = line.get(..4) else {
            return Ok(None);
        };
        let kind = if cmd.eq_ignore_ascii_case(b"PORT") {
            FtpKind::Port
        } else if cmd.eq_ignore_ascii_case(b"EPRT") {
            FtpKind::Eprt
        } else {
            return Ok(None);
        };
        // Like the kernel, skip to the first space after the command word.
        let rest = &line[4..];
        let sp = rest
            .iter()
            .position(|&b| b == b' ')
            .ok_or(ParseErr::Truncated)?;
        let arg = &rest[sp + 1..];
        let cmd = match kind {
            FtpKind::Port => parse_port_arg(arg)?,
            _ => parse_eprt_arg(arg)?,
        };
        Ok(Some(cmd))
    } else if let Some(arg) = line.strip_prefix(b"227 ") {
        parse_227_arg(arg).map(Some)
    } else if let Some(arg) = line.strip_prefix(b"229 ") {
        let open = arg
            .iter()
            .position(|&b| b == b'(')
            .ok_or(ParseErr::Truncated)?;
        parse_229_arg(&arg[open + 1..]).map(Some)
    } else {
        Ok(None)
    }
}

/// Reads `N` decimal numbers in 0..=255 separated by `sep`; returns them and
/// the number of bytes consumed (up to the end of the last number). What
/// follows is the caller's to check.
fn byte_list<const N: usize>(s: &[u8], sep: u8) -> Result<([u8; N], usize), ParseErr> {
    let mut out = [0u8; N];
    let mut pos = 0;
    for (i, slot) in out.iter_mut().enumerate() {
        if i > 0 {
            match s.get(pos) {
                Some(&b) if b == sep => pos += 1,
                Some(_) => return Err(ParseErr::BadSyntax),
                None => return Err(ParseErr::Truncated),
            }
        }
        let tail = s.get(pos..).unwrap_or_default();
        if tail.is_empty() {
            return Err(ParseErr::Truncated);
        }
        let (v, n) = number(tail, 255)?;
        // `number` bounded the value by 255.
        *slot = u8::try_from(v).map_err(|_| ParseErr::BadNumber)?;
        pos += n;
    }
    Ok((out, pos))
}

/// `h1,h2,h3,h4,p1,p2` → address and port; port 0 is refused.
fn host_port(b: [u8; 6]) -> Result<(Ipv4Addr, u16), ParseErr> {
    let addr = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
    let port = u16::from_be_bytes([b[4], b[5]]);
    if port == 0 {
        return Err(ParseErr::ZeroPort);
    }
    Ok((addr, port))
}

/// The argument of `PORT`: exactly `h1,h2,h3,h4,p1,p2` up to the end of the
/// line (the kernel's terminator is `\r`, which the caller stripped).
fn parse_port_arg(arg: &[u8]) -> Result<FtpCmd, ParseErr> {
    let (b, n) = byte_list::<6>(arg, b',')?;
    if n != arg.len() {
        return Err(ParseErr::BadSyntax);
    }
    let (addr, port) = host_port(b)?;
    Ok(FtpCmd {
        kind: FtpKind::Port,
        addr: Some(IpAddr::V4(addr)),
        port,
    })
}

/// The text of a `227` reply after `227 `: the numbers start at the first
/// digit (RFC 1123 §4.1.2.6) and end at anything that is neither a digit nor
/// a comma (or at the end of the line).
fn parse_227_arg(arg: &[u8]) -> Result<FtpCmd, ParseErr> {
    let first = arg
        .iter()
        .position(u8::is_ascii_digit)
        .ok_or(ParseErr::Truncated)?;
    let nums = &arg[first..];
    let (b, n) = byte_list::<6>(nums, b',')?;
    // A seventh number means this is not the h1..p2 list the kernel wants.
    if nums.get(n) == Some(&b',') {
        return Err(ParseErr::BadSyntax);
    }
    let (addr, port) = host_port(b)?;
    Ok(FtpCmd {
        kind: FtpKind::Pasv227,
        addr: Some(IpAddr::V4(addr)),
        port,
    })
}

/// A valid RFC 2428 delimiter: printable ASCII (33..=126) but not a digit.
fn is_delim(b: u8) -> bool {
    (33..=126).contains(&b) && !b.is_ascii_digit()
}

/// Reads `<port><d>` at the start of `s`; port 1..=65535.
fn port_then_delim(s: &[u8], d: u8) -> Result<u16, ParseErr> {
    let (p, n) = port(s)?;
    match s.get(n) {
        Some(&b) if b == d => Ok(p),
        Some(_) => Err(ParseErr::BadSyntax),
        None => Err(ParseErr::Truncated),
    }
}

/// The argument of `EPRT`: `<d><1|2><d><addr><d><port><d>`.
fn parse_eprt_arg(arg: &[u8]) -> Result<FtpCmd, ParseErr> {
    // The kernel wants more than the three leading bytes.
    let [d, af, d2, rest @ ..] = arg else {
        return Err(ParseErr::Truncated);
    };
    let d = *d;
    if rest.is_empty() {
        return Err(ParseErr::Truncated);
    }
    if !is_delim(d) || *d2 != d {
        return Err(ParseErr::BadSyntax);
    }
    let (addr, used) = match af {
        b'1' => {
            let (b, n) = byte_list::<4>(rest, b'.')?;
            (IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])), n)
        }
        b'2' => {
            // Look for the closing delimiter only within the longest
            // possible IPv6 text, so that work stays bounded.
            let window = rest.get(..=MAX_IPV6_TEXT).unwrap_or(rest);
            let n = window
                .iter()
                .position(|&b| b == d)
                .ok_or(ParseErr::BadAddress)?;
            let text = std::str::from_utf8(&rest[..n]).map_err(|_| ParseErr::BadAddress)?;
            let a: Ipv6Addr = text.parse().map_err(|_| ParseErr::BadAddress)?;
            (IpAddr::V6(a), n)
        }
        _ => return Err(ParseErr::BadAddress),
    };
    match rest.get(used) {
        Some(&b) if b == d => {}
        Some(_) => return Err(ParseErr::BadSyntax),
        None => return Err(ParseErr::Truncated),
    }
    let port = port_then_delim(rest.get(used + 1..).unwrap_or_default(), d)?;
    Ok(FtpCmd {
        kind: FtpKind::Eprt,
        addr: Some(addr),
        port,
    })
}

/// The text of a `229` reply after its `(`: `<d><d><d><port><d>`.
fn parse_229_arg(arg: &[u8]) -> Result<FtpCmd, ParseErr> {
    let [d, d2, d3, rest @ ..] = arg else {
        return Err(ParseErr::Truncated);
    };
    if rest.is_empty() {
        return Err(ParseErr::Truncated);
    }
    if !is_delim(*d) || d2 != d || d3 != d {
        return Err(ParseErr::BadSyntax);
    }
    let port = port_then_delim(rest, *d)?;
    Ok(FtpCmd {
        kind: FtpKind::Epsv229,
        addr: None,
        port,
    })
}

/// The glue: a `PORT`/`EPRT` (client) or `227` (server) names an address
/// that must be the sender's own (else a third host could be "bounced"
/// into), unless `ftp_loose` is set; `229` names only a port on the server.
/// The expected connection comes from the other end of the control
/// connection, any source port, to the announced address and port. An
/// address of the other family than the control connection is refused.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let Some(seg) = cx.tcp_payload() else {
        return;
    };
    let from_client = cx.from_client;
    let sender = cx.pkt.tuple;
    let loose = cx.ftp_loose();
    let (lines, asks) = cx.lines();
    lines.feed(seg.seq, seg.payload, |line| {
        match parse_line(line, from_client) {
            Ok(None) => {}
            Err(_) => asks.error(),
            Ok(Some(cmd)) => {
                let (fam, addr) = match cmd.addr {
                    Some(ip) => Addr::from_ip(ip),
                    // 229: the server's own address.
                    None => (sender.family, sender.src),
                };
                if fam != sender.family || (!loose && addr != sender.src) {
                    asks.refuse();
                    return;
                }
                asks.push(expected_tcp(
                    sender.dst,
                    addr,
                    cmd.port,
                    sender.family,
                    false,
                ));
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> Option<IpAddr> {
        Some(IpAddr::V4(Ipv4Addr::new(a, b, c, d)))
    }

    fn cmd(kind: FtpKind, addr: Option<IpAddr>, port: u16) -> Result<Option<FtpCmd>, ParseErr> {
        Ok(Some(FtpCmd { kind, addr, port }))
    }

    #[test]
    fn port_variants() {
        let want = cmd(FtpKind::Port, v4(192, 168, 1, 2), 1025);
        assert_eq!(parse_line(b"PORT 192,168,1,2,4,1", true), want);
        assert_eq!(parse_line(b"port 192,168,1,2,4,1", true), want);
        assert_eq!(parse_line(b"PoRt 192,168,1,2,4,1", true), want);
        // Leading zeros are decimal, as in the kernel.
        assert_eq!(parse_line(b"PORT 192,168,001,0002,004,01", true), want);
        // Kernel quirk kept: the argument starts after the first space.
        assert_eq!(
            parse_line(b"PORTX 192,168,1,2,4,1", true),
            cmd(FtpKind::Port, v4(192, 168, 1, 2), 1025)
        );
        assert_eq!(
            parse_line(b"PORT 0,0,0,0,0,1", true),
            cmd(FtpKind::Port, v4(0, 0, 0, 0), 1)
        );
        assert_eq!(
            parse_line(b"PORT 255,255,255,255,255,255", true),
            cmd(FtpKind::Port, v4(255, 255, 255, 255), 65535)
        );
    }

    #[test]
    fn port_errors() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (b"PORT", Truncated),
            (b"PORT1,2,3,4,5,6", Truncated),
            (b"PORT ", Truncated),
            (b"PORT 1,2,3,4,5", Truncated),
            (b"PORT 1,2,3,4,5,", Truncated),
            (b"PORT 1,2,3,4,5,6,", BadSyntax),
            (b"PORT 1,2,3,4,5,6,7", BadSyntax),
            (b"PORT 1,2,3,4,5,6 ", BadSyntax),
            (b"PORT  1,2,3,4,5,6", BadNumber),
            (b"PORT 1,,3,4,5,6", BadNumber),
            (b"PORT 256,2,3,4,5,6", BadNumber),
            (b"PORT 1,2,3,4,5,256", BadNumber),
            (b"PORT 1,2,3,4,99999999999999999999999,6", BadNumber),
            (b"PORT 1,2,3,4,0,0", ZeroPort),
            (b"PORT 1.2.3.4,5,6", BadSyntax),
            (b"PORT -1,2,3,4,5,6", BadNumber),
            (b"PORT 1;2,3,4,5,6", BadSyntax),
        ];
        for (line, err) in cases {
            assert_eq!(parse_line(line, true), Err(*err), "{}", line.escape_ascii());
        }
    }

    #[test]
    fn eprt_variants() {
        let want = cmd(FtpKind::Eprt, v4(132, 235, 1, 2), 6275);
        assert_eq!(parse_line(b"EPRT |1|132.235.1.2|6275|", true), want);
        assert_eq!(parse_line(b"eprt |1|132.235.1.2|6275|", true), want);
        // Any printable non-digit delimiter.
        assert_eq!(parse_line(b"EPRT !1!132.235.1.2!6275!", true), want);
        assert_eq!(parse_line(b"EPRT ~1~132.235.001.2~06275~", true), want);
        // The kernel ignores what follows the last delimiter.
        assert_eq!(parse_line(b"EPRT |1|132.235.1.2|6275|junk", true), want);
        let v6: IpAddr = "3ffe::1".parse().unwrap();
        assert_eq!(
            parse_line(b"EPRT |2|3ffe::1|6275|", true),
            cmd(FtpKind::Eprt, Some(v6), 6275)
        );
        let mapped: IpAddr = "::ffff:1.2.3.4".parse().unwrap();
        assert_eq!(
            parse_line(b"EPRT |2|::ffff:1.2.3.4|80|", true),
            cmd(FtpKind::Eprt, Some(mapped), 80)
        );
        let upper: IpAddr = "2001:DB8::A".parse().unwrap();
        assert_eq!(
            parse_line(b"EPRT #2#2001:DB8::A#65535#", true),
            cmd(FtpKind::Eprt, Some(upper), 65535)
        );
    }

    #[test]
    fn eprt_errors() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (b"EPRT", Truncated),
            (b"EPRT ", Truncated),
            (b"EPRT |1|", Truncated),
            (b"EPRT 111132.235.1.2|6275|", BadSyntax),
            (b"EPRT  |1|132.235.1.2|6275|", BadSyntax),
            (b"EPRT |1!132.235.1.2|6275|", BadSyntax),
            (b"EPRT \x7f1\x7f132.235.1.2\x7f6275\x7f", BadSyntax),
            (b"EPRT |3|132.235.1.2|6275|", BadAddress),
            (b"EPRT |1|132.235.1|6275|", BadSyntax),
            (b"EPRT |1|132.235.1.2.3|6275|", BadSyntax),
            (b"EPRT |1|132.235.1.256|6275|", BadNumber),
            (b"EPRT |1|132.235..2|6275|", BadNumber),
            (b"EPRT |1|132.235.1.2|6275", Truncated),
            (b"EPRT |1|132.235.1.2|", BadNumber),
            (b"EPRT |1|132.235.1.2||", BadNumber),
            (b"EPRT |1|132.235.1.2|0|", ZeroPort),
            (b"EPRT |1|132.235.1.2|65536|", BadNumber),
            (b"EPRT |1|132.235.1.2|62 75|", BadSyntax),
            (b"EPRT |2|3ffe::1::2|6275|", BadAddress),
            (b"EPRT |2|3ffe::1%eth0|6275|", BadAddress),
            (b"EPRT |2|3ffe::1", BadAddress),
            (b"EPRT |2|\xff\xfe::1|6275|", BadAddress),
            (b"EPRT |2|1.2.3.4|6275|", BadAddress),
            (b"EPRT |2|3ffe::1|0|", ZeroPort),
        ];
        for (line, err) in cases {
            assert_eq!(parse_line(line, true), Err(*err), "{}", line.escape_ascii());
        }
        // A delimiter-free IPv6 text longer than any address is refused
        // without scanning the rest of the line.
        let mut long = b"EPRT |2|".to_vec();
        long.extend(std::iter::repeat_n(b'1', 10_000));
        assert_eq!(parse_line(&long, true), Err(BadAddress));
    }

    #[test]
    fn pasv_227_variants() {
        let want = cmd(FtpKind::Pasv227, v4(10, 0, 0, 1), 1025);
        assert_eq!(
            parse_line(b"227 Entering Passive Mode (10,0,0,1,4,1).", false),
            want
        );
        assert_eq!(
            parse_line(b"227 Entering Passive Mode (10,0,0,1,4,1)", false),
            want
        );
        // RFC 1123: no parentheses.
        assert_eq!(
            parse_line(b"227 Entering Passive Mode 10,0,0,1,4,1", false),
            want
        );
        assert_eq!(parse_line(b"227 =10,0,0,1,4,1", false), want);
        assert_eq!(parse_line(b"227 10,0,0,1,4,1", false), want);
        assert_eq!(
            parse_line(b"227 Passive 010,000,000,001,004,001 ok", false),
            want
        );
    }

    #[test]
    fn pasv_227_errors() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (b"227 ", Truncated),
            (b"227 Entering Passive Mode", Truncated),
            (b"227 Entering Passive Mode (10,0,0,1,4)", BadSyntax),
            (b"227 Entering Passive Mode (10,0,0,1,4,", Truncated),
            (b"227 Entering Passive Mode (10,0,0,1,4,1,7)", BadSyntax),
            (b"227 Entering Passive Mode (10,0,0,1,4,,1)", BadNumber),
            (b"227 Entering Passive Mode (300,0,0,1,4,1)", BadNumber),
            (b"227 Entering Passive Mode (10,0,0,1,0,0)", ZeroPort),
            // Kernel behaviour: a digit in the text is taken as the first number.
            (b"227 Mode 2 (10,0,0,1,4,1)", BadSyntax),
        ];
        for (line, err) in cases {
            assert_eq!(
                parse_line(line, false),
                Err(*err),
                "{}",
                line.escape_ascii()
            );
        }
    }

    #[test]
    fn epsv_229_variants() {
        let want = cmd(FtpKind::Epsv229, None, 6446);
        assert_eq!(
            parse_line(b"229 Entering Extended Passive Mode (|||6446|)", false),
            want
        );
        assert_eq!(parse_line(b"229 (|||6446|)", false), want);
        assert_eq!(parse_line(b"229 (!!!6446!)", false), want);
        assert_eq!(parse_line(b"229 x (|||006446|", false), want);
        assert_eq!(parse_line(b"229 x (|||6446|trailing", false), want);
    }

    #[test]
    fn epsv_229_errors() {
        use ParseErr::*;
        let cases: &[(&[u8], ParseErr)] = &[
            (b"229 ", Truncated),
            (b"229 Entering Extended Passive Mode", Truncated),
            (b"229 (|||", Truncated),
            (b"229 (|||6446", Truncated),
            (b"229 (||6446|)", BadSyntax),
            (b"229 (|!|6446|)", BadSyntax),
            (b"229 (111111|)", BadSyntax),
            (b"229 ( |||6446|)", BadSyntax),
            (b"229 (||||)", BadNumber),
            (b"229 (|||0|)", ZeroPort),
            (b"229 (|||65536|)", BadNumber),
            (b"229 (|||64a46|)", BadSyntax),
        ];
        for (line, err) in cases {
            assert_eq!(
                parse_line(line, false),
                Err(*err),
                "{}",
                line.escape_ascii()
            );
        }
    }

    #[test]
    fn other_lines_and_directions() {
        let none: &[(&[u8], bool)] = &[
            (b"", true),
            (b"POR", true),
            (b"PASV", true),
            (b"EPSV", true),
            (b"USER anonymous", true),
            (b"RETR PORT 1,2,3,4,5,6", true),
            (b" PORT 1,2,3,4,5,6", true),
            // Server lines are never PORT/EPRT and vice versa.
            (b"PORT 1,2,3,4,5,6", false),
            (b"EPRT |1|1.2.3.4|5|", false),
            (b"227 Entering Passive Mode (10,0,0,1,4,1).", true),
            (b"229 (|||6446|)", true),
            (b"227", false),
            (b"227-Entering Passive Mode (10,0,0,1,4,1).", false),
            (b"229-(|||6446|)", false),
            (b"200 PORT command successful", false),
            (b"226 Transfer complete.", false),
        ];
        for (line, from_client) in none {
            assert_eq!(
                parse_line(line, *from_client),
                Ok(None),
                "{}",
                line.escape_ascii()
            );
        }
    }

    /// Every PORT/EPRT/227/229 line of the FTP captures in the shared corpus
    /// (extracted with tshark from /work/shared/corpus/ftp/*.pcap), with the
    /// data channel that Zeek's oracle or the capture's own data connection
    /// shows.
    #[test]
    fn corpus_lines() {
        let v6 = |s: &str| Some(s.parse::<IpAddr>().unwrap());
        let client: &[(&[u8], FtpKind, Option<IpAddr>, u16)] = &[
            // sv_ftp_all_data_ipv4_port_pasv
            (
                b"PORT 172,23,0,3,178,241",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                45809,
            ),
            (
                b"PORT 172,23,0,3,156,233",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                40169,
            ),
            (
                b"PORT 172,23,0,3,154,35",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                39459,
            ),
            (
                b"PORT 172,23,0,3,147,151",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                37783,
            ),
            (
                b"PORT 172,23,0,3,140,171",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                36011,
            ),
            (
                b"PORT 172,23,0,3,138,167",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                35495,
            ),
            (
                b"PORT 172,23,0,3,132,183",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                33975,
            ),
            // sv_ftp_download_active
            (
                b"PORT 172,23,0,3,174,127",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                44671,
            ),
            (
                b"PORT 172,23,0,3,170,65",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                43585,
            ),
            (
                b"PORT 172,23,0,3,169,175",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                43439,
            ),
            // sv_ftp_upload_active
            (
                b"PORT 172,23,0,3,172,101",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                44133,
            ),
            (
                b"PORT 172,23,0,3,156,237",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                40173,
            ),
            (
                b"PORT 172,23,0,3,139,43",
                FtpKind::Port,
                v4(172, 23, 0, 3),
                35627,
            ),
            // sv_ftp_mixed_home_traffic_active
            (
                b"PORT 192,168,0,13,234,22",
                FtpKind::Port,
                v4(192, 168, 0, 13),
                59926,
            ),
            (
                b"PORT 192,168,0,13,234,10",
                FtpKind::Port,
                v4(192, 168, 0, 13),
                59914,
            ),
            // sv_ftp_eprt_v6addr_over_v4: IPv6 named on an IPv4 control
            // connection; parsed as IPv6 so that the caller refuses it.
            (
                b"EPRT |2|2601:191:8500:2e00:7c0f:78e0:dc5b:f7c1|34325|",
                FtpKind::Eprt,
                v6("2601:191:8500:2e00:7c0f:78e0:dc5b:f7c1"),
                34325,
            ),
            // zeek_ftp_ipv6_epsv_eprt (Zeek's ftp.log: data channels to
            // 2001:470:1f11:81f:c999:d94:aa7c:2e3e ports 49189 and 49190)
            (
                b"EPRT |2|2001:470:1f11:81f:c999:d94:aa7c:2e3e|49189|",
                FtpKind::Eprt,
                v6("2001:470:1f11:81f:c999:d94:aa7c:2e3e"),
                49189,
            ),
            (
                b"EPRT |2|2001:470:1f11:81f:c999:d94:aa7c:2e3e|49190|",
                FtpKind::Eprt,
                v6("2001:470:1f11:81f:c999:d94:aa7c:2e3e"),
                49190,
            ),
        ];
        for (line, kind, addr, port) in client {
            assert_eq!(
                parse_line(line, true),
                cmd(*kind, *addr, *port),
                "{}",
                line.escape_ascii()
            );
        }
        let server: &[(&[u8], FtpKind, Option<IpAddr>, u16)] = &[
            // sv_ftp_all_data_ipv4_port_pasv
            (
                b"227 Entering passive mode (172,23,0,2,82,16).",
                FtpKind::Pasv227,
                v4(172, 23, 0, 2),
                21008,
            ),
            (
                b"227 Entering passive mode (172,23,0,2,82,11).",
                FtpKind::Pasv227,
                v4(172, 23, 0, 2),
                21003,
            ),
            // sv_ftp_download_passive / sv_ftp_upload_passive
            (
                b"227 Entering Passive Mode (172,23,0,2,82,9).",
                FtpKind::Pasv227,
                v4(172, 23, 0, 2),
                21001,
            ),
            // zeek_ftp_cwd_navigation_688_pasv (address anonymised to differ
            // from the server's; the caller's anti-bounce check sees that)
            (
                b"227 Entering Passive Mode (205,167,25,101,248,175).",
                FtpKind::Pasv227,
                v4(205, 167, 25, 101),
                63663,
            ),
            (
                b"227 Entering Passive Mode (205,167,25,101,253,1).",
                FtpKind::Pasv227,
                v4(205, 167, 25, 101),
                64769,
            ),
            (
                b"227 Entering Passive Mode (205,167,25,101,240,32).",
                FtpKind::Pasv227,
                v4(205, 167, 25, 101),
                61472,
            ),
            // sv_ftp_epsv_cloudshark
            (
                b"229 Entering Extended Passive Mode (|||58612|)",
                FtpKind::Epsv229,
                None,
                58612,
            ),
            (
                b"229 Entering Extended Passive Mode (|||35656|)",
                FtpKind::Epsv229,
                None,
                35656,
            ),
            // zeek_ftp_ipv4_epsv_bigtransfer
            (
                b"229 Extended Passive mode OK (|||63988|)",
                FtpKind::Epsv229,
                None,
                63988,
            ),
            // zeek_ftp_ipv4_epsv_retr
            (
                b"229 Entering Extended Passive Mode (|||38141|)",
                FtpKind::Epsv229,
                None,
                38141,
            ),
            // zeek_ftp_ipv6_epsv_eprt (Zeek: 57086, 57087, 57088)
            (
                b"229 Entering Extended Passive Mode (|||57086|)",
                FtpKind::Epsv229,
                None,
                57086,
            ),
            (
                b"229 Entering Extended Passive Mode (|||57087|)",
                FtpKind::Epsv229,
                None,
                57087,
            ),
            (
                b"229 Entering Extended Passive Mode (|||57088|)",
                FtpKind::Epsv229,
                None,
                57088,
            ),
            // zeek_ftp_ipv6_epsv_multiline_reply
            (
                b"229 Entering Extended Passive Mode (|||60931|)",
                FtpKind::Epsv229,
                None,
                60931,
            ),
        ];
        for (line, kind, addr, port) in server {
            assert_eq!(
                parse_line(line, false),
                cmd(*kind, *addr, *port),
                "{}",
                line.escape_ascii()
            );
        }
        // The client's PASV/EPSV requests announce nothing.
        assert_eq!(parse_line(b"PASV", true), Ok(None));
        assert_eq!(parse_line(b"EPSV", true), Ok(None));
    }

    fn delim() -> impl Strategy<Value = u8> {
        (33u8..=126).prop_filter("not a digit", |b| !b.is_ascii_digit())
    }

    proptest! {
        #[test]
        fn never_panics(line in proptest::collection::vec(any::<u8>(), 0..200), from_client: bool) {
            let _ = parse_line(&line, from_client);
        }

        #[test]
        fn never_panics_on_prefixed_garbage(
            prefix in prop::sample::select(vec![&b"PORT "[..], b"EPRT ", b"EPRT |1|", b"EPRT |2|", b"227 ", b"229 (", b"229 (|||"]),
            tail in proptest::collection::vec(prop::sample::select(b"0123456789,.|:()!abf ".to_vec()), 0..60),
        ) {
            let mut line = prefix.to_vec();
            line.extend(tail);
            let _ = parse_line(&line, true);
            let _ = parse_line(&line, false);
        }

        #[test]
        fn port_round_trip(a: [u8; 4], port in 1u16..) {
            let [p1, p2] = port.to_be_bytes();
            let line = format!("PORT {},{},{},{},{p1},{p2}", a[0], a[1], a[2], a[3]);
            prop_assert_eq!(parse_line(line.as_bytes(), true), cmd(FtpKind::Port, Some(IpAddr::from(a)), port));
        }

        #[test]
        fn pasv_round_trip(a: [u8; 4], port in 1u16..) {
            let [p1, p2] = port.to_be_bytes();
            let line = format!("227 Entering Passive Mode ({},{},{},{},{p1},{p2}).", a[0], a[1], a[2], a[3]);
            prop_assert_eq!(parse_line(line.as_bytes(), false), cmd(FtpKind::Pasv227, Some(IpAddr::from(a)), port));
        }

        #[test]
        fn eprt_v4_round_trip(a: [u8; 4], port in 1u16.., d in delim()) {
            let d = char::from(d);
            let line = format!("EPRT {d}1{d}{}{d}{port}{d}", Ipv4Addr::from(a));
            prop_assert_eq!(parse_line(line.as_bytes(), true), cmd(FtpKind::Eprt, Some(IpAddr::from(a)), port));
        }

        #[test]
        fn eprt_v6_round_trip(a: [u8; 16], port in 1u16.., d in delim()) {
            // ':' , '.' and hex letters are part of IPv6 text and cannot delimit it.
            prop_assume!(!(d == b':' || d == b'.' || d.is_ascii_hexdigit()));
            let d = char::from(d);
            let addr = Ipv6Addr::from(a);
            let line = format!("EPRT {d}2{d}{addr}{d}{port}{d}");
            prop_assert_eq!(parse_line(line.as_bytes(), true), cmd(FtpKind::Eprt, Some(IpAddr::V6(addr)), port));
        }

        #[test]
        fn epsv_round_trip(port in 1u16.., d in delim()) {
            let d = char::from(d);
            let line = format!("229 Entering Extended Passive Mode ({d}{d}{d}{port}{d})");
            prop_assert_eq!(parse_line(line.as_bytes(), false), cmd(FtpKind::Epsv229, None, port));
        }
    }
}
