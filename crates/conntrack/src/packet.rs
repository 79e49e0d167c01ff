//! Parsing an IP packet (IPv4 or IPv6, starting at the IP header) into the typed
//! view the trackers work on. Validates once at the edge; nothing downstream
//! re-checks lengths.
//!
//! Two kinds of failure, as in the kernel:
//! - [`ParseError::Malformed`]: the L3 header is unusable (the kernel's IP input
//!   drops these before conntrack runs);
//! - [`ParseError::Invalid`]: the L3 header is fine but the L4 header is broken
//!   (truncated, bad checksum, impossible TCP flags): conntrack marks the packet
//!   `invalid` and policy decides. The tuple is still known for addresses.

use crate::reason::DropReason;
use crate::tuple::{ipproto, Addr, Family, Tuple};

/// TCP flag bits as they sit in byte 13 of the TCP header.
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// The TCP header fields window tracking needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpSeg<'a> {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgement number.
    pub ack: u32,
    /// Flag byte (see [`tcp_flags`]).
    pub flags: u8,
    /// Raw (unscaled) window field.
    pub window: u16,
    /// Window scale option, if present (only meaningful on SYNs); clamped to 14.
    pub wscale: Option<u8>,
    /// SACK-permitted option present.
    pub sack_perm: bool,
    /// Highest right edge among SACK blocks, if any (kernel `tcp_sack`), used to
    /// advance the sender's end beyond `ack`.
    pub sack_max: Option<u32>,
    /// TCP payload.
    pub payload: &'a [u8],
}

impl TcpSeg<'_> {
    /// True if every bit of `f` is set.
    pub fn has(&self, f: u8) -> bool {
        self.flags & f == f
    }
}

/// ICMP or ICMPv6 message classes conntrack cares about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Icmp {
    /// Query or answer of a tracked exchange (echo, timestamp, ...): the packet's
    /// tuple carries id and type.
    Query,
    /// Error message (dest-unreach, time-exceeded, param-problem, packet-too-big,
    /// source-quench, redirect) quoting a packet whose tuple is `inner`, as the
    /// quoted packet travelled (not inverted).
    Error {
        /// Tuple of the quoted packet.
        inner: Tuple,
    },
    /// IPv6 neighbour discovery, MLD and the like: conntrack leaves them untracked.
    Untracked,
    /// Any other type: no entry can be created, none matched.
    Other,
}

/// L4 view of a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum L4<'a> {
    /// TCP segment.
    Tcp(TcpSeg<'a>),
    /// UDP (or UDP-Lite) datagram with its payload.
    Udp {
        /// Datagram payload.
        payload: &'a [u8],
    },
    /// ICMP or ICMPv6.
    Icmp(Icmp),
    /// Any other protocol (tracked by addresses, and for GRE by key).
    Other {
        /// Bytes after the IP headers.
        payload: &'a [u8],
    },
    /// A fragment that is not the first: no L4 header (tuple ports are zero).
    Fragment,
}

/// Fragment information of an IPv4 or IPv6 fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frag {
    /// IPv4 identification (zero-extended) or IPv6 fragment header identification.
    pub id: u32,
    /// Fragment offset in bytes.
    pub offset: u32,
    /// More-fragments flag.
    pub more: bool,
}

/// A parsed IP packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Packet<'a> {
    /// Tuple as the packet travels (source to destination).
    pub tuple: Tuple,
    /// Length of the IP packet (header included), as the kernel counts bytes.
    pub ip_len: u32,
    /// Set if the packet is an IPv4 or IPv6 fragment.
    pub frag: Option<Frag>,
    /// Set if the IPv4 header carries options.
    pub ip_options: bool,
    /// L4 view.
    pub l4: L4<'a>,
}

/// Why a packet could not be parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParseError {
    /// L3 header unusable: drop before conntrack.
    Malformed(DropReason),
    /// L4 header broken: the packet is `invalid` for policy; `tuple` carries the
    /// addresses and protocol (ports zero when unknown).
    Invalid {
        /// Why.
        reason: DropReason,
        /// What is known of the tuple.
        tuple: Tuple,
        /// IP length for byte counters.
        ip_len: u32,
    },
}

/// Parsing options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ParseOptions {
    /// Verify L4 checksums (`nf_conntrack_checksum`).
    pub checksum: bool,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions { checksum: true }
    }
}

/// Family of the IP packet starting at `bytes[0]`, from its version nibble.
pub fn family_of(bytes: &[u8]) -> Option<Family> {
    match bytes.first().map(|b| b >> 4) {
        Some(4) => Some(Family::V4),
        Some(6) => Some(Family::V6),
        _ => None,
    }
}

// ---------------------------------------------------------------- checksums

