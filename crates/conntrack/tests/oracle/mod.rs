//! etherparse as an independent oracle for Tollgate's own parsers:
//! `capture::ether` (Ethernet and VLAN framing) and `conntrack::packet` (IP
//! and L4, the kernel's validation). Both run on the same bytes and must
//! agree on what they accept, on the L2/L3/L4 boundaries and on every field
//! both read, or differ in one of the ways [`Diff`] lists, each with the
//! reason Tollgate parts from etherparse there. Anything else is a mismatch,
//! returned as an error naming what differs.
//!
//! One file for both users, with no copy: the property test
//! `tests/etherparse_oracle.rs` and the cargo-fuzz target
//! `etherparse_oracle` (under `fuzz/`) include it by path.

use capture::ether::{self, FrameError, ETH_P_IP, ETH_P_IPV6};
use conntrack::packet::{self, Icmp, Packet, ParseError, ParseOptions, L4};
use conntrack::tuple::{ipproto, Addr, Family};
use conntrack::DropReason;
use etherparse::err::{ip::HeadersError, ip_auth, ipv6_exts, Layer};
use etherparse::{
    Icmpv4Slice, Icmpv4Type, Icmpv6Slice, Icmpv6Type, IgmpSlice, IpSlice, Ipv6ExtensionSlice,
    LaxLinkExtSlice, LaxNetSlice, LaxSlicedPacket, LinkSlice, SlicedPacket, TcpOptionElement,
    TcpSlice, TransportSlice, UdpSlice,
};

/// A documented difference between Tollgate and etherparse. Each variant
/// names where Tollgate (following the kernel, or its own rule where it says
/// so) and etherparse part, and why.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Diff {
    /// A third VLAN tag: Tollgate refuses the frame (its own rule, in
    /// `capture::ether`: a tag must never hide a packet from policy, so a
    /// depth it does not track is dropped, not guessed at); etherparse reads
    /// up to three link extensions and then stops without an error.
    VlanDepth,
    /// EtherType 0x88e5: etherparse looks inside an unencrypted MACsec
    /// SecTAG; to Tollgate, as to the bridge's netfilter hooks, which see
    /// IPv4 and IPv6 only, the frame is not IP.
    Macsec,
    /// A wrong IPv4 header checksum: the kernel's IP input (`ip_rcv_core`,
    /// `ip_fast_csum`) drops the packet, so Tollgate does; etherparse does
    /// not verify it. The oracle fixes the checksum in a copy and compares
    /// the rest.
    Ipv4HeaderChecksum,
    /// A wrong TCP, UDP or ICMP checksum: with `nf_conntrack_checksum` the
    /// kernel's `*_error` callbacks mark the packet invalid, so Tollgate
    /// does; etherparse never verifies L4 checksums. The oracle compares
    /// with checksums off, requires the checksum-on verdict to differ only
    /// by a checksum reason, and recomputes TCP and UDP checksums with
    /// etherparse to confirm it.
    L4Checksum,
    /// IPv4 protocol 51 (AH): the kernel's IPv4 conntrack takes the
    /// protocol field as the L4 protocol (`ipv4_get_l4proto` does not walk
    /// AH) and tracks AH generically, as Tollgate does; etherparse skips
    /// the AH header, reports the protocol behind it, and refuses an AH
    /// header that does not fit.
    Ipv4Ah,
    /// IPv6 payload length 0 with bytes after the header: etherparse takes
    /// the rest of the buffer as a jumbogram's payload; Tollgate, like
    /// `ipv6_rcv`, reads a 40-byte packet and the rest as padding (a
    /// jumbogram needs a hop-by-hop Jumbo Payload option, RFC 2675, and
    /// frames over 64 KiB, which no bridge port carries).
    Jumbogram,
    /// More than 16 IPv6 extension headers: Tollgate refuses the packet
    /// (its own rule, `MAX_EXT_HEADERS`, to bound hostile chains on the hot
    /// path); the kernel and etherparse walk any chain that fits.
    ExtChainBound,
    /// A hop-by-hop header after the first extension header: etherparse
    /// refuses it (RFC 8200, 4.1); netfilter's `ipv6_skip_exthdr` skips it
    /// wherever it sits, and so does Tollgate.
    HopByHopNotFirst,
    /// An IPv6 AH header whose length field is 0 (8 bytes): etherparse
    /// refuses it (RFC 4302 needs room for the ICV); `ipv6_skip_exthdr`
    /// skips `(len + 2) * 4` bytes whatever the length, and so does
    /// Tollgate.
    AhZeroLength,
    /// Behind the fragment header of an IPv6 fragment that is not the
    /// first, etherparse keeps walking extension headers over what is
    /// fragment data (and may refuse it, or name another protocol);
    /// `ipv6_skip_exthdr` stops at such a fragment header, and so does
    /// Tollgate.
    AfterNonFirstFragment,
    /// A fragment the kernel's reassembly refuses (`ip_frag_queue`,
    /// `nf_ct_frag6_queue`, RFC 8200 4.5): one ending beyond a datagram's
    /// 65 535 bytes, or an IPv6 fragment with more to come whose data is not
    /// a multiple of 8 bytes. Tollgate drops it (`fragment_bad`);
    /// etherparse slices one packet and does not look.
    FragmentBounds,
    /// A TCP flag combination `tcp_valid_flags` refuses (SYN|FIN, none,
    /// ...): the kernel's `tcp_error` marks it invalid, so Tollgate does;
    /// etherparse reads any flags.
    TcpFlags,
    /// UDP length 0: etherparse falls back to the IP payload length (the
    /// RFC 2675 jumbogram rule); the kernel's `udp_error` marks a length
    /// below 8 invalid, and so does Tollgate.
    UdpZeroLength,
    /// An ICMP type above 18 (`NR_ICMP_TYPES`): `icmp_error` marks it
    /// invalid, so Tollgate does; etherparse reads any type.
    IcmpUnknownType,
    /// An ICMP or ICMPv6 error whose quoted packet yields no trackable
    /// tuple (cut too short, garbage, an error quoting an error): the
    /// kernel's `icmp_error_message`/`icmpv6_error_message` mark it
    /// invalid, so Tollgate does; etherparse does not look inside errors.
    IcmpErrorInner,
    /// An ICMP timestamp or timestamp reply (code 0) that is not exactly 20
    /// bytes: etherparse refuses it; `icmp_error` needs only the 8-byte
    /// ICMP header, and so does Tollgate.
    IcmpTimestampLength,
    /// ICMP (1) in IPv6 or ICMPv6 (58) in IPv4: etherparse slices them as
    /// ICMP (and refuses less than 8 bytes); the kernel's ICMP trackers and
    /// error callbacks run only for their own family
    /// (`nf_conntrack_handle_icmp`), so Tollgate tracks them like any
    /// protocol it has no tracker for.
    CrossFamilyIcmp,
    /// UDP-Lite (136): etherparse does not parse it; the kernel's UDP-Lite
    /// tracker (`udplite_error`) needs its 8-byte header, and so does
    /// Tollgate.
    UdpLite,
    /// IGMP (2): etherparse checks IGMP message lengths; conntrack has no
    /// IGMP tracker (the generic one takes it), so Tollgate reads no IGMP
    /// header.
    Igmp,
    /// Enhanced GRE (version 1) that does not carry PPP: the kernel's PPTP
    /// GRE tracker (`gre_pkt_to_tuple`) refuses it, so Tollgate marks it
    /// invalid; etherparse does not parse GRE.
    GreNotPpp,
}

