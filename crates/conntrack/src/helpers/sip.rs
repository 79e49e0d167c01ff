//! SIP messages and their SDP bodies (RFC 3261, RFC 4566; the kernel's
//! `nf_conntrack_sip.c`): the method or status, the CSeq method, the Call-ID,
//! and the media streams an SDP body announces.
//!
//! What the helper does with them, as the kernel does by default
//! (`sip_direct_media=1`): an INVITE, UPDATE, PRACK or ACK carrying SDP, or a
//! 1xx/2xx answer to one, announces media on `c=` address and `m=` port; if
//! that address is the sender's own, RTP (the port) and RTCP (port + 1, or
//! `a=rtcp:`) are expected from the other signalling party, any source port.
//! BYE and CANCEL end the call's expectations. A stream with port 0 is
//! disabled and announces nothing.
//!
//! Registrations (`sip_direct_signalling=1`): a 2xx answer to a REGISTER
//! whose Contact binds the registering UA's own address makes the UA
//! reachable for incoming signalling from the registrar, to the Contact's
//! port, any source port, for as long as the binding's `expires` (Contact
//! parameter, else the Expires header, else 3600 s); `expires=0` binds
//! nothing. The kernel creates the expectation inactive on the request and
//! activates it on the 2xx; expecting on the 2xx is the same to every packet.

use std::net::IpAddr;

use super::{HelpCx, HelperKind, ParseErr};
use crate::expect::{ExpectSpec, Mask};
use crate::packet::{TcpSeg, L4};
use crate::timeouts::SEC;
use crate::tuple::{ipproto, Addr, Tuple};

/// Most media streams read from one body (the kernel's limit is per m= line
/// too; real calls carry one to three).
pub const MAX_MEDIA: usize = 8;
/// Longest message accepted.
const MAX_MESSAGE: usize = 64 * 1024;
/// Most header lines accepted.
const MAX_HEADERS: usize = 64;

/// SIP methods the helper distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// INVITE.
    Invite,
    /// ACK.
    Ack,
    /// BYE.
    Bye,
    /// CANCEL.
    Cancel,
    /// UPDATE.
    Update,
    /// PRACK.
    Prack,
    /// REGISTER.
    Register,
    /// Any other method.
    Other,
}

impl Method {
    fn from(name: &[u8]) -> Method {
        match name {
            b"INVITE" => Method::Invite,
            b"ACK" => Method::Ack,
            b"BYE" => Method::Bye,
            b"CANCEL" => Method::Cancel,
            b"UPDATE" => Method::Update,
            b"PRACK" => Method::Prack,
            b"REGISTER" => Method::Register,
            _ => Method::Other,
        }
    }

    /// Methods whose SDP (and whose answers' SDP) negotiate media.
    pub fn negotiates_media(self) -> bool {
        matches!(
            self,
            Method::Invite | Method::Ack | Method::Update | Method::Prack
        )
    }
}

/// One announced media stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Media {
    /// Connection address (`c=`, media-level over session-level).
    pub addr: IpAddr,
    /// RTP port.
    pub port: u16,
    /// RTCP port (`a=rtcp:` or port + 1).
    pub rtcp_port: u16,
}

/// The first Contact of a message: a numeric host, its port, and the
/// binding's `expires` parameter if given.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Host (only numeric addresses are usable).
    pub addr: IpAddr,
    /// Port (5060 when absent).
    pub port: u16,
    /// `;expires=` of the binding.
    pub expires: Option<u32>,
}

/// A parsed SIP message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SipMsg<'a> {
    /// The method of a request, `None` for a response.
    pub request: Option<Method>,
    /// The status of a response, 0 for a request.
    pub status: u16,
    /// The method of the CSeq header.
    pub cseq_method: Method,
    /// The Call-ID header value.
    pub call_id: &'a [u8],
    /// The first Contact with a numeric host.
    pub contact: Option<Contact>,
    /// The Expires header.
    pub expires: Option<u32>,
    media: [Option<Media>; MAX_MEDIA],
}