/// Adds `data` to a ones-complement sum (16-bit words, big-endian, odd tail
/// padded with zero) kept unfolded in a u64.
fn csum_add(mut sum: u64, data: &[u8]) -> u64 {
    // Eight bytes at a time, as two big-endian 32-bit halves (2^16 is 1
    // modulo 0xffff, so where a 16-bit word sits in them does not change the
    // folded sum). Each step adds less than 2^33: no overflow below 2^31
    // steps, and a packet has at most 2^13.
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        let w = u64::from_be_bytes(w);
        sum += (w >> 32) + (w & 0xffff_ffff);
    }
    // The last 0 to 7 bytes, without a copy of variable length: they start
    // at an even offset, so a 16-bit word stays a word.
    let mut rest = chunks.remainder();
    if let [a, b, c, d, more @ ..] = rest {
        sum += u64::from(u32::from_be_bytes([*a, *b, *c, *d]));
        rest = more;
    }
    if let [a, b, more @ ..] = rest {
        sum += u64::from(u16::from_be_bytes([*a, *b]));
        rest = more;
    }
    if let [a] = rest {
        // A last odd byte is the high half of a word padded with zero.
        sum += u64::from(*a) << 8;
    }
    sum
}

/// Folds a sum to 16 bits; a correct checksum folds to 0xffff.
fn csum_fold(mut sum: u64) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The loop leaves at most 16 bits.
    #[allow(clippy::cast_possible_truncation)]
    let s = sum as u16;
    s
}

/// The pseudo-header's contribution for an upper-layer checksum.
fn pseudo(ip: &Ip<'_>, proto: u8, len: usize) -> u64 {
    csum_add(0, ip.addr_bytes) + u64::from(proto) + len as u64
}

fn l4_csum_ok(ip: &Ip<'_>, proto: u8, data: &[u8]) -> bool {
    csum_fold(csum_add(pseudo(ip, proto, data.len()), data)) == 0xffff
}

// ---------------------------------------------------------------- helpers

fn be16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn addr16(b: &[u8]) -> Addr {
    let mut a = [0u8; 16];
    a.copy_from_slice(&b[..16]);
    Addr::v6(a)
}

fn addr4(b: &[u8]) -> Addr {
    Addr::v4([b[0], b[1], b[2], b[3]])
}

/// What the L3 header said, for the L4 parsers.
struct Ip<'a> {
    family: Family,
    src: Addr,
    dst: Addr,
    /// The source and destination addresses as the header holds them, one
    /// after the other (for the pseudo-header).
    addr_bytes: &'a [u8],
    /// Upper-layer protocol.
    proto: u8,
    /// Upper-layer bytes (bounded by the IP length fields).
    payload: &'a [u8],
    frag: Option<Frag>,
    ip_len: u32,
    options: bool,
}

impl Ip<'_> {
    fn tuple(&self, src_port: u16, dst_port: u16) -> Tuple {
        Tuple {
            src: self.src,
            dst: self.dst,
            src_port,
            dst_port,
            proto: self.proto,
            family: self.family,
        }
    }
}

/// Extension headers walked before giving up (hostile chains are bounded).
const MAX_EXT_HEADERS: usize = 16;

fn parse_ipv4(b: &[u8]) -> Result<Ip<'_>, DropReason> {
    if b.len() < 20 {
        return Err(DropReason::Ipv4Truncated);
    }
    let ihl = usize::from(b[0] & 0x0f) * 4;
    if b[0] >> 4 != 4 || ihl < 20 {
        return Err(DropReason::Ipv4BadHeader);
    }
    if ihl > b.len() {
        return Err(DropReason::Ipv4Truncated);
    }
    let tot = usize::from(u16::from_be_bytes([b[2], b[3]]));
    if tot < ihl || tot > b.len() {
        return Err(DropReason::Ipv4BadLength);
    }
    if csum_fold(csum_add(0, &b[..ihl])) != 0xffff {
        return Err(DropReason::Ipv4BadChecksum);
    }
    let fo = u16::from_be_bytes([b[6], b[7]]);
    let more = fo & 0x2000 != 0;
    let offset = u32::from(fo & 0x1fff) * 8;
    let frag = (more || offset != 0).then_some(Frag {
        id: u32::from(u16::from_be_bytes([b[4], b[5]])),
        offset,
        more,
    });
    // A fragment ending beyond a datagram's 65 535 bytes: the kernel's
    // reassembly discards it (ip_frag_queue).
    if frag.is_some() && offset as usize + (tot - ihl) > 65_535 {
        return Err(DropReason::FragmentBad);
    }
    Ok(Ip {
        family: Family::V4,
        src: addr4(&b[12..16]),
        dst: addr4(&b[16..20]),
        addr_bytes: &b[12..20],
        proto: b[9],
        payload: &b[ihl..tot],
        frag,
        // tot <= 65535.
        ip_len: u32::from(u16::from_be_bytes([b[2], b[3]])),
        options: ihl > 20,
    })
}