/// What a comparison found: the documented differences that applied, or a
/// mismatch naming what differs.
pub type Outcome = Result<Vec<Diff>, String>;

macro_rules! check {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

const CK: ParseOptions = ParseOptions { checksum: true };
const NOCK: ParseOptions = ParseOptions { checksum: false };

/// Offset of `part` in `whole` (a subslice of it).
fn off(whole: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(whole.as_ptr() as usize)
}

/// Compares the parsers on an Ethernet frame: Tollgate's framing
/// (`capture::ether::parse`, then `conntrack::packet::parse` on what
/// follows an IPv4 or IPv6 EtherType, as the dataplane and replay do) and
/// etherparse's `SlicedPacket::from_ethernet` / `LaxSlicedPacket`.
pub fn compare_frame(f: &[u8]) -> Outcome {
    let mut diffs = Vec::new();
    let tg = ether::parse(f);
    let lax = LaxSlicedPacket::from_ethernet(f);
    let lax = match (tg, lax) {
        (Err(_), Err(_)) => return Ok(diffs),
        (Ok(_), Err(e)) => return Err(format!("Tollgate frames, etherparse refuses: {e}")),
        (Err(FrameError::Truncated), Ok(lax)) => {
            check!(
                matches!(lax.stop_err, Some((_, Layer::VlanHeader))),
                "Tollgate: frame truncated; etherparse: {:?}",
                lax.stop_err
            );
            return Ok(diffs);
        }
        (Err(FrameError::VlanTooDeep), Ok(lax)) => {
            check!(
                lax.link_exts.len() >= 2 || matches!(lax.stop_err, Some((_, Layer::VlanHeader))),
                "Tollgate: third VLAN tag; etherparse: {} link extensions",
                lax.link_exts.len()
            );
            diffs.push(Diff::VlanDepth);
            return Ok(diffs);
        }
        (Ok(fr), Ok(lax)) => (fr, lax),
    };
    let (fr, lax) = lax;
    let Some(LinkSlice::Ethernet2(eth)) = &lax.link else {
        return Err("etherparse: no Ethernet II header".into());
    };
    check!(
        (eth.destination(), eth.source()) == (fr.dst, fr.src),
        "MAC addresses differ"
    );
    let mut ether_type = eth.ether_type().0;
    let mut l3 = eth.payload_slice();
    let mut tags = Vec::new();
    for ext in &lax.link_exts {
        match ext {
            LaxLinkExtSlice::Vlan(v) => {
                let h = v.header_slice();
                tags.push(u16::from_be_bytes([h[0], h[1]]));
                ether_type = v.ether_type().0;
                l3 = v.payload_slice();
            }
            LaxLinkExtSlice::Macsec(_) => {
                check!(
                    fr.ethertype == 0x88e5,
                    "etherparse: MACsec; Tollgate: EtherType {:#06x}",
                    fr.ethertype
                );
                diffs.push(Diff::Macsec);
                return Ok(diffs);
            }
        }
    }
    if let Some((_, Layer::VlanHeader)) = lax.stop_err {
        return Err("Tollgate frames, etherparse: VLAN tag truncated".into());
    }
    check!(
        tags[..] == fr.vlans[..usize::from(fr.vlan_count)],
        "VLAN tags: Tollgate {:?} ({}), etherparse {tags:?}",
        fr.vlans,
        fr.vlan_count
    );
    check!(
        ether_type == fr.ethertype,
        "EtherType: Tollgate {:#06x}, etherparse {ether_type:#06x}",
        fr.ethertype
    );
    check!(
        off(f, l3) == fr.l3_offset,
        "L3 offset: Tollgate {}, etherparse {}",
        fr.l3_offset,
        off(f, l3)
    );
    if fr.ethertype != ETH_P_IP && fr.ethertype != ETH_P_IPV6 {
        check!(
            !matches!(lax.net, Some(LaxNetSlice::Ipv4(_) | LaxNetSlice::Ipv6(_))),
            "etherparse: IP behind EtherType {:#06x}",
            fr.ethertype
        );
        return Ok(diffs);
    }
    let ip = &f[fr.l3_offset..];
    diffs.extend(compare_ip(ip)?);
    let by_type = SlicedPacket::from_ethernet(f);
    let by_version = SlicedPacket::from_ip(ip);
    let wanted = if fr.ethertype == ETH_P_IP { 4 } else { 6 };
    if ip.first().map(|b| b >> 4) == Some(wanted) {
        check!(
            by_type.is_ok() == by_version.is_ok(),
            "etherparse: from_ethernet {:?}, from_ip {:?}",
            by_type.err(),
            by_version.err()
        );
        if let (Ok(a), Ok(b)) = (by_type, by_version) {
            check!(
                (a.net, a.transport) == (b.net, b.transport),
                "etherparse: from_ethernet and from_ip slice differently"
            );
        }
    } else {
        check!(
            by_type.is_err(),
            "etherparse: IP version differs from EtherType, accepted"
        );
        // What Tollgate's framing does with it: the family's input refuses
        // a header of the other version, as the kernel's does.
        // (No byte at all: the parse refuses it as truncated.)
        check!(
            ip.is_empty() || packet::ethertype_mismatch(fr.ethertype, ip).is_some(),
            "Tollgate: IP version differs from EtherType, accepted"
        );
    }
    Ok(diffs)
}

/// Compares the parsers on bytes starting at an IP header:
/// `conntrack::packet::parse` and etherparse's `SlicedPacket::from_ip`.
pub fn compare_ip(b: &[u8]) -> Outcome {
    let mut diffs = Vec::new();
    let fixed;
    let mut bytes = b;
    if let Err(ParseError::Malformed(DropReason::Ipv4BadChecksum)) = packet::parse(b, NOCK) {
        // etherparse's sum over the header as it stands (its header struct
        // would drop the reserved flag bit), checksum field zeroed.
        let hdr = etherparse::Ipv4HeaderSlice::from_slice(b)
            .map_err(|e| format!("Tollgate: bad IPv4 checksum; etherparse: {e}"))?
            .slice();
        let ihl = hdr.len();
        let sum = etherparse::checksum::Sum16BitWords::new()
            .add_slice(&hdr[..10])
            .add_slice(&hdr[12..])
            .ones_complement()
            .to_be();
        let stored = u16::from_be_bytes([b[10], b[11]]);
        check!(
            sum != stored && !(sum == 0 && stored == 0xffff),
            "Tollgate: bad IPv4 checksum; etherparse computes the stored one"
        );
        let mut v = b.to_vec();
        v[10..12].copy_from_slice(&sum.to_be_bytes());
        check!(ihl <= v.len(), "checksummed header past the buffer");
        fixed = v;
        bytes = &fixed;
        diffs.push(Diff::Ipv4HeaderChecksum);
    }
    let tg = packet::parse(bytes, NOCK);
    check!(
        !matches!(tg, Err(ParseError::Malformed(DropReason::Ipv4BadChecksum))),
        "Tollgate: IPv4 checksum still bad once fixed"
    );
    compare_parsed(bytes, &tg, &mut diffs)?;
    compare_checksums(bytes, &tg, &packet::parse(bytes, CK), &mut diffs)?;
    diffs.sort();
    diffs.dedup();
    Ok(diffs)
}

/// What Tollgate's L3 said, when it accepted the L3 header.
struct TgL3 {
    family: Family,
    src: Addr,
    dst: Addr,
    proto: u8,
    ip_len: u32,
}

fn tg_l3(tg: &Result<Packet<'_>, ParseError>) -> Option<TgL3> {
    let (t, ip_len) = match tg {
        Ok(p) => (p.tuple, p.ip_len),
        Err(ParseError::Invalid { tuple, ip_len, .. }) => (*tuple, *ip_len),
        Err(ParseError::Malformed(_)) => return None,
    };
    Some(TgL3 {
        family: t.family,
        src: t.src,
        dst: t.dst,
        proto: t.proto,
        ip_len,
    })
}

/// A fragment header of an IPv6 packet that is not the first fragment,
/// among the first `MAX` extension headers etherparse walked, with its
/// position in the chain.
fn v6_later_fragment<'a>(
    ip: &IpSlice<'a>,
) -> Option<(usize, etherparse::Ipv6FragmentHeaderSlice<'a>)> {
    let IpSlice::Ipv6(v6) = ip else { return None };
    v6.extensions()
        .clone()
        .into_iter()
        .enumerate()
        .take(16)
        .find_map(|(i, e)| match e {
            Ipv6ExtensionSlice::Fragment(f) if f.fragment_offset().value() != 0 => Some((i, f)),
            _ => None,
        })
}