impl SipMsg<'_> {
    /// The announced media streams (port 0 excluded).
    pub fn media(&self) -> impl Iterator<Item = Media> + '_ {
        self.media.iter().flatten().copied()
    }

    /// True when this message's SDP negotiates media: a request of a
    /// negotiating method, or a provisional or success answer to one.
    pub fn carries_offer_or_answer(&self) -> bool {
        match self.request {
            Some(m) => m.negotiates_media(),
            None => (100..300).contains(&self.status) && self.cseq_method.negotiates_media(),
        }
    }
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t' | b'\r'] = s {
        s = rest;
    }
    s
}

fn number(s: &[u8]) -> Option<u32> {
    let s = trim(s);
    if s.is_empty() || s.len() > 9 || !s.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(s).ok()?.parse().ok()
}

/// Splits off one line (without CR LF) and the rest.
fn line(buf: &[u8]) -> (&[u8], &[u8]) {
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => (trim_cr(&buf[..i]), &buf[i + 1..]),
        None => (trim_cr(buf), &[]),
    }
}

fn trim_cr(s: &[u8]) -> &[u8] {
    s.strip_suffix(b"\r").unwrap_or(s)
}

/// Parses one SIP message at the start of `buf`; returns it and the bytes it
/// took (for SIP over TCP, where messages follow each other in the stream).
/// An incomplete message (body shorter than Content-Length) is an error.
// Out of line, as it was before the glue moved here: inlined into the
// helper dispatch it cost the SIP path some 30 instructions a message more
// (callgrind, `examples/helper_profile`).
#[inline(never)]
pub fn parse(buf: &[u8]) -> Result<(SipMsg<'_>, usize), ParseErr> {
    if buf.len() > MAX_MESSAGE {
        return Err(ParseErr::BadNumber);
    }
    let (first, mut rest) = line(buf);
    let (request, status) = if let Some(tail) = first.strip_prefix(b"SIP/2.0 ") {
        let code = tail.get(..3).and_then(number).ok_or(ParseErr::BadNumber)?;
        if !(100..700).contains(&code) {
            return Err(ParseErr::BadNumber);
        }
        (None, u16::try_from(code).map_err(|_| ParseErr::BadNumber)?)
    } else {
        let mut parts = first.split(|&b| b == b' ');
        let method = parts
            .next()
            .filter(|m| !m.is_empty())
            .ok_or(ParseErr::Truncated)?;
        let uri = parts.next().ok_or(ParseErr::Truncated)?;
        if uri.is_empty() || parts.next() != Some(b"SIP/2.0") {
            return Err(ParseErr::BadSyntax);
        }
        (Some(Method::from(method)), 0)
    };
    let mut cseq_method = Method::Other;
    let mut call_id: &[u8] = &[];
    let mut content_len = None;
    let mut contact = None;
    let mut expires = None;
    let mut sdp = false;
    let mut headers = 0;
    loop {
        if rest.is_empty() {
            // Headers never ended: only acceptable without a body.
            break;
        }
        let (l, r) = line(rest);
        rest = r;
        if l.is_empty() {
            break;
        }
        headers += 1;
        if headers > MAX_HEADERS {
            return Err(ParseErr::BadNumber);
        }
        let Some(colon) = l.iter().position(|&b| b == b':') else {
            return Err(ParseErr::BadSyntax);
        };
        let name = trim(&l[..colon]);
        let value = trim(&l[colon + 1..]);
        let is = |long: &[u8], short: &[u8]| {
            name.eq_ignore_ascii_case(long) || name.eq_ignore_ascii_case(short)
        };
        if is(b"Call-ID", b"i") {
            call_id = value;
        } else if is(b"Content-Length", b"l") {
            content_len = Some(number(value).ok_or(ParseErr::BadNumber)? as usize);
        } else if is(b"Content-Type", b"c") {
            sdp = value
                .split(|&b| b == b';')
                .next()
                .is_some_and(|t| trim(t).eq_ignore_ascii_case(b"application/sdp"));
        } else if is(b"Contact", b"m") {
            if contact.is_none() {
                contact = parse_contact(value);
            }
        } else if name.eq_ignore_ascii_case(b"Expires") {
            expires = number(value);
        } else if name.eq_ignore_ascii_case(b"CSeq") {
            let mut it = value.split(|&b| b == b' ').filter(|p| !p.is_empty());
            number(it.next().ok_or(ParseErr::Truncated)?).ok_or(ParseErr::BadNumber)?;
            cseq_method = Method::from(it.next().ok_or(ParseErr::Truncated)?);
        }
    }
    let head_len = buf.len() - rest.len();
    let body = match content_len {
        Some(n) => rest.get(..n).ok_or(ParseErr::Truncated)?,
        None => rest,
    };
    let mut msg = SipMsg {
        request,
        status,
        cseq_method,
        call_id,
        contact,
        expires,
        media: [None; MAX_MEDIA],
    };
    if sdp {
        parse_sdp(body, &mut msg.media)?;
    }
    Ok((msg, head_len + body.len()))
}