/// Walks an IPv6 header and its extension headers. `strict_len`: the payload
/// length must fit the buffer (false for a packet quoted in an ICMPv6 error,
/// which is usually cut short).
fn parse_ipv6(b: &[u8], strict_len: bool) -> Result<Ip<'_>, DropReason> {
    if b.len() < 40 {
        return Err(DropReason::Ipv6Truncated);
    }
    if b[0] >> 4 != 6 {
        return Err(DropReason::Ipv6Truncated);
    }
    let plen = usize::from(u16::from_be_bytes([b[4], b[5]]));
    let end = if 40 + plen <= b.len() {
        40 + plen
    } else if strict_len || plen == 0 {
        // A zero payload length means a jumbogram, which no bridge port carries.
        return Err(DropReason::Ipv6Truncated);
    } else {
        b.len()
    };
    let mut next = b[6];
    let mut pos = 40;
    let mut frag = None;
    for _ in 0..MAX_EXT_HEADERS {
        match next {
            // Hop-by-hop, routing, destination options.
            0 | 43 | 60 => {
                let (Some(&nh), Some(&len)) = (b.get(pos), b.get(pos + 1)) else {
                    return Err(DropReason::Ipv6BadExtHeader);
                };
                let hlen = (usize::from(len) + 1) * 8;
                if pos + hlen > end {
                    return Err(DropReason::Ipv6BadExtHeader);
                }
                next = nh;
                pos += hlen;
            }
            // Fragment header.
            44 => {
                if pos + 8 > end {
                    return Err(DropReason::Ipv6BadExtHeader);
                }
                let fo = u16::from_be_bytes([b[pos + 2], b[pos + 3]]);
                let id = u32::from_be_bytes([b[pos + 4], b[pos + 5], b[pos + 6], b[pos + 7]]);
                let offset = u32::from(fo >> 3) * 8;
                let more = fo & 1 != 0;
                next = b[pos];
                pos += 8;
                if more || offset != 0 {
                    frag = Some(Frag { id, offset, more });
                    // What the kernel's reassembly refuses (nf_ct_frag6_queue,
                    // RFC 8200 4.5): a fragment ending beyond 65 535 bytes,
                    // and one that is not the last whose data is not a
                    // multiple of 8 bytes.
                    let data = end - pos;
                    if offset as usize + data > 65_535 || (more && data % 8 != 0) {
                        return Err(DropReason::FragmentBad);
                    }
                }
                if offset != 0 {
                    // Later fragments carry no upper-layer header.
                    break;
                }
            }
            // Authentication header: its length counts 4-byte units.
            51 => {
                let (Some(&nh), Some(&len)) = (b.get(pos), b.get(pos + 1)) else {
                    return Err(DropReason::Ipv6BadExtHeader);
                };
                let hlen = (usize::from(len) + 2) * 4;
                if pos + hlen > end {
                    return Err(DropReason::Ipv6BadExtHeader);
                }
                next = nh;
                pos += hlen;
            }
            _ => break,
        }
    }
    // A later fragment ends the walk at its fragment header, whatever the
    // header it names (an AH-protected packet's fragments all name AH):
    // what follows is the datagram's data.
    let later_fragment = frag.is_some_and(|f| f.offset != 0);
    if !later_fragment && matches!(next, 0 | 43 | 60 | 51 | 44) {
        // Still inside the chain after MAX_EXT_HEADERS headers.
        return Err(DropReason::Ipv6BadExtHeader);
    }
    Ok(Ip {
        family: Family::V6,
        src: addr16(&b[8..24]),
        dst: addr16(&b[24..40]),
        addr_bytes: &b[8..40],
        proto: next,
        payload: &b[pos..end],
        frag,
        // end <= 40 + 65535.
        ip_len: u32::try_from(end).unwrap_or(u32::MAX),
        options: false,
    })
}

/// What the kernel's IP input says of an IP packet `l3` that a frame of
/// EtherType `ethertype` (0x0800 or 0x86dd) carries: each family's input
/// checks the version field of its own header, so an IPv6 packet behind
/// EtherType IPv4 (or the reverse) is dropped as a bad header, never
/// tracked as the other family. `None`: the version matches (or the packet
/// is too short to say; its parse names that). Other EtherTypes: `None`.
pub fn ethertype_mismatch(ethertype: u16, l3: &[u8]) -> Option<DropReason> {
    let version = l3.first()? >> 4;
    match ethertype {
        0x0800 if version != 4 => Some(DropReason::Ipv4BadHeader),
        0x86dd if version != 6 => Some(DropReason::Ipv6BadHeader),
        _ => None,
    }
}

/// The kernel's `tcp_valid_flags`: combinations of FIN, SYN, RST, ACK and URG
/// (PSH, ECE and CWR are ignored) a TCP segment may carry.
pub fn tcp_flags_valid(flags: u8) -> bool {
    use tcp_flags::*;
    let f = flags & (FIN | SYN | RST | ACK | URG);
    matches!(
        f,
        x if x == SYN
            || x == SYN | URG
            || x == SYN | ACK
            || x == RST
            || x == RST | ACK
            || x == FIN | ACK
            || x == FIN | ACK | URG
            || x == ACK
            || x == ACK | URG
    )
}