fn compare_parsed(
    b: &[u8],
    tg: &Result<Packet<'_>, ParseError>,
    diffs: &mut Vec<Diff>,
) -> Result<(), String> {
    if b.len() > 40 && b[0] >> 4 == 6 && b[4] == 0 && b[5] == 0 {
        if let Some(l3) = tg_l3(tg) {
            check!(
                l3.ip_len == 40,
                "Tollgate: IPv6 length 0 read as {}",
                l3.ip_len
            );
        }
        diffs.push(Diff::Jumbogram);
        return Ok(());
    }
    let ep = IpSlice::from_slice(b);
    match (tg_l3(tg), ep) {
        (None, Err(_)) => Ok(()),
        (None, Ok(ip)) => {
            let Err(ParseError::Malformed(r)) = tg else {
                unreachable!()
            };
            if *r == DropReason::FragmentBad && ip.is_fragmenting_payload() {
                diffs.push(Diff::FragmentBounds);
                return Ok(());
            }
            if *r == DropReason::Ipv6BadExtHeader {
                if let IpSlice::Ipv6(v6) = &ip {
                    if v6.extensions().clone().into_iter().count() > 16 {
                        diffs.push(Diff::ExtChainBound);
                        return Ok(());
                    }
                }
            }
            Err(format!(
                "Tollgate refuses the L3 header ({r:?}), etherparse accepts it"
            ))
        }
        (Some(l3), Err(e)) => {
            use etherparse::err::ip::SliceError as E;
            let later_fragment = matches!(
                tg,
                Ok(Packet {
                    l4: L4::Fragment,
                    ..
                })
            );
            match &e {
                E::IpHeaders(HeadersError::Ipv6Ext(ipv6_exts::HeaderError::HopByHopNotAtStart)) => {
                    diffs.push(if later_fragment {
                        Diff::AfterNonFirstFragment
                    } else {
                        Diff::HopByHopNotFirst
                    });
                }
                E::IpHeaders(HeadersError::Ipv4Ext(_)) if l3.proto == 51 => {
                    diffs.push(Diff::Ipv4Ah)
                }
                E::Len(l)
                    if l.layer == Layer::IpAuthHeader
                        && l3.family == Family::V4
                        && l3.proto == 51 =>
                {
                    diffs.push(Diff::Ipv4Ah)
                }
                _ if later_fragment && l3.family == Family::V6 => {
                    diffs.push(Diff::AfterNonFirstFragment)
                }
                E::IpHeaders(HeadersError::Ipv6Ext(ipv6_exts::HeaderError::IpAuth(
                    ip_auth::HeaderError::ZeroPayloadLen,
                ))) => diffs.push(Diff::AhZeroLength),
                E::Len(l) if l.layer == Layer::IpAuthHeader && l.required_len == 12 => {
                    diffs.push(Diff::AhZeroLength)
                }
                _ => {
                    return Err(format!(
                        "Tollgate accepts the L3 header ({:?}), etherparse refuses it: {e}",
                        tg.as_ref().err()
                    ))
                }
            }
            Ok(())
        }
        (Some(l3), Ok(ip)) => compare_l3_l4(b, tg, &l3, &ip, diffs),
    }
}