/// Reads a Contact header value: `"Name" <sip:user@192.0.2.1:5062;transport=udp>;expires=60`
/// or `sip:user@[2001:db8::1]:5060`; `*` and non-numeric hosts give `None`.
fn parse_contact(v: &[u8]) -> Option<Contact> {
    // The first of several comma-separated contacts (no commas in a numeric URI).
    let v = v.split(|&b| b == b',').next()?;
    let (uri, params) = match v.iter().position(|&b| b == b'<') {
        Some(lt) => {
            let rest = &v[lt + 1..];
            let gt = rest.iter().position(|&b| b == b'>')?;
            (&rest[..gt], &rest[gt + 1..])
        }
        None => {
            let semi = v.iter().position(|&b| b == b';').unwrap_or(v.len());
            (&v[..semi], &v[semi..])
        }
    };
    let uri = trim(uri);
    let uri = uri
        .strip_prefix(b"sip:")
        .or_else(|| uri.strip_prefix(b"sips:"))?;
    // Host part: after the user, before URI parameters or headers.
    let hostport = match uri.iter().position(|&b| b == b'@') {
        Some(at) => &uri[at + 1..],
        None => uri,
    };
    let end = hostport
        .iter()
        .position(|&b| b == b';' || b == b'?')
        .unwrap_or(hostport.len());
    let hostport = &hostport[..end];
    let (host, port) = if let Some(h6) = hostport.strip_prefix(b"[") {
        let close = h6.iter().position(|&b| b == b']')?;
        let port = h6[close + 1..].strip_prefix(b":");
        (&h6[..close], port)
    } else {
        match hostport.iter().position(|&b| b == b':') {
            Some(c) => (&hostport[..c], Some(&hostport[c + 1..])),
            None => (hostport, None),
        }
    };
    let addr: IpAddr = std::str::from_utf8(host).ok()?.parse().ok()?;
    if matches!(addr, IpAddr::V6(_)) != hostport.starts_with(b"[") {
        return None;
    }
    let port = match port {
        Some(p) => u16::try_from(number(p)?).ok().filter(|&p| p != 0)?,
        None => 5060,
    };
    let expires = params.split(|&b| b == b';').map(trim).find_map(|p| {
        let (k, val) = p.split_at(p.iter().position(|&b| b == b'=')?);
        k.eq_ignore_ascii_case(b"expires")
            .then(|| number(trim(&val[1..])))?
    });
    Some(Contact {
        addr,
        port,
        expires,
    })
}

fn sdp_addr(v: &[u8]) -> Option<IpAddr> {
    // c=IN IP4 192.0.2.1[/ttl]
    let mut it = v.split(|&b| b == b' ').filter(|p| !p.is_empty());
    if it.next()? != b"IN" {
        return None;
    }
    let family = it.next()?;
    let addr = it.next()?.split(|&b| b == b'/').next()?;
    let ip: IpAddr = std::str::from_utf8(addr).ok()?.parse().ok()?;
    match (family, ip) {
        (b"IP4", IpAddr::V4(_)) | (b"IP6", IpAddr::V6(_)) => Some(ip),
        _ => None,
    }
}