/// Window scale, SACK-permitted and highest SACK right edge from TCP options
/// (the kernel's `tcp_options`/`tcp_sack`: a malformed option ends the walk).
fn tcp_options(opts: &[u8], syn: bool) -> (Option<u8>, bool, Option<u32>) {
    let (mut wscale, mut sack_perm, mut sack_max) = (None, false, None::<u32>);
    let mut i = 0;
    while let Some(&kind) = opts.get(i) {
        match kind {
            0 => break,
            1 => {
                i += 1;
                continue;
            }
            _ => {}
        }
        let Some(&len) = opts.get(i + 1) else { break };
        let len = usize::from(len);
        if len < 2 || i + len > opts.len() {
            break;
        }
        let body = &opts[i + 2..i + len];
        match (kind, len) {
            (3, 3) if syn => wscale = Some(body[0].min(14)),
            (4, 2) if syn => sack_perm = true,
            (5, _) if len >= 10 && (len - 2) % 8 == 0 => {
                for blk in body.chunks_exact(8) {
                    let right = u32::from_be_bytes([blk[4], blk[5], blk[6], blk[7]]);
                    sack_max = Some(match sack_max {
                        // Wrap-aware "after".
                        Some(m) if (right.wrapping_sub(m) as i32) <= 0 => m,
                        _ => right,
                    });
                }
            }
            _ => {}
        }
        i += len;
    }
    (wscale, sack_perm, sack_max)
}

fn invalid(ip: &Ip<'_>, reason: DropReason) -> ParseError {
    ParseError::Invalid {
        reason,
        tuple: ip.tuple(0, 0),
        ip_len: ip.ip_len,
    }
}

fn is_icmp_error(family: Family, ty: u8) -> bool {
    match family {
        Family::V4 => matches!(ty, 3 | 4 | 5 | 11 | 12),
        // Every ICMPv6 type below 128 is an error message.
        Family::V6 => ty < 128,
    }
}

/// The tuple of the packet quoted by an ICMP error, as it travelled.
fn quoted_tuple(family: Family, quoted: &[u8]) -> Option<Tuple> {
    let ip = match family {
        Family::V4 => {
            // The quoted header's lengths describe the original packet, of which
            // only the start is here: check only the header itself.
            let ihl = usize::from(*quoted.first()? & 0x0f) * 4;
            if quoted.first()? >> 4 != 4 || ihl < 20 || quoted.len() < ihl {
                return None;
            }
            Ip {
                family,
                src: addr4(&quoted[12..16]),
                dst: addr4(&quoted[16..20]),
                addr_bytes: &quoted[12..20],
                proto: quoted[9],
                payload: &quoted[ihl..],
                frag: None,
                ip_len: 0,
                options: ihl > 20,
            }
        }
        Family::V6 => parse_ipv6(quoted, false).ok()?,
    };
    let l4 = ip.payload;
    let t = match (family, ip.proto) {
        (Family::V4, ipproto::ICMP) | (Family::V6, ipproto::ICMPV6) => {
            let ty = *l4.first()?;
            let code = *l4.get(1)?;
            // Only queries can be tracked, so only they can be quoted validly
            // (an error quoting an error is invalid, as in the kernel).
            let inverse = match family {
                Family::V4 => crate::tuple::icmp_inverse_type(ty),
                Family::V6 => crate::tuple::icmpv6_inverse_type(ty),
            };
            inverse?;
            ip.tuple(be16(l4, 4)?, u16::from_be_bytes([ty, code]))
        }
        (_, ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP | ipproto::DCCP) => {
            ip.tuple(be16(l4, 0)?, be16(l4, 2)?)
        }
        _ => ip.tuple(0, 0),
    };
    Some(t)
}