fn compare_l3_l4(
    b: &[u8],
    tg: &Result<Packet<'_>, ParseError>,
    l3: &TgL3,
    ip: &IpSlice<'_>,
    diffs: &mut Vec<Diff>,
) -> Result<(), String> {
    let pl = ip.payload();
    let (family, src, dst, ip_len, ep_frag, options) = match ip {
        IpSlice::Ipv4(v4) => {
            let h = v4.header();
            let frag = h.is_fragmenting_payload().then(|| {
                (
                    u32::from(h.identification()),
                    u32::from(h.fragments_offset().value()) * 8,
                    h.more_fragments(),
                )
            });
            (
                Family::V4,
                Addr::v4(h.source()),
                Addr::v4(h.destination()),
                u32::from(h.total_len()),
                frag,
                h.ihl() > 5,
            )
        }
        IpSlice::Ipv6(v6) => {
            let h = v6.header();
            // Tollgate's rule, from the kernel's walk: the last fragment
            // header that fragments, up to the first later fragment.
            let mut frag = None;
            for e in v6.extensions().clone() {
                if let Ipv6ExtensionSlice::Fragment(f) = e {
                    let offset = u32::from(f.fragment_offset().value()) * 8;
                    if f.is_fragmenting_payload() {
                        frag = Some((f.identification(), offset, f.more_fragments()));
                    }
                    if offset != 0 {
                        break;
                    }
                }
            }
            (
                Family::V6,
                Addr::v6(h.source()),
                Addr::v6(h.destination()),
                40 + u32::from(h.payload_length()),
                frag,
                false,
            )
        }
    };
    check!(
        l3.family == family,
        "family: Tollgate {:?}, etherparse {family:?}",
        l3.family
    );
    check!((l3.src, l3.dst) == (src, dst), "addresses differ");
    check!(
        l3.ip_len == ip_len,
        "IP length: Tollgate {}, etherparse {ip_len}",
        l3.ip_len
    );
    if let Ok(p) = tg {
        let tf = p.frag.map(|f| (f.id, f.offset, f.more));
        check!(
            tf == ep_frag,
            "fragment: Tollgate {tf:?}, etherparse {ep_frag:?}"
        );
        check!(
            p.ip_options == options,
            "IPv4 options: Tollgate {}",
            p.ip_options
        );
    }
    if family == Family::V4 && l3.proto == 51 {
        // etherparse reads behind AH; Tollgate stops at it.
        if let IpSlice::Ipv4(v4) = ip {
            check!(v4.header().protocol().0 == 51, "IPv4 protocol differs");
        }
        diffs.push(Diff::Ipv4Ah);
        return Ok(());
    }
    if let Ok(Packet {
        l4: L4::Fragment, ..
    }) = tg
    {
        check!(
            pl.fragmented,
            "Tollgate: later fragment; etherparse: not fragmented"
        );
        if let Some((i, f)) = v6_later_fragment(ip) {
            check!(
                f.next_header().0 == l3.proto,
                "protocol after the fragment header: Tollgate {}, etherparse {}",
                l3.proto,
                f.next_header().0
            );
            let walked = match ip {
                IpSlice::Ipv6(v6) => v6.extensions().clone().into_iter().count(),
                IpSlice::Ipv4(_) => 0,
            };
            if walked > i + 1 || pl.ip_number.0 != l3.proto {
                diffs.push(Diff::AfterNonFirstFragment);
            }
        } else {
            check!(pl.ip_number.0 == l3.proto, "fragment protocol differs");
        }
        return Ok(());
    }
    check!(
        pl.ip_number.0 == l3.proto,
        "L4 protocol: Tollgate {}, etherparse {}",
        l3.proto,
        pl.ip_number.0
    );
    let l4_at = off(b, pl.payload);
    let l4_end = l4_at + pl.payload.len();
    let v4 = family == Family::V4;
    // etherparse's L4 view: SlicedPacket for whole packets; its own
    // slicers, as SlicedPacket would dispatch them, for a first fragment
    // (SlicedPacket slices no L4 header of any fragment).
    let ept: Result<Option<TransportSlice<'_>>, Layer> = if !pl.fragmented {
        match SlicedPacket::from_ip(b) {
            Ok(s) => Ok(s.transport),
            Err(etherparse::err::packet::SliceError::Len(l)) => Err(l.layer),
            Err(etherparse::err::packet::SliceError::Tcp(_)) => Err(Layer::TcpHeader),
            Err(e) => {
                return Err(format!(
                    "etherparse: IpSlice accepts, SlicedPacket refuses: {e}"
                ))
            }
        }
    } else {
        let d = pl.payload;
        match pl.ip_number.0 {
            ipproto::TCP => TcpSlice::from_slice(d)
                .map(|s| Some(TransportSlice::Tcp(s)))
                .map_err(|_| Layer::TcpHeader),
            ipproto::UDP => UdpSlice::from_slice_lax(d)
                .map(|s| Some(TransportSlice::Udp(s)))
                .map_err(|l| l.layer),
            ipproto::ICMP => Icmpv4Slice::from_slice(d)
                .map(|s| Some(TransportSlice::Icmpv4(s)))
                .map_err(|l| l.layer),
            ipproto::ICMPV6 => Icmpv6Slice::from_slice(d)
                .map(|s| Some(TransportSlice::Icmpv6(s)))
                .map_err(|l| l.layer),
            2 => IgmpSlice::from_slice(d)
                .map(|s| Some(TransportSlice::Igmp(s)))
                .map_err(|l| l.layer),
            _ => Ok(None),
        }
    };
    let own_icmp = (v4 && l3.proto == ipproto::ICMP) || (!v4 && l3.proto == ipproto::ICMPV6);
    let pkt = match tg {
        Ok(p) => p,
        Err(ParseError::Invalid { reason, .. }) => {
            return compare_invalid(*reason, &ept, l3, diffs);
        }
        Err(ParseError::Malformed(_)) => unreachable!(),
    };
    let t = pkt.tuple;
    match (&pkt.l4, &ept) {
        (L4::Tcp(seg), Ok(Some(TransportSlice::Tcp(s)))) => {
            check!(
                (t.src_port, t.dst_port) == (s.source_port(), s.destination_port()),
                "TCP ports differ"
            );
            check!(seg.seq == s.sequence_number(), "TCP seq differs");
            check!(seg.ack == s.acknowledgment_number(), "TCP ack differs");
            check!(seg.window == s.window_size(), "TCP window differs");
            check!(
                seg.flags == ep_tcp_flags(s),
                "TCP flags: Tollgate {:#x}, etherparse {:#x}",
                seg.flags,
                ep_tcp_flags(s)
            );
            check!(
                off(b, seg.payload) == off(b, s.payload())
                    && seg.payload.len() == s.payload().len(),
                "TCP payload (data offset) differs: Tollgate at {}+{}, etherparse at {}+{}",
                off(b, seg.payload),
                seg.payload.len(),
                off(b, s.payload()),
                s.payload().len()
            );
            check!(
                off(b, s.payload()) == l4_at + usize::from(s.data_offset()) * 4,
                "TCP data offset"
            );
            if let Some((wscale, sack_perm, sack_max)) = ep_tcp_options(s) {
                check!(
                    (seg.wscale, seg.sack_perm, seg.sack_max) == (wscale, sack_perm, sack_max),
                    "TCP options: Tollgate {:?}, etherparse {:?}",
                    (seg.wscale, seg.sack_perm, seg.sack_max),
                    (wscale, sack_perm, sack_max)
                );
            }
        }
        (L4::Udp { payload }, Ok(None)) if l3.proto == ipproto::UDPLITE => {
            check!(
                off(b, payload) == l4_at + 8 && off(b, payload) + payload.len() == l4_end,
                "UDP-Lite payload differs"
            );
        }
        (L4::Udp { payload }, Ok(Some(TransportSlice::Udp(u)))) => {
            check!(
                (t.src_port, t.dst_port) == (u.source_port(), u.destination_port()),
                "UDP ports differ"
            );
            check!(
                off(b, payload) == off(b, u.payload()),
                "UDP payload start differs"
            );
            if !pl.fragmented {
                check!(
                    payload.len() == u.payload().len(),
                    "UDP payload length differs"
                );
            }
        }
        (L4::Icmp(kind), Ok(Some(TransportSlice::Icmpv4(s)))) if v4 => {
            compare_icmp(
                kind,
                t.src_port,
                t.dst_port,
                s.type_u8(),
                s.code_u8(),
                s.bytes5to8(),
                s.payload(),
                Family::V4,
            )?;
            let class = match s.icmp_type() {
                Icmpv4Type::EchoRequest(_)
                | Icmpv4Type::EchoReply(_)
                | Icmpv4Type::TimestampRequest(_)
                | Icmpv4Type::TimestampReply(_) => Some(false),
                Icmpv4Type::DestinationUnreachable(_)
                | Icmpv4Type::Redirect(_)
                | Icmpv4Type::TimeExceeded(_)
                | Icmpv4Type::ParameterProblem(_) => Some(true),
                Icmpv4Type::Unknown { .. } => None,
            };
            check_icmp_class(kind, class)?;
        }
        (L4::Icmp(kind), Ok(Some(TransportSlice::Icmpv6(s)))) if !v4 => {
            compare_icmp(
                kind,
                t.src_port,
                t.dst_port,
                s.type_u8(),
                s.code_u8(),
                s.bytes5to8(),
                s.payload(),
                Family::V6,
            )?;
            let class = match s.icmp_type() {
                Icmpv6Type::EchoRequest(_) | Icmpv6Type::EchoReply(_) => Some(false),
                Icmpv6Type::DestinationUnreachable(_)
                | Icmpv6Type::PacketTooBig { .. }
                | Icmpv6Type::TimeExceeded(_)
                | Icmpv6Type::ParameterProblem(_) => Some(true),
                _ => None,
            };
            check_icmp_class(kind, class)?;
        }
        (L4::Icmp(_), Err(Layer::Icmpv4Timestamp | Layer::Icmpv4TimestampReply)) if own_icmp => {
            diffs.push(Diff::IcmpTimestampLength);
        }
        (L4::Other { payload }, e) => {
            check!(
                off(b, payload) == l4_at && payload.len() == pl.payload.len(),
                "payload of protocol {} differs",
                l3.proto
            );
            match (l3.proto, e) {
                (_, Ok(None)) => {}
                (2, Ok(Some(TransportSlice::Igmp(_)))) | (2, Err(Layer::Igmp)) => {
                    diffs.push(Diff::Igmp)
                }
                (ipproto::ICMP, Ok(Some(TransportSlice::Icmpv4(_))))
                | (ipproto::ICMPV6, Ok(Some(TransportSlice::Icmpv6(_))))
                | (
                    ipproto::ICMP | ipproto::ICMPV6,
                    Err(
                        Layer::Icmpv4
                        | Layer::Icmpv6
                        | Layer::Icmpv4Timestamp
                        | Layer::Icmpv4TimestampReply,
                    ),
                ) if !own_icmp => diffs.push(Diff::CrossFamilyIcmp),
                (p, e) => {
                    return Err(format!(
                        "Tollgate: protocol {p} unparsed; etherparse: {e:?}"
                    ))
                }
            }
        }
        (l4, e) => return Err(format!("L4: Tollgate {l4:?}, etherparse {e:?}")),
    }
    Ok(())
}