/// Reads the media streams of an SDP body.
fn parse_sdp(body: &[u8], out: &mut [Option<Media>; MAX_MEDIA]) -> Result<(), ParseErr> {
    let mut session: Option<IpAddr> = None;
    // The stream being read: (port, rtcp override, media-level address).
    let mut cur: Option<(u16, Option<u16>, Option<IpAddr>)> = None;
    let mut n = 0;
    let mut flush = |cur: Option<(u16, Option<u16>, Option<IpAddr>)>, session: Option<IpAddr>| {
        if let Some((port, rtcp, addr)) = cur {
            if let (true, Some(addr)) = (port != 0, addr.or(session)) {
                if let Some(slot) = out.get_mut(n) {
                    *slot = Some(Media {
                        addr,
                        port,
                        rtcp_port: rtcp.unwrap_or(port.wrapping_add(1)),
                    });
                    n += 1;
                }
            }
        }
    };
    let mut rest = body;
    while !rest.is_empty() {
        let (l, r) = line(rest);
        rest = r;
        if let Some(v) = l.strip_prefix(b"c=") {
            let addr = sdp_addr(v).ok_or(ParseErr::BadAddress)?;
            match &mut cur {
                Some((_, _, a)) => *a = Some(addr),
                None => session = Some(addr),
            }
        } else if let Some(v) = l.strip_prefix(b"m=") {
            flush(cur.take(), session);
            let mut it = v.split(|&b| b == b' ').filter(|p| !p.is_empty());
            let _media = it.next().ok_or(ParseErr::Truncated)?;
            let port = it
                .next()
                .and_then(|p| p.split(|&b| b == b'/').next())
                .and_then(number)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(ParseErr::BadNumber)?;
            cur = Some((port, None, None));
        } else if let Some(v) = l.strip_prefix(b"a=rtcp:") {
            if let Some((_, rtcp, _)) = &mut cur {
                let p = v.split(|&b| b == b' ').next().and_then(number);
                *rtcp = p.and_then(|p| u16::try_from(p).ok()).filter(|&p| p != 0);
            }
        }
    }
    flush(cur, session);
    Ok(())
}

/// Seconds a SIP signalling flow over UDP lives after each message (the
/// kernel's `sip_timeout`): registrations and calls outlast the UDP timeout.
pub(crate) const SIP_TIMEOUT: u32 = 3600;