fn parse_l4<'a>(ip: &Ip<'a>, opts: ParseOptions) -> Result<L4<'a>, ParseError> {
    let d = ip.payload;
    // A first fragment's L4 checksum covers the whole datagram: not checkable.
    let check = opts.checksum && ip.frag.is_none();
    match (ip.family, ip.proto) {
        (_, ipproto::TCP) => {
            if d.len() < 20 {
                return Err(invalid(ip, DropReason::TcpTruncated));
            }
            let doff = usize::from(d[12] >> 4) * 4;
            if doff < 20 || doff > d.len() {
                return Err(invalid(ip, DropReason::TcpBadDataOffset));
            }
            let flags = d[13];
            if !tcp_flags_valid(flags) {
                return Err(invalid(ip, DropReason::TcpBadFlags));
            }
            if check && !l4_csum_ok(ip, ipproto::TCP, d) {
                return Err(invalid(ip, DropReason::TcpBadChecksum));
            }
            let (wscale, sack_perm, sack_max) =
                tcp_options(&d[20..doff], flags & tcp_flags::SYN != 0);
            Ok(L4::Tcp(TcpSeg {
                seq: u32::from_be_bytes([d[4], d[5], d[6], d[7]]),
                ack: u32::from_be_bytes([d[8], d[9], d[10], d[11]]),
                flags,
                window: u16::from_be_bytes([d[14], d[15]]),
                wscale,
                sack_perm,
                sack_max,
                payload: &d[doff..],
            }))
        }
        (_, ipproto::UDP | ipproto::UDPLITE) => {
            if d.len() < 8 {
                return Err(invalid(ip, DropReason::UdpTruncated));
            }
            let ulen = usize::from(u16::from_be_bytes([d[4], d[5]]));
            if ip.proto == ipproto::UDPLITE {
                // UDP-Lite's length field is a checksum coverage, not a length.
                return Ok(L4::Udp { payload: &d[8..] });
            }
            if ip.frag.is_none() && (ulen > d.len() || ulen < 8) {
                return Err(invalid(ip, DropReason::UdpBadLength));
            }
            let end = if ip.frag.is_none() { ulen } else { d.len() };
            // A zero checksum means "none", for IPv6 too as the kernel reads it.
            if check && (d[6] | d[7]) != 0 && !l4_csum_ok(ip, ipproto::UDP, &d[..end]) {
                return Err(invalid(ip, DropReason::UdpBadChecksum));
            }
            Ok(L4::Udp {
                payload: &d[8..end],
            })
        }
        (Family::V4, ipproto::ICMP) | (Family::V6, ipproto::ICMPV6) => {
            if d.len() < 8 {
                return Err(invalid(ip, DropReason::IcmpTruncated));
            }
            let ok = match ip.family {
                Family::V4 => csum_fold(csum_add(0, d)) == 0xffff,
                Family::V6 => l4_csum_ok(ip, ipproto::ICMPV6, d),
            };
            if check && !ok {
                return Err(invalid(ip, DropReason::IcmpBadChecksum));
            }
            let ty = d[0];
            if ip.family == Family::V4 && ty > 18 {
                return Err(invalid(ip, DropReason::IcmpBadType));
            }
            if ip.family == Family::V6 && matches!(ty, 130..=136 | 143) {
                // MLD and neighbour discovery: the kernel leaves them untracked.
                return Ok(L4::Icmp(Icmp::Untracked));
            }
            if is_icmp_error(ip.family, ty) {
                return match quoted_tuple(ip.family, &d[8..]) {
                    Some(inner) => Ok(L4::Icmp(Icmp::Error { inner })),
                    None => Err(invalid(ip, DropReason::IcmpErrorBadInner)),
                };
            }
            if crate::tuple::icmp_type_opens(ip.family, ty)
                || match ip.family {
                    Family::V4 => crate::tuple::icmp_inverse_type(ty).is_some(),
                    Family::V6 => crate::tuple::icmpv6_inverse_type(ty).is_some(),
                }
            {
                return Ok(L4::Icmp(Icmp::Query));
            }
            Ok(L4::Icmp(Icmp::Other))
        }
        (_, ipproto::GRE) => {
            // Enhanced GRE (version 1, PPTP) must carry PPP (the kernel's
            // gre_pkt_to_tuple); other GRE is tracked by addresses only.
            if d.len() >= 8 && d[1] & 0x07 == 1 && be16(d, 2) != Some(0x880b) {
                return Err(invalid(ip, DropReason::GreBadProtocol));
            }
            Ok(L4::Other { payload: d })
        }
        _ => Ok(L4::Other { payload: d }),
    }
}

/// The call id (key) of an enhanced GRE (version 1) header, `None` for other GRE.
pub fn gre_v1_call_id(gre: &[u8]) -> Option<u16> {
    let flags = *gre.get(1)?;
    if flags & 0x07 != 1 {
        return None;
    }
    be16(gre, 6)
}