/// Tollgate refused the L4 header (`invalid`) where both accept the L3.
fn compare_invalid(
    reason: DropReason,
    ept: &Result<Option<TransportSlice<'_>>, Layer>,
    l3: &TgL3,
    diffs: &mut Vec<Diff>,
) -> Result<(), String> {
    use DropReason as R;
    let ok = match (reason, ept) {
        (R::TcpTruncated | R::TcpBadDataOffset, Err(Layer::TcpHeader)) => true,
        (R::TcpBadFlags, Ok(Some(TransportSlice::Tcp(s)))) => {
            check!(
                !packet::tcp_flags_valid(ep_tcp_flags(s)),
                "Tollgate: bad TCP flags; etherparse reads {:#x}",
                ep_tcp_flags(s)
            );
            diffs.push(Diff::TcpFlags);
            true
        }
        (R::UdpTruncated, Err(Layer::UdpHeader)) => true,
        (R::UdpTruncated, Ok(None)) if l3.proto == ipproto::UDPLITE => {
            diffs.push(Diff::UdpLite);
            true
        }
        (R::UdpBadLength, Err(Layer::UdpHeader | Layer::UdpPayload)) => true,
        (R::UdpBadLength, Ok(Some(TransportSlice::Udp(u)))) if u.length() == 0 => {
            diffs.push(Diff::UdpZeroLength);
            true
        }
        (R::IcmpTruncated, Err(Layer::Icmpv4 | Layer::Icmpv6)) => true,
        (R::IcmpBadType, Ok(Some(TransportSlice::Icmpv4(s)))) if s.type_u8() > 18 => {
            diffs.push(Diff::IcmpUnknownType);
            true
        }
        (R::IcmpErrorBadInner, Ok(Some(TransportSlice::Icmpv4(_) | TransportSlice::Icmpv6(_)))) => {
            diffs.push(Diff::IcmpErrorInner);
            true
        }
        (R::GreBadProtocol, Ok(None)) if l3.proto == ipproto::GRE => {
            diffs.push(Diff::GreNotPpp);
            true
        }
        _ => false,
    };
    check!(ok, "Tollgate: invalid ({reason:?}); etherparse: {ept:?}");
    Ok(())
}