/// The glue: a `BYE` or `CANCEL` ends the call (its media expectations go);
/// a successful `REGISTER` answer lets the registrar call the UA at its
/// Contact (expires 0: the binding goes); an offer or answer expects RTP and
/// RTCP from the other signalling party to the sender's own address.
pub(crate) fn help(cx: &mut HelpCx<'_, '_>) {
    let payload = match cx.pkt.l4 {
        L4::Udp { payload } | L4::Tcp(TcpSeg { payload, .. }) => payload,
        _ => return,
    };
    if payload.is_empty() {
        return;
    }
    cx.parsed();
    let sender = cx.pkt.tuple;
    let kind = cx.kind;
    let stream = matches!(cx.pkt.l4, L4::Tcp(_));
    if !stream {
        cx.set_deadline(cx.now + u64::from(SIP_TIMEOUT) * SEC);
    }
    let asks = cx.asks();
    let mut rest = payload;
    while !rest.is_empty() {
        let (msg, used) = match parse(rest) {
            Ok(x) => x,
            // The rest of a message continues in the next segment.
            Err(ParseErr::Truncated) if stream => break,
            Err(_) => {
                asks.error();
                break;
            }
        };
        if matches!(msg.request, Some(Method::Bye | Method::Cancel)) {
            asks.end_call();
        } else if msg.request.is_none()
            && (200..300).contains(&msg.status)
            && msg.cseq_method == Method::Register
        {
            // A registration: the UA (this answer's receiver) may
            // be called by the registrar at its Contact.
            if let Some(c) = msg.contact {
                let (fam, addr) = Addr::from_ip(c.addr);
                let expires = c.expires.or(msg.expires).unwrap_or(3600);
                if fam != sender.family || addr != sender.dst {
                    // Third-party registrations are not followed.
                    asks.refuse();
                } else {
                    let tuple = Tuple {
                        src: sender.src,
                        dst: addr,
                        src_port: 0,
                        dst_port: c.port,
                        proto: sender.proto,
                        family: fam,
                    };
                    if expires == 0 {
                        asks.unregister(tuple);
                    } else {
                        asks.push(ExpectSpec {
                            tuple,
                            mask: Mask {
                                src_addr: false,
                                src_port: true,
                                src_prefix: 0,
                            },
                            helper: kind,
                            child_helper: Some(HelperKind::Sip),
                            permanent: true,
                            timeout: Some(expires),
                        });
                    }
                }
            }
        } else if msg.carries_offer_or_answer() {
            for m in msg.media() {
                let (fam, addr) = Addr::from_ip(m.addr);
                // Direct media: only the sender's own address, and
                // only from the other signalling party.
                if fam != sender.family || addr != sender.src {
                    asks.refuse();
                    continue;
                }
                for port in [m.port, m.rtcp_port] {
                    asks.push(ExpectSpec {
                        tuple: Tuple {
                            src: sender.dst,
                            dst: addr,
                            src_port: 0,
                            dst_port: port,
                            proto: ipproto::UDP,
                            family: fam,
                        },
                        mask: Mask {
                            src_addr: false,
                            src_port: true,
                            src_prefix: 0,
                        },
                        helper: kind,
                        child_helper: None,
                        permanent: false,
                        timeout: None,
                    });
                }
            }
        }
        if !stream || used == 0 || used >= rest.len() {
            break;
        }
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The INVITE of the cloudshark SIP capture (headers shortened).
    fn invite() -> Vec<u8> {
        let body = "v=0\r\no=Clarent 120386 120387 IN IP4 200.57.7.196\r\ns=Clarent C5CM\r\n\
c=IN IP4 200.57.7.196\r\nt=0 0\r\nm=audio 40376 RTP/AVP 8 18 4 0\r\na=rtpmap:8 PCMA/8000\r\n";
        format!(
            "INVITE sip:bob@example.com SIP/2.0\r\n\
Via: SIP/2.0/UDP 200.57.7.195;branch=z9hG4bKff9b46fb055c0521cc24024da96cd290\r\n\
From: <sip:alice@example.com>;tag=1\r\nTo: <sip:bob@example.com>\r\n\
Call-ID: 12013223@200.57.7.195\r\nCSeq: 1 INVITE\r\nContent-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    #[test]
    fn invite_with_sdp() {
        let invite = invite();
        let (m, len) = parse(&invite).unwrap();
        assert_eq!(m.request, Some(Method::Invite));
        assert_eq!(m.cseq_method, Method::Invite);
        assert_eq!(m.call_id, b"12013223@200.57.7.195");
        assert!(m.carries_offer_or_answer());
        let media: Vec<_> = m.media().collect();
        assert_eq!(media.len(), 1);
        assert_eq!(media[0].addr, "200.57.7.196".parse::<IpAddr>().unwrap());
        assert_eq!((media[0].port, media[0].rtcp_port), (40376, 40377));
        assert_eq!(len, invite.len());
    }

    #[test]
    fn response_compact_headers_media_level_address_rtcp_and_disabled_streams() {
        let body = "v=0\nc=IN IP4 192.0.2.1\nm=audio 8000 RTP/AVP 0\na=rtcp:9001\nm=video 0 RTP/AVP 31\nm=video 9000/2 RTP/AVP 31\nc=IN IP6 2001:db8::7\n";
        let msg = format!(
            "SIP/2.0 200 OK\ni: abc\nCSeq: 2 INVITE\nc: application/sdp; charset=x\nl: {}\n\n{body}",
            body.len()
        );
        let (m, _) = parse(msg.as_bytes()).unwrap();
        assert_eq!((m.request, m.status), (None, 200));
        assert!(m.carries_offer_or_answer());
        let media: Vec<_> = m.media().collect();
        assert_eq!(media.len(), 2);
        assert_eq!((media[0].port, media[0].rtcp_port), (8000, 9001));
        assert_eq!(media[1].addr, "2001:db8::7".parse::<IpAddr>().unwrap());
        assert_eq!(media[1].port, 9000);
    }

    #[test]
    fn answers_to_other_methods_and_errors_negotiate_nothing() {
        let (m, _) = parse(b"SIP/2.0 200 OK\r\nCSeq: 1 REGISTER\r\n\r\n").unwrap();
        assert!(!m.carries_offer_or_answer());
        let (m, _) = parse(b"SIP/2.0 486 Busy\r\nCSeq: 1 INVITE\r\n\r\n").unwrap();
        assert!(!m.carries_offer_or_answer());
        let (m, _) = parse(b"BYE sip:a@b SIP/2.0\r\nCSeq: 3 BYE\r\n\r\n").unwrap();
        assert_eq!(m.request, Some(Method::Bye));
    }

    #[test]
    fn tcp_stream_of_two_messages_and_truncation() {
        let one = b"OPTIONS sip:a@b SIP/2.0\r\nContent-Length: 0\r\n\r\n";
        let mut two = one.to_vec();
        let invite = invite();
        two.extend_from_slice(&invite);
        let (_, n) = parse(&two).unwrap();
        assert_eq!(n, one.len());
        let (m, _) = parse(&two[n..]).unwrap();
        assert_eq!(m.request, Some(Method::Invite));
        assert_eq!(
            parse(&invite[..invite.len() - 10]).err(),
            Some(ParseErr::Truncated)
        );
    }

    #[test]
    fn contacts() {
        let c = |v: &[u8]| parse_contact(v);
        assert_eq!(
            c(b"\"Alice\" <sip:alice@10.0.0.1:5062;transport=udp>;expires=60"),
            Some(Contact {
                addr: "10.0.0.1".parse().unwrap(),
                port: 5062,
                expires: Some(60)
            })
        );
        assert_eq!(
            c(b"sip:bob@[2001:db8::1]"),
            Some(Contact {
                addr: "2001:db8::1".parse().unwrap(),
                port: 5060,
                expires: None
            })
        );
        assert_eq!(
            c(b"<sip:192.0.2.7:6000>;q=0.5;Expires=0").map(|k| k.expires),
            Some(Some(0))
        );
        for bad in [
            &b"*"[..],
            b"<sip:alice@example.com>",
            b"<sip:alice@10.0.0.1:0>",
            b"<sip:alice@10.0.0.1:99999>",
            b"<sip:alice@2001:db8::1>",
            b"<sip:alice@[10.0.0.1]>",
            b"<sip:alice@10.0.0.1",
            b"<tel:+123>",
        ] {
            assert_eq!(c(bad), None, "{}", String::from_utf8_lossy(bad));
        }
        let (m, _) = parse(
            b"SIP/2.0 200 OK\r\nCSeq: 2 REGISTER\r\nContact: <sip:a@10.0.0.1:5060>;expires=1800\r\nExpires: 3600\r\n\r\n",
        )
        .unwrap();
        assert_eq!(m.cseq_method, Method::Register);
        assert_eq!(m.contact.map(|c| c.expires), Some(Some(1800)));
        assert_eq!(m.expires, Some(3600));
    }

    #[test]
    fn malformed() {
        assert!(parse(b"").is_err());
        assert!(parse(b"SIP/2.0 9x OK\r\n\r\n").is_err());
        assert!(parse(b"INVITE sip:a SIP/1.0\r\n\r\n").is_err());
        assert!(parse(b"INVITE sip:a SIP/2.0\r\nno colon here\r\n\r\n").is_err());
        assert!(parse(
            b"SIP/2.0 200 OK\r\nContent-Type: application/sdp\r\n\r\nc=IN IP4 999.1.1.1\r\n"
        )
        .is_err());
        let many = format!("INVITE sip:a SIP/2.0\r\n{}\r\n", "X: y\r\n".repeat(100));
        assert!(parse(many.as_bytes()).is_err());
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = parse(&b);
        }

        #[test]
        fn sdp_roundtrip(a in any::<[u8; 4]>(), port in 1u16..65535) {
            let ip = std::net::Ipv4Addr::from(a);
            let body = format!("v=0\r\nc=IN IP4 {ip}\r\nm=audio {port} RTP/AVP 0\r\n");
            let msg = format!("SIP/2.0 183 Progress\r\nCSeq: 7 INVITE\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            let (m, n) = parse(msg.as_bytes()).unwrap();
            prop_assert_eq!(n, msg.len());
            let media: Vec<_> = m.media().collect();
            prop_assert_eq!(media.len(), 1);
            prop_assert_eq!(media[0].addr, IpAddr::V4(ip));
            prop_assert_eq!(media[0].port, port);
        }
    }
}