/// Parses an IP packet (IPv4 or IPv6) starting at its IP header. `bytes` may
/// extend past the IP packet (Ethernet padding); the IP length field decides.
pub fn parse(bytes: &[u8], opts: ParseOptions) -> Result<Packet<'_>, ParseError> {
    let ip = match family_of(bytes) {
        Some(Family::V4) => parse_ipv4(bytes),
        Some(Family::V6) => parse_ipv6(bytes, true),
        None => Err(DropReason::Ipv4BadHeader),
    }
    .map_err(ParseError::Malformed)?;
    if ip.frag.is_some_and(|f| f.offset != 0) {
        return Ok(Packet {
            tuple: ip.tuple(0, 0),
            ip_len: ip.ip_len,
            frag: ip.frag,
            ip_options: ip.options,
            l4: L4::Fragment,
        });
    }
    let l4 = parse_l4(&ip, opts)?;
    let (sp, dp) = match l4 {
        L4::Tcp(_) | L4::Udp { .. } => (
            be16(ip.payload, 0).unwrap_or(0),
            be16(ip.payload, 2).unwrap_or(0),
        ),
        L4::Icmp(_) => {
            let d = ip.payload;
            let ty = d.first().copied().unwrap_or(0);
            let code = d.get(1).copied().unwrap_or(0);
            let id = if matches!(l4, L4::Icmp(Icmp::Query)) {
                be16(d, 4).unwrap_or(0)
            } else {
                0
            };
            (id, u16::from_be_bytes([ty, code]))
        }
        L4::Other { payload } if matches!(ip.proto, ipproto::SCTP | ipproto::DCCP) => {
            (be16(payload, 0).unwrap_or(0), be16(payload, 2).unwrap_or(0))
        }
        // The source key comes from the PPTP helper's keymap (see the table).
        L4::Other { payload } if ip.proto == ipproto::GRE => {
            (0, gre_v1_call_id(payload).unwrap_or(0))
        }
        L4::Other { .. } | L4::Fragment => (0, 0),
    };
    Ok(Packet {
        tuple: ip.tuple(sp, dp),
        ip_len: ip.ip_len,
        frag: ip.frag,
        ip_options: ip.options,
        l4,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::build::Pkt;
    use crate::packet::tcp_flags::*;
    use proptest::prelude::*;

    const A: [u8; 4] = [10, 0, 0, 1];
    const B: [u8; 4] = [10, 0, 0, 2];
    const A6: [u8; 16] = [0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    const B6: [u8; 16] = [0xfc, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

    fn p(b: &[u8]) -> Result<Packet<'_>, ParseError> {
        parse(b, ParseOptions::default())
    }

    fn invalid_reason(b: &[u8]) -> Option<DropReason> {
        match p(b) {
            Err(ParseError::Invalid { reason, .. }) => Some(reason),
            _ => None,
        }
    }

    #[test]
    fn tcp_roundtrip_with_options() {
        let b = Pkt::tcp4(A, 40000, B, 80)
            .flags(SYN)
            .seq(1000)
            .window(29200)
            .tcp_option(&[2, 4, 5, 0xb4])
            .sack_perm()
            .wscale(20)
            .payload(b"")
            .build();
        let pk = p(&b).unwrap();
        assert_eq!(pk.tuple.src_port, 40000);
        assert_eq!(pk.tuple.dst_port, 80);
        assert_eq!(pk.ip_len as usize, b.len());
        let L4::Tcp(s) = pk.l4 else { panic!() };
        assert_eq!((s.seq, s.flags, s.window), (1000, SYN, 29200));
        assert_eq!(s.wscale, Some(14), "clamped like the kernel");
        assert!(s.sack_perm);
        // Options of a non-SYN are ignored; SACK blocks are read.
        let b = Pkt::tcp4(A, 1, B, 2)
            .flags(ACK)
            .ack(5)
            .wscale(7)
            .sack(&[(10, 20), (30, 0x7000_0000), (0, 0xffff_fff0)])
            .build();
        let L4::Tcp(s) = p(&b).unwrap().l4 else {
            panic!()
        };
        // Sequence space wraps: 0xffff_fff0 is *before* 0x7000_0000.
        assert_eq!((s.wscale, s.sack_max), (None, Some(0x7000_0000)));
    }

    #[test]
    fn tcp_errors() {
        let good = Pkt::tcp4(A, 1, B, 2).payload(b"hello").build();
        let mut bad = good.clone();
        bad[20 + 12] = 0x40; // data offset 4 words
        assert_eq!(invalid_reason(&bad), Some(DropReason::TcpBadDataOffset));
        let bad = Pkt::tcp4(A, 1, B, 2).payload(b"x").bad_checksum().build();
        assert_eq!(invalid_reason(&bad), Some(DropReason::TcpBadChecksum));
        assert!(parse(&bad, ParseOptions { checksum: false }).is_ok());
        for f in [0, FIN, SYN | FIN, SYN | RST, FIN | PSH | URG] {
            let b = Pkt::tcp4(A, 1, B, 2).flags(f).build();
            assert_eq!(
                invalid_reason(&b),
                Some(DropReason::TcpBadFlags),
                "flags {f:#x}"
            );
        }
        for f in [
            SYN,
            SYN | ACK,
            ACK,
            RST,
            RST | ACK,
            FIN | ACK,
            ACK | PSH | ECE | CWR,
        ] {
            assert!(
                p(&Pkt::tcp4(A, 1, B, 2).flags(f).build()).is_ok(),
                "flags {f:#x}"
            );
        }
        // Header cut short: IP total length still consistent.
        let mut short = Pkt::raw4(A, B, ipproto::TCP).payload(&[0; 10]).build();
        short.truncate(30);
        assert_eq!(invalid_reason(&short), Some(DropReason::TcpTruncated));
    }

    #[test]
    fn ipv4_header_errors_are_malformed() {
        let good = Pkt::udp4(A, 1, B, 2).payload(b"abc").build();
        let mut b = good.clone();
        b[10] ^= 1;
        assert_eq!(
            p(&b),
            Err(ParseError::Malformed(DropReason::Ipv4BadChecksum))
        );
        assert_eq!(
            p(&good[..19]),
            Err(ParseError::Malformed(DropReason::Ipv4Truncated))
        );
        assert_eq!(
            p(&good[..good.len() - 1]),
            Err(ParseError::Malformed(DropReason::Ipv4BadLength))
        );
        let mut b = good.clone();
        b[0] = 0x44;
        assert_eq!(p(&b), Err(ParseError::Malformed(DropReason::Ipv4BadHeader)));
        // Ethernet padding after the packet is fine.
        let mut padded = good.clone();
        padded.extend_from_slice(&[0; 18]);
        let pk = p(&padded).unwrap();
        assert_eq!(pk.l4, L4::Udp { payload: b"abc" });
    }

    #[test]
    fn udp_length_and_checksum() {
        let good = Pkt::udp4(A, 1, B, 2).payload(b"abcd").build();
        let mut b = good.clone();
        b[24..26].copy_from_slice(&40u16.to_be_bytes());
        assert_eq!(invalid_reason(&b), Some(DropReason::UdpBadLength));
        let mut b = good.clone();
        b[28] ^= 0xff;
        assert_eq!(invalid_reason(&b), Some(DropReason::UdpBadChecksum));
        // Zero checksum: none.
        let mut b = good.clone();
        b[26..28].copy_from_slice(&[0, 0]);
        b[28] ^= 0xff;
        assert!(p(&b).is_ok());
        let v6 = Pkt::udp6(A6, 5, B6, 6).payload(b"zz").build();
        assert_eq!(p(&v6).unwrap().tuple.family, Family::V6);
    }

    #[test]
    fn icmp_queries_errors_and_untracked() {
        let req = Pkt::echo4(A, B, 77, 1, false).payload(b"ping").build();
        let pk = p(&req).unwrap();
        assert_eq!(pk.l4, L4::Icmp(Icmp::Query));
        assert_eq!((pk.tuple.src_port, pk.tuple.icmp_type()), (77, 8));
        let udp = Pkt::udp4(A, 41614, B, 5555).payload(b"a").build();
        let err = Pkt::icmp4(B, A, 3, 3, &udp[..28]).build();
        let pk = p(&err).unwrap();
        let L4::Icmp(Icmp::Error { inner }) = pk.l4 else {
            panic!("{pk:?}")
        };
        assert_eq!(
            (inner.src_port, inner.dst_port, inner.proto),
            (41614, 5555, ipproto::UDP)
        );
        assert_eq!(inner.src, Addr::v4(A));
        // Quoting garbage or an error: invalid.
        let err = Pkt::icmp4(B, A, 3, 3, &[0x45, 0, 0]).build();
        assert_eq!(invalid_reason(&err), Some(DropReason::IcmpErrorBadInner));
        let inner_err = Pkt::icmp4(A, B, 3, 1, &udp[..28]).build();
        let err = Pkt::icmp4(B, A, 11, 0, &inner_err[..28]).build();
        assert_eq!(invalid_reason(&err), Some(DropReason::IcmpErrorBadInner));
        assert_eq!(
            invalid_reason(&Pkt::icmp4(A, B, 40, 0, &[]).build()),
            Some(DropReason::IcmpBadType)
        );
        let mut bad = req.clone();
        bad[30] ^= 1;
        assert_eq!(invalid_reason(&bad), Some(DropReason::IcmpBadChecksum));
        // ICMPv6: ND is untracked; an error quoting IPv6 with extension headers.
        let ns = Pkt::icmp6(A6, B6, 135, 0, &[0; 16]).build();
        assert_eq!(p(&ns).unwrap().l4, L4::Icmp(Icmp::Untracked));
        let quoted = Pkt::udp6(B6, 30000, A6, 13000)
            .ext(0, 0)
            .ext(60, 1)
            .payload(b"x")
            .build();
        let err = Pkt::icmp6(A6, B6, 1, 0, &quoted).build();
        let L4::Icmp(Icmp::Error { inner }) = p(&err).unwrap().l4 else {
            panic!()
        };
        assert_eq!(
            (inner.proto, inner.src_port, inner.dst_port),
            (ipproto::UDP, 30000, 13000)
        );
        let echo6 = Pkt::echo6(A6, B6, 9, 1, false).build();
        assert_eq!(p(&echo6).unwrap().tuple.icmp_type(), 128);
    }

    #[test]
    fn fragments() {
        let d = Pkt::udp4(A, 1000, B, 53)
            .payload(&[7; 100])
            .ip_id(99)
            .build_fragments(48);
        assert_eq!(d.len(), 3);
        let first = p(&d[0]).unwrap();
        assert_eq!(
            first.frag,
            Some(Frag {
                id: 99,
                offset: 0,
                more: true
            })
        );
        assert_eq!((first.tuple.src_port, first.tuple.dst_port), (1000, 53));
        let last = p(&d[2]).unwrap();
        assert_eq!(last.l4, L4::Fragment);
        assert_eq!(
            last.frag,
            Some(Frag {
                id: 99,
                offset: 96,
                more: false
            })
        );
    }

    /// What reassembly refuses is refused here: a fragment ending beyond
    /// 65 535 bytes (both families), and an IPv6 fragment with more to
    /// come whose data is not a multiple of 8 bytes (IPv4 rounds it down).
    #[test]
    fn fragment_bounds() {
        // IPv4: offset 8 184 * 8 = 65 472, 100 bytes of data: ends at 65 572.
        let mut b = Pkt::udp4(A, 1000, B, 53).payload(&[7; 92]).build();
        b[6..8].copy_from_slice(&8184u16.to_be_bytes());
        b[10..12].copy_from_slice(&[0, 0]);
        let sum = !csum_fold(csum_add(0, &b[..20]));
        b[10..12].copy_from_slice(&sum.to_be_bytes());
        assert_eq!(
            p(&b).err(),
            Some(ParseError::Malformed(DropReason::FragmentBad))
        );
        // The same fragment ending at 65 535 exactly passes.
        let mut ok = Pkt::udp4(A, 1000, B, 53).payload(&[7; 55]).build();
        ok[6..8].copy_from_slice(&8184u16.to_be_bytes());
        ok[10..12].copy_from_slice(&[0, 0]);
        let sum = !csum_fold(csum_add(0, &ok[..20]));
        ok[10..12].copy_from_slice(&sum.to_be_bytes());
        assert!(p(&ok).is_ok());
        // IPv6: a fragment header with more to come over 9 bytes of data.
        let frag6 = |data: usize, offset_units: u16, more: bool| {
            let mut b = vec![0u8; 40 + 8 + data];
            b[0] = 0x60;
            let plen = u16::try_from(8 + data).unwrap_or(u16::MAX);
            b[4..6].copy_from_slice(&plen.to_be_bytes());
            b[6] = 44;
            b[7] = 64;
            b[8..24].copy_from_slice(&A6);
            b[24..40].copy_from_slice(&B6);
            b[40] = 17;
            let fo = offset_units << 3 | u16::from(more);
            b[42..44].copy_from_slice(&fo.to_be_bytes());
            b[44..48].copy_from_slice(&7u32.to_be_bytes());
            b
        };
        let bad = ParseError::Malformed(DropReason::FragmentBad);
        assert_eq!(p(&frag6(9, 1, true)).err(), Some(bad));
        assert!(p(&frag6(16, 1, true)).is_ok());
        // The last fragment may end anywhere, but not beyond 65 535.
        assert!(p(&frag6(9, 1, false)).is_ok());
        assert_eq!(p(&frag6(16, 8190, false)).err(), Some(bad));
        assert!(p(&frag6(15, 8190, false)).is_ok());
    }

    #[test]
    fn ipv6_extension_headers() {
        let b = Pkt::tcp6(A6, 1, B6, 2)
            .ext(0, 0)
            .ext(43, 2)
            .ext(60, 0)
            .build();
        assert_eq!(p(&b).unwrap().tuple.proto, ipproto::TCP);
        let mut cut = b.clone();
        cut.truncate(40 + 8 + 4);
        cut[4..6].copy_from_slice(&12u16.to_be_bytes());
        assert_eq!(
            p(&cut),
            Err(ParseError::Malformed(DropReason::Ipv6BadExtHeader))
        );
        // A chain of 20 hop-by-hop headers is refused.
        let mut many = Pkt::udp6(A6, 1, B6, 2);
        for _ in 0..20 {
            many = many.ext(60, 0);
        }
        assert_eq!(
            p(&many.build()),
            Err(ParseError::Malformed(DropReason::Ipv6BadExtHeader))
        );
    }

    /// RFC 1071 as written: big-endian 16-bit words, a last odd byte padded
    /// with zero, folded.
    fn rfc1071(start: u64, data: &[u8]) -> u16 {
        let mut sum = start;
        for w in data.chunks(2) {
            sum += u64::from(u16::from_be_bytes([w[0], w.get(1).copied().unwrap_or(0)]));
        }
        csum_fold(sum)
    }

    proptest! {
        /// The eight-bytes-at-a-time sum folds to RFC 1071's, whatever the
        /// length (every remainder from 0 to 7) and the starting sum.
        #[test]
        fn checksum_sum_is_rfc1071(data in proptest::collection::vec(any::<u8>(), 0..80), start in 0u64..1 << 40) {
            prop_assert_eq!(csum_fold(csum_add(start, &data)), rfc1071(start, &data));
            // All ones: the largest words, the most carries.
            let ones = vec![0xff; data.len()];
            prop_assert_eq!(csum_fold(csum_add(start, &ones)), rfc1071(start, &ones));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in proptest::collection::vec(any::<u8>(), 0..200), ck in any::<bool>()) {
            let _ = parse(&b, ParseOptions { checksum: ck });
            let mut v4 = b.clone();
            if let Some(x) = v4.first_mut() { *x = 0x45; }
            let _ = parse(&v4, ParseOptions { checksum: ck });
            let mut v6 = b;
            if let Some(x) = v6.first_mut() { *x = 0x60; }
            let _ = parse(&v6, ParseOptions { checksum: ck });
        }

        #[test]
        fn built_packets_roundtrip(sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(), pl in proptest::collection::vec(any::<u8>(), 0..64), v6 in any::<bool>()) {
            let b = if v6 { Pkt::tcp6(A6, sp, B6, dp) } else { Pkt::tcp4(A, sp, B, dp) }.seq(seq).payload(&pl).build();
            let pk = p(&b).unwrap();
            prop_assert_eq!((pk.tuple.src_port, pk.tuple.dst_port), (sp, dp));
            let L4::Tcp(s) = pk.l4 else { panic!() };
            prop_assert_eq!(s.seq, seq);
            prop_assert_eq!(s.payload, &pl[..]);
        }

        #[test]
        fn truncation_never_panics(cut in 0usize..120, kind in 0u8..4) {
            let b = match kind {
                0 => Pkt::tcp4(A, 1, B, 2).wscale(3).payload(b"abcdef").build(),
                1 => Pkt::udp6(A6, 1, B6, 2).ext(0, 0).payload(b"abc").build(),
                2 => Pkt::icmp4(B, A, 3, 3, &Pkt::udp4(A, 1, B, 2).build()).build(),
                _ => Pkt::icmp6(B6, A6, 1, 0, &Pkt::tcp6(A6, 1, B6, 2).ext(60, 0).build()).build(),
            };
            let _ = p(&b[..cut.min(b.len())]);
        }
    }
}