/// The TCP flag byte from etherparse's flag accessors.
fn ep_tcp_flags(s: &TcpSlice<'_>) -> u8 {
    [
        s.fin(),
        s.syn(),
        s.rst(),
        s.psh(),
        s.ack(),
        s.urg(),
        s.ece(),
        s.cwr(),
    ]
    .iter()
    .enumerate()
    .fold(0, |acc, (i, &on)| acc | (u8::from(on) << i))
}

/// Window scale (SYN only, clamped to 14), SACK-permitted (SYN only) and the
/// highest SACK right edge, from etherparse's option reader; `None` when it
/// stops on an option it refuses (Tollgate, like the kernel, skips those).
#[allow(clippy::type_complexity)]
fn ep_tcp_options(s: &TcpSlice<'_>) -> Option<(Option<u8>, bool, Option<u32>)> {
    let syn = s.syn();
    let (mut wscale, mut sack_perm, mut sack_max) = (None, false, None::<u32>);
    for o in s.options_iterator() {
        match o.ok()? {
            TcpOptionElement::WindowScale(w) if syn => wscale = Some(w.min(14)),
            TcpOptionElement::SelectiveAcknowledgementPermitted if syn => sack_perm = true,
            TcpOptionElement::SelectiveAcknowledgement(first, rest) => {
                for (_, right) in std::iter::once(first).chain(rest.into_iter().flatten()) {
                    sack_max = Some(match sack_max {
                        Some(m) if (right.wrapping_sub(m) as i32) <= 0 => m,
                        _ => right,
                    });
                }
            }
            _ => {}
        }
    }
    Some((wscale, sack_perm, sack_max))
}

/// ICMP type, code, query id and (for errors) the quoted packet's tuple.
#[allow(clippy::too_many_arguments)]
fn compare_icmp(
    kind: &Icmp,
    sport: u16,
    dport: u16,
    ty: u8,
    code: u8,
    rest: [u8; 4],
    payload: &[u8],
    family: Family,
) -> Result<(), String> {
    check!(
        dport == u16::from_be_bytes([ty, code]),
        "ICMP type/code: Tollgate {dport:#06x}, etherparse {ty}/{code}"
    );
    match kind {
        Icmp::Query => check!(
            sport == u16::from_be_bytes([rest[0], rest[1]]),
            "ICMP id differs"
        ),
        Icmp::Error { inner } => {
            // The quoted packet, sliced leniently (it is cut short).
            let q = LaxSlicedPacket::from_ip(payload);
            let Ok(q) = q else { return Ok(()) };
            let (src, dst, proto, l4) = match &q.net {
                Some(LaxNetSlice::Ipv4(v)) if family == Family::V4 => {
                    let h = v.header();
                    (
                        Addr::v4(h.source()),
                        Addr::v4(h.destination()),
                        h.protocol().0,
                        v.payload().payload,
                    )
                }
                Some(LaxNetSlice::Ipv6(v)) if family == Family::V6 => {
                    if matches!(q.stop_err, Some((_, l)) if l < Layer::UdpHeader) {
                        return Ok(());
                    }
                    let h = v.header();
                    (
                        Addr::v6(h.source()),
                        Addr::v6(h.destination()),
                        v.payload().ip_number.0,
                        v.payload().payload,
                    )
                }
                _ => {
                    return Err(format!(
                        "Tollgate: error quoting {inner:?}; etherparse: {:?}",
                        q.net.is_some()
                    ))
                }
            };
            check!(
                (inner.src, inner.dst) == (src, dst),
                "quoted addresses differ"
            );
            check!(
                inner.proto == proto,
                "quoted protocol: Tollgate {}, etherparse {proto}",
                inner.proto
            );
            if matches!(
                proto,
                ipproto::TCP | ipproto::UDP | ipproto::UDPLITE | ipproto::SCTP | ipproto::DCCP
            ) {
                if let [a, b, c, d, ..] = l4 {
                    check!(
                        (inner.src_port, inner.dst_port)
                            == (u16::from_be_bytes([*a, *b]), u16::from_be_bytes([*c, *d])),
                        "quoted ports differ"
                    );
                }
            }
        }
        Icmp::Untracked | Icmp::Other => {}
    }
    Ok(())
}

/// Tollgate's ICMP class against the message etherparse decoded
/// (`Some(true)`: an error, `Some(false)`: a query).
fn check_icmp_class(kind: &Icmp, class: Option<bool>) -> Result<(), String> {
    match (kind, class) {
        (Icmp::Query, Some(false)) | (Icmp::Error { .. }, Some(true)) | (_, None) => Ok(()),
        (k, c) => Err(format!(
            "ICMP class: Tollgate {k:?}, etherparse error={c:?}"
        )),
    }
}

/// The checksum-on verdict may differ from the checksum-off one only by a
/// checksum reason, and etherparse's own sums must agree with Tollgate's.
fn compare_checksums(
    b: &[u8],
    nock: &Result<Packet<'_>, ParseError>,
    ck: &Result<Packet<'_>, ParseError>,
    diffs: &mut Vec<Diff>,
) -> Result<(), String> {
    use DropReason as R;
    let bad_sum = match (nock, ck) {
        (a, c) if a == c => false,
        (
            Ok(_) | Err(ParseError::Invalid { .. }),
            Err(ParseError::Invalid {
                reason: R::TcpBadChecksum | R::UdpBadChecksum | R::IcmpBadChecksum,
                ..
            }),
        ) => {
            diffs.push(Diff::L4Checksum);
            true
        }
        (a, c) => return Err(format!("checksums off: {a:?}; on: {c:?}")),
    };
    // Recompute TCP and UDP sums of whole packets with etherparse.
    let Ok(p) = nock else { return Ok(()) };
    if p.frag.is_some() || diffs.contains(&Diff::Jumbogram) || diffs.contains(&Diff::Ipv4Ah) {
        return Ok(());
    }
    let Ok(s) = SlicedPacket::from_ip(b) else {
        return Ok(());
    };
    let (Some(net), Some(tr)) = (&s.net, &s.transport) else {
        return Ok(());
    };
    let addrs: Vec<u8> = match net {
        etherparse::NetSlice::Ipv4(v) => [v.header().source(), v.header().destination()].concat(),
        etherparse::NetSlice::Ipv6(v) => [v.header().source(), v.header().destination()].concat(),
        _ => return Ok(()),
    };
    // etherparse's ones'-complement sum over the segment as it stands (its
    // header structs would drop reserved bits), checksum field zeroed.
    let (proto, seg, at) = match tr {
        TransportSlice::Tcp(t) => (ipproto::TCP, t.slice(), 16),
        TransportSlice::Udp(u) if u.checksum() != 0 && u.length() != 0 => {
            (ipproto::UDP, u.slice(), 6)
        }
        _ => return Ok(()),
    };
    let stored = u16::from_be_bytes([seg[at], seg[at + 1]]);
    let len = u32::try_from(seg.len()).map_err(|e| e.to_string())?;
    let sum = etherparse::checksum::Sum16BitWords::new()
        .add_slice(&addrs)
        .add_4bytes(u32::from(proto).to_be_bytes())
        .add_4bytes(len.to_be_bytes())
        .add_slice(&seg[..at])
        .add_slice(&seg[at + 2..])
        .ones_complement()
        .to_be();
    // 0 and 0xffff are the same number in ones' complement.
    let norm = |x: u16| if x == 0xffff { 0 } else { x };
    let ep_bad = norm(stored) != norm(sum);
    check!(
        ep_bad == bad_sum,
        "L4 checksum: Tollgate bad={bad_sum}, etherparse stored {stored:#06x} computed {sum:#06x}"
    );
    Ok(())
}
